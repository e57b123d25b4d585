"""What every live page shares: sidebar controls <-> URL, the run buttons, the poller
that draws a path while it grows, the cached start network, and error sentences.

A page describes its settings as :class:`Control`s, turns their values into config
objects, and hands :func:`run_panel` two functions: one that builds a
:class:`~geoviz.record.runner.PathRunner` (through ``geoviz.applications.api.prepare_<application>``,
the function the CLI and the Python API use) and one that draws a runner's figures. Not a page
itself (pages are listed by ``st.navigation`` in app.py).
"""

from __future__ import annotations

import copy
import functools
import gc
import hashlib
import logging
import math
import os
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import streamlit as st

from geoviz.errors import ConfigError, GeovizError
from geoviz.setups.data import load_dataset
from geoviz.setups.problem import Problem, SetupConfig, load_problem
from geoviz.setups.training import network_cache_dir, network_cached, network_key, resolve_device, train_network
from geoviz.validation import check_value, cut
from geoviz.record.runner import PathRunner
from geoviz.applications.connect import LandscapeJob
from geoviz.applications.cost import runner_cost
from geoviz.record.sketch import DEFAULT_BUDGET_MB, MIN_BUDGET_MB, check_budget_mb
from geoviz.setups.weights import PAGE_MAX_BYTES
from pages import _safe

__all__ = ["through_app", "Control", "controls_ui", "cached_problem", "run_panel", "keep_alive", "ABANDON_AFTER", "device_options",
           "dataset_options", "dataset_help", "data_dir_for", "server_data_dir", "live_runs", "run_id", "weights_ui",
           "snapshot_control", "snapshot_mb", "shown_on_page"]

# seconds between redraws while a path runs: live, yet cheap. A redraw costs the browser
# far more than the server (~0.15 s of CPU per plotly chart against ~0.05 s in all on
# the server), and with the browser on the same 2 cores every redraw slows the path.
# Side by side (bench/app_latency.py --compare), a 2 s poll kept 1.25x the steps/s of
# a 1.5 s one.
POLL_RUNNING = float(os.environ.get("GEOVIZ_POLL", "2.0"))
POLL_PAUSED = 2.0
# pictures that change slowly (per-layer bars, the PCA of the trajectory) are redrawn
# every other poll: redrawing them at every poll cost 0.75x the page's steps/s (A/B)
PICTURES_EVERY = int(os.environ.get("GEOVIZ_PICTURES_EVERY", "2"))
# a run that no page of its session has polled for this long stops itself (tab closed)
ABANDON_AFTER = float(os.environ.get("GEOVIZ_ABANDON_AFTER", "30"))
KEEP_ALIVE_EVERY = 5.0
# Python's full (generation 2) garbage collection walks every object in the process:
# with torch, plotly, pandas and Streamlit imported, 0.22-0.31 s each time, holding the
# GIL, and the server's reruns trigger one every few seconds. Each one stalled the path
# thread for as long (two stalls cost a 300-step digits path 0.5 s, a sixth of its
# time). So while a path runs, the objects that existed when Run was pressed are out of
# the collector's sight (gc.freeze); when it ends they are handed back (gc.unfreeze),
# and whatever of them died meanwhile is collected then. Side by side
# (bench/app_latency.py --pin --compare GEOVIZ_GC_FREEZE=0), the page kept 1.11x the
# steps/s with it.
GC_FREEZE = os.environ.get("GEOVIZ_GC_FREEZE", "1") != "0"


def _freeze_for_run() -> None:
    if GC_FREEZE:
        gc.freeze()


def _unfreeze_after_run() -> None:
    if GC_FREEZE and gc.get_freeze_count():
        gc.unfreeze()


_log = logging.getLogger("geoviz.app")
if os.environ.get("GEOVIZ_TIMING"):  # timings of the run button and the redraws, on stderr
    _log.addHandler(logging.StreamHandler())
    _log.setLevel(logging.DEBUG)


