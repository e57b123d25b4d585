"""J v and J^T u over the traced graph of a network that is not a chain.

A residual block is not a chain: its input feeds both the block's layers and the
skip, and the two meet in an addition. :func:`record_graph` traces the module once
with ``torch.fx`` (standard layers stay leaves) and, at each step, evaluates that
graph node by node, keeping every node's value. J v then runs forward over the
nodes (a leaf layer by the same rule as in a chain, ``geoviz.core.linearize``; an
addition adds its inputs' tangents; a reshape reshapes; ``F.relu`` masks), and
J^T u backward, summing the gradients of a node that feeds several others. Like the
chain, no autograd graph is built.

Graphs it takes: leaf layers the chain knows (each with weights called once), ``+``
(``out += identity`` is traced as an addition, and evaluated out of place), relu as
a function or method, flatten/view/reshape, and constants such as ``x.size(0)``.
Anything else (a get_attr of a parameter, a product of two tensors, an unknown
function, a trace that fails) gives None, and the caller falls back to the
double-backward product.
"""

from __future__ import annotations

import operator
import weakref

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.func import functional_call

from geoviz.core.linearize import _KNOWN, Chain, _conv_padding, _extra, _Layer, _owned, _slim

__all__ = ["record_graph", "Graph"]

_ADDS = {operator.add, operator.iadd, torch.add}
_RELUS = {F.relu, torch.relu}
_RESHAPE_FUNCTIONS = {torch.flatten, torch.reshape}
_RESHAPE_METHODS = {"view", "reshape", "flatten", "contiguous"}
_CONSTANT_METHODS = {"size", "dim"}

# model -> its traced graph (None: it cannot be traced)
_TRACES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class Graph(Chain):
    """The recorded nodes of one forward pass through a traced graph.

    ``layers`` are its leaf layers (as in a :class:`Chain`, so row-space coordinates
    apply to them); ``nodes`` lists, in order, what each node does to the tangents:
    (kind, its id, its tensor inputs' ids, what it needs), the network's input being
    id 0 and ``shapes`` giving each id's shape.
    """

    def __init__(self, layers: list[_Layer], params: dict[str, torch.Tensor], output_shape: torch.Size,
                 nodes: list, shapes: dict[int, torch.Size], output: int):
        super().__init__(layers, params, output_shape)
        self.nodes, self.shapes, self.output = nodes, shapes, output
        self._live = _live_nodes(nodes, layers, params)
        # after each node, the ids no later node reads: their tangents go then
        last = {i: k for k, (_, _, inputs, _) in enumerate(nodes) for i in inputs}
        self._done_after: list[list[int]] = [[] for _ in nodes]
        for i, k in last.items():
            if i != output:
                self._done_after[k].append(i)

    def with_layers(self, layers: list[_Layer]) -> Graph:
        return Graph(layers, self.params, self.output_shape, self.nodes, self.shapes, self.output)

    def jvp(self, v: dict[str, torch.Tensor]) -> torch.Tensor:
        """J v as (B, K) for a direction given as a parameter dict."""
        tangents: dict[int, torch.Tensor | None] = {}  # the input (id 0) does not move
        for (kind, node, inputs, what), done in zip(self.nodes, self._done_after):
            ts = [tangents.get(i) for i in inputs]
            for i in done:  # held in ts for this node only
                tangents.pop(i, None)
            if kind == "layer":
                tangents[node] = self._steps[what](ts[0], v)
            elif kind == "add":
                present = [t for t in ts if t is not None]
                tangents[node] = sum(present[1:], present[0]) if present else None
            elif ts[0] is None:
                tangents[node] = None
            elif kind == "reshape":
                tangents[node] = ts[0].reshape(self.shapes[node])
            else:  # relu, from its kept output
                tangents[node] = torch.ops.aten.threshold_backward(ts[0], what, 0)
        t = tangents.get(self.output)
        if t is None:
            return torch.zeros(self.output_shape, dtype=self.layers[-1].a_out.dtype, device=self.layers[-1].a_out.device)
        return t.reshape(self.output_shape[0], -1)

    def vjp(self, g: torch.Tensor, out: dict[str, torch.Tensor]) -> None:
        """J^T g for g of shape (B, K), written into ``out``; a node that feeds several
        others gets the sum of their gradients."""
        grads = {self.output: g.reshape(self.shapes[self.output])}

        def give(node: int, value: torch.Tensor) -> None:
            if node in self._live:  # a node that does not depend on the weights needs none
                grads[node] = value if node not in grads else grads[node] + value

        for kind, node, inputs, what in reversed(self.nodes):
            g = grads.pop(node, None)
            if kind == "layer" and g is None:  # the output does not use it: zero rows
                for name in _owned(self.layers[what], self.params):
                    out[name].zero_()
            elif g is None:
                continue
            elif kind == "layer":
                g_in = self._transposes[what](g, out, inputs[0] in self._live)
                if g_in is not None:
                    give(inputs[0], g_in)
            elif kind == "add":
                for i in inputs:
                    give(i, g)
            elif kind == "reshape":
                give(inputs[0], g.reshape(self.shapes[inputs[0]]))
            else:  # relu
                give(inputs[0], torch.ops.aten.threshold_backward(g, what, 0))


