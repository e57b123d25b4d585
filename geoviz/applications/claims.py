"""The method's claims, measured over seeds: every method of an application on one table.

One function per application runs, for one start seed, the exact geodesic (through
the application's runner, so its baselines are the ones the CLI and the pages
report, at the path's gradient-evaluation budget), the penalty mode (the path
alone, with as many steps as the geodesic used gradient evaluations: one each,
so the same budget; it stops earlier where it reaches its target), and returns
one row per method with its figures and the data it used. :func:`over_seeds`
repeats it over seeds and :func:`table` condenses the rows to mean ± sd. Used by
``bench/claims.py``, ``bench/ablation.py`` (the ``*_path_row`` functions: one path
alone) and the claim tests.

Seeds: in sparsify the seed trains the dense network and draws the path's metric
batches and the baselines' minibatches; in continual it also draws the memory of
task-1 inputs; in connect the pair is (seed, seed + 1), so seeds 0, 2, 4 give
three disjoint pairs.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import replace

from geoviz.applications.connect import DATA_USED as CONNECT_DATA_USED
from geoviz.applications.connect import SOLVER_DEFAULTS as CONNECT_SOLVER
from geoviz.applications.connect import ConnectConfig, ConnectTask, connect_runner, path_summary
from geoviz.applications.continual import DEFAULT_SOLVER as CONTINUAL_SOLVER
from geoviz.applications.continual import BASELINES, ContinualConfig, ContinualTask, continual_runner, load_continual
from geoviz.core.engine import SolverConfig
from geoviz.setups.problem import SetupConfig, load_problem
from geoviz.applications.sparsify import DATA_USED as SPARSIFY_DATA_USED
from geoviz.applications.sparsify import SparsifyConfig, SparsifyTask, sparsify_runner

__all__ = [
    "SPARSIFY",
    "CONTINUAL",
    "CONNECT",
    "PENALTY",
    "sparsify_rows",
    "continual_rows",
    "connect_rows",
    "sparsify_path_row",
    "continual_path_row",
    "connect_path_row",
    "over_seeds",
    "mean_sd",
    "format_mean_sd",
    "table",
    "markdown",
]

# The applications' defaults, evaluated along the path less often than the pages do
# (evaluation does not change a path; the connect profile is judged every 10 steps)
SPARSIFY = SparsifyConfig(eval_every=50)
CONTINUAL = ContinualConfig(eval_every=50)
CONNECT = ConnectConfig(eval_every=10)

# The penalty mode as a user gets it: the CLI's defaults (Adam 1e-3, lambda ramped
# by its start value every 100 steps).
PENALTY = SolverConfig(mode="penalty")

Rows = dict[str, dict]  # method -> {figure: value, "data_used": str}


def _finish(path) -> None:
    for _ in path:
        pass


def sparsify_rows(
    setup: SetupConfig,
    config: SparsifyConfig = SPARSIFY,
    solver: SolverConfig = SolverConfig(),
    penalty: SolverConfig | None = PENALTY,
) -> Rows:
    """Test accuracy at the target sparsity of every method, for one seed.

    A path that runs out of steps before the masked weights reach zero is judged
    hard-pruned (the accuracy it would have at the target).
    """
    problem = load_problem(setup)
    with tempfile.TemporaryDirectory() as runs:
        runner = sparsify_runner(problem, config, solver, runs)
        runner.run()
    s, task = runner.summary, runner.task
    used = SPARSIFY_DATA_USED
    budget = s["gradient_evaluations"]

    def pruned(w) -> float:
        return problem.evaluate(w * task.path_mask, problem.x_test, problem.y_test)[1]

    rows = {
        "dense": {"accuracy": s["dense_accuracy"], "data_used": "-"},
        "geodesic": {"accuracy": pruned(runner.path.w), "data_used": used["geodesic"],
                     "gradient_evaluations": budget, "reached": runner.path.end_reason != "step budget reached"},
    }
    if penalty is not None:
        rows["penalty"] = sparsify_path_row(problem, replace(config, steps=budget), penalty)
    for name, accuracy in s["baselines"].items():
        rows[name] = {"accuracy": accuracy, "data_used": used[name],
                      "gradient_evaluations": 0 if name == "one_shot" else budget}
    return rows


def continual_rows(
    setup: SetupConfig,
    config: ContinualConfig = CONTINUAL,
    solver: SolverConfig = CONTINUAL_SOLVER,
    penalty: SolverConfig | None = PENALTY,
    baselines: Sequence[str] = BASELINES,
) -> Rows:
    """Task-1, task-2 and average test accuracy of every method, for one seed (and memory draw:
    ``config.memory_seed``, or the setup's path seed)."""
    problem, sequence = load_continual(setup, config)
    with tempfile.TemporaryDirectory() as runs:
        runner = continual_runner(problem, sequence, config, solver, runs, baselines=tuple(baselines))
        runner.run()
    s = runner.summary
    keys = ("task1", "task2", "average")
    rows = {
        "start": {**{k: s["start"][k] for k in keys if k in s["start"]}, "data_used": "-"},
        "geodesic": {**{k: s["geodesic"][k] for k in keys}, "data_used": s["geodesic"]["data_used"],
                     "gradient_evaluations": s["gradient_evaluations"]},
    }
    if penalty is not None:
        rows["penalty"] = continual_path_row(problem, sequence, replace(config, steps=s["gradient_evaluations"]), penalty)
    for name, r in s["baselines"].items():
        rows[name] = {**{k: r[k] for k in keys}, "data_used": r["data_used"],
                      "gradient_evaluations": r["gradient_evaluations"]}
    return rows


def connect_rows(
    setup: SetupConfig,
    config: ConnectConfig = CONNECT,
    solver: SolverConfig = SolverConfig(**CONNECT_SOLVER),
    penalty: SolverConfig | None = PENALTY,
) -> Rows:
    """Barrier (train loss), minimum test accuracy and lengths of every path, for one pair."""
    problem = load_problem(setup)
    with tempfile.TemporaryDirectory() as runs:
        runner = connect_runner(problem, config, solver, runs)
        runner.run()
    s = runner.summary
    keys = ("barrier", "min_accuracy", "length", "functional_length")
    rows = {}
    for name in ("geodesic", "line", "bezier", "bezier_inputs"):
        rows[name] = {**{k: s[name][k] for k in keys}, "data_used": CONNECT_DATA_USED[name],
                      "gradient_evaluations": 0 if name == "line" else s["gradient_evaluations"]}
    rows["geodesic"]["reached"] = s["geodesic"]["reached"]
    if penalty is not None:
        rows["penalty"] = connect_path_row(problem, replace(config, steps=s["gradient_evaluations"]), penalty)
    return rows


# -- one path alone, no baselines (the penalty rows above, and the ablation) ----------------


def sparsify_path_row(problem, config: SparsifyConfig, solver: SolverConfig) -> dict:
    """Accuracy of a sparsification path's end, hard-pruned to the target (as the table judges it)."""
    task = SparsifyTask(problem, config, solver)
    path = task.path()
    _finish(path)
    accuracy = problem.evaluate(path.w * task.path_mask, problem.x_test, problem.y_test)[1]
    return {"accuracy": accuracy, "data_used": SPARSIFY_DATA_USED["geodesic"],
            "gradient_evaluations": path.gradient_evaluations, "reached": path.end_reason != "step budget reached"}


def continual_path_row(problem, sequence, config: ContinualConfig, solver: SolverConfig) -> dict:
    """Task-1, task-2 and average test accuracy at a continual path's end."""
    task = ContinualTask(problem, sequence, config, solver)
    path = task.path()
    _finish(path)
    return {**ContinualTask.scores(task.evaluate(path.w)), "data_used": task.data_used("geodesic"),
            "gradient_evaluations": path.gradient_evaluations}


def connect_path_row(problem, config: ConnectConfig, solver: SolverConfig) -> dict:
    """Barrier, minimum test accuracy and lengths of a path from w_A toward w_B."""
    task = ConnectTask(problem, config, solver)
    path = task.path()
    records = [r.row() for r in path]
    landing = getattr(path.objective, "landing", 0.0)
    summary = path_summary(task.geodesic_profile(records, landing), task.endpoint_losses)
    return {**{k: summary[k] for k in ("barrier", "min_accuracy")},
            "length": path._path_length + landing, "functional_length": path._functional_length,
            "data_used": CONNECT_DATA_USED["geodesic"], "gradient_evaluations": path.gradient_evaluations,
            "reached": path.end_reason == "reached the target network"}


def over_seeds(rows_of: Callable[[SetupConfig], Rows], setup: SetupConfig, seeds: Sequence[int],
               progress: Callable[[int, Rows], None] | None = None) -> list[Rows]:
    """``rows_of`` for each seed (the setup's seed replaced)."""
    out = []
    for seed in seeds:
        rows = rows_of(replace(setup, seed=seed))
        if progress is not None:
            progress(seed, rows)
        out.append(rows)
    return out


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for one value)."""
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return mean, math.sqrt(var)


def format_mean_sd(values: Sequence[float], digits: int = 3) -> str:
    mean, sd = mean_sd(values)
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def table(per_seed: list[Rows], figures: Sequence[str]) -> list[dict]:
    """One row per method: each figure's values over seeds, its mean and sd, and the data used.

    Returns:
        ``[{"method", "data_used", "n", figure: [values], figure + "_mean", figure + "_sd", ...}]``
        in the order the methods first appear.
    """
    methods = list(dict.fromkeys(name for rows in per_seed for name in rows))
    out = []
    for name in methods:
        present = [rows[name] for rows in per_seed if name in rows]
        row = {"method": name, "data_used": present[0].get("data_used", ""), "n": len(present)}
        for figure in figures:
            values = [r[figure] for r in present if figure in r]
            if values:
                row[figure] = values
                row[f"{figure}_mean"], row[f"{figure}_sd"] = mean_sd(values)
        if any("gradient_evaluations" in r for r in present):
            row["gradient_evaluations_mean"] = mean_sd([r.get("gradient_evaluations", 0) for r in present])[0]
        out.append(row)
    return out


def markdown(title: str, rows: list[dict], figures: Sequence[str], digits: int = 3) -> str:
    """A :func:`table` as a markdown table: mean ± sd per figure, the data used, the budget."""
    head = ["method", "data used", *figures, "grad evals"]
    lines = [f"## {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["method"], r["data_used"]]
        cells += [format_mean_sd(r[f], digits) if f in r else "" for f in figures]
        cells.append(f"{r['gradient_evaluations_mean']:.0f}" if "gradient_evaluations_mean" in r else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