# -- routing ------------------------------------------------------------------------
def through_app() -> None:
    """Make sure this run went through app.py (wide layout, page links, keep-alive).

    On a freshly started server, Streamlit runs a page opened by a direct link once on
    its own, in its compatibility mode for a pages/ folder; rerun (once) so that
    app.py's st.navigation routes it. app.py marks every run it routes.
    """
    if not st.session_state.get("geoviz:routed") and not st.session_state.get("geoviz:rerouted"):
        st.session_state["geoviz:rerouted"] = True
        try:  # the switch that st.navigation itself flips (it does not run in that mode)
            from streamlit.runtime.pages_manager import PagesManager

            PagesManager.uses_pages_directory = False
        except ImportError:
            pass
        st.rerun()


# -- settings: sidebar widgets, restored from and written to the URL ---------------
@dataclass(frozen=True)
class Control:
    """One setting of a page: a sidebar widget and a URL query parameter of the same name."""

    name: str
    label: str
    default: object
    help: str
    options: tuple = ()  # a select box when given
    step: float | int | None = None  # number inputs
    format: str | None = None

    def parse(self, text: str):
        """A value from its URL text; ConfigError with one sentence when it does not fit."""
        if self.options:
            if text not in [str(o) for o in self.options]:
                allowed = ", ".join(str(o) for o in self.options)
                raise ConfigError(f"The link sets {self.name} to '{text}'; allowed: {allowed}.")
            return self.options[[str(o) for o in self.options].index(text)]
        kind = type(self.default)
        try:
            value = kind(text)
        except ValueError:
            raise ConfigError(f"The link sets {self.name} to '{cut(text, 80)}', which is not {'an integer' if kind is int else 'a number'}.")
        try:
            value = check_value(self.name, value)  # the same ranges as the CLI and the API
        except ConfigError as err:
            raise ConfigError(f"The link sets {self.name} out of range: {err}") from None
        if (sentence := _out_of_range(self, value)) is not None:  # this page's tighter limits
            raise ConfigError(f"The link sets {self.name} out of range: {sentence}")
        return _snap_to_scale(self, value) if self.name in LOG_SCALE else value


# Limits of the number settings, by name (the same names on every page). The lower
# limit is the widget's; a value above the upper one is refused with a sentence and Run
# is disabled, never clamped (a typed 1e9 step budget is not quietly made 1 or 100000).
LIMITS = {
    "steps": (1, _safe.MAX_STEPS), "eval_every": (1, 100_000), "seed": (0, 2**31 - 1), "seed_b": (0, 2**31 - 1),
    "sparsity": (0.01, None), "eps": (1e-4, None), "grid": (2, 201), "memory": (1, 60_000), "ewc_lambda": (0.0, None),
}  # (sparsity's upper end and the others' are the config's own checks)
# damping moves by factors: a log scale of 1, 2, 3, 5 a decade (one click = x1.5 to x2), on
# which every application's default lies (on a 1-2-5 scale connect's 3e-4 was snapped to
# 2e-4, and the page walked another path than the CLI)
DAMPING_STEPS = tuple(v for e in range(-7, 1) for m in (1, 2, 3, 5) if (v := float(f"{m}e{e}")) <= 1.0)
LOG_SCALE = {"damping": DAMPING_STEPS}


def _limits(control: Control) -> tuple:
    low, high = LIMITS.get(control.name, (None, None))
    kind = type(control.default)
    return (None if low is None else kind(low)), (None if high is None else kind(high))


def _out_of_range(control: Control, value) -> str | None:
    """One sentence when ``value`` is outside the setting's limits, else None."""
    low, high = _limits(control)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if low is not None and value < low:
            return f"{control.label} is {value}; the smallest allowed is {low}."
        if high is not None and value > high:
            return f"{control.label} is {value:,}; the largest allowed here is {high:,}."
    return None


def _snap_to_scale(control: Control, value: float) -> float:
    scale = LOG_SCALE[control.name]
    for option in scale:
        if math.isclose(option, value, rel_tol=1e-6):
            return option
    raise ConfigError(f"The link sets {control.name} to {value:g}; on this page it is one of "
                      f"{', '.join(f'{v:.0e}' for v in scale)}.")


def _widget(control: Control, key: str, disabled: bool = False):
    if control.options:
        return st.sidebar.selectbox(control.label, control.options, key=key, help=control.help, disabled=disabled)
    if control.name in LOG_SCALE:
        return st.sidebar.select_slider(control.label, LOG_SCALE[control.name], key=key, help=control.help,
                                        disabled=disabled, format_func=lambda v: f"{v:.0e}")
    return st.sidebar.number_input(control.label, key=key, help=control.help, step=control.step, format=control.format,
                                   disabled=disabled, min_value=_limits(control)[0])


