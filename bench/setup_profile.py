"""The set-up work of a sparsification path on resnet18, profiled (issue 15: 216 s on CPU).

What runs before and around the first step, without the step itself: the magnitude
mask, the dense and one-shot evaluations (BatchNorm statistics recomputed at w0 and
at the pruned w0), the run record, and the evaluation at w0 that the path's loss
watch makes after its first step. Prints the seconds of each and cProfile's top
functions by cumulative time.

    python bench/setup_profile.py [--threads 1] [--top 15]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from geoviz.applications.sparsify import SparsifyConfig, sparsify_runner  # noqa: E402
from geoviz.core.engine import SolverConfig  # noqa: E402
from geoviz.setups.data import load_dataset  # noqa: E402
from geoviz.setups.models import build_model  # noqa: E402
from geoviz.setups.problem import SetupConfig  # noqa: E402
from geoviz.setups.own import problem_from_module  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = load_dataset("digits")  # 1x8x8 inputs, the CIFAR-style stem
    model = build_model("resnet18", data.input_shape, data.num_classes)  # torchvision's, 11.2 M weights
    problem = problem_from_module(model, (data.x_train, data.y_train), (data.x_test, data.y_test), device="cpu",
                                  setup=SetupConfig(model="resnet18"))
    print(f"resnet18, {problem.layout.size:,} weights, {data.x_train.shape[0]} training rows, {args.threads} thread(s)")
    profile = cProfile.Profile()
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        profile.enable()
        runner = sparsify_runner(problem, SparsifyConfig(sparsity=0.9, steps=10), SolverConfig(), out, baselines=False)
        t1 = time.perf_counter()
        runner.path.evaluate(problem.w0)  # the loss watch's evaluation at w0 after step 1
        profile.disable()
        t2 = time.perf_counter()
        runner.writer.close("stopped", "profile only")
    print(f"set-up (mask, dense and one-shot evaluations, record): {t1 - t0:.1f} s")
    print(f"the path's evaluation at w0 after its first step:      {t2 - t1:.1f} s")
    print(f"total:                                                  {t2 - t0:.1f} s")
    pstats.Stats(profile).sort_stats("cumulative").print_stats(args.top)


if __name__ == "__main__":
    main()
