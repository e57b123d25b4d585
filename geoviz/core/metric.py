"""Metric products G v on weight space, matrix-free.

G(w) = (1/B) sum_b J_b^T H_b J_b with J_b = d f(x_b; w) / d w. A product G v is one
forward-mode product (J v, torch.func.jvp) and one reverse-mode product
(J^T u, torch.func.vjp); neither J nor G is ever built.

Two choices of H_b:
- ``output``: H = I (the paper's). v^T G v is the mean squared change of the outputs.
- ``fisher``: H = diag(p) - p p^T with p = softmax(f). v^T G v is twice the mean KL
  divergence between the predictive distributions, to second order.

The engine works on one flat parameter vector; :class:`FlatParams` maps it to the
module's parameter dict (views, no copies), so any ``nn.Module`` works through
``functional_call``.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, jvp, vjp

from geoviz.errors import ConfigError
from geoviz.core.linear_graph import record_graph
from geoviz.core.linearize import Chain, RowSpace, record_chain, row_space

__all__ = [
    "METRIC_KINDS",
    "BACKENDS",
    "FlatParams",
    "make_metric_product",
    "make_step_product",
    "metric_vector_product",
    "top_eigenvalue",
    "functional_distance",
]

METRIC_KINDS = ("output", "fisher")


@dataclass(frozen=True)
class FlatParams:
    """The layout of a module's parameters as one flat vector.

    The order is that of ``model.named_parameters()``, which is also the order of
    ``torch.nn.utils.parameters_to_vector(model.parameters())``.
    """

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]

    @classmethod
    def of(cls, model: nn.Module) -> FlatParams:
        named = list(model.named_parameters())
        return cls(tuple(n for n, _ in named), tuple(p.shape for _, p in named))

    @functools.cached_property
    def sizes(self) -> list[int]:
        return [s.numel() for s in self.shapes]

    @functools.cached_property
    def size(self) -> int:
        return sum(self.sizes)

    @functools.cached_property
    def _view_shapes(self) -> list[tuple[int, ...]]:
        return [tuple(s) for s in self.shapes]  # view() takes a tuple faster than a torch.Size

    def unflatten(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of ``w`` (shape (P,)) as a parameter dict; differentiable."""
        if w.ndim != 1 or w.numel() != self.size:
            raise ValueError(
                f"expected a flat vector of {self.size} numbers, got shape {tuple(w.shape)}"
            )
        return dict(zip(self.names, self.views(w)))

    def views(self, w: torch.Tensor) -> list[torch.Tensor]:
        """The values of ``unflatten(w)`` as a list, without the checks (a path's inner loop)."""
        return [p.view(s) for p, s in zip(w.split_with_sizes(self.sizes), self._view_shapes)]

    def flatten(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """One flat vector (P,) from a parameter dict, in this layout's order."""
        missing = [n for n in self.names if n not in params]
        if missing:
            raise KeyError(f"parameter dict lacks {missing[:3]}")
        return torch.cat([params[n].reshape(-1) for n in self.names])

    def mask(self, names: list[str], like: torch.Tensor) -> torch.Tensor:
        """A flat 0/1 vector that is 1 on the named parameters."""
        chosen = set(names)
        return torch.cat(
            [
                torch.full((s.numel(),), float(n in chosen), dtype=like.dtype, device=like.device)
                for n, s in zip(self.names, self.shapes)
            ]
        )


def _apply_output_hessian(kind: str, logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """H_b u_b for every row b, divided by B. logits, u: (B, K)."""
    batch = logits.shape[0]
    if kind == "output":
        return u / batch
    probs = torch.softmax(logits, dim=-1)  # (B, K)
    # (diag(p) - p p^T) u = p * u - p (p . u)
    return (probs * u - probs * (probs * u).sum(-1, keepdim=True)) / batch


BACKENDS = ("linear", "autograd", "func")

# model -> (an input shape without the batch, what it was found to be for it: "chain",
# "graph" or "neither")
_SHAPES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# models with an operation whose backward has no derivative: products go through torch.func
_NO_DOUBLE_BACKWARD: weakref.WeakSet = weakref.WeakSet()


def make_metric_product(
    model: nn.Module,
    layout: FlatParams,
    buffers: dict[str, torch.Tensor],
    inputs: torch.Tensor,
    w: torch.Tensor,
    kind: str = "output",
    backend: str = "autograd",
) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]:
    """Build v -> G(w) v at a fixed point ``w`` on a fixed batch ``inputs``.

    Two ways to the same product, checked against each other and a dense Jacobian:

    - ``func``: torch.func.jvp for J v, then the pullback of torch.func.vjp (built
      once here) for J^T (H J v). Each product re-runs a forward with tangents.
    - ``autograd``: the forward graph and a differentiable pullback
      g(u) = J^T u are built once here; J v is the derivative of <g(u), v> with
      respect to u (one backward through the backward graph), J^T (H J v) one more
      backward through the kept forward graph. No forward per product; about 2x
      faster in eager mode on small networks (bench/step_cost.py measures it).
    - ``linear``: for chain-shaped networks (``geoviz.core.linearize``), J v by a
      linearised forward pass over the activations kept from the one forward pass
      (two products per layer), J^T (H J v) by the transposed pass over the same
      activations, written straight into the flat result. No autograd graph at
      all: building it is one forward pass without grad. A network that is not a
      chain but traces (``torch.fx``) to a graph of known layers, additions,
      reshapes and relus (residual networks) gets the same over its graph
      (``geoviz.core.linear_graph``). Other networks fall back to ``autograd`` (and the
      model is remembered for that input shape, so the next build does not try again).

    ``autograd`` falls back to ``func`` for a network with an operation whose backward
    has no derivative. The product's ``backend`` attribute says which one really
    computes it (it can change to ``func`` at the first call).

    Args:
        model: the module; used only through ``functional_call`` (eval mode).
        layout: flat layout of the module's parameters.
        buffers: the module's buffers (BatchNorm statistics), passed explicitly.
        inputs: metric batch, shape (B, ...).
        w: flat weights (P,).
        kind: ``"output"`` or ``"fisher"``.
        backend: ``"linear"``, ``"autograd"`` or ``"func"``.

    Returns:
        (product, logits): product maps a flat (P,) vector to G v (P,); logits are
        f(inputs; w), shape (B, K).
    """
    if kind not in METRIC_KINDS:
        raise ConfigError(f"Unknown metric '{kind}'; choose one of {', '.join(METRIC_KINDS)}.")
    if backend not in BACKENDS:
        raise ConfigError(f"Unknown metric backend '{backend}'; choose one of {', '.join(BACKENDS)}.")

    if backend == "func" or model in _NO_DOUBLE_BACKWARD:
        return _func_product(model, layout, buffers, inputs, w, kind)

    if backend == "linear":
        logits, chain = _record(model, layout, buffers, inputs, w)
        if chain is not None:  # no graph: J v and J^T u both run over the kept activations
            return _chain_product(chain, layout, kind, logits), logits

    # the double-backward product, for any network. Gradients are taken with respect
    # to the parameters' views and concatenated here: cheaper than autograd's own
    # concatenation into the flat leaf
    with torch.enable_grad():
        w_leaf = w.detach().requires_grad_(True)
        views = list(layout.unflatten(w_leaf).values())
        out = functional_call(model, ({**dict(zip(layout.names, views)), **buffers},), (inputs,))
        out = out.reshape(out.shape[0], -1)  # (B, K), graph kept
        dummy = torch.zeros_like(out, requires_grad=True)
        # J^T u, linear in u (a parameter the outputs do not use has a zero row)
        pulled = torch.autograd.grad(out, views, dummy, create_graph=True, materialize_grads=True)
    used = [i for i, g in enumerate(pulled) if g.requires_grad]
    logits = out.detach()

    fallback: list[Callable] = []  # the func product, once the double backward failed

    def product(v: torch.Tensor) -> torch.Tensor:
        if fallback:
            return fallback[0](v)
        parts = list(layout.unflatten(v).values())
        try:
            with torch.enable_grad():
                # J v: through the backward graph
                (jv,) = torch.autograd.grad([pulled[i] for i in used], dummy, [parts[i] for i in used], retain_graph=True)
                hjv = _apply_output_hessian(kind, logits, jv)  # -> H J v / B
                grads = torch.autograd.grad(out, views, hjv, retain_graph=True, materialize_grads=True)  # -> J^T H J v / B
        except (RuntimeError, NotImplementedError) as err:
            # an operation without a derivative of its backward (aten::hardsigmoid_backward
            # in mobilenet_v3): forward-mode J v through torch.func still works. The
            # model is remembered, so its next products are built that way directly
            if "not implemented" not in str(err):
                raise
            _NO_DOUBLE_BACKWARD.add(model)
            fallback.append(_func_product(model, layout, buffers, inputs, w, kind)[0])
            product.backend = "func"
            return fallback[0](v)
        return torch.cat([g.reshape(-1) for g in grads])

    product.backend = "autograd"
    return product, logits


def _func_product(model, layout, buffers, inputs, w, kind):
    """G v by torch.func: jvp for J v, the pullback of one vjp for J^T (H J v)."""

    def f(flat: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, ({**layout.unflatten(flat), **buffers},), (inputs,))
        return out.reshape(out.shape[0], -1)  # (B, K)

    logits, pullback = vjp(f, w)
    logits = logits.detach()

    def product(v: torch.Tensor) -> torch.Tensor:
        _, jv = jvp(f, (w,), (v,))  # v -> J v: (B, K)
        hjv = _apply_output_hessian(kind, logits, jv)  # -> H J v / B: (B, K)
        (gv,) = pullback(hjv)  # -> J^T H J v / B: (P,)
        return gv

    product.backend = "func"
    return product, logits


def _record(model, layout, buffers, inputs, w) -> tuple[torch.Tensor | None, Chain | None]:
    """One forward pass without grad, its layers recorded: (logits (B, K), chain), or
    (None, None) when the network is neither a chain nor a traced graph of known
    layers (``geoviz.core.linear_graph``). What the model turned out to be is remembered
    for the input shape, so the next build goes straight to it."""
    shape = inputs.shape[1:]
    kind = _SHAPES.get(model, (None, None))
    kind = kind[1] if kind[0] == shape else None
    if model.training or kind == "neither":
        return None, None
    params = layout.unflatten(w.detach())
    chain = None
    with torch.no_grad():
        if kind != "graph":
            out, chain = record_chain(
                model, lambda: functional_call(model, ({**params, **buffers},), (inputs,)), params, buffers, inputs
            )
        if chain is None:
            out, chain = record_graph(model, params, buffers, inputs)
    _SHAPES[model] = (shape, "neither" if chain is None else "chain" if type(chain) is Chain else "graph")
    if chain is None:
        return None, None
    return out.reshape(out.shape[0], -1), chain


def _chain_product(chain: Chain, layout: FlatParams, kind: str, logits: torch.Tensor):
    """v -> G v over a recorded chain, for vectors laid out by ``layout``."""
    uncovered = [n for n in layout.names if n not in chain.covered]

    def product(v: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """G v, written into ``out`` (a (P,) vector, e.g. a view of a longer one) if given."""
        jv = chain.jvp(layout.unflatten(v))  # the linearised forward pass: (B, K)
        hjv = _apply_output_hessian(kind, logits, jv)  # -> H J v / B
        gv = torch.empty(layout.size, dtype=v.dtype, device=v.device) if out is None else out
        parts = layout.unflatten(gv)
        chain.vjp(hjv, parts)  # -> J^T H J v / B, written in place
        for name in uncovered:
            parts[name].zero_()
        return gv

    product.backend = "linear"
    return product


def make_step_product(
    model: nn.Module,
    layout: FlatParams,
    buffers: dict[str, torch.Tensor],
    inputs: torch.Tensor,
    w: torch.Tensor,
    kind: str,
    backend: str,
    products: int,
) -> tuple[Callable[[torch.Tensor], torch.Tensor], RowSpace | None]:
    """The product a step's solve should use for about ``products`` products.

    With the ``linear`` backend on a chain that has a wide Linear layer (more inputs
    than rows in the batch), the product works in :class:`geoviz.core.linearize.RowSpace`
    coordinates, returned alongside (None otherwise: the product is
    :func:`make_metric_product`'s, on full vectors).
    """
    if backend == "linear":
        logits, chain = _record(model, layout, buffers, inputs, w)
        if chain is not None:
            space = row_space(chain, layout, products)
            if space is None:
                return _chain_product(chain, layout, kind, logits), None
            return _chain_product(space.chain, space.reduced, kind, logits), space
    product, _ = make_metric_product(model, layout, buffers, inputs, w, kind, backend)
    return product, None


def metric_vector_product(
    model: nn.Module,
    inputs: torch.Tensor,
    vector: torch.Tensor,
    kind: str = "output",
    backend: str = "func",
) -> torch.Tensor:
    """G(w) v at the model's current weights, for a flat vector.

    Args:
        model: any ``nn.Module``; BatchNorm is used in eval mode (running statistics).
        inputs: a batch of inputs, shape (B, ...), on the model's device.
        vector: flat (P,) tensor in the order of
            ``torch.nn.utils.parameters_to_vector(model.parameters())``.
        kind: ``"output"`` (H = I) or ``"fisher"`` (softmax Fisher).
        backend: ``"func"`` (torch.func jvp then vjp), ``"autograd"`` or
            ``"linear"`` (see :func:`make_metric_product`).

    Returns:
        G v as a flat (P,) tensor of the same dtype and device as ``vector``.
    """
    layout = FlatParams.of(model)
    if vector.shape != (layout.size,):
        raise ValueError(
            f"vector must have shape ({layout.size},) to match the model's parameters, "
            f"got {tuple(vector.shape)}"
        )
    first = next(model.parameters())
    if vector.device != first.device or vector.dtype != first.dtype:
        raise ValueError(
            f"vector is {vector.dtype} on {vector.device} but the model is {first.dtype} "
            f"on {first.device}; move one to match the other"
        )
    was_training = model.training
    model.eval()
    try:
        w = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
        buffers = {n: b for n, b in model.named_buffers()}
        product, _ = make_metric_product(model, layout, buffers, inputs, w, kind, backend)
        return product(vector).detach()
    finally:
        model.train(was_training)


def top_eigenvalue(
    product: Callable[[torch.Tensor], torch.Tensor],
    start: torch.Tensor,
    iterations: int = 8,
) -> tuple[float, torch.Tensor]:
    """Largest eigenvalue of a PSD operator by power iteration.

    Args:
        product: v -> G v.
        start: starting vector (P,); a previous eigenvector warm-starts well.
        iterations: number of products.

    Returns:
        (lambda_max estimate as a 0-d tensor's float, the unit vector reached).
    """
    v = start / start.norm().clamp_min(1e-30)
    value = torch.zeros((), dtype=start.dtype, device=start.device)
    for _ in range(iterations):
        gv = product(v)
        value = torch.dot(v, gv)  # Rayleigh quotient, a lower bound that rises
        v = gv.div_(gv.norm().clamp_min(1e-30))  # in place: no third vector
    return value, v


def functional_distance(
    outputs: torch.Tensor, reference: torch.Tensor, kind: str = "output"
) -> torch.Tensor:
    """The finite version of the metric between two sets of outputs on one batch.

    ``output``: mean over the batch of |f - f0|^2. ``fisher``: twice the mean
    KL(p0 || p), which agrees with v^T G v to second order.
    """
    # one fused op each (forward and backward), as the path computes this every step
    scale = 1.0 / outputs.shape[0]
    if kind == "output":
        return torch.nn.functional.mse_loss(outputs, reference, reduction="sum") * scale
    log_p = torch.log_softmax(outputs, -1)
    log_p0 = torch.log_softmax(reference, -1)
    # sum p0 (log p0 - log p)
    return torch.nn.functional.kl_div(log_p, log_p0, reduction="sum", log_target=True) * (2.0 * scale)
