"""One call per application, for notebooks, scripts, the CLI and the pages (one code path).

Each takes a user's ``nn.Module`` as it is now (its weights are the start w0) and
their data, walks the path, writes the run folder the CLI writes, and returns a
:class:`Run`: the table as a DataFrame, the summary, the figures.

Each is two steps, both public: ``prepare_<application>`` checks every setting (the
config, the solver, the snapshot budget, the second network's shapes), says the
big-network warning, and returns the :class:`~geoviz.record.runner.PathRunner`, not yet
started; :func:`walk` runs it to its end in the calling thread. The CLI and the
sweeps' trials call these same functions; the live pages call ``prepare_<application>``
and drive the runner in a background thread (Pause, Step, Stop).

    import geoviz
    run = geoviz.sparsify(model, train=(x, y), test=(x_test, y_test), sparsity=0.9)
    run.table.tail()                 # one row per step
    run.summary["accuracy"]          # the sparse network's test accuracy
    run.figures()["accuracy"].show()

Data are tensors (moved to the device whole) or a map-style Dataset or DataLoader,
streamed: only the metric batch, a minibatch or an evaluation chunk is on the
device at once, and the path draws the same rows as from tensors
(:mod:`geoviz.setups.stream` says what is still kept whole: labels, continual's
memory).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path as FsPath

import pandas as pd
import torch
from torch import nn

from geoviz.applications.cost import Cost, runner_cost, size_warning
from geoviz.core.engine import SolverConfig
from geoviz.errors import ConfigError
from geoviz.setups.problem import Problem, SetupConfig
from geoviz.record.sketch import DEFAULT_BUDGET_MB, check_budget_mb
from geoviz.record.runner import PathRunner
from geoviz.record.runs import RunRecord, read_run
from geoviz.setups.own import labelled, module_weights, problem_from_module, task_from

__all__ = ["Run", "sparsify", "continual", "connect", "prepare_sparsify", "prepare_continual", "prepare_connect", "walk"]


@dataclass
class Run:
    """A finished (or stopped) path and its run record, as the CLI writes it.

    Attributes:
        application: ``sparsify``, ``continual`` or ``connect``.
        state: ``finished``, ``stopped``, ``diverged``, ``failed`` or ``interrupted``.
        message: why it ended.
        record: the run folder read back (config, status, table, summary).
        runner: the :class:`~geoviz.record.runner.PathRunner` (its ``task``, ``path``, trajectory).
        cost: the estimate made on the first steps (None if it ended before).
        backend: the G v backend asked for (``record.config`` has the solver).
    """

    application: str
    state: str
    message: str
    record: RunRecord | None
    runner: object
    cost: Cost | None = None
    backend: str = ""
    _figures: dict = field(default_factory=dict, repr=False)

    @property
    def table(self) -> pd.DataFrame:
        """One row per step: lengths, CG figures, and the evaluated figures every few steps."""
        if self.record is not None:
            return self.record.table
        return pd.DataFrame(self.runner.rows())

    @property
    def summary(self) -> dict:
        """Final figures and baselines (empty when the path did not finish)."""
        return self.record.summary if self.record is not None else dict(self.runner.summary)

    @property
    def config(self) -> dict:
        return self.record.config if self.record is not None else {}

    @property
    def folder(self) -> FsPath | None:
        return self.record.path if self.record is not None else None

    @property
    def ok(self) -> bool:
        return self.state == "finished"

    def figures(self) -> dict:
        """The application's plotly figures by name (made once, then kept)."""
        if not self._figures:
            self._figures = _figures(self.application, self.table, self.summary, self.record)
        return self._figures


def _figures(application: str, table: pd.DataFrame, summary: dict, record: RunRecord | None) -> dict:
    from geoviz.figures import plots

    if table.empty:
        return {}
    if application == "sparsify":
        target = record.config.get("sparsify", {}).get("sparsity") if record is not None else None
        figures = {
            "accuracy": plots.accuracy_figure(table, summary.get("reference"), summary.get("baselines")),
            "loss": plots.loss_figure(table),
            "sparsity": plots.sparsity_figure(table, target),
        }
        if summary.get("layer_sparsity"):
            figures["layers"] = plots.layer_sparsity_figure(summary["layer_sparsity"], target)
        return figures
    if application == "continual":
        figures = {
            "accuracy": plots.task_accuracy_figure(table, start=summary.get("start")),
            "loss": plots.task_loss_figure(table),
        }
        if summary.get("baselines"):
            figures["comparison"] = plots.continual_bars_figure(summary)
        return figures
    from geoviz.figures import plots_connect

    return {"profiles": plots_connect.profiles_figure(summary["profiles"])} if summary.get("profiles") else {}


