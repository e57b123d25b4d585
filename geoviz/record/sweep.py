"""Sweeps: one application, its fixed settings, a search space and seeds, run on Ray Tune.

A sweep is a list of trials; each trial walks one path with the CLI's own runner
factory (``geoviz.cli.application_runner``) and so writes an ordinary run folder,
which /runs replays. Settings are the CLI's flags, named without the dashes
(``damping``, ``cg-iterations``), and are checked by the CLI's own parser and
configs before any trial starts.

A sweep folder (``<runs>/sweeps/<name>/``) holds

    spec.json         the whole specification and every planned trial
    status.json       running / finished / interrupted, with the driver's pid and a
                      heartbeat; written atomically
    results.parquet   one row per trial (settings, seed, status, message, final
                      figures, steps taken, gradient evaluations, wall time, run
                      folder), rewritten atomically whenever a trial changes
    tune/             Ray Tune's own experiment folder

A killed sweep keeps every finished row; rows still pending or running read back as
``interrupted`` once the driver's process is gone.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import math
import os
import secrets
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from geoviz.errors import ConfigError
from geoviz.record.sweep_record import SweepBook, SweepRecord, UNFINISHED, list_sweeps, read_sweep, summarize, sweeps_dir
from geoviz.runs import _atomic_write_text, default_runs_dir

__all__ = [
    "APPLICATIONS",
    "SweepSpec",
    "SweepRecord",
    "final_figures",
    "run_sweep",
    "read_sweep",
    "list_sweeps",
    "summarize",
    "check_address",
    "spec_argv",
    "SweepProcess",
]

APPLICATIONS = ("sparsify", "continual", "connect")
SEARCHES = ("grid", "random", "optuna")
SCHEDULERS = ("none", "asha")
# the objective a sweep ranks by unless told: (figure, maximize)
DEFAULT_OBJECTIVE = {"sparsify": "accuracy", "continual": "average", "connect": "barrier"}
# final figures that have a counterpart along the path (figure -> step-table column):
# these are reported to Tune at every evaluated step, so ASHA can judge a trial early
LIVE = {
    "sparsify": {"accuracy": "test_accuracy", "reached_sparsity": "sparsity"},
    "continual": {"task1": "task1_accuracy", "task2": "task2_accuracy", "average": "average_accuracy"},
    "connect": {},
}
# what a summary shows beside the objective: the baselines, measured at the same budget
BASELINE_FIGURES = {
    "sparsify": ("finetune", "one_shot", "reached_sparsity"),
    "continual": ("replay_average", "ewc_average", "finetune_average"),
    "connect": ("line_barrier", "bezier_barrier", "min_accuracy"),
}
LOWER_IS_BETTER = {"barrier", "line_barrier", "bezier_barrier", "length", "functional_length"}
# flags that are not settings of a path
_NOT_SETTINGS = {"out", "json", "quiet", "seed", "help", "command"}


def final_figures(application: str, summary: dict) -> dict[str, float]:
    """The figures a sweep tabulates, flat, from a run's ``summary.json``."""
    if application == "sparsify":
        return {
            "accuracy": summary["accuracy"],
            "reached_sparsity": summary["sparsity"],
            "dense_accuracy": summary["dense_accuracy"],
            "one_shot": summary["baselines"]["one_shot"],
            "finetune": summary["baselines"]["finetune"],
        }
    if application == "continual":
        figures = {k: summary["geodesic"][k] for k in ("task1", "task2", "average")}
        for name, result in summary["baselines"].items():
            figures.update({f"{name}_{k}": result[k] for k in ("task1", "task2", "average")})
        return figures
    figures = {k: summary["geodesic"][k] for k in ("barrier", "min_accuracy", "length", "functional_length")}
    for name in ("line", "bezier"):
        figures.update({f"{name}_{k}": summary[name][k] for k in ("barrier", "min_accuracy")})
    return figures


