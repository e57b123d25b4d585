"""Lesson: the straight line has a barrier; the geodesic does not.

Two digits MLPs trained from different seeds (w_A, w_B). The straight line between
them and the engine's geodesic (geoviz.applications.connect: L2 = 1/2 |w - w_B|^2
under the output metric on training inputs) are judged the same way, at evenly
spaced points of their length: train loss and test accuracy, the barrier (max train
loss minus the mean of the endpoints'), and the functional length (the same
estimator for both: sqrt(D) summed over segments of about one step). The landscape
is the train loss on a grid over the plane through w_A, w_B and the geodesic's
midpoint, with both paths projected on it.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import torch

from geoviz.applications.connect import SOLVER_DEFAULTS, ConnectConfig, ConnectTask, path_summary
from geoviz.applications.curves import PolylineCurve
from geoviz.core.engine import SolverConfig
from geoviz.lessons import settings_digest, stored
from geoviz.setups.problem import SetupConfig, load_problem

__all__ = ["ConnectResult", "connect_experiment"]


@dataclass(frozen=True)
class ConnectResult:
    """Both paths between two trained networks, measured (train loss on the training set, accuracy on the test set)."""

    endpoints: dict[str, dict[str, float]]  # "a", "b" -> train_loss, test_accuracy, ...
    profiles: dict[str, dict[str, list[float]]]  # "line", "geodesic" -> fraction, length, train_loss, test_accuracy, ...
    summaries: dict[str, dict[str, float]]  # path -> barrier, max_loss, min_accuracy, length, functional_length
    landscape: dict  # xs, ys, train_loss [j][i] (y_j, x_i), paths: name -> [[x, y], ...] (points: w_A, w_B, midpoint)
    steps: int
    reached: bool
    seconds: dict[str, float]  # geodesic, landscape


@functools.lru_cache(maxsize=2)
def connect_experiment(seed_a: int = 0, seed_b: int = 1, grid: int = 31, points: int = 41,
                       use_disk: bool = True) -> ConnectResult:
    """The straight line and the geodesic between two digits MLPs, and the landscape
    around them (a few seconds on a CPU; cached in memory and on disk)."""
    key = settings_digest(ConnectConfig(seed_b=seed_b, steps=1000, eval_every=5, points=points, third="midpoint"),
                          SolverConfig(**SOLVER_DEFAULTS))
    name = f"connect-{key}-{seed_a}-{seed_b}-{grid}-{points}"
    return stored(name, lambda: _experiment(seed_a, seed_b, grid, points), ConnectResult, use_disk)


def _experiment(seed_a: int, seed_b: int, grid: int, points: int) -> ConnectResult:
    problem = load_problem(SetupConfig(dataset="digits", model="mlp", seed=seed_a))
    # the app's calibrated settings; the plane's third point is the geodesic's midpoint
    config = ConnectConfig(seed_b=seed_b, steps=1000, eval_every=5, points=points, third="midpoint")
    task = ConnectTask(problem, config, SolverConfig(**SOLVER_DEFAULTS))
    started = time.perf_counter()
    path = task.path()
    rows, snapshots = [], [task.w_a]
    for record in path:
        rows.append(record.row())
        snapshots.append(path.w)  # every step: the polyline is the path itself
    geodesic = PolylineCurve(torch.stack(snapshots))
    line = task.line()
    profiles = {"line": task.curve_profile(line),
                "geodesic": task.geodesic_profile(rows, getattr(path.objective, "landing", 0.0))}
    summaries = {}
    for key, curve in (("line", line), ("geodesic", geodesic)):
        summaries[key] = {**path_summary(profiles[key], task.endpoint_losses),
                          "length": profiles[key]["length"][-1], "functional_length": task.functional_length(curve)}
    seconds = {"geodesic": time.perf_counter() - started}
    started = time.perf_counter()
    landscape, shown = task.landscape({"line": line, "geodesic": geodesic}, grid)
    for _ in landscape.fill(task.evaluator):
        pass
    seconds["landscape"] = time.perf_counter() - started
    return ConnectResult(
        endpoints=task.endpoints,
        profiles=profiles,
        summaries=summaries,
        landscape={"xs": landscape.xs.tolist(), "ys": landscape.ys.tolist(),
                   "train_loss": landscape.values["train_loss"].tolist(),
                   "paths": {k: v.tolist() for k, v in shown.items()}},
        steps=path.step,
        reached=path.end_reason == "reached the target network",
        seconds=seconds,
    )

