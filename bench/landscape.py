"""Landscape grids and connecting paths: what they cost, measured side by side.

1. A 25 x 25 loss landscape on digits MLP (plane through w_A, w_B and a Bezier
   control point; train loss + test accuracy at every point), batched against one
   point at a time (``Problem.evaluate`` per point, train and test), interleaved
   over a few repeats in one run. Target (issue 5): at least 5x faster and under
   3 s batched on the 2-core CPU. The generic ``torch.func.vmap`` route is timed too.
2. The geodesic's wall time against training the Bezier curve until it reaches the
   same barrier (barrier checked every ``--check-every`` steps; checking time is
   not counted).

    python bench/landscape.py [--grid 25 --repeats 3 --dataset digits]
    python bench/landscape.py --dataset fashion-mnist --grid 8 --repeats 1 --no-race
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from geoviz.applications.connect import SOLVER_DEFAULTS, ConnectConfig, ConnectTask, path_summary  # noqa: E402
from geoviz.core.engine import SolverConfig  # noqa: E402
from geoviz.figures.landscape import BatchedEvaluator, Landscape, Plane, grid_axes  # noqa: E402
from geoviz.setups.problem import SetupConfig, load_problem  # noqa: E402


def grid_bench(task: ConnectTask, n: int, repeats: int) -> None:
    p = task.problem
    bezier = task.train_bezier(300)  # a control point off the line: the plane's third point
    plane = Plane.through(task.w_a, task.w_b, bezier.control)
    xs, ys = grid_axes(plane.project(torch.stack([task.w_a, task.w_b, bezier.control])), n)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    coords = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)
    stacked = plane.points(coords)
    data = task.data
    generic = BatchedEvaluator(p, data)
    generic.layers = None  # the torch.func.vmap route over stacked weights
    print(f"{n} x {n} grid = {n * n} networks x {data.rows} rows ({data.x_train.shape[0]} train, "
          f"{data.x_test.shape[0]} test), {p.layout.size} parameters, 1 thread")
    times = {"batched": [], "vmap": [], "one at a time": []}
    for _ in range(repeats):
        evaluator = BatchedEvaluator(p, data)
        grid = Landscape.empty(plane, xs, ys)
        t0 = time.perf_counter()
        for _ in grid.fill(evaluator, rows_per_chunk=5):
            pass
        times["batched"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        via_vmap = generic.stack(stacked)
        times["vmap"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        one = []
        for w in stacked:
            buffers = p.buffers_at(w)
            one.append(p.evaluate(w, data.x_train, data.y_train, buffers)[0])
            p.evaluate(w, data.x_test, data.y_test, buffers)
        times["one at a time"].append(time.perf_counter() - t0)
    one = torch.tensor(one, dtype=torch.float64)
    gap = float((grid.values["train_loss"].reshape(-1) - one).abs().max())
    gap_vmap = float((via_vmap["train_loss"] - one).abs().max())
    base = statistics.median(times["one at a time"])
    for name, values in times.items():
        med = statistics.median(values)
        print(f"  {name:14s} median {med:6.2f} s  (runs {', '.join(f'{v:.2f}' for v in values)})  "
              f"speed-up {base / med:4.1f}x")
    print(f"  largest train-loss difference to one at a time: batched {gap:.2e}, vmap {gap_vmap:.2e}")


def race(task: ConnectTask, check_every: int) -> None:
    path = task.path()
    t0 = time.perf_counter()
    rows = [record.row() for record in path]
    geo_seconds = time.perf_counter() - t0
    geodesic = path_summary(task.geodesic_profile(rows), task.endpoint_losses)
    target = geodesic["barrier"]
    print(f"geodesic: {path.step} steps, {path.gradient_evaluations} G v products, {geo_seconds:.1f} s "
          f"(with its evaluations every {task.config.eval_every} steps), barrier {target:.4f}, "
          f"min accuracy {geodesic['min_accuracy']:.4f}")
    found = {}
    clock = {"train": 0.0, "since": time.perf_counter()}

    def check(step, curve):
        clock["train"] += time.perf_counter() - clock["since"]
        summary = path_summary(task.curve_profile(curve), task.endpoint_losses)
        done = summary["barrier"] <= target
        if done:
            found.update(step=step, seconds=clock["train"], **summary)
        clock["since"] = time.perf_counter()
        return done

    budget = 4 * path.gradient_evaluations
    task.train_bezier(budget, callback=check, callback_every=check_every)
    if found:
        print(f"Bezier:   reached barrier {found['barrier']:.4f} <= {target:.4f} after {found['step']} steps, "
              f"{found['seconds']:.1f} s of training (min accuracy {found['min_accuracy']:.4f}); "
              f"geodesic/Bezier wall time {geo_seconds / max(found['seconds'], 1e-9):.2f}")
    else:
        print(f"Bezier:   did not reach barrier {target:.4f} within {budget} steps")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--grid", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--check-every", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--no-race", action="store_true", help="only the grid timing")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    problem = load_problem(SetupConfig(dataset=args.dataset, model="mlp", seed=0, device=args.device))
    task = ConnectTask(problem, ConnectConfig(), SolverConfig(**SOLVER_DEFAULTS))
    grid_bench(task, args.grid, args.repeats)
    if not args.no_race:
        race(task, args.check_every)


if __name__ == "__main__":
    main()