FIGURES = {
    "sparsify": ("accuracy", "reached_sparsity", "dense_accuracy", "one_shot", "finetune"),
    "continual": tuple(f"{p}{k}" for p in ("", "finetune_", "ewc_", "replay_") for k in ("task1", "task2", "average")),
    "connect": ("barrier", "min_accuracy", "length", "functional_length", "line_barrier", "line_min_accuracy",
                "bezier_barrier", "bezier_min_accuracy"),
}


# -- settings: the CLI's flags -----------------------------------------------------
def _application_parser(application: str) -> argparse.ArgumentParser:
    from geoviz.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[application]


@functools.lru_cache(maxsize=None)
def settings_of(application: str) -> dict[str, argparse.Action]:
    """{setting name (the flag without dashes): its argparse action} of an application."""
    actions = {}
    for action in _application_parser(application)._actions:
        if action.dest in _NOT_SETTINGS or not action.option_strings:
            continue
        actions[action.option_strings[0].lstrip("-")] = action
    return actions


def _setting(application: str, name: str) -> tuple[str, argparse.Action]:
    actions = settings_of(application)
    key = name.strip().replace("_", "-")
    if key not in actions:
        raise ConfigError(f"Unknown setting '{name}' for {application}; settings are {', '.join(sorted(actions))}.")
    return key, actions[key]


def _is_flag(action: argparse.Action) -> bool:
    return action.nargs == 0  # store_true: the value is whether the flag is there


def _argv(application: str, settings: dict[str, str], seed: int) -> list[str]:
    argv = []
    for name, value in settings.items():
        if _is_flag(settings_of(application)[name]):
            if str(value).lower() in ("1", "true", "yes"):
                argv.append(f"--{name}")
        else:
            argv += [f"--{name}", str(value)]
    return argv + ["--seed", str(seed)]


def parse_trial(application: str, argv: list[str]) -> argparse.Namespace:
    """The CLI's parsed arguments for one trial; its one-sentence error as a ConfigError."""
    from geoviz.cli import build_parser

    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            return build_parser().parse_args([application, *argv])
    except SystemExit:
        sentence = said.getvalue().strip().removeprefix("error: ").split(" (see ")[0]
        raise ConfigError(f"{sentence[:1].upper()}{sentence[1:]}.") from None


def typed_settings(application: str, settings: dict) -> dict:
    """Settings as the table keeps them: numbers as numbers, flags as booleans, the rest as text."""
    actions, out = settings_of(application), {}
    for name, value in settings.items():
        action = actions[name]
        if _is_flag(action):
            out[name] = str(value).lower() in ("1", "true", "yes")
        elif action.type in (int, float):
            out[name] = action.type(value)
        else:
            out[name] = str(value)
    return out


