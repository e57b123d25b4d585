"""Sweeps: one application, its fixed settings, a search space and seeds, run on Ray Tune.

A sweep (``geoviz.record.sweep_spec.SweepSpec``) is a list of trials; each trial walks
one path with the CLI's own runner factory (``geoviz.cli.application_runner``) in a
Ray worker and so writes an ordinary run folder, which /runs replays. It reports its
figures along the path to Tune (so ASHA can stop it early), then its final ones.

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

import contextlib
import json
import os
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from geoviz.errors import ConfigError
from geoviz.record.sweep_record import SweepBook, SweepRecord, UNFINISHED, list_sweeps, read_sweep, summarize, sweeps_dir
from geoviz.record.sweep_spec import (  # noqa: F401 (the public names of sweeps, in one place)
    APPLICATIONS,
    BASELINE_FIGURES,
    FIGURES,
    LIVE,
    RUNNING_MIN,
    SweepSpec,
    _argv,
    _drawn_settings,
    final_figures,
    parse_trial,
    settings_of,
    typed_settings,
)
from geoviz.record.runs import _atomic_write_text, default_runs_dir

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



# a finished trial's own time beside its wall time: its set-up (imports in a new worker,
# data, start network) and the time its reports waited on Tune
TIMES = ("setup_seconds", "report_seconds")


# -- one trial, in a Ray worker ----------------------------------------------------------
def _trial(config: dict, plan: dict) -> None:
    """Walk one path with the CLI's runner; report live figures to Tune, then the final ones."""
    t0 = time.time()  # a new worker's imports are the trial's set-up too
    import torch
    from ray import tune

    from geoviz.cli import application_configs, application_runner
    from geoviz.core.engine import flush_denormals

    spec = plan["spec"]
    application = spec["application"]
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

    running: dict[str, float] = {}
    setup_seconds, reporting = time.time() - t0, [0.0]

    def report(values: dict) -> None:  # timed: a function trainable's report waits for the driver
        r0 = time.time()
        tune.report(values)
        reporting[0] += time.time() - r0

    def progress(row: dict) -> None:
        figures = {name: row[col] for name, col in live.items() if col in row and row[col] == row[col]}
        for name in RUNNING_MIN & figures.keys():
            figures[name] = running[name] = min(figures[name], running.get(name, figures[name]))
        if figures:
            report({**head, "step": row["step"], **figures})

    state = runner.run(progress)
    figures = {}
    if state == "finished" and runner.summary:  # (connect's summary has no "baselines" key)
        figures = final_figures(application, runner.summary)
    if state == "finished" and not figures:
        state = "failed"  # the path ended but its summary (the baselines) failed; the message says why
    tune.report({
        **head, **figures, "final": True, "status": state, "message": "" if state == "finished" else runner.message, "step": runner.path.step, "steps_taken": runner.path.step,
        "gradient_evaluations": runner.path.gradient_evaluations, "wall_seconds": time.time() - t0,
        "setup_seconds": setup_seconds, "report_seconds": reporting[0],
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
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing leaves the machine (and no collector thread)
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
    if not isinstance(run_dir, str) or not run_dir:  # a trial that never started has none
        return
    status_file = Path(run_dir) / "status.json"
    if status_file.exists():
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
                    {k: result[k] for k in ("status", "message", "steps_taken", "gradient_evaluations", "wall_seconds", *TIMES) if k in result},
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
            if _STOPPING["now"]:  # Stop on the page, Ctrl-C or SIGTERM (run folders: after Ray ends)
                self._changed(index, status="stopped", message="the sweep was stopped before this trial finished")
            elif spec["scheduler"] == "asha":
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


# set by SIGTERM/SIGINT while a sweep runs in this process (a plain dict: Tune pickles its
# stopper and callbacks with what they refer to, and an Event's lock cannot be pickled)
_STOPPING = {"now": False}


def _stopper():
    """A Tune stopper that ends every trial once the sweep is told to stop."""
    from ray.tune import Stopper

    class Stop(Stopper):
        def __call__(self, trial_id, result):
            return _STOPPING["now"]

        def stop_all(self):
            return _STOPPING["now"]

    return Stop()


@contextlib.contextmanager
def _stop_on_signals():
    """SIGTERM and SIGINT stop the sweep while Tune runs (in the main thread only): Ray's
    own SIGTERM handler aborts the driver, and Tune's SIGINT one ends the trials unnamed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    previous = {sig: signal.signal(sig, lambda *_: _STOPPING.update(now=True)) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if before is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = before


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
        # the sweep keeps its own table: Tune's JSON/CSV/TensorBoard copies of every report are
        # driver work on the cores the trials use
        os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
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
        _STOPPING["now"] = False
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(_trial, plan=plan), resources),
            param_space=space,
            tune_config=tune.TuneConfig(metric=plan["spec"]["objective"], mode=spec.mode, search_alg=search,
                                        scheduler=scheduler, num_samples=samples, max_concurrent_trials=workers,
                                        reuse_actors=True),  # a worker imports torch once, not per trial
            run_config=tune.RunConfig(name="tune", storage_path=str(folder), verbose=0,
                                      callbacks=[_recorder(book, plan, progress)], stop=_stopper(),
                                      failure_config=tune.FailureConfig(max_failures=0)),
        )
        try:
            with _stop_on_signals():
                tuner.fit()
        except BaseException:
            book.close("interrupted", "the sweep was interrupted")
            raise
        stopped = _STOPPING["now"]
        if stopped:  # a deliberate stop: Tune ended the running trials, none starts
            book.close("stopped", "the sweep was stopped", unfinished="stopped")
        else:
            book.close("finished")
    if stopped:  # Ray is down, its workers with it: their run folders say why they ended
        for row in book.rows.values():
            if row["status"] == "stopped":
                _mark_run_stopped(row.get("run_dir"), "the sweep was stopped before this trial finished")
        raise KeyboardInterrupt
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
        if self.alive or self.proc.returncode in (0, 1, 130, -15):
            return ""
        self._log.seek(0)
        lines = self._log.read().decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else f"the sweep ended with status {self.proc.returncode}"

    def stop(self) -> None:
        if self.alive:
            self.proc.terminate()
            self.proc.wait(30)
