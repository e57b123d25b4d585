"""A sweep through Ray Tune against the same trials run one after another, side by side.

Eight short digits sparsify trials (4 damping values x 2 seeds), each a whole trial as
the sweep runs it (start network from the cache, the path, the baselines, the run
folder), first sequentially in this process, then as one sweep on a local Ray with
``--workers`` workers. Prints

- throughput ratio: sequential wall time / sweep wall time (target >= 1.6 with 2
  workers on the 2-core machine), with and without Ray's start-up;
- Ray's overhead per trial (start-up, scheduling, worker imports, reporting):
  (sweep wall - sequential wall / workers) x workers / trials, in worker-seconds,
  as a fraction of one default digits trial (the default sparsify path to 90%
  and its baselines, timed here; target <= 10%).

    python bench/sweep.py [--trials 8] [--steps 100] [--workers 2]

On a machine that other work shares, both figures move with the load; the ratio is
measured side by side in one run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from geoviz.cli import application_configs, application_runner  # noqa: E402
from geoviz.record.sweep import SweepSpec, _argv, parse_trial, run_sweep  # noqa: E402

DAMPINGS = ["1e-4", "3e-4", "1e-3", "3e-3", "1e-2", "3e-2", "1e-1", "3e-1"]


def one_trial(argv: list[str]) -> float:
    """Wall seconds of one trial run here, as the sweep's worker runs it."""
    t0 = time.perf_counter()
    args = parse_trial("sparsify", argv)
    config, solver = application_configs(args)
    runner = application_runner(args, config, solver)
    assert runner.run() == "finished", runner.message
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=8, help="an even number: damping values x 2 seeds")
    parser.add_argument("--steps", type=int, default=100, help="step budget of each short trial")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(tempfile.mkdtemp(prefix="geoviz-bench-sweep-"))
    fixed = ["--steps", str(args.steps), "--eval-every", "10"]
    grid = {"damping": DAMPINGS[: args.trials // 2]}
    spec = SweepSpec("sparsify", tuple(fixed), grid=grid, seeds=2, workers=args.workers)
    trials = spec.plan()["trials"]
    print(f"{len(trials)} sparsify trials on digits, {args.steps} steps each; {os.cpu_count()} CPUs; runs in {out}")
    for seed in (0, 1):  # start networks into the disk cache, outside every timing
        one_trial([*fixed, "--steps", "1", "--seed", str(seed), "--out", str(out / "warm"), "--quiet"])

    default = one_trial(["--seed", "0", "--out", str(out / "default"), "--quiet"])
    print(f"one default digits trial (sparsify to 90% + baselines): {default:.2f} s")

    t0 = time.perf_counter()
    for trial in trials:
        one_trial([*fixed, *_argv("sparsify", trial["settings"], trial["seed"]), "--out", str(out / "sequential"), "--quiet"])
    sequential = time.perf_counter() - t0
    print(f"sequential, one process:  {sequential:7.2f} s  ({sequential / len(trials):.2f} s per trial)")

    import ray

    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=args.workers, object_store_memory=256 * 2**20, include_dashboard=False,
             log_to_driver=False, logging_level="ERROR")
    start = time.perf_counter() - t0
    record, fit = run_sweep(spec, out / "ray")
    ray.shutdown()
    swept = start + fit
    finished = int((record.table["status"] == "finished").sum())
    assert finished == len(trials), record.table[["status", "message"]]
    inside = float(record.table["wall_seconds"].sum())
    print(f"Ray, {args.workers} workers:       {swept:7.2f} s  (Ray start {start:.2f} s, sweep {fit:.2f} s; "
          f"trials' own wall time {inside:.2f} s in all)")
    ratio, ratio_warm = sequential / swept, sequential / fit
    overhead = (swept - sequential / args.workers) * args.workers / len(trials)
    overhead_warm = (fit - sequential / args.workers) * args.workers / len(trials)
    print(f"throughput ratio: {ratio:.2f}x  ({ratio_warm:.2f}x on a Ray already started)  "
          f"{'ok' if ratio >= 1.6 else 'MISS'} (target >= 1.6x)")
    print(f"Ray overhead per trial: {overhead:.2f} worker-s = {overhead / default:.1%} of a default trial "
          f"({overhead_warm:.2f} s = {overhead_warm / default:.1%} on a Ray already started)  "
          f"{'ok' if overhead / default <= 0.10 else 'MISS'} (target <= 10%)")


if __name__ == "__main__":
    main()