# -- the specification ---------------------------------------------------------------
@dataclass(frozen=True)
class SweepSpec:
    """What to sweep. Settings are CLI flags without dashes; values as typed on the CLI.

    Args:
        application: sparsify, continual or connect.
        fixed: CLI flags every trial gets, e.g. ``("--steps", "100")``.
        grid: {setting: [values]} (grid search; in random and Optuna search, a
            choice among the values).
        ranges: {setting: (low, high, log)} for random and Optuna search.
        seeds: every setting is repeated over seeds base, base+1, ... (base: --seed).
        search: grid, random or optuna.
        samples: settings drawn by random or Optuna search.
        objective: the final figure ranked by (default: the application's).
        maximize: rank high first (default: the objective's natural direction).
        scheduler: none or asha (stops settings whose live figure trails early).
        grace: ASHA's first rung, in steps (default a tenth of the step budget).
        workers: trials at once (default: the CPUs Ray sees).
        address: a Ray cluster (else $RAY_ADDRESS, else a local Ray started here).
        threads: torch threads per trial.
    """

    application: str
    fixed: tuple[str, ...] = ()
    grid: dict[str, list[str]] = field(default_factory=dict)
    ranges: dict[str, tuple[float, float, bool]] = field(default_factory=dict)
    seeds: int = 1
    search: str = "grid"
    samples: int = 1
    objective: str | None = None
    maximize: bool | None = None
    scheduler: str = "none"
    grace: int | None = None
    workers: int | None = None
    address: str | None = None
    sample_seed: int = 0

    @property
    def objective_figure(self) -> str:
        return self.objective or DEFAULT_OBJECTIVE[self.application]

    @property
    def mode(self) -> str:
        if self.maximize is not None:
            return "max" if self.maximize else "min"
        return "min" if self.objective_figure in LOWER_IS_BETTER else "max"

    @property
    def setting_names(self) -> list[str]:
        return [*self.grid, *self.ranges]

    def plan(self) -> dict:
        """Check everything and list the trials: one sentence (ConfigError) for the first problem."""
        if self.application not in APPLICATIONS:
            raise ConfigError(f"Unknown application '{self.application}'; choose {', '.join(APPLICATIONS)}.")
        if self.search not in SEARCHES:
            raise ConfigError(f"Unknown search '{self.search}'; choose {', '.join(SEARCHES)}.")
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"Unknown scheduler '{self.scheduler}'; choose {', '.join(SCHEDULERS)}.")
        if self.seeds < 1:
            raise ConfigError(f"--seeds must be at least 1, got {self.seeds}.")
        if self.samples < 1:
            raise ConfigError(f"--samples must be at least 1, got {self.samples}.")
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {self.workers}.")
        if self.objective_figure not in FIGURES[self.application]:
            raise ConfigError(f"Unknown objective '{self.objective_figure}' for {self.application}; "
                              f"figures are {', '.join(FIGURES[self.application])}.")
        if self.scheduler == "asha" and self.objective_figure not in LIVE[self.application]:
            live = ", ".join(LIVE[self.application]) or "none"
            raise ConfigError(f"ASHA needs an objective measured along the path; for {self.application} that is: {live}.")
        if self.search == "grid" and self.ranges:
            raise ConfigError("--range needs --search random or optuna; a grid search takes --grid lists.")
        if self.search != "grid" and not self.setting_names:
            raise ConfigError(f"A {self.search} search needs at least one --range or --grid.")
        base = parse_trial(self.application, list(self.fixed))  # fixed flags alone
        for name in ("out", "json", "quiet"):
            if any(f == f"--{name}" or f.startswith(f"--{name}=") for f in self.fixed):
                raise ConfigError(f"--{name} is set by the sweep itself, not per trial.")
        grid = {}
        for name, values in self.grid.items():
            key, action = _setting(self.application, name)
            values = [str(v).strip() for v in values if str(v).strip()]
            if not values:
                raise ConfigError(f"--grid {name} has no values; give them as {name}=V1,V2.")
            grid[key] = values
        ranges = {}
        for name, (low, high, log) in self.ranges.items():
            key, action = _setting(self.application, name)
            if action.type not in (int, float):
                raise ConfigError(f"--range {name}: only numeric settings take a range; give {name} as a --grid list.")
            if not low < high:
                raise ConfigError(f"--range {name}: the low end must be below the high end, got {low}:{high}.")
            if log and low <= 0:
                raise ConfigError(f"--range {name}: a log range needs a positive low end, got {low}.")
            ranges[key] = (low, high, bool(log))
        points = self._points(grid, ranges)
        for point in points if self.search != "optuna" else self._corners(grid, ranges):
            self._check(point)
        seeds = [base.seed + k for k in range(self.seeds)]
        trials = [] if self.search == "optuna" else [
            {"trial": i * self.seeds + k, "point": i, "settings": point, "seed": seed,
             "values": typed_settings(self.application, point)}
            for i, point in enumerate(points) for k, seed in enumerate(seeds)
        ]
        return {
            "spec": {**asdict(self), "fixed": list(self.fixed), "objective": self.objective_figure, "mode": self.mode},
            "grid": grid,
            "ranges": ranges,
            "setting_names": list(grid) + list(ranges),
            "seeds": seeds,
            "steps": base.steps,
            "eval_every": base.eval_every,
            "threads": base.threads,
            "trials": trials,
            "planned": len(trials) or self.samples * self.seeds,
        }

    def _points(self, grid: dict, ranges: dict) -> list[dict[str, str]]:
        if self.search == "grid":
            points = [{}]
            for name, values in grid.items():
                points = [{**p, name: v} for p in points for v in values]
            return points
        if self.search == "optuna":
            return []
        rng = np.random.default_rng(self.sample_seed)
        points = []
        for _ in range(self.samples):
            point = {name: values[rng.integers(len(values))] for name, values in grid.items()}
            for name, (low, high, log) in ranges.items():
                x = math.exp(rng.uniform(math.log(low), math.log(high))) if log else rng.uniform(low, high)
                point[name] = _format(name, x, self.application)
            points.append(point)
        return points

    def _corners(self, grid: dict, ranges: dict) -> list[dict[str, str]]:
        """For Optuna (values drawn later): every grid value and both ends of every range."""
        checks = [{name: v} for name, values in grid.items() for v in values]
        return checks + [{name: _format(name, x, self.application)} for name, r in ranges.items() for x in r[:2]]

    def _check(self, point: dict[str, str]) -> None:
        from geoviz.cli import application_configs

        try:
            application_configs(parse_trial(self.application, [*self.fixed, *_argv(self.application, point, 0)]))
        except ConfigError as err:
            shown = ", ".join(f"{k}={v}" for k, v in point.items())
            raise ConfigError(f"{str(err).rstrip('.')} (in the trial with {shown}).") from None