def controls_ui(page: str, controls: Sequence[Control]) -> dict:
    """Draw the page's settings in the sidebar and return their values.

    A setting starts from the URL (a shared link), else from what this session last
    chose on the page, else from its default; the values are written back to the URL
    so the address always reproduces the setup. A URL value that does not fit is
    reported in one sentence and replaced by the default.
    """
    through_app()
    # the sentences about the settings go in a box that is always drawn, even empty: the
    # buttons below then keep their place in the page when a sentence comes or goes (a
    # shift left the old, disabled Run beside the new one until the script ended; seen in CI)
    notes = st.session_state[f"{page}:notes"] = st.container()
    shown, owner = _attach(page)
    # while a run is live its settings are the sidebar's, locked (the sidebar never
    # contradicts the charts); once it has ended they are free again
    locked = shown is not None and shown.alive and getattr(shown, "settings", None) is not None
    saved = st.session_state.setdefault(f"{page}:settings", {})
    params = st.query_params
    for control in controls:
        key = f"{page}:{control.name}"
        if locked:
            st.session_state[key] = shown.settings[control.name]
            continue
        if key in st.session_state:
            continue
        value = saved.get(control.name, control.default)
        if control.name in LOG_SCALE and value not in LOG_SCALE[control.name]:  # a default off the scale
            value = min(LOG_SCALE[control.name], key=lambda v: abs(math.log(v / value)))
        if control.name in params:
            try:
                value = control.parse(params[control.name])
            except ConfigError as err:
                with notes:
                    _safe.error(err)  # the sentence holds the URL's text: shown as text
                value = control.default
        st.session_state[key] = value
    values = {c.name: _widget(c, f"{page}:{c.name}", disabled=locked) for c in controls}
    refused = [sentence for c in controls if (sentence := _out_of_range(c, values[c.name])) is not None]
    for sentence in refused:  # caught before Run, which stays disabled until it is fixed
        notes.error(sentence)
    st.session_state[f"{page}:refused"] = bool(refused)
    if locked:
        st.sidebar.caption("The settings are those of the run shown, locked while it is live: Stop it to change them.")
    if owner:
        saved.update(values)
    query = {k: str(v) for k, v in values.items()}
    if params.get("present") == "1":  # presentation mode (pages/_present.py) is part of the address too
        query["present"] = "1"
    if shown is not None and getattr(shown, "settings", None) == values:  # the address reproduces the run shown
        query["run" if owner else "watch"] = run_id(shown)
        if owner and getattr(shown, "owner_key", None):
            query["key"] = shown.owner_key
    st.query_params.from_dict(query)
    st.session_state[f"{page}:values"] = values
    st.session_state[f"{page}:locked"] = locked
    return values


def checked_configs(page: str, configs: Callable[[dict], tuple], values: dict) -> tuple | None:
    """``configs(values)``, the page's validated settings; None when a setting is refused
    (said once, above the buttons) or a ConfigError (said here)."""
    if st.session_state.get(f"{page}:refused"):
        return None
    try:
        check_model_suits(values)
        return configs(values)
    except GeovizError as err:
        with _notes(page):
            _safe.error(err)
        return None


def _notes(page: str):
    """controls_ui's box for sentences about the settings, above the buttons and always drawn
    (a new container if this run has none)."""
    return st.session_state.get(f"{page}:notes") or st.container()


def shown_on_page(text: str) -> None:
    """The ``warn`` of a page's ``prepare_<application>``: the runner keeps the sentence
    (``runner.warnings``) and the status line shows it until the cost line, which repeats it."""


def snapshot_mb(values: dict) -> float:
    """The page's snapshot budget in MB, checked as the CLI checks --snapshot-mb (ConfigError, one sentence)."""
    return check_budget_mb(float(values.get("snapshot_mb", DEFAULT_BUDGET_MB)))


# the shape of one image of each dataset, known without reading its files
INPUT_SHAPES = {"digits": (1, 8, 8), "fashion-mnist": (1, 28, 28), "mnist": (1, 28, 28),
                "cifar10": (3, 32, 32), "cifar100": (3, 32, 32)}


