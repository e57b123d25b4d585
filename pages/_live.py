"""What every live page shares: sidebar controls <-> URL, the run buttons, the poller
that draws a path while it grows, the cached start network, and error sentences.

A page describes its settings as :class:`Control`s, turns their values into config
objects, and hands :func:`run_panel` two functions: one that builds a
:class:`~geoviz.runner.PathRunner` and one that draws a runner's figures. Not a page
itself (pages are listed by ``st.navigation`` in app.py).
"""

from __future__ import annotations

import copy
import gc
import hashlib
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import streamlit as st

from geoviz.errors import ConfigError, GeovizError
from geoviz.data import load_dataset
from geoviz.problem import Problem, SetupConfig, load_problem
from geoviz.training import network_cache_dir, resolve_device, train_network
from geoviz.runner import PathRunner
from geoviz.applications.cost import runner_cost
from geoviz.setups.weights import PAGE_MAX_BYTES

__all__ = ["through_app", "Control", "controls_ui", "cached_problem", "run_panel", "keep_alive", "ABANDON_AFTER", "device_options", "weights_ui"]

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
            return kind(text)
        except ValueError:
            raise ConfigError(f"The link sets {self.name} to '{text}', which is not {'an integer' if kind is int else 'a number'}.")


def _widget(control: Control, key: str):
    if control.options:
        return st.sidebar.selectbox(control.label, control.options, key=key, help=control.help)
    return st.sidebar.number_input(control.label, key=key, help=control.help, step=control.step, format=control.format)


def controls_ui(page: str, controls: Sequence[Control]) -> dict:
    """Draw the page's settings in the sidebar and return their values.

    A setting starts from the URL (a shared link), else from what this session last
    chose on the page, else from its default; the values are written back to the URL
    so the address always reproduces the setup. A URL value that does not fit is
    reported in one sentence and replaced by the default.
    """
    through_app()
    saved = st.session_state.setdefault(f"{page}:settings", {})
    params = st.query_params
    for control in controls:
        key = f"{page}:{control.name}"
        if key in st.session_state:
            continue
        value = saved.get(control.name, control.default)
        if control.name in params:
            try:
                value = control.parse(params[control.name])
            except ConfigError as err:
                st.error(str(err))
                value = control.default
        st.session_state[key] = value
    values = {c.name: _widget(c, f"{page}:{c.name}") for c in controls}
    saved.update(values)
    st.query_params.from_dict({k: str(v) for k, v in values.items()})
    return values


def device_options() -> tuple[str, ...]:
    """auto, cpu, and cuda when a GPU is present."""
    import torch

    return ("auto", "cpu", "cuda") if torch.cuda.is_available() else ("auto", "cpu")


# -- the start network, trained once per setup and shared by every session -----------
@st.cache_resource(show_spinner=False)
def _shared_problem(setup: SetupConfig, classes: tuple | None) -> Problem:
    return load_problem(setup, classes=classes)


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
        data = load_dataset(setup.dataset, setup.data_dir, setup.download)
        if not setup.weights:  # the user's own weights are loaded, not trained
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
    return "paused" if runner.state == "paused" else "running"


def _request(page: str, action: str) -> None:
    st.session_state[f"{page}:action"] = action


def _buttons_ui(page: str, phase: str, ready: bool) -> None:
    run, pause, step, stop, _ = st.columns([1, 1, 1, 1, 4])
    run.button("Run", type="primary", disabled=not ready, on_click=_request, args=(page, "run"), key=f"{page}:Run", width="stretch")
    if phase == "paused":
        pause.button("Resume", on_click=_request, args=(page, "resume"), key=f"{page}:Resume", width="stretch")
    else:
        pause.button("Pause", disabled=phase != "running", on_click=_request, args=(page, "pause"), key=f"{page}:Pause", width="stretch")
    step.button("Step", disabled=phase == "done", on_click=_request, args=(page, "step"), key=f"{page}:Step", width="stretch")
    stop.button("Stop", disabled=phase == "done", on_click=_request, args=(page, "stop"), key=f"{page}:Stop", width="stretch")


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
    line = f"**{runner.state}** · step {step} of {total} · {rate:.1f} steps/s · {device}{beta}"
    if runner.state == "diverged":
        st.error(f"The path diverged at step {step}: {runner.message}. Its charts are kept below.")
    elif runner.state == "failed":
        st.error(f"The path failed at step {step}: {runner.message}")
    elif runner.finished and runner.message:
        line += f" · {runner.message}"
    elif runner.alive and runner.path.done:
        line += " · the path has ended; computing the baselines to compare with…"
    st.markdown(line)
    cost = runner_cost(runner)  # measured on the path's first steps
    if cost is not None:
        st.caption(cost.sentence())


