"""J v and J^T u for chain-shaped networks, over the activations of one forward pass.

For a network that is a chain of standard layers (Linear, Conv2d with numeric or
symmetric 'same' padding, BatchNorm in eval mode, LayerNorm, GroupNorm, ReLU, Tanh,
Sigmoid, GELU, SiLU, LeakyReLU, max-, average- and adaptive average pooling, Flatten,
Dropout in eval mode, Identity), the
directional derivative of the outputs along a weight direction v follows the chain
layer by layer:

    t_out = layer(t_in; W) + layer(a_in; V)      (Linear, Conv2d: two products)
    t_out = act'(a) t_in                         (activations: their backward kernel)
    t_out = gamma P(t_in) / s + V_gamma x_hat + V_beta   (Layer/GroupNorm, P a projection)

with a_in the activations kept from the one forward pass at w. J^T u runs the same
chain backwards (each layer's transpose), writing the weight gradients straight into
a flat vector. This is what forward- and reverse-mode AD compute, without recomputing
the primal and without any autograd graph: two matrix products per layer each way.

:func:`record_chain` runs that forward pass with hooks and returns the layers, or
None when the network is not such a chain (a layer called twice, an operation between
layers other than a reshape, an operation that writes in place into a kept tensor, a
layer it does not know): the caller then uses the
double-backward product instead. :class:`RowSpace` gives the coordinates in which a
step's system is smaller when a Linear layer has more inputs than the batch has rows.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["record_chain", "Chain", "RowSpace", "row_space"]

# elementwise activations: their derivative is applied by their backward kernel, from
# the kept output (these may write in place) or from the kept input
_FROM_OUTPUT = (nn.ReLU, nn.Tanh, nn.Sigmoid)
_ACTIVATIONS = (*_FROM_OUTPUT, nn.GELU, nn.SiLU, nn.LeakyReLU)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
_NORMS = (nn.LayerNorm, nn.GroupNorm)  # normalised by the input's own statistics
_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)
_PASS_THROUGH = (nn.Dropout, nn.Identity)
_WEIGHTED = (nn.Linear, nn.Conv2d, *_BATCHNORMS, *_NORMS)
_KNOWN = (*_WEIGHTED, *_POOLS, nn.Flatten, *_ACTIVATIONS, *_PASS_THROUGH)


@dataclass
class _Layer:
    prefix: str
    module: nn.Module
    a_in: torch.Tensor
    a_out: torch.Tensor
    extra: object = None
    # what a weight direction multiplies (Linear): a_in, or its coordinates in an
    # orthonormal basis of its rows' span (see RowSpace)
    a_dir: torch.Tensor | None = None


class Chain:
    """The recorded layers of one forward pass.

    ``jvp(v_params)`` gives J v; ``vjp(g, out_params)`` writes J^T g into a parameter
    dict of (views of) one flat vector. Both run over the kept activations, with no
    autograd graph.
    """

    def __init__(self, layers: list[_Layer], params: dict[str, torch.Tensor], output_shape: torch.Size):
        self.layers = layers
        self.params = params
        self.output_shape = output_shape
        self._steps: list[Callable] = [_forward_rule(layer, params) for layer in layers]
        self._transposes: list[Callable] = [_transpose_rule(layer, params) for layer in layers]
        # the inputs do not move: layers up to the first one with weights need no
        # gradient with respect to their input
        self._first = next((i for i, layer in enumerate(layers) if _owned(layer, params)), len(layers))
        self.covered = {name for layer in layers for name in _owned(layer, params)}

    def with_layers(self, layers: list[_Layer]) -> Chain:
        """The same chain over other records of its layers (see RowSpace)."""
        return Chain(layers, self.params, self.output_shape)

    def jvp(self, v: dict[str, torch.Tensor]) -> torch.Tensor:
        """J v as (B, K) for a direction given as a parameter dict."""
        t: torch.Tensor | None = None  # the inputs do not move
        for step in self._steps:
            t = step(t, v)
        if t is None:
            return torch.zeros(self.output_shape, dtype=self.layers[-1].a_out.dtype, device=self.layers[-1].a_out.device)
        return t.reshape(self.output_shape[0], -1)

    def vjp(self, g: torch.Tensor, out: dict[str, torch.Tensor]) -> None:
        """J^T g for g of shape (B, K), written into ``out`` (name -> tensor of the
        parameter's shape). Entries of parameters the chain does not use are left as
        they are: see ``covered``."""
        if not self.layers:
            return
        g = g.reshape(self.layers[-1].a_out.shape)
        for i in range(len(self.layers) - 1, self._first - 1, -1):
            g = self._transposes[i](g, out, i > self._first)


def _forward_rule(layer: _Layer, params: dict[str, torch.Tensor]) -> Callable:
    """t_in, v -> t_out: the layer's part of J v, from its input's tangent (None: zero)."""
    m, p, a_in = layer.module, layer.prefix, layer.a_in
    shape_in = a_in.shape

    def reshape_in(t):
        return None if t is None else t.reshape(shape_in)

    if isinstance(m, nn.Linear):
        weight = params[f"{p}weight"]
        a_dir = a_in if layer.a_dir is None else layer.a_dir

        def linear(t, v):
            out = F.linear(a_dir, v[f"{p}weight"], v.get(f"{p}bias"))
            if t is None:
                return out
            t = reshape_in(t)
            if t.ndim == 2:  # in place, one kernel: out += t W^T
                return out.addmm_(t, weight.t())
            return out.add_(F.linear(t, weight))

        return linear
    if isinstance(m, nn.Conv2d):
        weight = params[f"{p}weight"]
        kw = {"stride": m.stride, "padding": _conv_padding(m), "dilation": m.dilation, "groups": m.groups}

        def conv(t, v):
            out = F.conv2d(a_in, v[f"{p}weight"], v.get(f"{p}bias"), **kw)
            t = reshape_in(t)
            return out if t is None else out.add_(F.conv2d(t, weight, None, **kw))

        return conv
    if isinstance(m, _NORMS):
        norm = layer.extra

        def normalisation(t, v):
            out = None if t is None else norm.forward(reshape_in(t))
            if f"{p}weight" in v:
                moved = norm.xhat * norm.channels(v[f"{p}weight"])
                if f"{p}bias" in v:
                    moved = moved + norm.channels(v[f"{p}bias"])
                out = moved if out is None else out.add_(moved)
            return out

        return normalisation
    if isinstance(m, _BATCHNORMS):
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
        slope = layer.extra  # t -> relu'(a) t or tanh'(a) t, one kernel

        def activation(t, v):
            return None if t is None else slope(reshape_in(t))

        return activation
    if isinstance(m, nn.MaxPool2d):
        index, shape_out = layer.extra

        def maxpool(t, v):
            if t is None:
                return None
            t = reshape_in(t)
            return t.flatten(2).gather(2, index).view(shape_out)

        return maxpool
    if isinstance(m, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):  # linear maps: the same map

        def avgpool(t, v):
            return None if t is None else m(reshape_in(t))

        return avgpool
    shape_out = layer.a_out.shape  # Flatten, Dropout (eval), Identity

    def reshape(t, v):
        return None if t is None else t.reshape(shape_out)

    return reshape

def _transpose_rule(layer: _Layer, params: dict[str, torch.Tensor]) -> Callable:
    """g (shaped like the layer's output) -> g with respect to its input, writing
    the layer's weight gradients into ``out`` on the way."""
    m, p, a_in = layer.module, layer.prefix, layer.a_in
    shape_in, shape_out = a_in.shape, layer.a_out.shape

    if isinstance(m, nn.Linear):
        weight = params[f"{p}weight"]
        a_dir = a_in if layer.a_dir is None else layer.a_dir
        a2 = a_dir.reshape(-1, a_dir.shape[-1])

        def linear(g, out, need_input):
            g2 = g.reshape(-1, shape_out[-1])
            torch.mm(g2.t(), a2, out=out[f"{p}weight"])  # straight into the flat vector
            if f"{p}bias" in out:
                torch.sum(g2, 0, out=out[f"{p}bias"])
            return (g2 @ weight).reshape(shape_in) if need_input else None

        return linear
    if isinstance(m, nn.Conv2d):
        weight = params[f"{p}weight"]
        has_bias = f"{p}bias" in params
        args = (list(m.stride), list(_conv_padding(m)), list(m.dilation), False, [0, 0], m.groups)

        def conv(g, out, need_input):
            g_in, g_w, g_b = torch.ops.aten.convolution_backward(
                g.reshape(shape_out), a_in, weight, [weight.shape[0]] if has_bias else None, *args,
                [need_input, True, has_bias],
            )
            out[f"{p}weight"].copy_(g_w)
            if has_bias:
                out[f"{p}bias"].copy_(g_b)
            return g_in

        return conv
    if isinstance(m, _NORMS):
        norm = layer.extra

        def normalisation(g, out, need_input):
            g = g.reshape(shape_out)
            if f"{p}weight" in out:
                torch.sum(norm.per_channel(g * norm.xhat), norm.sum_dims, out=out[f"{p}weight"].view(-1))
                if f"{p}bias" in out:
                    torch.sum(norm.per_channel(g), norm.sum_dims, out=out[f"{p}bias"].view(-1))
            return norm.transpose(g) if need_input else None

        return normalisation
    if isinstance(m, _BATCHNORMS):
        scale, xhat = layer.extra
        view = (1, -1) + (1,) * (a_in.ndim - 2)
        dims = [0, *range(2, a_in.ndim)]

        def batchnorm(g, out, need_input):
            g = g.reshape(shape_out)
            if f"{p}weight" in out:
                torch.sum(g * xhat, dims, out=out[f"{p}weight"])
                torch.sum(g, dims, out=out[f"{p}bias"])
            return g * scale.view(view) if need_input else None

        return batchnorm
    if isinstance(m, _ACTIVATIONS):
        slope = layer.extra  # a diagonal: its own transpose

        def activation(g, out, need_input):
            return slope(g.reshape(shape_out))

        return activation
    if isinstance(m, nn.MaxPool2d):
        index, _ = layer.extra

        def maxpool(g, out, need_input):
            # windows may overlap: two outputs can take their maximum at one input
            g_in = torch.zeros(shape_in, dtype=g.dtype, device=g.device)
            return g_in.flatten(2).scatter_add_(2, index, g.reshape(index.shape)).view(shape_in)

        return maxpool
    if isinstance(m, nn.AvgPool2d):
        pool = (_pair(m.kernel_size), _pair(m.stride), _pair(m.padding), m.ceil_mode, m.count_include_pad, m.divisor_override)

        def avgpool(g, out, need_input):
            return torch.ops.aten.avg_pool2d_backward(g.reshape(shape_out), a_in, *pool)

        return avgpool
    if isinstance(m, nn.AdaptiveAvgPool2d):

        def adaptive_avgpool(g, out, need_input):
            return torch.ops.aten._adaptive_avg_pool2d_backward(g.reshape(shape_out), a_in)

        return adaptive_avgpool

    def reshape(g, out, need_input):  # Flatten, Dropout (eval), Identity
        return g.reshape(shape_in)

    return reshape


def _owned(layer: _Layer, params: dict[str, torch.Tensor]) -> list[str]:
    """Names of the parameters a recorded layer uses."""
    if not isinstance(layer.module, _WEIGHTED):
        return []
    return [f"{layer.prefix}{n}" for n in ("weight", "bias") if f"{layer.prefix}{n}" in params]


def _extra(layer: _Layer, buffers: dict[str, torch.Tensor], params: dict[str, torch.Tensor]):
    m, p = layer.module, layer.prefix
    if isinstance(m, _NORMS):
        return _Normalisation(m, layer.a_in, params.get(f"{p}weight"))
    if isinstance(m, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
        return True if layer.a_in.ndim == 4 else None
    if isinstance(m, _BATCHNORMS):
        mean, var = buffers.get(f"{p}running_mean"), buffers.get(f"{p}running_var")
        if mean is None or var is None:
            return None
        inv = torch.rsqrt(var + m.eps)
        view = (1, -1) + (1,) * (layer.a_in.ndim - 2)
        gamma = params.get(f"{p}weight")
        scale = inv if gamma is None else gamma.detach() * inv
        xhat = (layer.a_in - mean.view(view)) * inv.view(view)
        return scale, xhat
    # the activations' derivatives are applied by their backward kernels, from the kept
    # output: no mask to build at each step
    a_out = layer.a_out
    if isinstance(m, nn.ReLU):
        return lambda t: torch.ops.aten.threshold_backward(t, a_out, 0)
    if isinstance(m, nn.Tanh):
        return lambda t: torch.ops.aten.tanh_backward(t, a_out)
    if isinstance(m, nn.Sigmoid):
        return lambda t: torch.ops.aten.sigmoid_backward(t, a_out)
    a_in = layer.a_in
    if isinstance(m, nn.GELU):
        return lambda t: torch.ops.aten.gelu_backward(t, a_in, approximate=m.approximate)
    if isinstance(m, nn.SiLU):
        return lambda t: torch.ops.aten.silu_backward(t, a_in)
    if isinstance(m, nn.LeakyReLU):
        return lambda t: torch.ops.aten.leaky_relu_backward(t, a_in, m.negative_slope, False)
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
    leaves = _leaves(model)
    if leaves is None:  # parameters used outside leaf layers
        return forward(), None
    # (module, its input, its output, their version counters when the hook ran)
    calls: list[tuple[nn.Module, torch.Tensor | None, torch.Tensor | None, int, int]] = []

    def hook(module, args, output):
        if args and isinstance(args[0], torch.Tensor) and isinstance(output, torch.Tensor):
            calls.append((module, args[0].detach(), output.detach(), args[0]._version, output._version))
        else:
            calls.append((module, None, None, 0, 0))

    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        input_version = inputs._version
        out = forward()
    except RuntimeError:  # inference tensors have no version counter: no way to check
        return forward(), None
    finally:
        for h in handles:
            h.remove()
    if not calls or len({id(m) for m, _, _, _, _ in calls}) != len(calls):
        return out, None
    detached = {k: v.detach() for k, v in params.items()}
    layers: list[_Layer] = []
    # every kept tensor and the version it must still have when the forward is over:
    # an operation between two layers that writes in place (``out += h``, ``F.relu(x,
    # inplace=True)``) keeps the storage, so only the version counter tells it happened
    kept: list[tuple[torch.Tensor, int]] = [(inputs, input_version)]
    previous, previous_version = inputs, input_version
    for module, a_in, a_out, v_in, v_out in calls:
        if a_in is None or not isinstance(module, _KNOWN) or not _follows(a_in, previous):
            return out, None
        if isinstance(module, nn.Conv2d) and (module.padding_mode != "zeros" or _conv_padding(module) is None):
            return out, None
        if _in_place(module, a_in, a_out):
            # the activation itself wrote once into its input, the previous layer's
            # output: right for one whose derivative reads its output, but that output
            # must not be another activation's, whose derivative reads it too
            if not isinstance(module, _FROM_OUTPUT) or v_in != previous_version + 1:
                return out, None
            if layers and isinstance(layers[-1].module, _ACTIVATIONS):
                return out, None
            kept[-1] = (kept[-1][0], v_out)
        elif v_in != previous_version:  # something wrote into it between the two layers
            return out, None
        prefix = leaves[module] + "." if leaves[module] else ""
        layer = _Layer(prefix, module, a_in, a_out)
        layer.extra = _extra(layer, buffers, detached)
        if layer.extra is None:
            return out, None
        layers.append(layer)
        kept.append((a_out, v_out))
        previous, previous_version = a_out, v_out
    if not _follows(out, previous) or any(t._version != version for t, version in kept):
        return out, None
    for layer in layers:
        _slim(layer)
    return out, Chain(layers, detached, out.shape)


# layers whose rules read their kept input's values, or their output's; every other
# rule reads only the shapes (BatchNorm and Layer/GroupNorm keep their normalised
# input in ``extra``, max-pooling its indices)
_READS_INPUT = (nn.Linear, nn.Conv2d, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.AvgPool2d, nn.AdaptiveAvgPool2d)
_READS_OUTPUT = _FROM_OUTPUT


def _shape_only(t: torch.Tensor) -> torch.Tensor:
    """A tensor with ``t``'s shape, dtype and device that holds one number (zero strides)."""
    return t.new_zeros(()).expand(t.shape)


def _slim(layer: _Layer) -> None:
    """Let go of the recorded activations the layer's rules never read, once its
    ``extra`` is made: only their shapes stay. A BatchNorm keeps its normalised input,
    not the input; a convolution's output is kept by no one. On resnet18 (CIFAR stem)
    this keeps 4 of the 9 activation-sized tensors of a block (bench/step_memory.py)."""
    if not isinstance(layer.module, _READS_INPUT):
        layer.a_in = _shape_only(layer.a_in)
    if not isinstance(layer.module, _READS_OUTPUT):
        layer.a_out = _shape_only(layer.a_out)


def _in_place(module: nn.Module, a_in: torch.Tensor, a_out: torch.Tensor) -> bool:
    """An activation module that wrote its output into its input (``inplace=True``)."""
    return isinstance(module, _ACTIVATIONS) and a_in.data_ptr() == a_out.data_ptr()


def _pair(x) -> list[int]:
    return list(x) if isinstance(x, (tuple, list)) else [x, x]


def _conv_padding(m: nn.Conv2d) -> tuple[int, ...] | None:
    """A Conv2d's padding as numbers; ``'same'`` where it pads both sides alike, None
    where it does not (an even kernel)."""
    if m.padding == "valid":
        return (0, 0)
    if m.padding != "same":
        return tuple(m.padding)
    total = [d * (k - 1) for d, k in zip(m.dilation, m.kernel_size)]
    return None if any(t % 2 for t in total) else tuple(t // 2 for t in total)


class _Normalisation:
    """LayerNorm or GroupNorm at the kept input: x_hat = (x - mean) / s over each group,
    s = sqrt(var + eps), then gamma x_hat + beta per channel (GroupNorm) or element
    (LayerNorm). Its Jacobian with respect to the input,

        t -> gamma (t - mean(t) - x_hat mean(x_hat t)) / s,

    is a symmetric projection P scaled by 1/s, then gamma: J^T g = P(gamma g) / s."""

    def __init__(self, m: nn.Module, a_in: torch.Tensor, gamma: torch.Tensor | None):
        self.shape = a_in.shape
        if isinstance(m, nn.LayerNorm):
            groups = a_in.reshape(-1, math.prod(m.normalized_shape))  # (rows, n)
            self.affine_shape = tuple(m.normalized_shape)  # gamma's elements line up with the last dims
            self.sum_dims = [0]
            self._per_channel = lambda t: t.reshape(-1, math.prod(m.normalized_shape))
        else:
            groups = a_in.reshape(a_in.shape[0] * m.num_groups, -1)
            self.affine_shape = (1, a_in.shape[1]) + (1,) * (a_in.ndim - 2)
            self.sum_dims = [0, 2]
            self._per_channel = lambda t: t.reshape(t.shape[0], t.shape[1], -1)
        # only the groups' shape is kept: not the input itself (see _slim)
        self.group_shape = groups.shape
        var, mean = torch.var_mean(groups, -1, correction=0, keepdim=True)
        self.inv = torch.rsqrt(var + m.eps)  # (rows, 1)
        self.xhat_groups = (groups - mean) * self.inv
        self.xhat = self.xhat_groups.reshape(self.shape)
        self.gamma = None if gamma is None else gamma.reshape(self.affine_shape)

    def channels(self, param: torch.Tensor) -> torch.Tensor:
        return param.reshape(self.affine_shape)

    def per_channel(self, t: torch.Tensor) -> torch.Tensor:
        return self._per_channel(t)

    def _project(self, t: torch.Tensor) -> torch.Tensor:
        h = t.reshape(self.group_shape) * self.inv
        h = h - h.mean(-1, keepdim=True) - self.xhat_groups * (self.xhat_groups * h).mean(-1, keepdim=True)
        return h.reshape(self.shape)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """J_x t = gamma P(t / s)."""
        h = self._project(t)
        return h if self.gamma is None else h * self.gamma

    def transpose(self, g: torch.Tensor) -> torch.Tensor:
        """J_x^T g = P(gamma g / s): the projection is symmetric, gamma comes first."""
        return self._project(g if self.gamma is None else g * self.gamma)


_LEAVES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _leaves(model: nn.Module) -> dict[nn.Module, str] | None:
    """The model's leaf modules and their names, or None when a parameter belongs to a
    module with children. Walked once per model and kept (two walks of the module tree
    per step cost a tenth of an SGD step on the digits MLP)."""
    if model not in _LEAVES:
        leaves = {m: name for name, m in model.named_modules() if not list(m.children())}
        owners = {name for name, m in model.named_modules() for _ in m.parameters(recurse=False)}
        _LEAVES[model] = None if any(name not in leaves.values() for name in owners) else leaves
    return _LEAVES[model]


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


class RowSpace:
    """Coordinates in which G is smaller: a wide Linear layer seen through its inputs.

    A Linear layer whose batch of inputs A (N x d, N rows) has fewer rows than columns
    sees a weight direction V only through A V^T = (A Q)(V Q)^T, with Q (d x r) an
    orthonormal basis of the rows' span, and its block of J^T g = g^T A lies in that
    span. So G = E G_r E^T exactly, with E: alpha -> alpha Q^T on that block (and the
    identity elsewhere) an isometry, and

        (G + mu I) u = v   <=>   u = E u_r + (v - E E^T v) / mu,
                                 (G_r + mu I) u_r = E^T v.

    (The engine's step does not solve the two parts separately: see
    ``geoviz.core.engine._row_space_system``.) Conjugate gradients run on u_r,
    whose products cost 2 N r instead of 2 N d multiply-adds per output row of the
    layer, and whose vectors are shorter. On LeNet-300-100 with a batch of 256 the
    first layer's 784 inputs become 256 coordinates.
    """

    def __init__(self, chain: Chain, layout, reduce: list[int]):
        """``layout``: the full vector's :class:`geoviz.core.metric.FlatParams`; ``reduce``:
        the indices of the chain's Linear layers to see through their inputs."""
        self.bases: dict[str, torch.Tensor] = {}
        layers = list(chain.layers)
        for i in reduce:
            q, r = torch.linalg.qr(layers[i].a_in.t())  # (d, N) = Q R: A Q = R^T
            self.bases[f"{layers[i].prefix}weight"] = q
            layers[i] = replace(layers[i], a_dir=r.t())
        self.chain = chain.with_layers(layers)
        self.layout = layout
        # the reduced vector: the same parameters, the reduced weights (out, r)
        self.reduced = replace(layout, shapes=tuple(
            torch.Size((s[0], self.bases[n].shape[1])) if n in self.bases else s for n, s in zip(layout.names, layout.shapes)
        ))

    @property
    def size(self) -> int:
        return self.reduced.size

    def restrict(self, v: torch.Tensor) -> torch.Tensor:
        """E^T v: a full vector's coordinates (the reduced blocks projected on the span)."""
        out = torch.empty(self.reduced.size, dtype=v.dtype, device=v.device)
        for name, src, dst in zip(self.layout.names, self.layout.unflatten(v).values(), self.reduced.unflatten(out).values()):
            if name in self.bases:
                torch.mm(src, self.bases[name], out=dst)
            else:
                dst.copy_(src)
        return out

    def extend(self, v_r: torch.Tensor) -> torch.Tensor:
        """E v_r: the full vector with these coordinates (nothing outside the span)."""
        out = torch.empty(self.layout.size, dtype=v_r.dtype, device=v_r.device)
        for name, src, dst in zip(self.layout.names, self.reduced.unflatten(v_r).values(), self.layout.unflatten(out).values()):
            if name in self.bases:
                torch.mm(src, self.bases[name].t(), out=dst)
            else:
                dst.copy_(src)
        return out


_VECTOR_PASSES, _PASS_COST = 8, 10


def row_space(chain: Chain, layout, products: int) -> RowSpace | None:
    """The reduction worth making for about ``products`` products, or None.

    A Linear layer (out x d) with N < d input rows is reduced when the multiply-adds
    its products save, 2 out N (d - N) each, exceed twice what the reduction costs:
    a QR of the inputs (2 d N^2) and three maps between the coordinates (3 out d N),
    plus the passes over the whole vector that working in the coordinates adds to a
    step (restricting the right-hand side and the warm start, extending the
    solution: about 8 of them, counted at 10 multiply-adds an element, as a memory
    pass is that much slower than a matrix product's work). Without that last term
    resnet18's 512-input classifier was reduced at a batch of 8, saving 0.9 M
    multiply-adds a step and costing passes over 11.2 M weights.
    """
    passes = _VECTOR_PASSES * _PASS_COST * layout.size
    reduce = []
    for i, layer in enumerate(chain.layers):
        if not isinstance(layer.module, nn.Linear) or layer.a_in.ndim != 2:
            continue
        if f"{layer.prefix}weight" not in chain.params:
            continue
        rows, d = layer.a_in.shape
        out = layer.module.out_features
        if rows >= d:
            continue
        saved = products * 2 * out * rows * (d - rows)
        cost = 2 * d * rows * rows + 3 * out * d * rows
        if saved > 2 * cost + passes:
            reduce.append(i)
    return RowSpace(chain, layout, reduce) if reduce else None
