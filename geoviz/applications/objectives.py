"""Second objectives L2(w) of the three applications, on flat weights.

Each objective gives ``value_and_grad(w)``, a ``distance(w)`` to its end (a 0-d
tensor, or None for no end; the path ends once it is at most ``tolerance``), and
how to land exactly at the end (``finish``). Numbers stay tensors so the path can
fetch a step's figures from a GPU in one transfer.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from geoviz.core.metric import FlatParams

__all__ = ["SparsifyObjective", "TowardPointObjective", "TaskLossObjective", "magnitude_mask"]


def kth_smallest(a: torch.Tensor, k: int, sample: int = 65_536, seed: int = 0) -> torch.Tensor:
    """The k-th smallest value of a flat tensor (1-based), in a few O(n) passes.

    A seeded sample's quantiles bracket it; only the values inside the bracket (about
    2% of them) go to ``kthvalue``. A bracket that misses (not seen in practice) falls
    back to ``kthvalue`` over everything: the answer is exact either way. A full sort
    of resnet18's 11 M magnitudes took 9.5 s; this takes about 0.1 s.
    """
    n = a.numel()
    if n <= 4 * sample:
        return a.kthvalue(k).values
    gen = torch.Generator().manual_seed(seed)
    picked = a[torch.randint(0, n, (sample,), generator=gen).to(a.device)].sort().values
    q, margin = k / n, 4.0 * (sample**-0.5)  # the sample quantile's error is about sqrt(q(1-q)/sample)
    lo = picked[max(0, int((q - margin) * sample))]
    hi = picked[min(sample - 1, int((q + margin) * sample))]
    below = int((a < lo).sum())
    inside = a[(a >= lo) & (a <= hi)]
    if below < k <= below + inside.numel():
        return inside.kthvalue(k - below).values
    return a.kthvalue(k).values


def magnitude_mask(w: torch.Tensor, prunable: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Global magnitude mask: 1 keeps, 0 prunes the smallest |w| among prunable entries.

    Exactly ``round(sparsity * prunable)`` entries are pruned: every one below the
    k-th smallest magnitude, and of those equal to it the first by position.

    Args:
        w: flat weights (P,).
        prunable: flat 0/1 vector, 1 on prunable weights (Linear/Conv weights).
        sparsity: fraction of prunable weights to prune, in (0, 1).

    Returns:
        Flat 0/1 mask (P,), 1 on every non-prunable entry.
    """
    keep_out = prunable == 0
    k = int(round(sparsity * (w.numel() - int(keep_out.sum()))))
    mask = torch.ones_like(w)
    if k > 0:
        magnitude = w.abs().masked_fill_(keep_out, torch.inf)  # (P,); never among the k smallest
        threshold = kth_smallest(magnitude, k)  # a selection, not a sort
        prune = magnitude < threshold
        short = k - int(prune.sum())
        if short > 0:  # ties at the threshold: the first ones by position
            prune[(magnitude == threshold).nonzero().squeeze(1)[:short]] = True
        mask.masked_fill_(prune, 0.0)
    return mask