def check_model_suits(values: dict) -> None:
    """Raise ConfigError (one sentence) before Run when the chosen model cannot take the
    chosen dataset's images (vgg16 on 8x8 digits)."""
    refusal = _model_refusal(values.get("model"), values.get("dataset"))
    if refusal is not None:
        raise ConfigError(refusal)


@functools.lru_cache(maxsize=64)
def _model_refusal(model: str | None, dataset: str | None) -> str | None:
    """Why ``model`` cannot take ``dataset``'s images, or None; once per pair (every page
    run asks): the network is built on the meta device, which allocates nothing."""
    import torch

    from geoviz.setups.models import build_model

    shape = INPUT_SHAPES.get(dataset)
    if shape is None or not model:
        return None
    try:
        with torch.device("meta"):
            build_model(model, shape, 10, dataset=dataset)
    except ConfigError as err:
        return str(err)
    return None


# -- live runs of the server: a reload or a second tab finds them here --------------
KEEP_ENDED_RUNS = 8  # ended runs kept in memory for a reload, besides the live ones


@st.cache_resource(show_spinner=False)
def _registry() -> dict[str, PathRunner]:
    """Every run started by this server, by run id (one dict shared by all sessions)."""
    return {}


def run_id(runner: PathRunner) -> str:
    """A runner's id: the name of its run folder (the Runs page's name for it)."""
    return runner.writer.dir.name if runner.writer is not None else f"memory-{id(runner):x}"


def _application(runner: PathRunner) -> str:
    return runner.writer.application if runner.writer is not None else ""


def _register(runner: PathRunner) -> None:
    registry = _registry()
    registry[run_id(runner)] = runner
    ended = [k for k, r in list(registry.items()) if not r.alive]
    for k in ended[:-KEEP_ENDED_RUNS]:
        registry.pop(k, None)


def live_runs(page: str | None = None) -> list[tuple[str, PathRunner]]:
    """The server's runs that are running or paused (of one application if given)."""
    return [(k, r) for k, r in list(_registry().items()) if r.alive and (page is None or _application(r) == page)]


def _attach(page: str) -> tuple[PathRunner | None, bool]:
    """The runner this page shows, and whether this session controls it.

    ``?watch=<run id>`` shows any run of the server read-only. Otherwise the session's
    own runner; a fresh session (a reload, a new tab) opened with ``?run=<run id>&key=<key>``
    takes its run back from the server's registry, with its controls. The key is made
    when the run starts and is only in the address of the tab that started it: a
    ``?run=`` link without it (shared, or guessed) shows the run read-only.
    """
    params = st.query_params
    registry = _registry()
    watched = registry.get(params.get("watch", ""))
    if watched is not None and _application(watched) == page:
        return watched, False
    key = f"{page}:runner"
    runner: PathRunner | None = st.session_state.get(key)
    wanted = params.get("run")
    if wanted and (runner is None or run_id(runner) != wanted):
        found = registry.get(wanted)
        if found is not None and _application(found) == page:
            owner_key = getattr(found, "owner_key", None)
            if owner_key is not None and not secrets.compare_digest(params.get("key", ""), owner_key):
                return found, False  # not the tab that started it: read-only
            st.session_state[key] = runner = found
    return runner, True


def server_data_dir() -> str | None:
    """The server's data folder for MNIST and CIFAR ($GEOVIZ_DATA), or None when unset."""
    return os.environ.get("GEOVIZ_DATA") or None


def dataset_options() -> tuple[str, ...]:
    """The datasets this server can open without a download: digits always, Fashion-MNIST
    where its files are installed (Debian's dataset-fashion-mnist), and MNIST, CIFAR-10 and
    CIFAR-100 where their files are in the server's data folder ($GEOVIZ_DATA)."""
    from geoviz.setups.data import FASHION_SYSTEM_DIR
    from geoviz.setups.folders import found_in

    fashion = FASHION_SYSTEM_DIR / "train-images-idx3-ubyte"
    options = ["digits"]
    if fashion.is_file() or fashion.with_name(fashion.name + ".gz").is_file():
        options.append("fashion-mnist")
    options += [name for name in ("mnist", "cifar10", "cifar100") if found_in(name, server_data_dir())]
    return tuple(options)