def _live_nodes(nodes: list, layers: list[_Layer], params: dict[str, torch.Tensor]) -> set[int]:
    """The ids of the nodes whose value depends on the weights."""
    live: set[int] = set()
    for kind, node, inputs, what in nodes:
        if (kind == "layer" and _owned(layers[what], params)) or any(i in live for i in inputs):
            live.add(node)
    return live


def _trace(model: nn.Module) -> fx.GraphModule | None:
    if model not in _TRACES:
        try:
            _TRACES[model] = fx.symbolic_trace(model)
        except Exception:  # control flow on values, unsupported Python: not a graph we take
            _TRACES[model] = None
    return _TRACES[model]


def _evaluate(node: fx.Node, values: dict) -> tuple[str | None, object]:
    """(what the node does to tangents, its value), or (None, None) when not known."""
    args = fx.node.map_arg(node.args, lambda a: values[a])
    kwargs = fx.node.map_arg(node.kwargs, lambda a: values[a])
    tensors = [values[a] for a in node.all_input_nodes if isinstance(values[a], torch.Tensor)]
    target = node.target
    if not tensors:  # sizes and other constants
        value = target(*args, **kwargs) if node.op == "call_function" else getattr(args[0], target)(*args[1:], **kwargs)
        return "constant", value
    if node.op == "call_method":
        if target in _CONSTANT_METHODS:
            return "constant", getattr(args[0], target)(*args[1:], **kwargs)
        if target in _RESHAPE_METHODS:
            return "reshape", getattr(args[0], target)(*args[1:], **kwargs)
        if target in ("relu", "relu_") and len(args) == 1:
            return "relu", torch.relu(args[0])
        return None, None
    if target in _ADDS and len(args) == 2 and not kwargs:
        if len(tensors) == 2 and args[0].shape != args[1].shape:  # broadcasting: not taken
            return None, None
        return "add", args[0] + args[1]  # out of place, also for +=: every value is kept
    if target in _RELUS:
        return "relu", torch.relu(args[0])
    if target in _RESHAPE_FUNCTIONS:
        return "reshape", target(*args, **kwargs)
    return None, None


def record_graph(
    model: nn.Module,
    params: dict[str, torch.Tensor],
    buffers: dict[str, torch.Tensor],
    inputs: torch.Tensor,
) -> tuple[torch.Tensor | None, Graph | None]:
    """Evaluate the model's traced graph at ``params`` on ``inputs``, keeping each node.

    Returns:
        (the output, a :class:`Graph`), or (None, None) when the model is not a graph
        this module takes (the caller then runs its own forward).
    """
    if model.training:
        return None, None
    traced = _trace(model)
    if traced is None:
        return None, None
    modules = dict(traced.named_modules())
    values: dict[fx.Node, object] = {}
    ids: dict[fx.Node, int] = {}
    shapes: dict[int, torch.Size] = {}
    layers: list[_Layer] = []
    nodes: list = []
    with_weights: set[str] = set()
    readers = {node: len(node.users) for node in traced.graph.nodes}
    for node in traced.graph.nodes:
        if node.op == "output":
            result = node.args[0]
            if not isinstance(result, fx.Node) or result not in ids:
                return None, None
            out = values[result]
            return out, Graph(layers, params, torch.Size((out.shape[0], out[0].numel())), nodes, shapes, ids[result])
        if node.op == "placeholder":
            if ids:  # a second input
                return None, None
            values[node], ids[node], shapes[0] = inputs, 0, inputs.shape
            continue
        if node.op == "call_module":
            module = modules[node.target]
            if not isinstance(module, _KNOWN) or len(node.args) != 1 or node.kwargs or node.args[0] not in ids:
                return None, None
            if isinstance(module, nn.Conv2d) and (module.padding_mode != "zeros" or _conv_padding(module) is None):
                return None, None
            prefix = node.target + "."
            local = {n: params[prefix + n] for n, _ in module.named_parameters(recurse=False)}
            if local and node.target in with_weights:  # weights used twice: J^T would have to add
                return None, None
            with_weights.add(node.target)
            local.update({n: buffers[prefix + n] for n, _ in module.named_buffers(recurse=False) if prefix + n in buffers})
            a_in = values[node.args[0]]
            # an in-place layer runs on a copy: every node's value stays as it was made
            value = functional_call(module, local, (a_in.clone() if getattr(module, "inplace", False) else a_in,))
            layer = _Layer(prefix, module, a_in, value)
            layer.extra = _extra(layer, buffers, params)
            if layer.extra is None:
                return None, None
            _slim(layer)
            layers.append(layer)
            kind, what, inputs_ = "layer", len(layers) - 1, [ids[node.args[0]]]
        elif node.op in ("call_function", "call_method"):
            kind, value = _evaluate(node, values)
            if kind is None:
                return None, None
            what = value if kind == "relu" else None
            inputs_ = [ids[a] for a in node.all_input_nodes if a in ids]
        else:  # get_attr (a parameter used directly) and anything else
            return None, None
        values[node] = value
        # a value no later node reads goes now, unless a layer's rules keep it
        for a in node.all_input_nodes:
            readers[a] -= 1
            if readers[a] == 0:
                del values[a]
        if kind != "constant":
            if not isinstance(value, torch.Tensor):
                return None, None
            ids[node] = len(ids)
            shapes[ids[node]] = value.shape
            nodes.append((kind, ids[node], inputs_, what))
    return None, None
