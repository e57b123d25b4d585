"""Lesson: most directions do not matter.

A trained digits network is moved a fixed distance along two directions: a random
one, and a direction in the near-null space of G (the output metric on training
inputs). Both are measured on the test set: how far the outputs moved, and the
accuracy. The near-null direction is the random one with its stiff part removed:
x = mu (G + mu I)^-1 r, solved by conjugate gradients with the engine's own G v
product, which keeps the components of r where G's eigenvalues are below mu and
shrinks the others.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import asdict, dataclass

import torch
from torch.func import functional_call

from geoviz.core.engine import conjugate_gradient
from geoviz.core.metric import make_metric_product, top_eigenvalue
from geoviz.setups.problem import Problem, SetupConfig, load_problem
from geoviz.setups.training import network_cache_dir

__all__ = ["DirectionsResult", "directions_experiment"]


@dataclass(frozen=True)
class DirectionsResult:
    """What moving along each direction did, at each distance (measured, test set)."""

    distances: list[float]  # Euclidean distance moved, |delta w|
    weight_norm: float  # |w0|, for scale
    output_change: dict[str, list[float]]  # direction -> RMS change of the logits
    accuracy: dict[str, list[float]]  # direction -> test accuracy
    stiffness: dict[str, float]  # direction -> u^T G u for the unit direction (train batch)
    mu: float  # the damping that defines "near-null": mu = rho * lambda_max(G)
    lambda_max: float
    cg_iterations: int


def _outputs(problem: Problem, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return functional_call(problem.model, ({**problem.params(w), **problem.buffers},), (x,))


@functools.lru_cache(maxsize=2)
def directions_experiment(seed: int = 0, rho: float = 1e-6, batch: int = 2000, points: int = 9, reach: float = 1.0,
                          iterations: int = 400, use_disk: bool = True) -> DirectionsResult:
    """Move the trained digits MLP along a random and a near-null direction, cached in
    memory and on disk beside the cached networks (a JSON file; the computation takes
    10-100 s on a busy CPU, so a lecture never waits for it twice).

    Args:
        seed: seeds the network (as the app's default) and the random direction.
        rho: near-null means an eigenvalue of G below rho * lambda_max(G).
        batch: training inputs G is measured on.
        points: distances from 0 to half of |w0|.
    """
    file = network_cache_dir().parent / "lessons" / f"directions-{seed}-{rho:g}-{batch}-{points}-{reach:g}-{iterations}.json"
    if use_disk and file.is_file():
        return DirectionsResult(**json.loads(file.read_text()))
    result = _experiment(seed, rho, batch, points, reach, iterations)
    if use_disk:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(result)))
        os.replace(tmp, file)
    return result


def _experiment(seed: int, rho: float, batch: int, points: int, reach: float, iterations: int) -> DirectionsResult:
    problem = load_problem(SetupConfig(dataset="digits", model="mlp", seed=seed))
    w0 = problem.w0
    inputs = problem.x_train[:batch]
    product, _ = make_metric_product(problem.model, problem.layout, problem.buffers, inputs, w0, "output", "linear")
    gen = torch.Generator().manual_seed(seed + 1)
    random = torch.randn(w0.shape, generator=gen, dtype=w0.dtype).to(w0.device)
    random /= random.norm()
    lam, _ = top_eigenvalue(product, torch.randn(w0.shape, generator=gen, dtype=w0.dtype).to(w0.device), 30)
    mu = rho * float(lam)
    # x = mu (G + mu I)^-1 r: r's components with eigenvalue >> mu are divided away
    null, _, info = conjugate_gradient(lambda v: product(v) + mu * v, mu * random, iterations, 1e-6)
    null /= null.norm()
    directions = {"random": random, "near-null": null}
    distances = [reach * float(w0.norm()) * i / (points - 1) for i in range(points)]
    start = _outputs(problem, w0, problem.x_test)
    change, accuracy = {}, {}
    for name, u in directions.items():
        change[name], accuracy[name] = [], []
        for d in distances:
            out = _outputs(problem, w0 + d * u, problem.x_test)
            change[name].append(float((out - start).square().sum(1).mean().sqrt()))
            accuracy[name].append(float((out.argmax(1) == problem.y_test).float().mean()))
    stiffness = {name: float(torch.dot(u, product(u))) for name, u in directions.items()}
    return DirectionsResult(distances, float(w0.norm()), change, accuracy, stiffness, mu, float(lam), info.iterations)