def data_dir_for(dataset: str) -> str | None:
    """Where a page's dataset is read from: the server's data folder for MNIST and CIFAR."""
    return server_data_dir() if dataset in ("mnist", "cifar10", "cifar100") else None


def dataset_help() -> str:
    """The dataset control's help: what is offered, and where more files must be put."""
    where = server_data_dir()
    folder = (f"this server's data folder, {where}" if where else
              "a data folder the server is started with (GEOVIZ_DATA=DIR make app); none is set now")
    return (" Offered here: the datasets this server has. Fashion-MNIST appears once its files are in "
            "/usr/share/datasets/fashion-mnist (Debian package dataset-fashion-mnist); MNIST, CIFAR-10 and CIFAR-100 "
            f"once their files are in {folder} (MNIST's IDX files; CIFAR's python batches, read by a restricted "
            "unpickler that builds arrays only). Nothing is downloaded by the page.")


def snapshot_control() -> Control:
    """The snapshot budget, a setting of every live page as of the CLI (--snapshot-mb) and the API (snapshot_mb=)."""
    return Control(
        "snapshot_mb", "Snapshot budget (MB)", DEFAULT_BUDGET_MB,
        "Memory for the run's weight snapshots (the trajectory's PCA; the live view keeps half). When fewer than 32 "
        f"full snapshots fit, each is kept as a fixed random projection instead. At least {MIN_BUDGET_MB:g} MB; "
        "the same setting as the CLI's --snapshot-mb.", step=16.0, format="%.1f",
    )


def device_options() -> tuple[str, ...]:
    """auto, cpu, and cuda when a GPU is present."""
    import torch

    return ("auto", "cpu", "cuda") if torch.cuda.is_available() else ("auto", "cpu")


# -- the start network, trained once per setup and shared by every session -----------
@st.cache_resource(show_spinner=False, max_entries=int(os.environ.get("GEOVIZ_CACHED_PROBLEMS", "8")))
def _shared_problem(setup: SetupConfig, classes: tuple | None) -> Problem:
    return load_problem(setup, classes=classes)


def admit_network(setup: SetupConfig, data, classes: Sequence[int] | None = None) -> None:
    """Count a start network this session would train anew (ConfigError past the server's cap)."""
    if not network_cached(network_key(data, setup.model, setup.seed, hidden=setup.hidden, classes=classes)):
        _safe.allow_new_network(f"{setup}/{classes}")


def cached_problem(setup: SetupConfig, classes: Sequence[int] | None = None) -> Problem:
    """The problem for ``setup``, from cache; training shows a progress bar the first time.

    Each caller gets its own copy of the module: ``functional_call`` swaps a module's
    parameters while it runs, so two sessions' paths must never share one module.
    """
    bar = st.empty()

    def progress(fraction: float) -> None:
        bar.progress(min(1.0, fraction), text=f"Training the start network ({fraction:.0%}); cached afterwards")

    try:
        # Train (or load) outside st.cache_resource: an element drawn from inside a
        # cached function breaks its replay (CacheReplayClosureError, seen on a fresh
        # machine where the network is not on disk yet). geoviz caches networks on
        # disk and in memory, so this is instant once trained.
        setup.validate()
        data = load_dataset(setup.dataset, setup.data_dir, setup.download)
        if not setup.weights:  # the user's own weights are loaded, not trained
            admit_network(setup, data, classes)
            train_network(data, setup.model, setup.seed, hidden=setup.hidden, device=resolve_device(setup.device),
                          progress=progress, classes=classes)
        problem = _shared_problem(setup, None if classes is None else tuple(classes))
    finally:
        bar.empty()
    return replace(problem, model=copy.deepcopy(problem.model))


# -- running: buttons, the poller, the status line ---------------------------------
def _phase(runner: PathRunner | None) -> str:
    if runner is None or not runner.alive:
        return "done"
    if runner.path.done:
        return "baselines"  # only Stop does anything now
    return "paused" if runner.state == "paused" else "running"


def _request(page: str, action: str, runner: PathRunner | None = None) -> None:
    """A button's callback. Pause / Step / Resume / Stop reach the path thread here,
    directly: callbacks run first thing in the rerun the click causes, before the page's
    script draws anything (the script then only waits for the thread to take it in)."""
    if runner is not None and action in ("pause", "resume", "step", "stop"):
        getattr(runner, action)()
        _log.debug("%s reached the runner at %.3f", action, time.time())
    st.session_state[f"{page}:action"] = action


