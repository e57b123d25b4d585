"""Pictures of weight space: trajectory PCA, planes and slices of the loss landscape."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

__all__ = [
    "TrajectoryPCA",
    "trajectory_pca",
    "Plane",
    "grid_axes",
    "EvalData",
    "BatchedEvaluator",
    "grid_cost",
    "Landscape",
    "loss_profile",
]


@dataclass(frozen=True)
class TrajectoryPCA:
    """A trajectory projected on its top principal components.

    Attributes:
        coords: (S, k) coordinates of each snapshot.
        explained: (k,) fraction of the trajectory's variance along each component.
        components: (k, P) unit directions in weight space.
        mean: (P,) the mean snapshot (the origin of the plot).
    """

    coords: torch.Tensor
    explained: torch.Tensor
    components: torch.Tensor
    mean: torch.Tensor

    def project(self, w: torch.Tensor) -> torch.Tensor:
        """Coordinates of other points (..., P) -> (..., k) in the same frame."""
        return (w - self.mean) @ self.components.T


def trajectory_pca(snapshots: torch.Tensor, k: int = 2) -> TrajectoryPCA:
    """PCA of stacked weight snapshots (S, P), via the SVD of the centred stack.

    With S snapshots there are at most S - 1 non-zero components; missing ones are
    returned as zeros so the caller can always draw k axes.
    """
    x = snapshots.double()
    mean = x.mean(0)
    centred = x - mean
    if centred.shape[0] < centred.shape[1]:
        # S << P: eigen-decompose the (S, S) Gram matrix, one matmul of O(S^2 P);
        # several times faster than LAPACK's SVD of the (S, P) matrix, which the live
        # page pays on every redraw
        eigval, u = torch.linalg.eigh(centred @ centred.T)
        eigval, u = eigval.flip(0).clamp_min(0.0), u.flip(1)
        sing = eigval.sqrt()
        top = min(k, sing.shape[0])  # only the components that are returned
        vh = (u[:, :top].T @ centred) / sing[:top].clamp_min(1e-150)[:, None]
        vh[sing[:top] <= 1e-7 * sing[0].clamp_min(1e-150)] = 0.0  # round-off, not a direction
    else:
        _, sing, vh = torch.linalg.svd(centred, full_matrices=False)
    total = (sing**2).sum().clamp_min(1e-300)
    explained = torch.zeros(k, dtype=torch.float64)
    components = torch.zeros(k, x.shape[1], dtype=torch.float64)
    n = min(k, vh.shape[0])
    explained[:n] = (sing[:n] ** 2) / total
    components[:n] = vh[:n]
    coords = centred @ components.T
    return TrajectoryPCA(coords.float(), explained.float(), components.float(), mean.float())


# ---------------------------------------------------------------------------
# The plane through three networks, and the loss on a grid over it


@dataclass(frozen=True)
class Plane:
    """The plane through w_A, w_B and a third point, in orthonormal coordinates.

    w_A is the origin; the x axis points to w_B; the y axis is the part of
    (third - w_A) orthogonal to it (Gram-Schmidt, as in Garipov et al. 2018).
    Coordinates are Euclidean distances in weight space.

    Attributes:
        origin: (P,) w_A.
        u: (P,) unit vector along w_B - w_A.
        v: (P,) unit vector in the plane, orthogonal to u.
    """

    origin: torch.Tensor
    u: torch.Tensor
    v: torch.Tensor

    @classmethod
    def through(cls, w_a: torch.Tensor, w_b: torch.Tensor, third: torch.Tensor) -> Plane:
        d = (w_b - w_a).double()
        u = d / d.norm().clamp_min(1e-30)
        r = (third - w_a).double()
        r = r - torch.dot(r, u) * u
        if float(r.norm()) < 1e-9 * float(d.norm()):
            raise ValueError("the third point lies on the line through w_A and w_B; no plane")
        v = r / r.norm()
        return cls(w_a.detach(), u.to(w_a.dtype), v.to(w_a.dtype))

    def project(self, w: torch.Tensor) -> torch.Tensor:
        """Coordinates (..., 2) of points (..., P): their orthogonal projection."""
        centred = (w - self.origin).double()
        return torch.stack([centred @ self.u.double(), centred @ self.v.double()], dim=-1).float()

    def points(self, coords: torch.Tensor) -> torch.Tensor:
        """Flat weights (C, P) at plane coordinates (C, 2)."""
        coords = coords.to(self.origin.dtype).to(self.origin.device)
        return self.origin + coords[:, :1] * self.u + coords[:, 1:2] * self.v


def grid_axes(coords: torch.Tensor, n: int, margin: float = 0.25) -> tuple[torch.Tensor, torch.Tensor]:
    """n evenly spaced x and y values covering ``coords`` (M, 2) plus a margin.

    The margin is a fraction of the larger span on each side, so the picture keeps
    a square-ish aspect and shows what lies beyond the three networks.
    """
    if n < 2:
        raise ValueError(f"a grid needs at least 2 points per side, got {n}")
    lo, hi = coords.min(0).values, coords.max(0).values
    pad = margin * float((hi - lo).max())
    xs = torch.linspace(float(lo[0]) - pad, float(hi[0]) + pad, n)
    ys = torch.linspace(float(lo[1]) - pad, float(hi[1]) + pad, n)
    return xs, ys


@dataclass(frozen=True)
class EvalData:
    """The rows a landscape point is judged on: training rows (loss) and test rows."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def rows(self) -> int:
        return self.x_train.shape[0] + self.x_test.shape[0]


