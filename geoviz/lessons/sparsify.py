"""Lesson: pruning without labels.

The trained digits MLP is made 90% sparse two ways: one-shot magnitude pruning (cut
the smallest weights, repair nothing) and the engine's geodesic (geoviz.applications
.sparsify: shrink the same weights to zero while keeping the outputs on training
*inputs*, no label read). For reference, the same mask repaired afterwards with as
many gradient evaluations as the geodesic used, by distillation to the dense
outputs: the other label-free way (fine-tuning on labels, the app's other baseline,
is left out here to keep the lesson's preparation short). Every accuracy is on the
test set.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import torch

from geoviz.applications.sparsify import SparsifyConfig, SparsifyTask
from geoviz.core.engine import SolverConfig
from geoviz.lessons import settings_digest, stored
from geoviz.setups.problem import SetupConfig, load_problem

__all__ = ["SparsifyResult", "sparsify_experiment"]


@dataclass(frozen=True)
class SparsifyResult:
    """What each way to a sparse network kept (test accuracy)."""

    target: float  # fraction of the prunable weights cut
    accuracy: dict[str, float]  # dense, one_shot, geodesic, distill
    sparsity: float  # the geodesic's end: fraction of prunable weights exactly zero
    along: dict[str, list[float]]  # the geodesic's evaluated steps: step, removed (fraction of the cut weights' norm), test_accuracy, pruned_accuracy (if cut there)
    magnitudes: dict  # log10 |w| histogram of the prunable weights: edges, counts, cut (log10 of the largest one cut)
    steps: int
    gradient_evaluations: int
    seconds: dict[str, float]  # geodesic, distill


@functools.lru_cache(maxsize=2)
def sparsify_experiment(seed: int = 0, target: float = 0.9, use_disk: bool = True) -> SparsifyResult:
    """One-shot pruning, the geodesic and the distilled repair on the digits MLP (~12 s on
    an idle CPU core; cached in memory and on disk)."""
    key = settings_digest(*_settings(target))
    return stored(f"sparsify-{key}-{seed}-{target:g}", lambda: _experiment(seed, target), SparsifyResult, use_disk)


def _settings(target: float) -> tuple[SparsifyConfig, SolverConfig]:
    return SparsifyConfig(sparsity=target, eval_every=10), SolverConfig()  # the app's defaults


def _experiment(seed: int, target: float) -> SparsifyResult:
    problem = load_problem(SetupConfig(dataset="digits", model="mlp", seed=seed))
    task = SparsifyTask(problem, *_settings(target))
    started = time.perf_counter()
    path = task.path()
    rows = [r for r in (record.row() for record in path) if "test_accuracy" in r]
    seconds = {"geodesic": time.perf_counter() - started}
    geodesic = problem.evaluate(path.w, problem.x_test, problem.y_test)[1]
    started = time.perf_counter()
    repairs = {"distill": task.distill_baseline(path.gradient_evaluations)}
    seconds["distill"] = time.perf_counter() - started
    # the start (step 0: the dense network, and one-shot if cut there), then every evaluated step
    first = {"step": 0, "remaining_norm": 1.0, "test_accuracy": task.dense_accuracy, "pruned_accuracy": task.one_shot_accuracy}
    rows = [first, *rows]
    prunable = problem.w0[task.prunable.bool()].abs()  # (prunable,)
    cut = problem.w0[(task.prunable * (1 - task.mask)).bool()].abs().max()
    counts, edges = torch.histogram(prunable.clamp_min(1e-6).log10().double().cpu(), bins=60)
    return SparsifyResult(
        target=target,
        accuracy={"dense": task.dense_accuracy, "one_shot": task.one_shot_accuracy, "geodesic": geodesic, **repairs},
        sparsity=task.sparsity_of(path.w),
        along={"step": [r["step"] for r in rows], "removed": [1.0 - r["remaining_norm"] for r in rows],
               "test_accuracy": [r["test_accuracy"] for r in rows], "pruned_accuracy": [r["pruned_accuracy"] for r in rows]},
        magnitudes={"edges": edges.tolist(), "counts": counts.tolist(), "cut": float(cut.log10())},
        steps=path.step,
        gradient_evaluations=path.gradient_evaluations,
        seconds=seconds,
    )