# -- progress -------------------------------------------------------------------------
class _Quiet:
    def __call__(self, row: dict) -> None:
        pass

    def close(self) -> None:
        pass


class _Bar:
    """tqdm.auto's bar (a widget in a notebook, text elsewhere), when tqdm is installed."""

    def __init__(self, total: int, label: str):
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total, desc=label, unit="step", leave=True)
        self._step = 0

    def __call__(self, row: dict) -> None:
        figures = {k: f"{row[k]:.3f}" for k in ("test_accuracy", "task1_accuracy", "task2_accuracy", "distance_to_b")
                   if isinstance(row.get(k), float)}
        if figures:
            self._bar.set_postfix(figures, refresh=False)
        self._bar.update(row["step"] - self._step)
        self._step = row["step"]

    def estimate(self, cost: Cost) -> None:
        self.warn(cost.sentence())

    def warn(self, text: str) -> None:
        self._bar.write(text, file=sys.stderr)  # beside the bar (tqdm writes on stdout by default)

    def close(self) -> None:
        self._bar.close()


def _progress(progress, total: int, label: str):
    """True: a tqdm bar if tqdm is installed (else none); False/None: none; else the caller's."""
    if progress is True:
        try:
            return _Bar(total, label)
        except ImportError:
            return _Quiet()
    if not progress:
        return _Quiet()
    return progress


def _warner(progress) -> Callable[[str], None]:
    """Where a warning before the path starts goes: the progress object's ``warn``, else a Python warning."""
    if hasattr(progress, "warn"):
        return progress.warn
    return lambda text: warnings.warn(text, stacklevel=4)


def walk(runner, application: str | None = None, budget: int | None = None, progress=True) -> Run:
    """Run a runner to its end in this thread, with a progress bar and a cost estimate.

    Args:
        runner: a :class:`~geoviz.record.runner.PathRunner` from ``prepare_<application>``.
        application: its name (default: its run record's).
        budget: its step budget, the bar's length (default: its path's).
        progress: ``True`` (tqdm.auto if installed), ``False``, or an object called
            with each step's row; its ``estimate(cost)`` and ``close()`` are called
            when it has them.
    """
    application = application or (runner.writer.application if runner.writer is not None else "path")
    budget = budget if budget is not None else runner.path.max_steps
    bar = _progress(progress, budget, application)
    rows: list[dict] = []
    cost: Cost | None = None

    def on_row(row: dict) -> None:
        nonlocal cost
        if cost is None:
            rows.append(row)
            cost = runner_cost(runner, rows)
            if cost is not None:
                runner.cost = cost
                if hasattr(bar, "estimate"):
                    bar.estimate(replace(cost, warning=None))
        bar(row)

    try:
        state = runner.run(on_row)
    finally:
        if hasattr(bar, "close"):
            bar.close()
    record = read_run(runner.writer.dir) if runner.writer is not None else None
    return Run(application, state, runner.message, record, runner, cost, runner.path.config.backend)


# -- the three applications ------------------------------------------------------------
def _solver(solver: SolverConfig | None, default: SolverConfig | None = None) -> SolverConfig:
    solver = solver if solver is not None else (default or SolverConfig())
    if not isinstance(solver, SolverConfig):
        raise ConfigError(f"solver must be a geoviz.SolverConfig, got {type(solver).__name__}.")
    solver.validate()
    return solver


def _problem(model, train, test, seed, device, setup, train_labels) -> Problem:
    if isinstance(model, Problem):  # already prepared (the CLI's and the pages' registry networks)
        return model
    return problem_from_module(model, train, test, seed=seed, device=device, setup=setup, train_labels=train_labels)


def _warn_if_big(problem: Problem, warn: Callable[[str], None] | None) -> list[str]:
    """Before the path's set-up work (evaluations, BatchNorm statistics): a big network on a CPU is
    said, through ``warn`` (default: a Python warning); the sentences said."""
    warning = size_warning(problem.layout.size, problem.device)
    if not warning:
        return []
    (warn or _warner(None))(warning)
    return [warning]


def _said(runner, warnings_said: list[str]):
    """The runner, holding the warnings said before it was built (a page shows them)."""
    runner.warnings = list(warnings_said)
    return runner


