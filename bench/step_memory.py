"""Peak memory of the exact mode, in bytes per weight above what was there before.

Each configuration runs in a fresh subprocess (torch's CPU allocations are invisible
to tracemalloc): the model, its metric batch, w0 and a sparsity objective are built,
the resident set is read (VmRSS), the kernel's high-water mark is reset
(``/proc/self/clear_refs`` 5), and a path takes ``--steps`` exact steps (the first
one estimates lambda_max too). The peak (VmHWM) minus the resident set before the
path, per weight, is the figure: it counts the path's own vectors (w, w0, the warm
start, the eigenvector), the recorded activations and everything a step allocates.
glibc is told to map every block of 128 KiB or more on its own
(``MALLOC_MMAP_THRESHOLD_``), so a freed tensor leaves the resident set at once
and the high-water mark is the live peak, not the allocator's retention.

    python bench/step_memory.py                      # digits MLP and resnet18 (batch 32)
    python bench/step_memory.py --case resnet18 --batch 64 --backend autograd

Linux only (reads /proc/self/status).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CASES = ("mlp", "resnet18", "vgg16")


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure(case: str, batch: int, backend: str, steps: int) -> dict:
    """One configuration, in this process (call it in a fresh one)."""
    import gc

    import torch

    from geoviz.applications.objectives import SparsifyObjective, magnitude_mask
    from geoviz.core.engine import Path as GeoPath
    from geoviz.core.engine import SolverConfig
    from geoviz.core.metric import FlatParams
    from geoviz.setups.models import build_model, prunable_names

    torch.set_num_threads(1)
    torch.manual_seed(0)
    if case == "mlp":
        from geoviz.setups.data import load_dataset

        x = load_dataset("digits").x_train[:batch].clone()
        model = build_model("mlp", (1, 8, 8), 10)
    else:
        x = torch.randn(batch, 3, 32, 32)
        model = build_model(case, (3, 32, 32), 10)
    model.eval()
    layout = FlatParams.of(model)
    buffers = {n: b for n, b in model.named_buffers()}
    w0 = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    mask = magnitude_mask(w0, layout.mask(prunable_names(model), w0), 0.9)
    objective = SparsifyObjective(mask, w0, 1e-9)
    solver = SolverConfig(mode="exact", backend=backend, cg_tolerance=0.0, metric_batch=batch)
    with torch.no_grad():  # the forward's one-off set-up (thread pools, kernels) outside the figure
        model(x[:2])
    gc.collect()
    before = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    path = GeoPath(model, buffers, w0, objective, x, solver, lambda w: {}, max_steps=steps)
    for _ in path:
        pass
    peak = _status("VmHWM")
    weights = layout.size
    return {
        "case": case,
        "batch": batch,
        "backend": path.backend_used,
        "weights": weights,
        "steps": steps,
        "peak_mb": (peak - before) / 2**20,
        "bytes_per_weight": (peak - before) / weights,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", action="append", choices=CASES, help="repeat for several (default: mlp and resnet18)")
    parser.add_argument("--batch", type=int, default=0, help="metric batch (default: 256 for the MLP, 32 for the conv nets)")
    parser.add_argument("--backend", default="linear")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    cases = args.case or ["mlp", "resnet18"]
    if args.child:
        print(json.dumps(measure(cases[0], args.batch, args.backend, args.steps)))
        return
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "OMP_NUM_THREADS": "1"}
    print(f"{'case':10s} {'batch':>6s} {'backend':>9s} {'weights':>10s} {'peak MB':>9s} {'bytes/weight':>13s}")
    for case in cases:
        batch = args.batch or (256 if case == "mlp" else 32)
        out = subprocess.run(
            [sys.executable, __file__, "--child", "--case", case, "--batch", str(batch), "--backend", args.backend, "--steps", str(args.steps)],
            env=env, capture_output=True, text=True, check=True,
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{r['case']:10s} {r['batch']:6d} {r['backend']:>9s} {r['weights']:10d} {r['peak_mb']:9.1f} {r['bytes_per_weight']:13.1f}")


if __name__ == "__main__":
    main()