def weights_ui(page: str) -> str | None:
    """An upload of the user's own start weights (safetensors or a state_dict); its saved path, or None."""
    upload = st.sidebar.file_uploader(
        "Your own start weights", type=["safetensors", "pt", "pth", "bin"], key=f"{page}:weights",
        help="Weights for the chosen model instead of training it: a .safetensors file, or a state_dict saved with "
             "torch.save(model.state_dict(), ...) (read with weights_only=True; a pickle that needs code is refused).",
    )
    if upload is None:
        return None
    if upload.size > PAGE_MAX_BYTES:
        st.sidebar.error(f"{upload.name} is {upload.size / 2**20:.0f} MB; the most a page accepts is {PAGE_MAX_BYTES / 2**20:.0f} MB.")
        return None
    data = upload.getvalue()
    # one folder per content, the file under its own name (the error sentences name it)
    name = re.sub(r"[^\w.\-]", "_", Path(upload.name).name) or "weights"
    path = network_cache_dir().parent / "uploads" / hashlib.sha256(data).hexdigest()[:24] / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
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
    action = st.session_state.pop(f"{page}:action", None)
    runner: PathRunner | None = st.session_state.get(key)
    if action == "run" and make_runner is not None:
        if runner is not None and runner.alive:
            runner.stop()
        clicked = time.perf_counter()
        try:
            runner = make_runner()
        except GeovizError as err:
            st.error(str(err))
        else:
            built = time.perf_counter()
            _freeze_for_run()  # only once there is a run to end it: a failed build keeps nothing frozen
            runner.start()
            st.session_state[key] = runner
            _wait_first_step(runner, 1.5)
            _log.debug("run: built in %.3f s, first step after %.3f s", built - clicked, time.perf_counter() - built)
    elif action in ("pause", "resume", "step", "stop") and runner is not None:
        before = len(runner.rows())
        getattr(runner, action)()
        if action == "step":  # one more step, then paused again
            _wait_for(runner, lambda r: len(r.rows()) > before and _phase(r) != "running")
        else:
            _wait_for(runner, _ACKNOWLEDGED[action])
    phase = _phase(runner)  # one view of the runner for the buttons and the poller
    if runner is not None and phase == "done":
        _unfreeze_after_run()
    with buttons:
        _buttons_ui(page, phase, make_runner is not None)
    if runner is None:
        st.info("Choose the settings in the sidebar and press **Run**: the path is drawn as it grows.")
        if placeholder is not None:
            placeholder()
        return None
    _live_view(runner, phase, draw, total_steps, draw_pictures)
    return runner


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
    every = {"running": POLL_RUNNING, "paused": POLL_PAUSED}.get(seen)

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
    @st.fragment(run_every=POLL_RUNNING * PICTURES_EVERY if seen == "running" else None)
    def pictures() -> None:
        started = time.perf_counter()
        draw_pictures(runner)
        _log.debug("pictures at step %d in %.3f s", runner.path.step, time.perf_counter() - started)

    pictures()


def keep_alive() -> None:
    """While this session has a live run, touch it every few seconds from any page.

    A run stops itself ``ABANDON_AFTER`` seconds after the last touch, so closing the
    tab ends it, while moving to another page of the app does not.
    """
    runners = [v for v in st.session_state.values() if isinstance(v, PathRunner) and v.alive]
    if not runners:
        return

    @st.fragment(run_every=KEEP_ALIVE_EVERY)
    def touch() -> None:
        for runner in runners:
            runner.touch()

    touch()