def prepare_sparsify(
    model: nn.Module,
    train,
    test,
    sparsity: float = 0.9,
    solver: SolverConfig | None = None,
    *,
    seed: int = 0,
    device: str = "auto",
    baselines: bool = True,
    out: str | None = None,
    setup: SetupConfig | None = None,
    snapshot_mb: float = DEFAULT_BUDGET_MB,
    abandon_after: float | None = None,
    warn: Callable[[str], None] | None = None,
    **options,
) -> PathRunner:
    """Everything :func:`sparsify` does before the walk: its runner, not started.

    The arguments are :func:`sparsify`'s, less ``progress``, plus:

    Args:
        model: as for :func:`sparsify`, or a prepared :class:`~geoviz.setups.problem.Problem`
            (a registry network, as the CLI and the pages load it; ``train``, ``test``,
            ``seed`` and ``device`` are then unused).
        abandon_after: seconds without a ``runner.touch()`` after which a background run
            stops itself (the pages: a closed tab); None never.
        warn: called with each warning said before the path starts (default: a Python
            warning); the runner keeps them in ``runner.warnings``.

    Returns:
        The :class:`~geoviz.record.runner.PathRunner`: ``walk(runner)`` (this thread) or
        ``runner.start()`` (a background thread, with ``pause``/``step``/``stop``).
    """
    from geoviz.applications.sparsify import SparsifyConfig, sparsify_runner

    config = SparsifyConfig(sparsity=sparsity, **options)
    config.validate()
    check_budget_mb(snapshot_mb)
    solver = _solver(solver)
    problem = _problem(model, train, test, seed, device, setup, False)
    said = _warn_if_big(problem, warn)
    baselines = baselines and labelled(problem.y_train)
    runner = sparsify_runner(problem, config, solver, out, abandon_after=abandon_after, baselines=baselines,
                             snapshot_budget_mb=snapshot_mb)
    return _said(runner, said)


def sparsify(
    model: nn.Module,
    train,
    test,
    sparsity: float = 0.9,
    solver: SolverConfig | None = None,
    *,
    seed: int = 0,
    device: str = "auto",
    baselines: bool = True,
    out: str | None = None,
    progress=True,
    setup: SetupConfig | None = None,
    snapshot_mb: float = DEFAULT_BUDGET_MB,
    **options,
) -> Run:
    """Walk from ``model``'s weights to a network with ``sparsity`` of its Linear/Conv weights at zero.

    :func:`prepare_sparsify`, then :func:`walk`.

    Args:
        model: any ``nn.Module`` mapping inputs to logits; its current weights are the start.
        train: training inputs, labelled or not (the metric's pool; the prune + fine-tune
            baseline needs labels and is skipped without them): a tensor,
            ``(inputs, labels)`` (moved to the device whole), or a map-style Dataset or
            a DataLoader over one (streamed: only the batch or evaluation chunk in
            use is on the device; labels read once, see :mod:`geoviz.setups.stream`).
        test: labelled test data, in the same forms.
        sparsity: fraction of prunable weights to remove, in (0, 1).
        solver: the step's settings (:class:`~geoviz.SolverConfig`).
        seed: the path's seed (metric batches, the baseline's minibatches).
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        baselines: also run prune + fine-tune with as many gradient evaluations.
        out: folder for run folders (default ``./runs`` or ``$GEOVIZ_RUNS``).
        progress: ``True`` for a progress bar (tqdm.auto when installed), ``False`` for none.
        setup: what the record names as dataset and model (the CLI passes its own).
        snapshot_mb: the record's budget for weight snapshots in MB (the live trajectory gets
            half; recorded in the run's config); when fewer than 32 full snapshots fit, each
            is kept as a fixed random projection (:mod:`geoviz.record.sketch`), so the
            trajectory's PCA still gets every kept step.
        **options: further :class:`~geoviz.applications.sparsify.SparsifyConfig` fields
            (``steps``, ``tolerance``, ``eval_every``, ...).

    Returns:
        The :class:`Run`; ``run.summary`` holds ``dense_accuracy``, ``accuracy``,
        ``sparsity`` and ``baselines``.
    """
    runner = prepare_sparsify(model, train, test, sparsity, solver, seed=seed, device=device, baselines=baselines, out=out,
                              setup=setup, snapshot_mb=snapshot_mb, warn=_warner(progress), **options)
    return walk(runner, "sparsify", runner.path.max_steps, progress)