class _Memo:
    """``vector(w)`` and its norm for the last ``w`` seen.

    A path asks for the distance at the next point, then for the value and gradient
    at that same point on the next step: this saves one pass over the weights each
    time. Keyed by the tensor itself and its version counter, so a tensor changed
    in place is computed again.
    """

    def __init__(self, vector):
        self._vector = vector
        self._key: tuple | None = None
        self._value: tuple[torch.Tensor, torch.Tensor] | None = None

    def __call__(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._key is None or self._key[0] is not w or self._key[1] != w._version:
            vec = self._vector(w)
            self._key, self._value = (w, w._version), (vec, vec.norm())
        return self._value


class SparsifyObjective:
    """L2(w) = 1/2 |(1 - m) * w|^2: pull the masked weights to zero.

    The path ends when |(1 - m) w| <= tolerance * |(1 - m) w0|; then the mask is
    applied exactly.

    With ``revise_every`` K > 0 (and the ``prunable`` entries and ``sparsity`` the
    mask was made with) the mask is chosen again every K steps, before steps
    K + 1, 2K + 1, ...: the smallest |w| at the current point, at the same sparsity.
    A weight the path has shrunk below a pulled one swaps places with it. The new
    pruned set has the smallest norm of any set of its size, so the remaining
    distance never grows at a revision; it is measured against the same start norm.
    """

    def __init__(
        self,
        mask: torch.Tensor,
        w0: torch.Tensor,
        tolerance: float = 0.02,
        revise_every: int = 0,
        prunable: torch.Tensor | None = None,
        sparsity: float | None = None,
    ):
        if revise_every and (prunable is None or sparsity is None):
            raise ValueError("a revised mask needs the prunable entries and the sparsity")
        self.tolerance = tolerance
        self.revise_every = revise_every
        self.prunable, self.sparsity = prunable, sparsity
        self.revisions = 0  # revisions that changed the mask
        self._set_mask(mask)
        self.start_norm = float((self.pruned * w0).norm())

    def _set_mask(self, mask: torch.Tensor) -> None:
        self.mask = mask
        self.pruned = 1.0 - mask
        self._memo = _Memo(lambda w: self.pruned * w)

    def begin_step(self, step: int, w: torch.Tensor) -> None:
        """Called by the path before each step (1, 2, ...): revise the mask when due."""
        if self.revise_every > 0 and step > 1 and (step - 1) % self.revise_every == 0:
            mask = magnitude_mask(w, self.prunable, self.sparsity)
            if not torch.equal(mask, self.mask):
                self.revisions += 1
                self._set_mask(mask)

    def value_and_grad(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        masked, norm = self._memo(w)
        return 0.5 * norm.square(), masked

    end_reason = "masked weights reached zero; mask applied"

    def distance(self, w: torch.Tensor) -> torch.Tensor:
        """|(1 - m) w| / |(1 - m) w0| as a 0-d tensor: 1 at the start, 0 when pruned.

        The path ends once this is at most ``tolerance``.
        """
        return self._memo(w)[1] / max(self.start_norm, 1e-30)

    def remaining(self, w: torch.Tensor) -> float:
        return float(self.distance(w))

    def finish(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask


class TowardPointObjective:
    """L2(w) = 1/2 |w - w_B|^2; the path ends at w_B exactly once within ``tolerance``."""

    def __init__(self, target: torch.Tensor, tolerance: float):
        self.target = target
        self.tolerance = tolerance
        self._memo = _Memo(lambda w: w - self.target)

    def value_and_grad(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        diff, norm = self._memo(w)
        return 0.5 * norm.square(), diff

    end_reason = "reached the target network"

    def distance(self, w: torch.Tensor) -> torch.Tensor:
        """|w - w_B| as a 0-d tensor; the path ends once it is at most ``tolerance``."""
        return self._memo(w)[1]

    def finish(self, w: torch.Tensor) -> torch.Tensor:
        return self.target.clone()


class TaskLossObjective:
    """L2(w) = cross-entropy of a new task on a fresh minibatch each call."""

    gradient_cost = 1  # one forward and backward per step, counted for the baselines

    def __init__(
        self,
        model: nn.Module,
        buffers: dict[str, torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int = 128,
        seed: int = 0,
        output_slice: slice | None = None,
    ):
        self.model = model
        self.layout = FlatParams.of(model)
        self.buffers = buffers
        self.x, self.y = x, y
        self.batch_size = min(batch_size, x.shape[0])
        self.output_slice = output_slice
        self._gen = torch.Generator(device="cpu").manual_seed(seed)

    def value_and_grad(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.randint(0, self.x.shape[0], (self.batch_size,), generator=self._gen).to(self.x.device)
        w = w.detach().requires_grad_(True)
        logits = functional_call(self.model, ({**self.layout.unflatten(w), **self.buffers},), (self.x[index],))
        if self.output_slice is not None:
            logits = logits[:, self.output_slice]
        loss = torch.nn.functional.cross_entropy(logits, self.y[index])
        (grad,) = torch.autograd.grad(loss, w)
        return loss.detach(), grad

    def distance(self, w: torch.Tensor) -> None:
        """No end point: the path runs for its step budget."""
        return None

    def finish(self, w: torch.Tensor) -> torch.Tensor:
        return w
