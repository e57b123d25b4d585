"""Curves between two networks: t in [0, 1] -> coefficients over a few bends.

A curve is a tiny object (Garipov et al. 2018, dnn-mode-connectivity): its weights
at t are a coefficient-weighted sum of its bends, flat (P,) vectors. The invariant
every curve keeps: t = 0 gives the first bend (w_A), t = 1 the last (w_B).

- :class:`LineCurve`: w(t) = (1 - t) w_A + t w_B.
- :class:`BezierCurve`: w(t) = (1 - t)^2 w_A + 2 t (1 - t) theta + t^2 w_B, with a
  trainable control point theta.
- :class:`PolylineCurve`: the geodesic's trajectory, piecewise linear through its
  snapshots, parametrised by Euclidean arc length.

Also here: weight matching (Ainsworth et al. 2023, "Git Re-Basin"), which permutes
the hidden units of w_B to line up with w_A without changing its function.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from geoviz.errors import ConfigError
from geoviz.core.metric import FlatParams

__all__ = [
    "LineCurve",
    "BezierCurve",
    "PolylineCurve",
    "arc_length_parameters",
    "curve_points",
    "weight_matching",
]


class LineCurve:
    """The straight line from w_A to w_B."""

    name = "line"

    def __init__(self, w_a: torch.Tensor, w_b: torch.Tensor):
        self.bends = torch.stack([w_a, w_b])  # (2, P)

    def coefficients(self, t: torch.Tensor) -> torch.Tensor:
        """(T,) -> (T, 2)."""
        t = torch.as_tensor(t, dtype=self.bends.dtype).reshape(-1)
        return torch.stack([1.0 - t, t], dim=1)

    def weights(self, t) -> torch.Tensor:
        """(T,) parameters -> (T, P) flat weights."""
        return self.coefficients(t).to(self.bends.device) @ self.bends


class BezierCurve(LineCurve):
    """Quadratic Bezier curve with control point ``theta``."""

    name = "bezier"

    def __init__(self, w_a: torch.Tensor, theta: torch.Tensor, w_b: torch.Tensor):
        self.bends = torch.stack([w_a, theta, w_b])  # (3, P)

    @property
    def control(self) -> torch.Tensor:
        return self.bends[1]

    @staticmethod
    def basis(t: torch.Tensor) -> torch.Tensor:
        """Bernstein coefficients (T,) -> (T, 3); differentiable in nothing but t."""
        return torch.stack([(1.0 - t) ** 2, 2.0 * t * (1.0 - t), t**2], dim=-1)

    def coefficients(self, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=self.bends.dtype).reshape(-1)
        return self.basis(t)


class PolylineCurve:
    """Piecewise linear through vertices (S, P), t = fraction of Euclidean length."""

    name = "polyline"

    def __init__(self, vertices: torch.Tensor):
        if vertices.shape[0] < 2:
            raise ConfigError("a polyline needs at least two vertices.")
        self.bends = vertices
        seg = (vertices[1:] - vertices[:-1]).norm(dim=1).double().cpu()  # (S-1,)
        cum = torch.cat([torch.zeros(1, dtype=torch.float64), seg.cumsum(0)])
        self.length = float(cum[-1])
        self.knots = cum / max(self.length, 1e-30)  # (S,) in [0, 1]

    def coefficients(self, t) -> torch.Tensor:
        """(T,) -> (T, S): two non-zero weights per row (the segment's ends)."""
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1).clamp(0.0, 1.0)
        s = self.bends.shape[0]
        right = torch.searchsorted(self.knots, t, right=False).clamp(1, s - 1)
        left = right - 1
        span = (self.knots[right] - self.knots[left]).clamp_min(1e-30)
        frac = (t - self.knots[left]) / span
        out = torch.zeros(t.shape[0], s, dtype=torch.float64)
        rows = torch.arange(t.shape[0])
        out[rows, left] += 1.0 - frac
        out[rows, right] += frac
        return out.to(self.bends.dtype)

    def weights(self, t) -> torch.Tensor:
        return self.coefficients(t).to(self.bends.device) @ self.bends


def curve_points(curve, t, sketch=None) -> torch.Tensor:
    """(T,) parameters -> (T, P) weights of the curve, or (T, k) their projections by
    ``sketch`` (a linear map, so the curve's bends are projected, not each point)."""
    if sketch is None:
        return curve.weights(t)
    return curve.coefficients(t).float().cpu() @ torch.stack([sketch(b) for b in curve.bends])


