"""A digits sparsification from tensors against the same run streamed from a Dataset.

Side by side in one process (interleaved rounds, median of rounds), so the ratio
holds on a busy machine. Three forms of the same rows and seed (the same path):
tensors (moved to the device whole), a DataLoader over a TensorDataset (streamed,
batches gathered by indexing its tensors) and a plain map-style Dataset of
numpy rows (streamed, one ``__getitem__`` per row, collated).

    python bench/stream_cost.py [--steps 100] [--rounds 3] [--baselines]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import geoviz  # noqa: E402
from geoviz.setups.data import load_dataset  # noqa: E402


class Rows(Dataset):
    """Numpy rows and int labels, one item at a time (a typical user Dataset)."""

    def __init__(self, x, y):
        self.x, self.y = x.numpy(), y.tolist()

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baselines", action="store_true")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    d = load_dataset("digits")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(200):
        loss = nn.functional.cross_entropy(model(d.x_train), d.y_train)
        opt.zero_grad()
        loss.backward()
        opt.step()
    forms = {
        "tensors": lambda: ((d.x_train, d.y_train), (d.x_test, d.y_test)),
        "DataLoader(TensorDataset)": lambda: (DataLoader(TensorDataset(d.x_train, d.y_train), batch_size=256),
                                              DataLoader(TensorDataset(d.x_test, d.y_test), batch_size=256)),
        "Dataset of numpy rows": lambda: (Rows(d.x_train, d.y_train), Rows(d.x_test, d.y_test)),
    }
    seconds: dict[str, list[float]] = {k: [] for k in forms}
    accuracy: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as out:
        for _ in range(args.rounds):
            for name, make in forms.items():
                train, test = make()
                t0 = time.perf_counter()
                run = geoviz.sparsify(model, train=train, test=test, sparsity=0.9, steps=args.steps, tolerance=1e-9,
                                      baselines=args.baselines, out=out, device=args.device, progress=False)
                seconds[name].append(time.perf_counter() - t0)
                accuracy[name] = run.summary["accuracy"]
    base = statistics.median(seconds["tensors"])
    print(f"digits MLP 64-128-128-10, sparsify {args.steps} steps, baselines {args.baselines}, {args.device}, "
          f"median of {args.rounds} interleaved rounds")
    for name in forms:
        t = statistics.median(seconds[name])
        print(f"  {name:28s} {t:7.2f} s  x{t / base:5.2f}  accuracy {accuracy[name]:.4f}")


if __name__ == "__main__":
    main()
