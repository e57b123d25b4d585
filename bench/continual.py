"""Continual learning: wall time of the geodesic against each baseline at equal gradient
evaluations, and the average accuracy each reaches per second of wall time.

    python bench/continual.py [--dataset fashion-mnist --scenario class-incremental
                               --steps 150 --penalty-steps 300 --memory 100 --seed 0]

For each path mode (exact, penalty) the path is walked once, evaluated only at its
first and last step, and timed; then fine-tuning, EWC (its Fisher included) and
replay train from the same start for as many gradient evaluations as the path used
and are timed the same way (evaluation excluded); each method runs --repeats times,
interleaved, and its fastest time counts. One CPU thread throughout, so the
figures are comparable on a shared machine; the start network is trained (or read
from the cache) before any clock starts. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from geoviz.applications.continual import DEFAULT_SOLVER, BASELINES, ContinualConfig, ContinualTask, load_continual  # noqa: E402
from geoviz.setups.problem import SetupConfig  # noqa: E402


def walk(task: ContinualTask) -> tuple[dict, int, float]:
    """(final figures, gradient evaluations, wall seconds) of the task's path."""
    path = task.path()
    t0 = time.perf_counter()
    for record in path:
        if record.metrics:
            figures = record.metrics
    wall = time.perf_counter() - t0
    return figures, path.gradient_evaluations, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--scenario", default="class-incremental")
    parser.add_argument("--steps", type=int, default=ContinualConfig.steps, help="exact-mode steps")
    parser.add_argument("--penalty-steps", type=int, default=300, help="penalty-mode steps (one gradient each)")
    parser.add_argument("--memory", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2, help="runs per method; the fastest counts")
    args = parser.parse_args()
    torch.set_num_threads(1)

    setup = SetupConfig(dataset=args.dataset, model=args.model, seed=args.seed, device="cpu")
    base = ContinualConfig(scenario=args.scenario, memory=args.memory)
    problem, sequence = load_continual(setup, base)
    print(f"{sequence.name}, {args.model} ({problem.layout.size} parameters), memory M = {args.memory}, 1 CPU thread")
    header = (
        f"{'method':18s} {'grad evals':>10s} {'wall s':>8s} {'x path':>7s} {'task1':>6s} {'task2':>6s} "
        f"{'average':>7s} {'avg/s':>7s} {'gain/s':>7s}"
    )
    start_average = ContinualTask.scores(ContinualTask(problem, sequence, base, DEFAULT_SOLVER).start)["average"]
    results = {}
    for mode, steps in (("exact", args.steps), ("penalty", args.penalty_steps)):
        config = replace(base, steps=steps, eval_every=steps)  # evaluate at the ends only
        task = ContinualTask(problem, sequence, config, replace(DEFAULT_SOLVER, mode=mode))
        # every method runs --repeats times, interleaved, and keeps its fastest wall
        # time (the results are seeded, hence the same each time): on a shared CPU
        # the minimum is the figure least disturbed by other work
        times: dict[str, list[float]] = {}
        scores: dict[str, dict] = {}
        for _ in range(args.repeats):
            figures, evaluations, wall = walk(task)
            name = f"geodesic {mode}"
            scores[name] = ContinualTask.scores(figures)
            times.setdefault(name, []).append(wall)
            for name in BASELINES:
                w, seconds = task.train_baseline(name, evaluations)
                scores[name] = ContinualTask.scores(task.evaluate(w))
                times.setdefault(name, []).append(seconds)
        wall = min(times[f"geodesic {mode}"])
        rows = [(name, scores[name], min(times[name])) for name in times]
        print(f"\n{mode} path, {steps} steps; each baseline gets the same {evaluations} gradient evaluations")
        print(header)
        results[mode] = {"steps": steps, "gradient_evaluations": evaluations, "methods": {}}
        for name, scores, seconds in rows:
            rate = scores["average"] / seconds
            gain = (scores["average"] - start_average) / seconds
            print(
                f"{name:18s} {evaluations:10d} {seconds:8.2f} {seconds / wall:7.2f} "
                f"{scores['task1']:6.3f} {scores['task2']:6.3f} {scores['average']:7.3f} {rate:7.3f} {gain:7.3f}"
            )
            results[mode]["methods"][name] = {
                **scores, "seconds": round(seconds, 3), "average_per_second": rate, "gain_per_second": gain,
            }
    start = ContinualTask.scores(task.start)
    print(f"\nstart network: task1 {start['task1']:.3f}  task2 {start['task2']:.3f}  average {start['average']:.3f}")
    print("avg/s: average accuracy / wall s; gain/s: (average - the start's average) / wall s")
    print(json.dumps({"task_sequence": sequence.name, "memory_size": args.memory, "start": start, **results}))


if __name__ == "__main__":
    main()