def _format(name: str, x: float, application: str) -> str:
    return str(int(round(x))) if settings_of(application)[name].type is int else f"{x:.6g}"


def _drawn_settings(plan: dict, config: dict) -> dict[str, str]:
    """The settings Optuna drew for a trial, as the CLI is given them (ranges rounded to 6 digits)."""
    application = plan["spec"]["application"]
    return {name: _format(name, config[name], application) if name in plan["ranges"] else config[name]
            for name in plan["setting_names"]}


# -- one trial, in a Ray worker ----------------------------------------------------------
def _trial(config: dict, plan: dict) -> None:
    """Walk one path with the CLI's runner; report live figures to Tune, then the final ones."""
    import torch
    from ray import tune

    from geoviz.cli import application_configs, application_runner
    from geoviz.engine import flush_denormals

    t0 = time.time()
    spec = plan["spec"]
    application, objective = spec["application"], spec["objective"]
    if "trial" in config:
        trial = plan["trials"][config["trial"]]
        settings, seed = trial["settings"], trial["seed"]
    else:  # Optuna: the searcher drew the settings; the Repeater numbers the seeds
        settings = _drawn_settings(plan, config)
        seed = plan["seeds"][config.get("__trial_index__", 0)]
    flush_denormals()
    live = LIVE[application]
    head = {"settings": settings, "seed": seed, "run_dir": None}
    try:
        args = parse_trial(application, [*spec["fixed"], *_argv(application, settings, seed),
                                         "--out", plan["runs_root"], "--quiet"])
        torch.set_num_threads(args.threads)
        app_config, solver = application_configs(args)
        runner = application_runner(args, app_config, solver)
    except Exception as err:  # a trial that cannot start is a failed row, not a Tune error
        tune.report({**head, "final": True, "status": "failed", "message": f"{type(err).__name__}: {err}" if not isinstance(err, ConfigError) else str(err),
                     "step": 0, "wall_seconds": time.time() - t0})
        return
    run_dir = str(runner.writer.dir)
    head["run_dir"] = run_dir
    _atomic_write_text(runner.writer.dir / "sweep.json", json.dumps(
        {"sweep_dir": plan["sweep_dir"], "settings": settings, "seed": seed}))

    def progress(row: dict) -> None:
        figures = {name: row[col] for name, col in live.items() if col in row and row[col] == row[col]}
        if figures:
            tune.report({**head, "step": row["step"], **figures})

    state = runner.run(progress)
    figures = {}
    if state == "finished" and "baselines" in runner.summary:
        figures = final_figures(application, runner.summary)
    message = runner.message if state == "finished" and not figures else ("" if state == "finished" else runner.message)
    tune.report({
        **head, **figures, "final": True, "status": state if figures or state != "finished" else "failed",
        "message": message, "step": runner.path.step, "steps_taken": runner.path.step,
        "gradient_evaluations": runner.path.gradient_evaluations, "wall_seconds": time.time() - t0,
    })


