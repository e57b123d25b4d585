"""J v for chain-shaped networks by a linearised forward pass over kept activations.

For a network that is a chain of standard layers (Linear, Conv2d, BatchNorm in eval
mode, ReLU, Tanh, max-pooling, Flatten, Dropout in eval mode, Identity), the
directional derivative of the outputs along a weight direction v follows the chain
layer by layer:

    t_out = layer(t_in; W) + layer(a_in; V)      (Linear, Conv2d: two products)
    t_out = t_in * relu'(a)                      (activations: a mask)

with a_in the activations of the one forward pass at w, kept from when the graph was
built. This is what forward-mode AD computes, without recomputing the primal and
without the backward-through-the-backward graph of the double-backward trick: two
matrix products per layer and no graph to build for them.

:func:`record_chain` runs that forward pass with hooks and returns the layers, or
None when the network is not such a chain (a layer called twice, an operation between
layers other than a reshape, a layer it does not know): the caller then uses the
double-backward product instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["record_chain", "Chain"]

_ACTIVATIONS = (nn.ReLU, nn.Tanh)
_PASS_THROUGH = (nn.Dropout, nn.Identity)
_KNOWN = (nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.MaxPool2d, nn.Flatten, *_ACTIVATIONS, *_PASS_THROUGH)


@dataclass
class _Layer:
    prefix: str
    module: nn.Module
    a_in: torch.Tensor
    a_out: torch.Tensor
    extra: object = None


class Chain:
    """The recorded layers of one forward pass; ``jvp(v_params)`` gives J v."""

    def __init__(self, layers: list[_Layer], params: dict[str, torch.Tensor], output_shape: torch.Size):
        self.layers = layers
        self.params = params
        self.output_shape = output_shape
        self._steps: list[Callable] = [self._step(layer) for layer in layers]

    def jvp(self, v: dict[str, torch.Tensor]) -> torch.Tensor:
        """J v as (B, K) for a direction given as a parameter dict."""
        t: torch.Tensor | None = None  # the inputs do not move
        for step in self._steps:
            t = step(t, v)
        if t is None:
            return torch.zeros(self.output_shape, dtype=self.layers[-1].a_out.dtype, device=self.layers[-1].a_out.device)
        return t.reshape(self.output_shape[0], -1)

    def _step(self, layer: _Layer) -> Callable:
        m, p, a_in = layer.module, layer.prefix, layer.a_in
        shape_in = a_in.shape

        def reshape_in(t):
            return None if t is None else t.reshape(shape_in)

        if isinstance(m, nn.Linear):
            weight = self.params[f"{p}weight"]

            def linear(t, v):
                out = F.linear(a_in, v[f"{p}weight"], v.get(f"{p}bias"))
                t = reshape_in(t)
                return out if t is None else out + F.linear(t, weight)

            return linear
        if isinstance(m, nn.Conv2d):
            weight = self.params[f"{p}weight"]
            kw = {"stride": m.stride, "padding": m.padding, "dilation": m.dilation, "groups": m.groups}

            def conv(t, v):
                out = F.conv2d(a_in, v[f"{p}weight"], v.get(f"{p}bias"), **kw)
                t = reshape_in(t)
                return out if t is None else out + F.conv2d(t, weight, None, **kw)

            return conv
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            scale, xhat = layer.extra  # gamma / sqrt(var + eps) and the normalised input
            view = (1, -1) + (1,) * (a_in.ndim - 2)

            def batchnorm(t, v):
                t = reshape_in(t)
                out = None if t is None else t * scale.view(view)
                if f"{p}weight" in v:
                    moved = xhat * v[f"{p}weight"].view(view) + v[f"{p}bias"].view(view)
                    out = moved if out is None else out + moved
                return out

            return batchnorm
        if isinstance(m, _ACTIVATIONS):
            slope = layer.extra

            def activation(t, v):
                return None if t is None else reshape_in(t) * slope

            return activation
        if isinstance(m, nn.MaxPool2d):
            index, shape_out = layer.extra

            def maxpool(t, v):
                if t is None:
                    return None
                t = reshape_in(t)
                return t.flatten(2).gather(2, index).view(shape_out)

            return maxpool
        shape_out = layer.a_out.shape  # Flatten, Dropout (eval), Identity

        def reshape(t, v):
            return None if t is None else t.reshape(shape_out)

        return reshape


def _extra(layer: _Layer, buffers: dict[str, torch.Tensor], params: dict[str, torch.Tensor]):
    m, p = layer.module, layer.prefix
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        mean, var = buffers.get(f"{p}running_mean"), buffers.get(f"{p}running_var")
        if mean is None or var is None:
            return None
        inv = torch.rsqrt(var + m.eps)
        view = (1, -1) + (1,) * (layer.a_in.ndim - 2)
        gamma = params.get(f"{p}weight")
        scale = inv if gamma is None else gamma.detach() * inv
        xhat = (layer.a_in - mean.view(view)) * inv.view(view)
        return scale, xhat
    if isinstance(m, nn.ReLU):
        return (layer.a_out > 0).to(layer.a_out.dtype)
    if isinstance(m, nn.Tanh):
        return 1.0 - layer.a_out.square()
    if isinstance(m, nn.MaxPool2d):
        _, index = F.max_pool2d(layer.a_in, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, return_indices=True)
        return index.flatten(2), index.shape
    return True


def record_chain(
    model: nn.Module,
    forward: Callable[[], torch.Tensor],
    params: dict[str, torch.Tensor],
    buffers: dict[str, torch.Tensor],
    inputs: torch.Tensor,
) -> tuple[torch.Tensor, Chain | None]:
    """Run ``forward()`` (the model's forward pass at ``params``) and record its layers.

    Returns:
        (its output, a :class:`Chain`, or None when the network is not a chain this
        module knows how to linearise).
    """
    if model.training:
        return forward(), None
    leaves = {m: name for name, m in model.named_modules() if not list(m.children())}
    owners = {name for name, m in model.named_modules() for _ in m.parameters(recurse=False)}
    if any(name not in leaves.values() for name in owners):  # parameters used outside leaf layers
        return forward(), None
    calls: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []

    def hook(module, args, output):
        if args and isinstance(args[0], torch.Tensor) and isinstance(output, torch.Tensor):
            calls.append((module, args[0].detach(), output.detach()))
        else:
            calls.append((module, None, None))

    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        out = forward()
    finally:
        for h in handles:
            h.remove()
    if not calls or len({id(m) for m, _, _ in calls}) != len(calls):
        return out, None
    detached = {k: v.detach() for k, v in params.items()}
    layers: list[_Layer] = []
    previous = inputs
    for module, a_in, a_out in calls:
        if a_in is None or not isinstance(module, _KNOWN) or not _follows(a_in, previous):
            return out, None
        if isinstance(module, nn.Conv2d) and module.padding_mode != "zeros":
            return out, None
        prefix = leaves[module] + "." if leaves[module] else ""
        layer = _Layer(prefix, module, a_in, a_out)
        layer.extra = _extra(layer, buffers, detached)
        if layer.extra is None:
            return out, None
        layers.append(layer)
        previous = a_out
    if not _follows(out, previous):
        return out, None
    return out, Chain(layers, detached, out.shape)


def _follows(tensor: torch.Tensor, previous: torch.Tensor) -> bool:
    """``tensor`` is ``previous``, or a reshape of it (a view of the same memory)."""
    if tensor is previous:
        return True
    return (
        tensor.numel() == previous.numel()
        and tensor.data_ptr() == previous.data_ptr()
        and tensor.is_contiguous()
        and previous.is_contiguous()
    )