def _buttons_ui(page: str, phase: str, ready: bool, runner: PathRunner | None = None) -> None:
    run = pause = step = stop = st.container(horizontal=True, gap="small")  # buttons as wide as their labels
    run.button("Run", type="primary", disabled=not ready, on_click=_request, args=(page, "run"), key=f"{page}:Run")
    if phase == "paused":
        pause.button("Resume", on_click=_request, args=(page, "resume", runner), key=f"{page}:Resume")
    else:
        pause.button("Pause", disabled=phase != "running", on_click=_request, args=(page, "pause", runner), key=f"{page}:Pause")
    step.button("Step", disabled=phase in ("done", "baselines"), on_click=_request, args=(page, "step", runner), key=f"{page}:Step")
    stop.button("Stop", disabled=phase == "done", on_click=_request, args=(page, "stop", runner), key=f"{page}:Stop")


def _status_ui(runner: PathRunner, total: int) -> None:
    rows = runner.rows()
    last = rows[-1] if rows else {}
    step = int(last.get("step", 0))
    rate = step / last["seconds"] if last.get("seconds") else 0.0
    device = str(getattr(runner.path.w, "device", "cpu"))
    if runner.path.config.mode == "penalty":
        beta = " · penalty mode (Adam, not the constrained step)"
    else:
        beta = f" · β = {last['beta']:.3g}" if isinstance(last.get("beta"), float) else ""
        used = runner.path.backend_used
        if used is not None:  # what really computed G v: a fallback is named as such
            beta += f" · G·v: {used}" + ("" if used == runner.path.config.backend else f" (fell back from {runner.path.config.backend})")
    line = f"**{runner.state}** · step {step} of {total} · {rate:.1f} steps/s · {device}{beta}"
    if runner.state == "diverged":  # the engine's message names its step too: said once
        reason = re.sub(r"^The path diverged at step \d+: ", "", runner.message).rstrip(".")
        st.error(f"The path diverged at step {step}: {_safe.md(reason)}. Its charts are kept below.")
    elif runner.state == "failed":
        st.error(f"The path failed at step {step}: {_safe.md(runner.message)}")
    elif runner.finished and runner.message:
        line += f" · {_safe.md(runner.message)}"
    elif runner.alive and runner.path.done:
        line += " · the path has ended; computing the baselines to compare with (Stop skips them)…"
    st.markdown(line)
    cost = runner_cost(runner)  # measured on the path's first steps
    if cost is not None:
        st.caption(cost.sentence())
    elif getattr(runner, "warnings", None):  # said before the path started (a big network on a CPU); the cost line repeats it
        st.caption(" ".join(runner.warnings))
    if runner.alive and runner.path.done:
        _baselines_progress_ui(runner)
    elif runner.skipped:
        st.caption(f"Stop skipped the baselines {', '.join(runner.skipped)}: the path's figures are kept; "
                   "the summary leaves those rows empty.")


def _baselines_progress_ui(runner: PathRunner) -> None:
    """One bar per baseline started so far (the runner fills in ``progress``)."""
    progress = dict(runner.progress)
    if not progress:
        return
    for column, (name, fraction) in zip(st.columns(max(3, len(progress))), progress.items()):
        column.progress(fraction, text=f"{_BASELINE_NAMES.get(name, name)}: {'done' if fraction >= 1 else f'{fraction:.0%}'}")


_BASELINE_NAMES = {"finetune": "fine-tune", "distill": "prune + distil", "ewc": "EWC", "replay": "replay",
                   "bezier": "Bezier curve", "bezier_inputs": "Bezier curve, no labels"}


