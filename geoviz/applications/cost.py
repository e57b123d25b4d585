"""What a path will cost, said before most of it runs.

Seconds per step are measured on the path's own first steps (the first step
carries the first lambda_max estimate and an evaluation, so it is counted
apart); times the step budget, plus an evaluation every ``eval_every`` steps.
The weight snapshots' memory follows from the snapshot budget. A network with
more than a few million weights on a CPU gets a warning before anything runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import torch

from geoviz.core.engine import StepRecord

__all__ = ["BIG_ON_CPU", "MEASURED_STEPS", "Cost", "size_warning", "estimate_cost", "runner_cost"]

# Above this many weights a CPU step takes seconds (resnet18, 11.2 M weights:
# 100-200 s per exact step on this project's 2-core VM): say so before starting.
BIG_ON_CPU = 3_000_000
# steps measured before the estimate is made: the first one and a few plain ones
MEASURED_STEPS = 4


# a step's own row: its StepRecord, and the wall-clock "time" the runner stamps on it
_PLAIN_ROW = ({f.name for f in fields(StepRecord)} - {"metrics"}) | {"time"}


def size_warning(parameters: int, device: torch.device | str) -> str | None:
    """One sentence when the network is big for the device, else None."""
    if torch.device(device).type == "cpu" and parameters > BIG_ON_CPU:
        return (
            f"The network has {parameters / 1e6:.1f} M weights; on a CPU each exact step costs about "
            "20 forward-backward passes over the metric batch, so expect seconds to minutes per step "
            "(a GPU, a smaller network or a smaller --metric-batch helps)."
        )
    return None


@dataclass(frozen=True)
class Cost:
    """An estimate of a path's wall time and snapshot memory."""

    steps_measured: int
    budget: int
    first_step_seconds: float
    seconds_per_step: float
    evaluation_seconds: float
    total_seconds: float
    snapshot_mb: float
    parameters: int
    warning: str | None = None

    def sentence(self) -> str:
        """``estimated cost: ...`` in one line."""
        text = (
            f"estimated cost: {self.budget} steps x {self.seconds_per_step:.3g} s/step "
            f"(measured on the first {self.steps_measured}) = at most {_duration(self.total_seconds)}; "
            f"weight snapshots {self.snapshot_mb:.0f} MB in memory"
        )
        return text + (f". {self.warning}" if self.warning else "")


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def estimate_cost(
    rows: Sequence[Mapping],
    budget: int,
    eval_every: int,
    parameters: int,
    device: torch.device | str,
    snapshot_mb: float = 0.0,
) -> Cost | None:
    """The path's cost from the rows of its first steps; None until enough have run.

    Args:
        rows: the path's table so far (``seconds`` is the path's cumulative time).
        budget: the step budget.
        eval_every: steps between evaluations.
        parameters: weights in the network.
        device: where it runs.
        snapshot_mb: memory the kept weight snapshots reach.
    """
    k = min(MEASURED_STEPS, budget)
    if len(rows) < k:
        return None
    seconds = [float(r["seconds"]) for r in rows[:k]]
    first = seconds[0]
    evaluated = [i for i in range(1, k) if set(rows[i]) - _PLAIN_ROW]  # rows with figures beside the step's own
    plain = [seconds[i] - seconds[i - 1] for i in range(1, k) if i not in evaluated]
    per_step = sum(plain) / len(plain) if plain else first
    evaluation = max(first - per_step, 0.0)  # the first step's extra: an evaluation and the first lambda_max
    total = first + (budget - 1) * per_step + (budget // max(1, eval_every)) * evaluation
    return Cost(
        steps_measured=k, budget=budget, first_step_seconds=first, seconds_per_step=per_step,
        evaluation_seconds=evaluation, total_seconds=total,
        snapshot_mb=snapshot_mb, parameters=parameters,
        warning=size_warning(parameters, device),
    )


def runner_cost(runner, rows: Sequence[Mapping] | None = None) -> Cost | None:
    """:func:`estimate_cost` of a :class:`~geoviz.record.runner.PathRunner`'s path (CLI, Python and pages alike)."""
    path = runner.path
    parameters = path.w.numel()
    rows = runner.rows()[:MEASURED_STEPS] if rows is None else rows
    kept = runner.snapshot_capacity * runner.snapshot_bytes / 2**20  # MB the in-memory trajectory reaches
    return estimate_cost(rows, path.max_steps, path.eval_every, parameters, path.w.device, kept)