def arc_length_parameters(curve, n: int, samples: int = 2001) -> tuple[torch.Tensor, float]:
    """Parameters t of ``n`` points evenly spaced in Euclidean arc length, and the length.

    Segment lengths come from the bends' Gram matrix, |sum_i d_i b_i|^2 = d^T (B B^T) d,
    so no dense sample of the curve is ever held in memory.
    """
    if isinstance(curve, PolylineCurve):
        return torch.linspace(0.0, 1.0, n, dtype=torch.float64), curve.length
    bends = curve.bends.double()
    gram = bends @ bends.T  # (m, m)
    t = torch.linspace(0.0, 1.0, samples, dtype=torch.float64)
    coeff = curve.coefficients(t).double().to(gram.device)  # (samples, m)
    diff = coeff[1:] - coeff[:-1]
    seg = torch.einsum("si,ij,sj->s", diff, gram, diff).clamp_min(0.0).sqrt().cpu()
    cum = torch.cat([torch.zeros(1, dtype=torch.float64), seg.cumsum(0)])
    length = float(cum[-1])
    targets = torch.linspace(0.0, length, n, dtype=torch.float64)
    ts = np.interp(targets.numpy(), cum.numpy(), t.numpy())
    return torch.from_numpy(ts), length


# -- weight matching -------------------------------------------------------------


def _linear_layers(model: nn.Module) -> list[str]:
    """Prefixes of the Linear layers of a plain Linear/ReLU stack, in order."""
    from geoviz.setups.models import MLP

    if not isinstance(model, MLP):
        raise ConfigError(
            "alignment (weight matching) is available for the mlp and lenet300 models only."
        )
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]


def weight_matching(
    model: nn.Module,
    w_a: torch.Tensor,
    w_b: torch.Tensor,
    max_iterations: int = 100,
    seed: int = 0,
) -> tuple[torch.Tensor, list[np.ndarray]]:
    """Permute w_B's hidden units to best match w_A (Git Re-Basin, weight matching).

    Coordinate descent over the hidden layers: each layer's permutation solves a
    linear assignment that maximises sum_l <W_l^A, P_l W_l^B P_{l-1}^T> (+ biases)
    with the other permutations fixed, until no layer changes. The permuted
    network computes exactly the same function as w_B.

    Returns:
        (the permuted flat w_B, one index array per hidden layer: unit i of the
        result is unit perm[i] of w_B).
    """
    from scipy.optimize import linear_sum_assignment

    layers = _linear_layers(model)
    layout = FlatParams.of(model)
    pa = {k: v.detach().double().cpu() for k, v in layout.unflatten(w_a).items()}
    pb = {k: v.detach().double().cpu() for k, v in layout.unflatten(w_b).items()}
    hidden = [pa[f"{name}.weight"].shape[0] for name in layers[:-1]]
    perms = [np.arange(h) for h in hidden]
    rng = np.random.default_rng(seed)

    def permuted_in(layer: int) -> torch.Tensor:
        """W_B of ``layer`` with its input columns permuted by the previous layer."""
        weight = pb[f"{layers[layer]}.weight"]
        return weight if layer == 0 else weight[:, perms[layer - 1]]

    for _ in range(max_iterations):
        changed = False
        for layer in rng.permutation(len(hidden)):
            name, after = layers[layer], layers[layer + 1]
            similarity = pa[f"{name}.weight"] @ permuted_in(layer).T  # (H, H)
            similarity += torch.outer(pa[f"{name}.bias"], pb[f"{name}.bias"])
            out_b = pb[f"{after}.weight"]
            if layer + 1 < len(hidden):
                out_b = out_b[perms[layer + 1]]
            similarity += pa[f"{after}.weight"].T @ out_b  # (H, H)
            _, cols = linear_sum_assignment(similarity.numpy(), maximize=True)
            if not np.array_equal(cols, perms[layer]):
                old = similarity[np.arange(len(cols)), perms[layer]].sum()
                new = similarity[np.arange(len(cols)), cols].sum()
                if new > old + 1e-12:
                    perms[layer] = cols
                    changed = True
        if not changed:
            break
    out = dict(pb)
    for layer, name in enumerate(layers):
        weight = pb[f"{name}.weight"]
        bias = pb[f"{name}.bias"]
        if layer < len(hidden):
            weight, bias = weight[perms[layer]], bias[perms[layer]]
        if layer > 0:
            weight = weight[:, perms[layer - 1]]
        out[f"{name}.weight"], out[f"{name}.bias"] = weight, bias
    flat = layout.flatten(out).to(dtype=w_b.dtype, device=w_b.device)
    return flat, perms
