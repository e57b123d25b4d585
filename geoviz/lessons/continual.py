"""Lesson: learning without forgetting.

A digits MLP trained on task 1 (digits 0-4) learns task 2 (digits 5-9, one shared
head: class-incremental). The engine's geodesic (geoviz.applications.continual)
minimises task 2's loss while keeping the outputs on a memory of 100 task-1 inputs
(no task-1 label); fine-tuning on task 2 alone, EWC and replay (the same 100
examples with their labels) get as many gradient evaluations. Every accuracy is on
each task's test set.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

from geoviz.applications.continual import DEFAULT_SOLVER, ContinualConfig, ContinualTask, load_continual
from geoviz.lessons import settings_digest, stored
from geoviz.setups.problem import SetupConfig

__all__ = ["ContinualResult", "continual_experiment", "METHODS"]

METHODS = ("finetune", "ewc", "replay")


@dataclass(frozen=True)
class ContinualResult:
    """Per-task test accuracy of every method, and the geodesic's along the way."""

    tasks: dict[str, list[int]]  # "task1", "task2" -> digits
    memory: int  # task-1 inputs the geodesic keeps the outputs on
    accuracy: dict[str, dict[str, float]]  # start, geodesic, finetune, ewc, replay -> task1, task2
    data_used: dict[str, str]  # method -> what of task 1 it learns from
    along: dict[str, list[float]]  # the geodesic's evaluated steps: step, task1, task2
    steps: int
    gradient_evaluations: int
    seconds: dict[str, float]  # geodesic, and each baseline


@functools.lru_cache(maxsize=2)
def continual_experiment(seed: int = 0, memory: int = 100, use_disk: bool = True) -> ContinualResult:
    """The geodesic and the three baselines on class-incremental digits (~15 s on a
    busy CPU; cached in memory and on disk)."""
    key = settings_digest(ContinualConfig(memory=memory, eval_every=5), DEFAULT_SOLVER)
    return stored(f"continual-{key}-{seed}-{memory}", lambda: _experiment(seed, memory), ContinualResult, use_disk)


def _experiment(seed: int, memory: int) -> ContinualResult:
    config = ContinualConfig(memory=memory, eval_every=5)  # the app's defaults, drawn more often
    problem, sequence = load_continual(SetupConfig(dataset="digits", model="mlp", seed=seed), config)
    task = ContinualTask(problem, sequence, config, DEFAULT_SOLVER)
    started = time.perf_counter()
    path = task.path()
    rows = [task.start] + [r for r in (record.row() for record in path) if "task1_accuracy" in r]
    steps = [0] + [r["step"] for r in rows[1:]]
    seconds = {"geodesic": time.perf_counter() - started}
    accuracy = {"start": ContinualTask.scores(task.start), "geodesic": ContinualTask.scores(rows[-1])}
    for name in METHODS:  # each with the geodesic's gradient evaluations
        figures, _ = task.baseline(name, path.gradient_evaluations)
        accuracy[name], seconds[name] = ContinualTask.scores(figures), figures["seconds"]
    return ContinualResult(
        tasks={"task1": list(sequence.first.classes), "task2": list(sequence.second.classes)},
        memory=memory,
        accuracy=accuracy,
        data_used={name: task.data_used(name) for name in ("geodesic", *METHODS)},
        along={"step": steps, "task1": [r["task1_accuracy"] for r in rows], "task2": [r["task2_accuracy"] for r in rows]},
        steps=path.step,
        gradient_evaluations=path.gradient_evaluations,
        seconds=seconds,
    )