# -- the driver ---------------------------------------------------------------------------
def check_address(address: str, timeout: float = 3.0) -> None:
    """Raise ConfigError (one sentence) unless a Ray cluster answers at HOST:PORT."""
    if address == "auto":
        return
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--address takes HOST:PORT of a Ray head node (e.g. 127.0.0.1:6379), got '{address}'.")
    try:
        socket.create_connection((host, int(port)), timeout).close()
    except OSError as err:
        raise ConfigError(f"Cannot reach a Ray cluster at {address} ({err.strerror or err}); start one there with "
                          "`ray start --head`, or leave --address out to run on this machine.") from None


@contextlib.contextmanager
def _ray_session(address: str | None, workers: int | None):
    """Ray for one sweep: the one already started in this process, a cluster, or a local one."""
    token = os.environ.get("RAY_AUTH_TOKEN") or Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token")).exists()
    if address and token and "RAY_AUTH_MODE" not in os.environ and "ray" not in sys.modules:
        # Ray 2.60 clusters want a token (`ray start` enables it when ~/.ray/auth_token
        # exists) but a driver joining one sends it only when told so before Ray is imported
        os.environ["RAY_AUTH_MODE"] = "token"
    import ray

    if ray.is_initialized():
        yield int(ray.cluster_resources().get("CPU", 1))
        return
    quiet = {"log_to_driver": False, "logging_level": "ERROR", "include_dashboard": False}
    if address:
        # the nodes import geoviz from where this process does, and share its network cache
        env = {"PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")])}
        env.update({k: os.environ[k] for k in ("GEOVIZ_CACHE",) if k in os.environ})
        try:
            ray.init(address=address, runtime_env={"env_vars": env}, **quiet)
        except (ConnectionError, RuntimeError) as err:
            raise ConfigError(f"Cannot join the Ray cluster at {address}: {str(err).splitlines()[0]}") from None
    else:
        # "local": a new Ray of our own, even when a `ray start` cluster runs on this machine
        ray.init(address="local", num_cpus=workers or os.cpu_count(), object_store_memory=256 * 2**20, **quiet)
    try:
        yield int(ray.cluster_resources().get("CPU", 1))
    finally:
        ray.shutdown()


def _mark_run_stopped(run_dir: str | None, message: str) -> None:
    """A trial the scheduler stopped: its run folder says so (its worker is gone)."""
    status_file = Path(run_dir or "") / "status.json"
    if run_dir and status_file.exists():
        status = json.loads(status_file.read_text())
        if status.get("status") in ("running", "paused"):
            status.update(status="stopped", message=message, updated=time.time())
            _atomic_write_text(status_file, json.dumps(status))