def prepare_continual(
    model: nn.Module,
    task1,
    task2,
    memory: int = 100,
    solver: SolverConfig | None = None,
    *,
    seed: int = 0,
    device: str = "auto",
    baselines: bool = True,
    out: str | None = None,
    setup: SetupConfig | None = None,
    snapshot_mb: float = DEFAULT_BUDGET_MB,
    sequence_name: str = "own tasks",
    abandon_after: float | None = None,
    warn: Callable[[str], None] | None = None,
    **options,
) -> PathRunner:
    """Everything :func:`continual` does before the walk: its runner, not started.

    The arguments are :func:`continual`'s, less ``progress``, plus ``abandon_after`` and
    ``warn`` as for :func:`prepare_sparsify`; ``model`` may be a prepared
    :class:`~geoviz.setups.problem.Problem` (with :class:`~geoviz.setups.tasks.Task` s as the tasks).
    """
    from geoviz.applications.continual import BASELINES, DEFAULT_SOLVER, ContinualConfig, continual_runner
    from geoviz.setups.tasks import Task, TaskSequence

    config = ContinualConfig(memory=memory, **options)
    config.validate()
    check_budget_mb(snapshot_mb)
    solver = _solver(solver, DEFAULT_SOLVER)
    problem = model  # already prepared (the CLI's, the pages'), or the user's module:
    if not isinstance(model, Problem):
        if isinstance(task1, Task):
            train1, test1 = (task1.x_train, task1.y_train), (task1.x_test, task1.y_test)
        else:
            train1, test1 = _pair(task1, "task1")
        problem = problem_from_module(model, train1, test1, seed=seed, device=device, setup=setup, train_labels=False)
    said = _warn_if_big(problem, warn)
    tasks = []
    for name, task in (("task1", task1), ("task2", task2)):
        if not isinstance(task, Task):
            train, test = _pair(task, name)
            task = task_from(name, train, test, problem.data.num_classes, problem.device, problem.w0.dtype,
                             labels=name == "task2")
        tasks.append(task)
    scenario = "own" if setup is None else options.get("scenario", config.scenario)
    sequence = TaskSequence(sequence_name, problem.data.name, scenario, config.split, problem.setup.seed, tuple(tasks))
    chosen = BASELINES if baselines else ()
    if not labelled(tasks[0].y_train):
        chosen = tuple(b for b in chosen if b != "replay")
    runner = continual_runner(problem, sequence, config, solver, out, abandon_after=abandon_after, baselines=chosen,
                              snapshot_budget_mb=snapshot_mb)
    return _said(runner, said)


def continual(
    model: nn.Module,
    task1,
    task2,
    memory: int = 100,
    solver: SolverConfig | None = None,
    *,
    seed: int = 0,
    device: str = "auto",
    baselines: bool = True,
    out: str | None = None,
    progress=True,
    setup: SetupConfig | None = None,
    snapshot_mb: float = DEFAULT_BUDGET_MB,
    sequence_name: str = "own tasks",
    **options,
) -> Run:
    """Learn task 2 along a path that keeps ``model``'s function on a memory of task-1 inputs.

    :func:`prepare_continual`, then :func:`walk`.

    Args:
        model: any ``nn.Module``, trained on task 1 (its current weights are the start).
        task1: ``(train, test)`` or ``{"train": ..., "test": ...}``, each data as for
            :func:`sparsify` (a Dataset or DataLoader is streamed; the memory's
            ``memory`` inputs are fetched once and kept); train may be inputs
            only (the memory is inputs; the replay baseline needs labels and is
            skipped without them); test needs labels. Or a :class:`~geoviz.setups.tasks.Task`.
        task2: the same for the task to learn (its train data need labels).
        memory: task-1 training inputs kept: the metric batch of every step.
        solver: the step's settings (default: ``geoviz.applications.continual.DEFAULT_SOLVER``).
        seed, device, out, progress, setup, snapshot_mb: as for :func:`sparsify`.
        baselines: also run fine-tune, EWC and replay with as many gradient evaluations.
        sequence_name: how the record names the two tasks.
        **options: further :class:`~geoviz.applications.continual.ContinualConfig` fields
            (``steps``, ``eval_every``, ``ewc_lambda``, ...).

    Returns:
        The :class:`Run`; ``run.summary`` holds the start, geodesic and baseline
        accuracies per task.
    """
    runner = prepare_continual(model, task1, task2, memory, solver, seed=seed, device=device, baselines=baselines, out=out,
                               setup=setup, snapshot_mb=snapshot_mb, sequence_name=sequence_name, warn=_warner(progress),
                               **options)
    return walk(runner, "continual", runner.path.max_steps, progress)