def weights_ui(page: str, name: str = "weights", what: str = "start weights") -> str | None:
    """An upload of the user's own weights (safetensors or a state_dict); its saved path, or None.

    ``name``: the setting it fills (``weights``, or connect's ``weights_b``); ``what``:
    the words for it in the label and in the caption that says the server holds it.
    """
    upload = st.sidebar.file_uploader(
        f"Your own {what}", type=["safetensors", "pt", "pth", "bin"], key=f"{page}:{name}",
        help="Weights for the chosen model instead of training it: a .safetensors file, or a state_dict saved with "
             "torch.save(model.state_dict(), ...) (read with weights_only=True; a pickle that needs code is refused).",
    )
    if upload is None:
        return None
    if upload.size > PAGE_MAX_BYTES:
        st.sidebar.error(f"{upload.name} is {upload.size / 2**20:.0f} MB; the most a page accepts is {PAGE_MAX_BYTES / 2**20:.0f} MB.")
        return None
    data = upload.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    # one folder per content, the file under its own name (the error sentences name it)
    file = re.sub(r"[^\w.\-]", "_", Path(upload.name).name) or "weights"
    path = network_cache_dir().parent / "uploads" / digest[:24] / file
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    # the server's word that it holds this file: until it shows, a Run would still use the file before
    st.sidebar.caption(f"{what[0].upper()}{what[1:]} in use: {_safe.md(file)} · sha256 {digest[:12]}")
    return str(path)


def _wait_first_step(runner: PathRunner, timeout: float) -> None:
    """Give the thread a moment, so the first drawing already holds a point."""
    deadline = time.time() + timeout
    while not runner.rows() and runner.alive and time.time() < deadline:
        time.sleep(0.02)


def run_panel(
    page: str,
    make_runner: Callable[[], PathRunner] | None,
    draw: Callable[[PathRunner], None],
    total_steps: int,
    placeholder: Callable[[], None] | None = None,
    draw_pictures: Callable[[PathRunner], None] | None = None,
) -> PathRunner | None:
    """The buttons, the live view and the status line of a page.

    Args:
        page: the page's key in this session (``sparsify``, ``continual``, ...).
        make_runner: builds a new runner from the current settings (may raise
            GeovizError); None when the settings are invalid (Run is then disabled).
        draw: draws a runner's figures; called on every poll while the path grows.
        total_steps: the step budget, for the status line.
        placeholder: draws the empty charts before the first run, so the page does
            not jump when it starts (and the browser has loaded plotly by then).
        draw_pictures: draws the figures that change slowly, below ``draw``'s, in a
            fragment of their own that polls ``PICTURES_EVERY`` times less often.

    Returns:
        This session's runner of the page, if any.
    """
    key = f"{page}:runner"
    buttons = st.container()
    if st.session_state.get(f"{page}:refused"):
        make_runner = None  # a setting is out of range (said above the buttons)
    action = st.session_state.pop(f"{page}:action", None)
    runner, owner = _attach(page)
    if not owner:
        action = None
        st.info(f"Watching run {run_id(runner)} read-only (it was started in another tab). "
                f"[Start a run of your own](/{page}).")
    elif runner is None:
        _not_live_notice(page)
    if action == "run" and make_runner is not None:
        if runner is not None and runner.alive:
            runner.stop()
        clicked = time.perf_counter()
        try:
            runner = _safe.admitted(page, total_steps, make_runner)  # the server's caps, then the runner
        except GeovizError as err:
            # in the settings' box: the page's elements below keep their places when the
            # sentence goes (a refused file, then a good one)
            with _notes(page):
                _safe.error(err)
        else:
            built = time.perf_counter()
            _freeze_for_run()  # only once there is a run to end it: a failed build keeps nothing frozen
            runner.settings = st.session_state.get(f"{page}:values")
            runner.start()
            st.session_state[key] = runner
            runner.owner_key = secrets.token_urlsafe(12)  # the controls' key: only in this tab's address
            _register(runner)
            st.query_params.update(run=run_id(runner), key=runner.owner_key)
            _wait_first_step(runner, 1.5)
            _log.debug("run: built in %.3f s, first step after %.3f s", built - clicked, time.perf_counter() - built)
            st.rerun()  # the sidebar was drawn before the run existed: draw it again, locked
    elif action in ("pause", "resume", "step", "stop") and runner is not None:
        # the button's callback has already told the thread (see _request)
        if action == "step":  # one more step, then paused again
            _wait_for(runner, lambda r: _phase(r) != "running" and not r.stepping)
        else:
            _wait_for(runner, _ACKNOWLEDGED[action])
    phase = _phase(runner)  # one view of the runner for the buttons and the poller
    if phase == "done" and st.session_state.get(f"{page}:locked"):
        st.rerun()  # the run ended (Stop) after the sidebar was drawn locked: unlock it
    if runner is not None and phase == "done":
        _unfreeze_after_run()
    with buttons:
        if owner:
            _buttons_ui(page, phase, make_runner is not None, runner)
        else:
            _status_only_ui(page, phase)
        _settings_notice(page, runner)
    if runner is None:
        where = "the sidebar (out of presentation mode)" if st.query_params.get("present") == "1" else "the sidebar"
        st.info(f"Choose the settings in {where} and press **Run**: the path is drawn as it grows.")
        if placeholder is not None:
            placeholder()
        return None
    _live_view(runner, phase, draw, total_steps, draw_pictures)
    return runner