def _recorder(book: SweepBook, plan: dict, progress: Callable[[SweepBook], None] | None):
    """A Tune callback (in the driver) that keeps the sweep's table."""
    from ray.tune import Callback

    spec = plan["spec"]
    objective, figures = spec["objective"], FIGURES[spec["application"]]

    class Recorder(Callback):
        def __init__(self):
            self.rows: dict[str, int] = {}

        def _index(self, trial) -> int:
            if trial.trial_id not in self.rows:
                config = trial.config
                if "trial" in config:
                    self.rows[trial.trial_id] = config["trial"]
                else:  # Optuna
                    settings = typed_settings(spec["application"], _drawn_settings(plan, config))
                    self.rows[trial.trial_id] = book.add(settings, plan["seeds"][config.get("__trial_index__", 0)])
            return self.rows[trial.trial_id]

        def _changed(self, index: int, **values) -> None:
            book.update(index, **values)
            if progress is not None:
                progress(book)

        def on_trial_start(self, iteration, trials, trial, **info):
            self._changed(self._index(trial), status="running")

        def on_trial_result(self, iteration, trials, trial, result, **info):
            values = {"run_dir": result.get("run_dir"), "last_step": result.get("step", 0)}
            if result.get("final"):
                values.update(
                    {k: result[k] for k in ("status", "message", "steps_taken", "gradient_evaluations", "wall_seconds") if k in result},
                    **{f: result[f] for f in figures if f in result},
                )
            elif objective in result:
                values["live_objective"] = result[objective]
            self._changed(self._index(trial), **values)

        def on_trial_complete(self, iteration, trials, trial, **info):
            index = self._index(trial)
            row = book.rows[index]
            if row["status"] not in UNFINISHED:
                return
            if spec["scheduler"] == "asha":
                value = row.get("live_objective", float("nan"))
                message = (f"stopped early by ASHA at step {row['last_step']}: {objective} {value:.4f} "
                           "trailed the other trials there")
                _mark_run_stopped(row["run_dir"], message)
                self._changed(index, status="stopped_early", message=message)
            else:
                self._changed(index, status="interrupted", message="Tune ended the trial before it reported its end")

        def on_trial_error(self, iteration, trials, trial, **info):
            # the trial reports its own failures; this is its worker dying (e.g. Ray's OOM killer)
            lines = []
            with contextlib.suppress(Exception):
                lines = [line.strip() for line in str(trial.get_error() or "").splitlines() if line.strip()]
            reason = next((line for line in lines if not line.startswith("Failure #")), "")
            message = "its Ray worker failed" + (f": {reason[:300]}" if reason else "")
            self._changed(self._index(trial), status="failed", message=message)

        def on_step_end(self, iteration, trials, **info):
            book.heartbeat()

    return Recorder()


def _search_space(plan: dict, seeds: int, seed: int):
    """(param_space, search_alg, num_samples) for Tune."""
    from ray import tune

    if plan["spec"]["search"] != "optuna":
        return {"trial": tune.grid_search([t["trial"] for t in plan["trials"]])}, None, 1
    from ray.tune.search import Repeater
    from ray.tune.search.optuna import OptunaSearch

    space = {name: tune.choice(values) for name, values in plan["grid"].items()}
    application = plan["spec"]["application"]
    for name, (low, high, log) in plan["ranges"].items():
        if settings_of(application)[name].type is int:
            space[name] = (tune.lograndint if log else tune.randint)(int(low), int(high) + 1)
        else:
            space[name] = (tune.loguniform if log else tune.uniform)(low, high)
    # each drawn setting is walked once per seed; Optuna learns from their mean
    search = Repeater(OptunaSearch(seed=seed), repeat=seeds, set_index=True)
    return space, search, plan["planned"]


def run_sweep(
    spec: SweepSpec,
    runs_root: str | os.PathLike | None = None,
    progress: Callable[[SweepBook], None] | None = None,
) -> tuple[SweepRecord, float]:
    """Check the spec, run every trial on Ray Tune, keep the table; (the sweep read back, wall seconds).

    Raises ConfigError (one sentence) before any trial starts when the spec is bad or
    the cluster at ``address`` (or $RAY_ADDRESS) cannot be reached.
    """
    plan = spec.plan()
    address = spec.address or os.environ.get("RAY_ADDRESS") or None
    if address:
        check_address(address)
    runs_root = Path(runs_root if runs_root is not None else default_runs_dir()).resolve()
    folder = sweeps_dir(runs_root) / f"{time.strftime('%Y%m%d-%H%M%S')}-{spec.application}-sweep-{secrets.token_hex(3)}"
    plan.update(runs_root=str(runs_root), sweep_dir=str(folder))
    t0 = time.time()
    with _ray_session(address, spec.workers) as cpus:
        from ray import tune
        from ray.tune.schedulers import ASHAScheduler

        # a trial reports its live figures while it walks, its final ones at the end
        os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no tables on the console
        import ray

        workers = spec.workers or cpus
        resources = {"cpu": 1}
        gpus = ray.cluster_resources().get("GPU", 0)
        if gpus:
            resources["gpu"] = min(1.0, gpus / workers)
        plan["resources"] = resources
        book = SweepBook(folder, plan)
        space, search, samples = _search_space(plan, spec.seeds, spec.sample_seed)
        scheduler = None
        if spec.scheduler == "asha":
            # max_t beyond the budget: ASHA never stops a trial at its last step, before its summary
            scheduler = ASHAScheduler(time_attr="step", max_t=plan["steps"] + 1,
                                      grace_period=spec.grace or max(1, plan["steps"] // 10), reduction_factor=2)
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(_trial, plan=plan), resources),
            param_space=space,
            tune_config=tune.TuneConfig(metric=plan["spec"]["objective"], mode=spec.mode, search_alg=search,
                                        scheduler=scheduler, num_samples=samples, max_concurrent_trials=workers,
                                        reuse_actors=True),  # a worker imports torch once, not per trial
            run_config=tune.RunConfig(name="tune", storage_path=str(folder), verbose=0,
                                      callbacks=[_recorder(book, plan, progress)],
                                      failure_config=tune.FailureConfig(max_failures=0)),
        )
        try:
            tuner.fit()
        except BaseException:
            book.close("interrupted", "the sweep was interrupted")
            raise
        book.close("finished")
    return read_sweep(folder), time.time() - t0