def _pair(task, name: str):
    if isinstance(task, dict):
        if set(task) != {"train", "test"}:
            raise ConfigError(f"{name} must be {{'train': ..., 'test': ...}}, got keys {sorted(task)}.")
        return task["train"], task["test"]
    if isinstance(task, (tuple, list)) and len(task) == 2 and not isinstance(task[0], torch.Tensor):
        return task[0], task[1]
    raise ConfigError(f"{name} must be (train, test) or {{'train': ..., 'test': ...}}, each data as for sparsify.")


def prepare_connect(
    model_a: nn.Module,
    model_b: nn.Module | None,
    train,
    test,
    solver: SolverConfig | None = None,
    *,
    seed: int = 0,
    device: str = "auto",
    baselines: bool = True,
    out: str | None = None,
    setup: SetupConfig | None = None,
    snapshot_mb: float = DEFAULT_BUDGET_MB,
    abandon_after: float | None = None,
    warn: Callable[[str], None] | None = None,
    **options,
) -> PathRunner:
    """Everything :func:`connect` does before the walk: its runner, not started.

    The arguments are :func:`connect`'s, less ``progress``, plus ``abandon_after`` and
    ``warn`` as for :func:`prepare_sparsify`; ``model_a`` may be a prepared
    :class:`~geoviz.setups.problem.Problem`, and then ``model_b`` None trains w_B from ``seed_b``.
    """
    from geoviz.applications.connect import SOLVER_DEFAULTS, ConnectConfig, connect_runner

    config = ConnectConfig(**options)
    config.validate()
    check_budget_mb(snapshot_mb)
    if not baselines and config.grid and config.third == "bezier":
        raise ConfigError("Without baselines no Bezier control point is trained to span the landscape's plane; use third='midpoint'.")
    solver = _solver(solver, SolverConfig(**SOLVER_DEFAULTS))
    if model_b is None and not isinstance(model_a, Problem):
        raise ConfigError("connect needs the second network: pass model_b.")
    problem = _problem(model_a, train, test, seed, device, setup, True)
    said = _warn_if_big(problem, warn)
    w_b = None  # a prepared problem trains w_B from config.seed_b
    if model_b is not None:
        layout_b, w_b, _ = module_weights(model_b)
        if layout_b.names != problem.layout.names or layout_b.shapes != problem.layout.shapes:
            raise ConfigError(
                "model_b must have model_a's parameters (names and shapes); "
                f"they differ ({layout_b.size} weights against {problem.layout.size})."
            )
        w_b = w_b.to(problem.device)
    runner = connect_runner(problem, config, solver, out, abandon_after=abandon_after, w_b=w_b, baselines=baselines,
                            snapshot_budget_mb=snapshot_mb)
    return _said(runner, said)


def connect(
    model_a: nn.Module,
    model_b: nn.Module | None,
    train,
    test,
    solver: SolverConfig | None = None,
    *,
    seed: int = 0,
    device: str = "auto",
    baselines: bool = True,
    out: str | None = None,
    progress=True,
    setup: SetupConfig | None = None,
    snapshot_mb: float = DEFAULT_BUDGET_MB,
    **options,
) -> Run:
    """The geodesic from ``model_a``'s weights to ``model_b``'s, against the line and a trained Bezier curve.

    :func:`prepare_connect`, then :func:`walk`.

    Args:
        model_a, model_b: two networks of one architecture (same parameter names and shapes).
        train: labelled training data (the metric's pool; losses along the paths), in
            the forms of :func:`sparsify` (a Dataset or DataLoader is streamed).
        test: labelled test data.
        solver: the step's settings (default: ``SOLVER_DEFAULTS`` of geoviz.applications.connect, eps 0.2,
            damping 3e-4, chosen from bench/ablation.py on digits and Fashion-MNIST).
        seed, device, out, progress, setup, snapshot_mb: as for :func:`sparsify`.
        baselines: also train the Bezier curve (else its control point stays at the
            midpoint: the line).
        **options: further :class:`~geoviz.applications.connect.ConnectConfig` fields
            (``steps``, ``align``, ``tolerance``, ``eval_every``, ...; ``grid`` is the
            CLI's, see :func:`geoviz.applications.connect.run_landscape`).

    Returns:
        The :class:`Run`; ``run.summary`` holds the barrier, minimum accuracy and
        lengths of the geodesic, the line and the Bezier curve.
    """
    runner = prepare_connect(model_a, model_b, train, test, solver, seed=seed, device=device, baselines=baselines, out=out,
                             setup=setup, snapshot_mb=snapshot_mb, warn=_warner(progress), **options)
    return walk(runner, "connect", runner.path.max_steps, progress)
