"""A sweep through Ray Tune against the same trials run one after another, side by side.

Eight short digits sparsify trials (4 damping values x 2 seeds, 100 steps each), each a
whole trial as the sweep runs it (start network from the disk cache, the path, the
baselines, the run folder). Every way of running them is timed the same way: as a
fresh Python process, from its start to its exit, as a user waits for it:

- sequential: one process runs the 8 trials one after another;
- two processes: the 8 trials split over ``--workers`` plain processes started together
  (no scheduler at all: what the cores give, the ceiling of any scheduler);
- Ray: ``python -m geoviz sweep sparsify --grid damping=... --seeds 2 --workers 2``
  (its own local Ray, started and stopped by the command).

Prints

- throughput ratio: sequential / Ray (target >= 1.6 with 2 workers on the 2-core
  machine), beside the ceiling sequential / two processes;
- Ray's overhead per trial (start-up, scheduling, worker imports, reporting), in
  worker-seconds against the plain processes: (Ray - two processes) x workers / trials,
  as a fraction of one default digits trial (the default sparsify path to 90% and its
  baselines, timed in this process; target <= 10%); and against a perfect split of
  the sequential time, (Ray - sequential / workers) x workers / trials;
- from the sweep's table: each trial's set-up (imports in a new worker, data, start
  network) and the time its reports waited on Tune.

    python bench/sweep.py [--steps 100] [--workers 2] [--repeat 1]

On a machine that other work shares every figure moves with the load: run it idle.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DAMPINGS = ["1e-4", "3e-4", "1e-3", "3e-3"]
SEEDS = 2


def run_trials(argvs: list[list[str]]) -> None:
    """The trials, one after another in this process, as a sweep's worker runs each."""
    import torch

    from geoviz.cli import application_configs, application_runner
    from geoviz.record.sweep import parse_trial

    torch.set_num_threads(1)
    for argv in argvs:
        args = parse_trial("sparsify", argv)
        config, solver = application_configs(args)
        runner = application_runner(args, config, solver)
        state = runner.run()
        assert state == "finished", runner.message


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def timed_processes(commands: list[list[str]]) -> float:
    """Wall seconds from starting the commands together to the last one's exit."""
    t0 = time.perf_counter()
    procs = [subprocess.Popen(c, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in commands]
    for proc in procs:
        out, err = proc.communicate()
        assert proc.returncode == 0, err[-2000:]
    return time.perf_counter() - t0


def child(argvs: list[list[str]], folder: Path, name: str) -> list[str]:
    path = folder / f"{name}.json"
    path.write_text(json.dumps(argvs))
    return [sys.executable, __file__, "--child", str(path)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=100, help="step budget of each short trial")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1, help="measure each way this many times, alternating")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_trials(json.loads(Path(args.child).read_text()))
        return

    import torch

    from geoviz.record.sweep import SweepSpec, _argv

    torch.set_num_threads(1)
    out = Path(tempfile.mkdtemp(prefix="geoviz-bench-sweep-"))
    fixed = ["--steps", str(args.steps), "--eval-every", "10"]
    spec = SweepSpec("sparsify", tuple(fixed), grid={"damping": DAMPINGS}, seeds=SEEDS, workers=args.workers)
    trials = spec.plan()["trials"]
    argvs = [[*fixed, *_argv("sparsify", t["settings"], t["seed"]), "--out", str(out / "runs"), "--quiet"] for t in trials]
    print(f"{len(trials)} sparsify trials on digits, {args.steps} steps each; {os.cpu_count()} CPUs; "
          f"load {os.getloadavg()[0]:.1f}; runs in {out}")
    # start networks (and the digits split) into the disk cache, outside every timing
    run_trials([[*fixed, "--steps", "1", "--seed", str(s), "--out", str(out / "warm"), "--quiet"] for s in range(SEEDS)])
    t0 = time.perf_counter()
    run_trials([["--seed", "0", "--out", str(out / "default"), "--quiet"]])
    default = time.perf_counter() - t0
    print(f"one default digits trial (sparsify to 90% + baselines, in a warm process): {default:.2f} s")

    sweep_cmd = [sys.executable, "-m", "geoviz", "sweep", "sparsify", "--grid", f"damping={','.join(DAMPINGS)}",
                 "--seeds", str(SEEDS), "--workers", str(args.workers), "--out", str(out / "ray"), "--json", "--quiet", *fixed]
    split = [argvs[i::args.workers] for i in range(args.workers)]
    times: dict[str, list[float]] = {"sequential": [], "processes": [], "ray": []}
    for _ in range(args.repeat):
        times["sequential"].append(timed_processes([child(argvs, out, "all")]))
        times["processes"].append(timed_processes([child(part, out, f"part{i}") for i, part in enumerate(split)]))
        times["ray"].append(timed_processes([sweep_cmd]))
    best = {k: min(v) for k, v in times.items()}  # the least disturbed of each
    sequential, processes, ray = best["sequential"], best["processes"], best["ray"]

    from geoviz.record.sweep import list_sweeps, read_sweep

    table = read_sweep(list_sweeps(out / "ray")[0].path).table
    finished = int((table["status"] == "finished").sum())
    assert finished == len(trials), table[["status", "message"]]
    n, w = len(trials), args.workers
    print(f"sequential, one process:      {sequential:7.2f} s  ({sequential / n:.2f} s per trial)")
    print(f"{w} plain processes:           {processes:7.2f} s  (no scheduler: the cores' ceiling)")
    print(f"Ray sweep, {w} workers:         {ray:7.2f} s  (trials' own wall time {table['wall_seconds'].sum():.2f} s in all; "
          f"set-up {table['setup_seconds'].sum():.2f} s, waiting on reports {table['report_seconds'].sum():.2f} s)")
    if args.repeat > 1:
        print("  every measurement: " + "; ".join(f"{k} {', '.join(f'{x:.1f}' for x in v)}" for k, v in times.items()))
    ratio = sequential / ray
    print(f"throughput ratio: {ratio:.2f}x  {'ok' if ratio >= 1.6 else 'MISS'} (target >= 1.6x); "
          f"the cores' ceiling {sequential / processes:.2f}x")
    overhead = (ray - processes) * w / n
    overhead_split = (ray - sequential / w) * w / n
    print(f"Ray overhead per trial against plain processes: {overhead:.2f} worker-s = {overhead / default:.1%} of a default "
          f"trial  {'ok' if overhead / default <= 0.10 else 'MISS'} (target <= 10%); against a perfect split of the "
          f"sequential time: {overhead_split:.2f} worker-s = {overhead_split / default:.1%}")


if __name__ == "__main__":
    main()