def _status_only_ui(page: str, phase: str) -> None:
    """A watcher's buttons: drawn (so the page looks the same) but never usable."""
    buttons = st.container(horizontal=True, gap="small")
    for label in ("Run", "Resume" if phase == "paused" else "Pause", "Step", "Stop"):
        buttons.button(label, disabled=True, key=f"{page}:watch:{label}")


def _not_live_notice(page: str) -> None:
    """A link to a run that is not (or no longer) live here; and the runs that are."""
    wanted = st.query_params.get("run") or st.query_params.get("watch")
    if wanted:
        st.warning(f"Run {wanted} is not live on this server (it ended before the server restarted, or never ran "
                   "here); the Runs page lists every run it has recorded.")
    others = live_runs(page)
    if others:
        links = ", ".join(f"[{k}](/{page}?watch={k}) ({r.state}, step {r.path.step})" for k, r in others)
        st.caption(f"Live on this server now, to watch read-only: {links}.")


def _settings_notice(page: str, runner: PathRunner | None) -> None:
    """When the sidebar no longer holds the settings of the run shown, say so."""
    settings = getattr(runner, "settings", None)
    values = st.session_state.get(f"{page}:values")
    if runner is None or settings is None or values is None or settings == values:
        return
    changed = ", ".join(f"{k} {settings[k]}" for k in settings if settings[k] != values.get(k))
    st.caption(f"The charts below are of run {run_id(runner)}, made with {changed}; the sidebar now says otherwise. "
               "Press Run to walk the new settings.")


# when the runner has taken a button's action in (it finishes the step it is in first)
_ACKNOWLEDGED = {
    "pause": lambda r: _phase(r) != "running",
    "resume": lambda r: _phase(r) != "paused",
    "stop": lambda r: _phase(r) == "done",
}


def _wait_for(runner: PathRunner, done: Callable[[PathRunner], bool], timeout: float = 2.0) -> None:
    deadline = time.time() + timeout
    while not done(runner) and time.time() < deadline:
        time.sleep(0.01)


def _live_view(
    runner: PathRunner, seen: str, draw: Callable[[PathRunner], None], total: int,
    draw_pictures: Callable[[PathRunner], None] | None = None,
) -> None:
    every = {"running": POLL_RUNNING, "baselines": POLL_RUNNING, "paused": POLL_PAUSED}.get(seen)

    @st.fragment(run_every=every)
    def view() -> None:
        runner.touch()
        if _phase(runner) != seen:  # buttons and polling must change: redraw the page
            st.rerun()
        started = time.perf_counter()
        _status_ui(runner, total)
        draw(runner)
        _log.debug("redraw at step %d in %.3f s", runner.path.step, time.perf_counter() - started)

    view()
    if draw_pictures is None:
        return

    # paused, a path only moves on Step, which reruns the whole page
    @st.fragment(run_every=POLL_RUNNING * PICTURES_EVERY if seen in ("running", "baselines") else None)
    def pictures() -> None:
        started = time.perf_counter()
        draw_pictures(runner)
        _log.debug("pictures at step %d in %.3f s", runner.path.step, time.perf_counter() - started)

    pictures()


def keep_alive() -> None:
    """While this session has a live run or landscape job, touch it every few seconds from any page.

    Each stops itself ``ABANDON_AFTER`` seconds after the last touch, so closing the
    tab ends it, while moving to another page of the app does not (the landscape is
    there, complete, when the user comes back to Connect).
    """
    runners = [v for v in st.session_state.values() if isinstance(v, (PathRunner, LandscapeJob)) and v.alive]
    if not runners:
        return

    @st.fragment(run_every=KEEP_ALIVE_EVERY)
    def touch() -> None:
        for runner in runners:
            runner.touch()

    touch()
