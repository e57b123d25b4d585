"""Wall time of the full default digits sparsification path (90%), engine only.

Target (issue 2): under 10 s on the 2-core CPU. Prints the time of the path
itself (training is cached; baselines are not part of the path), the step
rate, and the same path in penalty mode side by side.

    python bench/sparsify_time.py [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from geoviz.core.engine import SolverConfig  # noqa: E402
from geoviz.setups.problem import SetupConfig, load_problem  # noqa: E402
from geoviz.applications.sparsify import SparsifyConfig, SparsifyTask  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--model", default="mlp")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    problem = load_problem(SetupConfig(dataset=args.dataset, model=args.model))
    print(f"{args.dataset} {args.model}, 90% sparsity, threads {torch.get_num_threads()}, device {problem.device}")
    for label, solver in (("exact (defaults)", SolverConfig()), ("penalty", SolverConfig(mode="penalty", penalty_lr=3e-3, penalty_ramp=20))):
        task = SparsifyTask(problem, SparsifyConfig(), solver)
        t0 = time.perf_counter()
        records = list(task.path())
        wall = time.perf_counter() - t0
        final = records[-1].metrics
        print(
            f"{label:18s} {wall:6.2f} s  {len(records):4d} steps  {len(records) / wall:6.1f} steps/s  "
            f"accuracy {final['test_accuracy']:.4f} (dense {task.dense_accuracy:.4f}, one-shot {task.one_shot_accuracy:.4f})  "
            f"{'ok' if wall < 10 or label != 'exact (defaults)' else 'MISS'}"
        )


if __name__ == "__main__":
    main()
