"""A fixed random projection of weight snapshots, for trajectories of big networks.

A PCA of a trajectory needs only the snapshots' pairwise geometry (the Gram matrix
of the centred stack). A linear map S: R^P -> R^k that nearly preserves distances
(Johnson-Lindenstrauss) keeps that geometry, so the PCA of S w_1, ..., S w_n draws
nearly the same picture as the PCA of the full snapshots, at k numbers a snapshot
instead of P. The map here is the sparse sign projection of the count sketch
(Charikar et al. 2002; as a JL map, Kane and Nelson 2014): weight i is added, with a
random sign, to one of k buckets. For any fixed vector x, E|Sx|^2 = |x|^2 and
Var|Sx|^2 = 2/k (|x|^4 - sum x_i^4) <= 2|x|^4 / k, the variance of a dense Gaussian
projection, at O(P) work instead of O(kP).

S is never stored: each chunk of 2^20 weights draws its buckets and signs from a
CPU generator seeded by (seed, chunk), so the same S is rebuilt anywhere (a replay
projects the other paths' points with the snapshots' map) and no copy of w is made
beyond one chunk at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["SparseSignSketch", "sketch_for_budget", "check_budget_mb", "SKETCH_DIM", "MIN_FULL_SNAPSHOTS", "MIN_BUDGET_MB", "DEFAULT_BUDGET_MB"]

# k = 4096: |Sx| within about 2.2% (one standard deviation) of |x|; 200 snapshots
# of it are 3.2 MB, against 8.8 GB of full resnet18 snapshots
SKETCH_DIM = 4096
# a PCA picture wants a few dozen points: when fewer full snapshots than this fit
# the budget, keep projections instead
MIN_FULL_SNAPSHOTS = 32
_CHUNK = 1 << 20
# the smallest snapshot budget accepted: its half (the live trajectory's) holds 200
# projections of 655 numbers, |Sx| within about 6% of |x|
MIN_BUDGET_MB = 1.0
# the snapshot budget when none is chosen (CLI --snapshot-mb, snapshot_mb=, the pages' setting)
DEFAULT_BUDGET_MB = 64.0


@dataclass(frozen=True)
class SparseSignSketch:
    """The count-sketch projection R^parameters -> R^dim, rebuilt from ``seed``.

    Calling it maps flat weights (P,) (any device) to (dim,) float32 on the CPU.
    """

    parameters: int
    dim: int = SKETCH_DIM
    seed: int = 0

    def _codes(self, chunk: int, size: int) -> torch.Tensor:
        """Bucket and sign of each weight of one chunk: bucket + dim * (sign < 0), in [0, 2 dim)."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + chunk)
        return torch.randint(0, 2 * self.dim, (size,), generator=gen)

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        w = w.detach().reshape(-1)
        if w.numel() != self.parameters:
            raise ValueError(f"the sketch is of {self.parameters} weights; got {w.numel()}.")
        total = torch.zeros(2 * self.dim, dtype=torch.float64)
        for chunk, start in enumerate(range(0, self.parameters, _CHUNK)):
            part = w[start : start + _CHUNK].float().cpu()  # one chunk at a time, never the whole
            codes = self._codes(chunk, part.numel())
            total += torch.bincount(codes, weights=part, minlength=2 * self.dim)  # float32 sums of ~P/2k terms
        return (total[: self.dim] - total[self.dim :]).float()  # (dim,)

    def to_metadata(self) -> dict[str, str]:
        return {"sketch": "sparse_sign", "parameters": str(self.parameters), "dim": str(self.dim), "seed": str(self.seed)}

    @classmethod
    def from_metadata(cls, meta: dict[str, str] | None) -> SparseSignSketch | None:
        if not meta or meta.get("sketch") != "sparse_sign":
            return None
        return cls(int(meta["parameters"]), int(meta["dim"]), int(meta["seed"]))


def sketch_for_budget(parameters: int, budget_bytes: int, max_count: int = 200, seed: int = 0) -> SparseSignSketch | None:
    """None when ``MIN_FULL_SNAPSHOTS`` full float32 snapshots fit the budget; else the
    sketch whose ``max_count`` snapshots fit it (at most ``SKETCH_DIM`` numbers each)."""
    if budget_bytes // (4 * parameters) >= MIN_FULL_SNAPSHOTS:
        return None
    dim = min(SKETCH_DIM, budget_bytes // (4 * max_count))
    if dim < 16 or dim >= parameters:  # a budget too small for a useful picture: full snapshots (floor of 2)
        return None
    return SparseSignSketch(parameters, int(dim), seed)


def check_budget_mb(mb: float) -> float:
    """The snapshot budget in MB, or a ConfigError that says what is allowed."""
    from geoviz.errors import ConfigError

    if not isinstance(mb, (int, float)) or not math.isfinite(mb) or mb < MIN_BUDGET_MB:
        raise ConfigError(f"The snapshot budget must be a number of MB of at least {MIN_BUDGET_MB:g}, got {mb!r}.")
    return float(mb)