def _mlp_layers(model) -> list[str] | None:
    """Linear layer prefixes when ``model`` is our plain Linear/ReLU MLP; else None."""
    from torch import nn

    from geoviz.setups.models import MLP

    if not isinstance(model, MLP):
        return None
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]


def _loss_and_correct(logits: torch.Tensor, onehot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-network summed cross-entropy and count of correct rows, classes along dim 1.

    logits (C, K, n) and onehot (K, n) -> (C,), (C,) float64. With the n rows
    contiguous the reductions over the K classes vectorise along the rows: ~3x
    faster than ``cross_entropy`` over (C n, K) for K = 10.
    """
    top = logits.amax(1)  # (C, n)
    picked = (logits * onehot).sum(1)  # (C, n): the true class's logit
    lse = torch.exp(logits - top.unsqueeze(1)).sum(1).log_() + top
    loss = (lse - picked).double().sum(1)
    correct = (picked >= top).double().sum(1)  # ties (measure zero) count as correct
    return loss, correct


class BatchedEvaluator:
    """Loss and accuracy of many networks at once: (C, P) flat weights -> figures.

    Three ways, chosen by the model:

    - a plain ReLU MLP: batched matrix products over the stacked weights; on a
      plane, the first layer is affine in the plane's coordinates, so its
      pre-activations for every point combine three precomputed ones (the
      origin's and the two directions'), one product instead of a layer;
    - any other model without BatchNorm: ``torch.func.vmap`` of
      ``functional_call`` over the stacked weights;
    - models with BatchNorm: one point at a time, statistics recomputed at each
      (METHOD.md: otherwise points look far worse than they are).

    On the CPU the rows are walked in blocks small enough that a block's
    activations for a chunk of networks stay in the cache (~1 MB a layer); a
    forward pass over the whole set at once is bound by memory traffic, not
    arithmetic. On a GPU what counts is the number of kernel launches: chunks of
    128 networks over all rows at once.

    Args:
        problem: a :class:`~geoviz.setups.problem.Problem` (model, layout, buffers).
        data: the rows to evaluate on.
        chunk: networks per batched call (None: 8 on the CPU, 128 on a GPU).
        block_rows: rows per block (None: sized to ~1 MB of activations per layer
            on the CPU, all rows on a GPU).
    """

    def __init__(self, problem, data: EvalData, chunk: int | None = None, block_rows: int | None = None):
        self.problem = problem
        self.data = data
        # streamed rows (geoviz.setups.stream) are never gathered: one network at a time, chunked
        self.streamed = not isinstance(data.x_train, torch.Tensor) or not isinstance(data.x_test, torch.Tensor)
        self.n_train = data.x_train.shape[0]
        n = self.n_train + data.x_test.shape[0]
        if self.streamed:
            self.x = self.y = self._onehot = None
            self.layers = None
        else:
            self.x = torch.cat([data.x_train, data.x_test]).to(problem.device)  # (N, ...)
            self.y = torch.cat([data.y_train, data.y_test]).to(problem.device)
            self._onehot = torch.nn.functional.one_hot(self.y, problem.data.num_classes).T.to(problem.w0.dtype)  # (K, N)
            self.layers = _mlp_layers(problem.model)
        width = max(problem.model.hidden) if self.layers else 256
        gpu = (self.x.device if self.x is not None else torch.device(problem.device)).type == "cuda"
        self.chunk = max(1, chunk or (128 if gpu else 8))
        self.block_rows = block_rows or (n if gpu else max(32, 2**20 // (4 * self.chunk * width)))
        # blocks never straddle the train/test boundary
        self._blocks = [(a, min(a + self.block_rows, self.n_train), "train") for a in range(0, self.n_train, self.block_rows)]
        self._blocks += [(a, min(a + self.block_rows, n), "test") for a in range(self.n_train, n, self.block_rows)]
        self._plane: Plane | None = None
        self._first: torch.Tensor | None = None
        offsets, start = {}, 0
        for name, size in zip(problem.layout.names, problem.layout.sizes):
            offsets[name] = (start, start + size)
            start += size
        self._offsets = offsets

    @property
    def method(self) -> str:
        if self.problem.batchnorm:
            return "one at a time (BatchNorm recomputed)"
        if self.streamed:
            return "one at a time (streamed data)"
        return "batched MLP" if self.layers else "torch.func.vmap"

    def _param(self, w: torch.Tensor, name: str) -> torch.Tensor:
        """(C, *shape) slice of stacked flat weights (C, P)."""
        a, b = self._offsets[name]
        shape = self.problem.layout.shapes[self.problem.layout.names.index(name)]
        return w[:, a:b].reshape(w.shape[0], *shape)

    def _accumulate(self, count: int, block_logits) -> dict[str, torch.Tensor]:
        """Walk the row blocks; ``block_logits(a, b)`` gives (C, K, b - a) logits."""
        zero = torch.zeros(count, dtype=torch.float64, device=self.x.device)
        sums = {"train": [zero, zero.clone()], "test": [zero.clone(), zero.clone()]}
        for a, b, part in self._blocks:
            loss, correct = _loss_and_correct(block_logits(a, b), self._onehot[:, a:b])
            sums[part][0] += loss
            sums[part][1] += correct
        n_train, n_test = self.n_train, self.x.shape[0] - self.n_train
        return {
            "train_loss": sums["train"][0] / n_train,
            "train_accuracy": sums["train"][1] / n_train,
            "test_loss": sums["test"][0] / n_test,
            "test_accuracy": sums["test"][1] / n_test,
        }

    def _mlp_weights(self, w: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer (weight, bias) of stacked networks, laid out for baddbmm."""
        out = []
        for name in self.layers[:-1]:
            weight = self._param(w, f"{name}.weight").transpose(1, 2).contiguous()  # (C, in, out)
            out.append((weight, self._param(w, f"{name}.bias").unsqueeze(1)))  # bias (C, 1, out)
        last = self.layers[-1]
        out.append((self._param(w, f"{last}.weight").contiguous(), self._param(w, f"{last}.bias").unsqueeze(2)))
        return out

    @staticmethod
    def _mlp_rest(weights, first: torch.Tensor) -> torch.Tensor:
        """First-layer pre-activations (C, n, H) -> logits (C, K, n)."""
        h = torch.relu_(first)
        for weight, bias in weights[1:-1]:
            h = torch.relu_(torch.baddbmm(bias, h, weight))  # (C, n, out)
        weight, bias = weights[-1]
        return torch.baddbmm(bias, weight, h.transpose(1, 2))  # (C, K, n): classes first

    @torch.no_grad()
    def stack(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        """Figures of stacked flat networks (C, P); each value (C,) float64 on the CPU."""
        outs = [self._stack_chunk(part) for part in torch.split(w, self.chunk)]
        return {k: torch.cat([o[k] for o in outs]).cpu() for k in outs[0]}

    def _stack_chunk(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        p = self.problem
        if p.batchnorm or self.streamed:
            rows = []
            for wi in w:
                buffers = p.buffers_at(wi)
                tr = p.evaluate(wi, self.data.x_train, self.data.y_train, buffers)
                te = p.evaluate(wi, self.data.x_test, self.data.y_test, buffers)
                rows.append([*tr, *te])
            t = torch.tensor(rows, dtype=torch.float64)
            return {"train_loss": t[:, 0], "train_accuracy": t[:, 1], "test_loss": t[:, 2], "test_accuracy": t[:, 3]}
        if self.layers:
            weights = self._mlp_weights(w)
            flat = self.x.reshape(self.x.shape[0], -1)  # (N, D)
            w1, b1 = weights[0]

            def block_logits(a: int, b: int) -> torch.Tensor:
                first = torch.baddbmm(b1, flat[a:b].expand(w.shape[0], -1, -1), w1)  # (C, n, H)
                return self._mlp_rest(weights, first)

            return self._accumulate(w.shape[0], block_logits)
        from torch.func import functional_call, vmap

        def logits_of(flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            return functional_call(p.model, ({**p.layout.unflatten(flat), **p.buffers},), (x,))

        batched = vmap(logits_of, in_dims=(0, None))
        return self._accumulate(w.shape[0], lambda a, b: batched(w, self.x[a:b]).transpose(1, 2))

    # -- on a plane ---------------------------------------------------------------
    def _prepare_plane(self, plane: Plane) -> None:
        """First-layer pre-activations at the origin and along u and v, (3, N, H)."""
        if self._plane is plane:
            return
        name = self.layers[0]
        flat = self.x.reshape(self.x.shape[0], -1)
        three = torch.stack([plane.origin, plane.u, plane.v])  # (3, P)
        weight = self._param(three, f"{name}.weight")  # (3, H, D)
        bias = self._param(three, f"{name}.bias")  # (3, H)
        pre = flat @ weight.transpose(1, 2)  # (3, N, H)
        pre += bias.unsqueeze(1)
        self._first = pre
        self._plane = plane

    @torch.no_grad()
    def plane(self, plane: Plane, coords: torch.Tensor) -> dict[str, torch.Tensor]:
        """Figures at plane coordinates (C, 2); each value (C,) float64 on the CPU."""
        if not self.layers or self.problem.batchnorm:
            return self.stack(plane.points(coords))
        self._prepare_plane(plane)
        three = self._first  # (3, N, H): origin, u, v
        hidden = three.shape[2]
        outs = []
        for part in torch.split(coords.to(three.dtype).to(three.device), self.chunk):
            weights = self._mlp_weights(plane.points(part))
            # the first layer is affine on the plane: [1, x, y] @ (origin, u, v)
            coef = torch.cat([torch.ones_like(part[:, :1]), part], dim=1)  # (C, 3)

            def block_logits(a: int, b: int) -> torch.Tensor:
                first = (coef @ three[:, a:b].reshape(3, -1)).view(-1, b - a, hidden)  # (C, n, H)
                return self._mlp_rest(weights, first)

            outs.append(self._accumulate(part.shape[0], block_logits))
        return {k: torch.cat([o[k] for o in outs]).cpu() for k in outs[0]}


def grid_cost(n: int, data: EvalData, parameters: int) -> dict[str, float]:
    """What an n x n grid costs before it runs: network evaluations and data rows."""
    points = n * n
    return {
        "points": points,
        "evaluations": points,
        "rows_per_evaluation": data.rows,
        "forward_rows": points * data.rows,
        # a forward pass costs about one multiply-add per parameter per row
        "multiply_adds": float(points) * data.rows * parameters,
    }


@dataclass
class Landscape:
    """An n x n grid of figures on a plane; filled row by row by :meth:`fill`.

    Attributes:
        plane: the plane.
        xs, ys: (n,) grid coordinates.
        values: name -> (n_y, n_x) float64 array, NaN where not computed yet.
        rows_done: how many rows (of constant y) are filled.
    """

    plane: Plane
    xs: torch.Tensor
    ys: torch.Tensor
    values: dict[str, torch.Tensor]
    rows_done: int = 0
    seconds: float = 0.0

    @classmethod
    def empty(cls, plane: Plane, xs: torch.Tensor, ys: torch.Tensor) -> Landscape:
        shape = (ys.shape[0], xs.shape[0])
        names = ("train_loss", "train_accuracy", "test_loss", "test_accuracy")
        return cls(plane, xs, ys, {k: torch.full(shape, float("nan"), dtype=torch.float64) for k in names})

    @property
    def complete(self) -> bool:
        return self.rows_done >= self.ys.shape[0]

    def fill(self, evaluator: BatchedEvaluator, rows_per_chunk: int = 1) -> Iterator[Landscape]:
        """Fill the grid a few rows at a time, yielding self after each chunk."""
        import time

        while not self.complete:
            start = self.rows_done
            stop = min(self.ys.shape[0], start + rows_per_chunk)
            t0 = time.perf_counter()
            gy, gx = torch.meshgrid(self.ys[start:stop], self.xs, indexing="ij")
            coords = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)  # (rows * n, 2)
            out = evaluator.plane(self.plane, coords)
            for k, val in out.items():
                if k in self.values:
                    self.values[k][start:stop] = val.view(stop - start, -1)
            self.rows_done = stop
            self.seconds += time.perf_counter() - t0
            yield self


def loss_profile(evaluator: BatchedEvaluator, weights: torch.Tensor) -> dict[str, torch.Tensor]:
    """A 1-D slice: figures at stacked points (T, P) of any curve."""
    return evaluator.stack(weights)
