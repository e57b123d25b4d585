"""Lesson: a world small enough to see.

A network with two weights, f(x) = a * relu(b * x). Rescaling a by 1/c and b by c
(c > 0) leaves the function unchanged: every curve a * b = const is a set of
functionally identical networks. The whole weight space is the screen: the loss
contours, the metric G's ellipses at points of a grid, and a geodesic computed by the
engine (geoviz.core.engine.Path with the connect objective) beside the straight line.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from geoviz.core.engine import Path, SolverConfig
from geoviz.core.metric import make_metric_product
from geoviz.applications.objectives import TowardPointObjective

__all__ = ["TwoWeights", "world", "walk", "metric_at", "BOX", "INPUTS", "TARGET_SLOPE"]

BOX = (0.2, 2.6)  # a and b both range over this interval on the screen
TARGET_SLOPE = 1.0  # the data: y = 1.0 * relu(x), reached wherever a * b = 1
INPUTS = torch.linspace(-1.0, 1.0, 41, dtype=torch.float64)[:, None]  # (N, 1)


class TwoWeights(nn.Module):
    """f(x) = a * relu(b * x): two weights, one rescaling symmetry."""

    def __init__(self, a: float = 1.0, b: float = 1.0):
        super().__init__()
        self.a = nn.Parameter(torch.tensor([a], dtype=torch.float64))
        self.b = nn.Parameter(torch.tensor([b], dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * torch.relu(self.b * x)  # (N, 1)


_MODEL = TwoWeights()


def _outputs(w: torch.Tensor) -> torch.Tensor:
    return functional_call(_MODEL, ({"a": w[:1], "b": w[1:]},), (INPUTS,))


def _losses(weights: torch.Tensor) -> torch.Tensor:
    """Mean squared error against y = TARGET_SLOPE * relu(x), for each row of (M, 2) weights."""
    target = TARGET_SLOPE * torch.relu(INPUTS)
    with torch.no_grad():
        outputs = torch.func.vmap(_outputs)(weights)  # (M, N, 1): the network itself, at each point
    return (outputs - target).square().mean((1, 2))


def loss(w: torch.Tensor) -> float:
    """Mean squared error against y = TARGET_SLOPE * relu(x)."""
    return float(_losses(w[None])[0])


def metric_at(a: float, b: float) -> torch.Tensor:
    """G at (a, b) as a 2 x 2 matrix, from the engine's own G v product."""
    w = torch.tensor([a, b], dtype=torch.float64)
    product, _ = make_metric_product(_MODEL, _layout(), {}, INPUTS, w, "output", "func")
    return torch.stack([product(torch.tensor([1.0, 0.0], dtype=torch.float64)),
                        product(torch.tensor([0.0, 1.0], dtype=torch.float64))], dim=1)


@functools.lru_cache(maxsize=1)
def _layout():
    from geoviz.core.metric import FlatParams

    return FlatParams.of(_MODEL)


@dataclass(frozen=True)
class World:
    """The screen: loss on a grid, and G's ellipses at coarser points."""

    a: list[float]
    b: list[float]
    loss: list[list[float]]  # [j][i]: b[j], a[i]
    ellipses: list[tuple[list[float], list[float]]]  # outlines (xs, ys)


@functools.lru_cache(maxsize=2)
def world(n: int = 61, ellipse_grid: int = 6, regularise: float = 0.02) -> World:
    """Loss contours on an n x n grid and G's ellipses on an ellipse_grid^2 grid.

    An ellipse is {v : v^T (G + d I) v = r^2}, d = regularise * lambda_max(G) (G has
    rank one here: without d the ellipse is two lines), scaled so that its long axis
    fills 0.9 of the space between grid points: long along the directions that
    leave the function unchanged, short across them.
    """
    values = np.linspace(*BOX, n)
    aa, bb = np.meshgrid(values, values)  # [j][i]: b[j], a[i]
    weights = torch.tensor(np.stack([aa.ravel(), bb.ravel()], 1))  # (n*n, 2)
    grid = _losses(weights).reshape(n, n).tolist()
    points = np.linspace(BOX[0] + 0.15, BOX[1] - 0.15, ellipse_grid)
    spacing = points[1] - points[0]
    t = np.linspace(0, 2 * math.pi, 48)
    outlines = []
    for a in points:
        for b in points:
            g = metric_at(a, b)
            g = g + regularise * torch.linalg.eigvalsh(g).max() * torch.eye(2, dtype=g.dtype)
            eigenvalues, vectors = torch.linalg.eigh(g)
            axes = 1.0 / eigenvalues.sqrt()
            axes = axes / axes.max() * 0.45 * spacing
            circle = np.stack([np.cos(t) * float(axes[0]), np.sin(t) * float(axes[1])])
            xy = vectors.numpy() @ circle
            outlines.append(((a + xy[0]).tolist(), (b + xy[1]).tolist()))
    return World(values.tolist(), values.tolist(), grid, outlines)


@dataclass(frozen=True)
class Walk:
    """A geodesic from start to goal and the straight line, with what they keep."""

    geodesic: list[tuple[float, float]]
    line: list[tuple[float, float]]
    geodesic_product: list[float]  # a * b along the geodesic: the function's slope
    line_product: list[float]
    geodesic_loss: list[float]
    line_loss: list[float]
    reached: bool
    steps: int


@functools.lru_cache(maxsize=64)
def walk(start: tuple[float, float], goal: tuple[float, float], eps: float = 0.04, rho: float = 1e-3,
         steps: int = 600) -> Walk:
    """The engine's geodesic from ``start`` to ``goal`` (the connect objective) and the
    straight line between them, with a * b and the loss along both."""
    w0 = torch.tensor(start, dtype=torch.float64)
    target = torch.tensor(goal, dtype=torch.float64)
    solver = SolverConfig(eps=eps, damping=rho, backend="func", cg_iterations=20, metric_batch=INPUTS.shape[0])
    path = Path(_MODEL, {}, w0, TowardPointObjective(target, eps), INPUTS, solver, lambda w: {}, max_steps=steps,
                eval_every=steps, resample=False)
    points = [tuple(w0.tolist())]
    for _ in path:
        points.append(tuple(path.w.tolist()))
    line = [tuple((w0 + s * (target - w0)).tolist()) for s in np.linspace(0, 1, 41)]
    return Walk(
        points, line,
        [a * b for a, b in points], [a * b for a, b in line],
        _losses(torch.tensor(points, dtype=torch.float64)).tolist(),
        _losses(torch.tensor(line, dtype=torch.float64)).tolist(),
        path.end_reason == TowardPointObjective.end_reason, path.step,
    )