# -- a sweep in a process of its own (the live pages' Sweep panel) -----------------------
def spec_argv(spec: SweepSpec) -> list[str]:
    """The ``python -m geoviz sweep`` arguments of a spec."""
    argv = [spec.application]
    for name, values in spec.grid.items():
        argv += ["--grid", f"{name}={','.join(map(str, values))}"]
    for name, (low, high, log) in spec.ranges.items():
        argv += ["--range", f"{name}={low}:{high}" + (":log" if log else "")]
    argv += ["--seeds", str(spec.seeds), "--search", spec.search, "--samples", str(spec.samples), "--scheduler", spec.scheduler]
    for flag, value in (("--objective", spec.objective), ("--grace", spec.grace), ("--workers", spec.workers), ("--address", spec.address)):
        if value is not None:
            argv += [flag, str(value)]
    if spec.maximize is not None:
        argv.append("--maximize" if spec.maximize else "--minimize")
    return argv + list(spec.fixed)


class SweepProcess:
    """``python -m geoviz sweep`` in a child process, found again through its sweep folder.

    The spec is checked here first (ConfigError, one sentence). ``stop()`` ends the
    driver; Ray's processes end with it, and its unfinished trials read back as
    interrupted.
    """

    def __init__(self, spec: SweepSpec, runs_root: str | os.PathLike | None = None):
        import subprocess
        import tempfile

        spec.plan()
        self.spec = spec
        self.runs_root = Path(runs_root if runs_root is not None else default_runs_dir()).resolve()
        self._log = tempfile.TemporaryFile()
        root = Path(__file__).resolve().parents[2]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
        command = [sys.executable, "-m", "geoviz", "sweep", *spec_argv(spec), "--out", str(self.runs_root), "--quiet"]
        self.proc = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=self._log)
        self._folder: Path | None = None

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    @property
    def folder(self) -> Path | None:
        """The sweep folder this process writes (None until it has made it)."""
        if self._folder is None and sweeps_dir(self.runs_root).exists():
            for sub in sweeps_dir(self.runs_root).iterdir():
                try:
                    if json.loads((sub / "status.json").read_text()).get("pid") == self.proc.pid:
                        self._folder = sub
                        break
                except (OSError, ValueError):
                    continue
        return self._folder

    def record(self) -> SweepRecord | None:
        folder = self.folder
        return read_sweep(folder) if folder is not None else None

    def error(self) -> str:
        """The driver's last stderr line when it ended badly, else ''."""
        if self.alive or self.proc.returncode in (0, 1, -15):
            return ""
        self._log.seek(0)
        lines = self._log.read().decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else f"the sweep ended with status {self.proc.returncode}"

    def stop(self) -> None:
        if self.alive:
            self.proc.terminate()
            self.proc.wait(30)
