"""The three applications' tables over start seeds: geodesic, penalty mode, every baseline.

    python bench/claims.py                      # digits and Fashion-MNIST, seeds 0 1 2
    python bench/claims.py --quick              # digits, small budgets (a smoke run, ~minutes)
    python bench/claims.py --datasets digits --apps sparsify,connect --seeds 0 1 2 3 4
    python bench/claims.py --json claims.json   # also every per-seed figure, as JSON
    python bench/claims.py --datasets fashion-mnist --apps continual --scenario permuted

Each cell is mean ± sd over the seeds (sample sd). Baselines get as many gradient
evaluations as the exact geodesic used on that seed; the penalty mode runs its own
budget (column "grad evals"). "data used" says what a method learns from beyond
the start network(s): sparsify and connect baselines with "inputs + labels" read
labels the geodesic never sees; "inputs only" ones see what it sees. Connect uses
the pairs (seed, seed + 1) for seeds 0, 2, 4, ...: disjoint pairs.

Timings on a shared machine are disturbed by other work: only the figures are the
result here, not the seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from geoviz.applications import claims  # noqa: E402
from geoviz.applications.continual import SCENARIOS  # noqa: E402
from geoviz.setups.problem import SetupConfig  # noqa: E402

FIGURES = {
    "sparsify": ("accuracy",),
    "continual": ("task1", "task2", "average"),
    # reached: the fraction of seeds whose path ended on w_B (a path that did not is no connection)
    "connect": ("barrier", "min_accuracy", "length", "functional_length", "reached"),
}
MODELS = {  # (dataset, application) -> model; the README's examples
    ("fashion-mnist", "sparsify"): "lenet300",
}


def _runner(app: str, dataset: str, quick: bool, scenario: str = "class-incremental"):
    """(rows_of(setup), seed map) for one application and dataset: the claims' defaults
    (the claim tests' settings), smaller budgets with --quick."""
    fashion = dataset == "fashion-mnist"
    if app == "sparsify":
        config = replace(claims.SPARSIFY, steps=300) if quick else claims.SPARSIFY
        return (lambda setup: claims.sparsify_rows(setup, config)), (lambda s: s)
    if app == "continual":
        # Fashion-MNIST: 100 steps, as tests/test_continual.py's Fashion test
        config = replace(claims.CONTINUAL, scenario=scenario,
                         steps=50 if quick else (100 if fashion else claims.CONTINUAL.steps))
        return (lambda setup: claims.continual_rows(setup, config)), (lambda s: s)
    config = replace(claims.CONNECT, eval_subset=2000 if fashion else claims.CONNECT.eval_subset,
                     steps=150 if quick else claims.CONNECT.steps)
    return (lambda setup: claims.connect_rows(setup, config)), (lambda s: 2 * s)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="digits only, small budgets")
    parser.add_argument("--datasets", default=None, help="comma-separated (default digits,fashion-mnist; --quick: digits)")
    parser.add_argument("--apps", default="sparsify,continual,connect")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--json", default=None, help="write every per-seed figure here")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--scenario", default="class-incremental", choices=SCENARIOS,
                        help="continual's task sequence (default class-incremental)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    datasets = (args.datasets or ("digits" if args.quick else "digits,fashion-mnist")).split(",")
    apps = args.apps.split(",")
    unknown = [a for a in apps if a not in FIGURES]
    if unknown or len(args.seeds) < 1:
        print(f"error: unknown application {unknown[0]!r}; choose sparsify, continual, connect." if unknown
              else "error: give at least one seed.", file=sys.stderr)
        return 2
    results = {}
    for dataset in datasets:
        for app in apps:
            rows_of, seed_of = _runner(app, dataset, args.quick, args.scenario)
            setup = SetupConfig(dataset=dataset, model=MODELS.get((dataset, app), "mlp"), device="cpu")
            t0 = time.perf_counter()

            def progress(seed, rows, app=app):
                figures = {name: {k: round(v, 4) for k, v in r.items() if k in FIGURES[app]} for name, r in rows.items()}
                print(f"  {dataset} {app} seed {seed} done ({time.perf_counter() - t0:.0f} s): {figures}",
                      file=sys.stderr, flush=True)

            per_seed = claims.over_seeds(rows_of, setup, [seed_of(s) for s in args.seeds], progress)
            rows = claims.table(per_seed, FIGURES[app])
            seeds = [seed_of(s) for s in args.seeds]
            title = (f"{app}" + (f" ({args.scenario})" if app == "continual" else "")
                     + f", {dataset} ({setup.model}), seeds {seeds}" + (", quick" if args.quick else ""))
            print("\n" + claims.markdown(f"{title}, {time.perf_counter() - t0:.0f} s", rows, FIGURES[app]), flush=True)
            results[f"{dataset}/{app}"] = {"seeds": seeds, "per_seed": per_seed, "table": rows}
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
