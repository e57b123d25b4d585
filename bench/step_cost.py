"""Cost of one path step, as a ratio to one plain SGD step on the same model and batch.

Measured side by side in one run (interleaved rounds, median of rounds), so the
ratios hold even on a busy machine:

- SGD step: forward + backward + parameter update on the metric batch, on the
  module's own parameters with torch.optim.SGD (the plain step, not one through our
  flat weight vector, which costs more).
- one G v product, each backend (``linear``: linearised forward and transposed pass
  over kept activations, ``autograd``: double backward, ``func``: torch.func
  jvp+vjp), and the product the exact step runs (``step``: in row-space
  coordinates when a Linear layer has more inputs than the batch has rows,
  geoviz.core.linearize.RowSpace; otherwise the linear one).
- exact-mode step (k CG iterations, warm start, amortised lambda_max refresh).
- penalty-mode step.

Targets (issue 2): penalty <= 1.5x SGD; exact <= (k + 2)x SGD.

    python bench/step_cost.py [--threads 1] [--rounds 7] [--vgg11 --only vgg11 --batch 64 --repeats 2]
    python bench/step_cost.py --resnet18 --only resnet18 --batch 32 --rounds 3 --repeats 2 --threads 2
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from geoviz.core.engine import Path as GeoPath  # noqa: E402
from geoviz.core.engine import SolverConfig  # noqa: E402
from geoviz.core.metric import FlatParams, make_metric_product, make_step_product  # noqa: E402
from geoviz.setups.models import build_model, prunable_names  # noqa: E402
from geoviz.applications.objectives import SparsifyObjective, magnitude_mask  # noqa: E402


def _case(name, model, x, y, device):
    model = model.to(device).eval()
    layout = FlatParams.of(model)
    buffers = {n: b for n, b in model.named_buffers()}
    w0 = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    return name, model, layout, buffers, w0, x.to(device), y.to(device)


def cases(device, vgg11=False, batch=256, resnet18=False):
    from geoviz.setups.data import load_dataset

    out = []
    digits = load_dataset("digits")
    torch.manual_seed(0)
    out.append(_case("digits mlp 64-128-128-10", build_model("mlp", (1, 8, 8), 10), digits.x_train[:batch], digits.y_train[:batch], device))
    try:
        fashion = load_dataset("fashion-mnist")
        torch.manual_seed(0)
        out.append(_case("fashion lenet300", build_model("lenet300", (1, 28, 28), 10), fashion.x_train[:batch], fashion.y_train[:batch], device))
    except Exception as err:  # the Debian package may be missing on a laptop
        print(f"(skipping fashion-mnist: {err})")
    if device.type == "cuda" or vgg11:
        torch.manual_seed(0)
        x = torch.randn(batch, 3, 32, 32)
        y = torch.randint(0, 10, (batch,))
        out.append(_case("vgg11 cifar-shaped", build_model("vgg11", (3, 32, 32), 10), x, y, device))
    if device.type == "cuda" or resnet18:
        torch.manual_seed(0)
        x = torch.randn(batch, 3, 32, 32)
        y = torch.randint(0, 10, (batch,))
        # torchvision's resnet18 with the CIFAR stem (11.2 M weights): not a chain, but its
        # traced graph gets the linearised product (geoviz.core.linear_graph)
        out.append(_case("resnet18 cifar-shaped", build_model("resnet18", (3, 32, 32), 10), x, y, device))
    return out


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timeit(fn, device, repeats):
    fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / repeats


def bench_case(case, device, rounds, repeats, k):
    name, model, layout, buffers, w0, x, y = case
    # the baseline is a plain training step as anyone would write it: the module's own
    # parameters, loss.backward(), torch.optim.SGD. (Through a flat vector and
    # functional_call the same step costs 13-22% more on the CPU: autograd's
    # concatenation into the flat leaf. Measuring against that would flatter us.)
    plain = copy.deepcopy(model).eval()
    opt = torch.optim.SGD(plain.parameters(), lr=1e-3)

    def sgd_step():
        loss = torch.nn.functional.cross_entropy(plain(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    v = torch.randn_like(w0)
    products = {}
    for backend in ("linear", "autograd", "func"):
        product, _ = make_metric_product(model, layout, buffers, x, w0, "output", backend)
        products[backend] = (product, v)
    # the product the exact step uses: in row-space coordinates where that pays
    product, space = make_step_product(model, layout, buffers, x, w0, "output", "linear", k + 1)
    products["step"] = (product, v if space is None else space.restrict(v))

    mask = magnitude_mask(w0, layout.mask(prunable_names(model), w0), 0.9)

    def make_path(mode):
        solver = SolverConfig(mode=mode, cg_iterations=k, cg_tolerance=0.0, metric_batch=x.shape[0])
        return GeoPath(model, buffers, w0, SparsifyObjective(mask, w0, 1e-9), x, solver, lambda w: {}, max_steps=10**9, eval_every=10**9)

    paths = {"exact": make_path("exact"), "penalty": make_path("penalty")}
    for p in paths.values():
        next(p)  # first step pays for lambda_max and the penalty's reference outputs

    times = {key: [] for key in ("sgd", "gv_linear", "gv_autograd", "gv_func", "gv_step", "exact", "penalty")}
    for _ in range(rounds):
        times["sgd"].append(_timeit(sgd_step, device, repeats))
        for backend, (product, vec) in products.items():
            times[f"gv_{backend}"].append(_timeit(lambda: product(vec), device, repeats))
        times["exact"].append(_timeit(lambda: next(paths["exact"]), device, max(1, repeats // k)))
        times["penalty"].append(_timeit(lambda: next(paths["penalty"]), device, repeats))
    med = {key: statistics.median(val) for key, val in times.items()}
    return name, med


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--vgg11", action="store_true", help="VGG11 on CIFAR-shaped input on a CPU too (always on a GPU)")
    parser.add_argument("--resnet18", action="store_true", help="torchvision's resnet18 (CIFAR stem) on a CPU too (always on a GPU)")
    parser.add_argument("--batch", type=int, default=256, help="the metric batch (and the SGD step's)")
    parser.add_argument("--only", default="", help="only the cases whose name contains this (e.g. vgg11)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from geoviz.setups.training import resolve_device

    device = resolve_device(args.device)
    k = SolverConfig().cg_iterations
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, CG iterations k={k}, metric batch {args.batch}")
    print(f"engine backend: {SolverConfig().backend}")
    print("Gv/SGD: one full product per backend; 'step': the product the exact step runs (row-space coordinates where that pays)")
    print(f"{'case':28s} {'SGD ms':>8s} {'Gv/SGD linear':>14s} {'autograd':>9s} {'func':>6s} {'step':>6s} {'exact/SGD':>10s} {'target':>7s} {'penalty/SGD':>12s} {'target':>7s}")
    for case in cases(device, args.vgg11, args.batch, args.resnet18):
        if args.only not in case[0]:
            continue
        name, med = bench_case(case, device, args.rounds, args.repeats, k)
        sgd = med["sgd"]
        exact, penalty = med["exact"] / sgd, med["penalty"] / sgd
        print(
            f"{name:28s} {1000 * sgd:8.3f} {med['gv_linear'] / sgd:14.2f} {med['gv_autograd'] / sgd:9.2f} {med['gv_func'] / sgd:6.2f} {med['gv_step'] / sgd:6.2f} "
            f"{exact:10.2f} {'ok' if exact <= k + 2 else 'MISS':>7s} {penalty:12.2f} {'ok' if penalty <= 1.5 else 'MISS':>7s}"
        )


if __name__ == "__main__":
    main()
