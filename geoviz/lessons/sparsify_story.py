"""The lesson "Pruning without labels": its steps and pictures."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from geoviz.lessons import Lesson, Step, present_fonts
from geoviz.lessons.sparsify import sparsify_experiment

LEGEND = {"orientation": "h", "y": -0.2, "x": 0}
MARGIN = {"l": 70, "r": 20, "t": 60, "b": 60}
BARS = {  # method -> (label, colour, what it learns from beyond the dense network)
    "dense": ("dense", "#7f7f7f", ""),
    "one_shot": ("one-shot pruning", "#d62728", "nothing"),
    "geodesic": ("geodesic", "#1f77b4", "inputs only"),
    "distill": ("prune + distil", "#9467bd", "inputs only"),
}


def numbers() -> dict:
    r = sparsify_experiment()
    a = r.accuracy
    return {
        "target": r.target,
        "dense": a["dense"],
        "one_shot": a["one_shot"],
        "geodesic": a["geodesic"],
        "distill": a["distill"],
        "sparsity": r.sparsity,
        "lowest": min(r.along["test_accuracy"]),
        "steps": r.steps,
        "evaluations": r.gradient_evaluations,
        "cut": 10 ** r.magnitudes["cut"],
    }


def _bars(r, shown: tuple[str, ...]) -> go.Figure:
    labels = [BARS[m][0] + (f"<br>({BARS[m][2]})" if BARS[m][2] else "") for m in shown]
    values = [r.accuracy[m] for m in shown]
    fig = go.Figure([{"type": "bar", "x": labels, "y": values, "marker": {"color": [BARS[m][1] for m in shown]},
                      "text": [f"{v:.1%}" for v in values], "textposition": "outside", "name": "test accuracy"}])
    fig.update_layout(title={"text": f"Test accuracy, {r.target:.0%} of the weights removed"}, height=480, margin=MARGIN,
                      yaxis={"title": {"text": "test accuracy"}, "range": [0, 1.12], "tickformat": ".0%"})
    return fig


def _magnitudes(r) -> go.Figure:
    m = r.magnitudes
    edges = np.asarray(m["edges"])
    centres = 10 ** (0.5 * (edges[1:] + edges[:-1]))
    cut = 10 ** m["cut"]
    fig = go.Figure([
        {"type": "bar", "x": centres, "y": m["counts"], "name": "weights", "marker": {"color": "#7f7f7f"}},
        {"type": "scatter", "x": [cut, cut], "y": [0, max(m["counts"])], "mode": "lines", "name": f"cut: the smallest {r.target:.0%}",
         "line": {"color": "#d62728", "width": 4, "dash": "dash"}},
    ])
    fig.update_layout(title={"text": "The size of each weight of the trained network"}, height=480, margin=MARGIN, legend=LEGEND,
                      xaxis={"title": {"text": "|w| (log scale)"}, "type": "log", "dtick": 1}, yaxis={"title": {"text": "weights"}}, bargap=0)
    return fig


def _along(r) -> go.Figure:
    a = r.along
    fig = go.Figure([
        {"type": "scatter", "x": a["removed"], "y": a["test_accuracy"], "mode": "lines+markers", "name": "the network on the way",
         "line": {"color": "#1f77b4", "width": 4}},
        {"type": "scatter", "x": a["removed"], "y": a["pruned_accuracy"], "mode": "lines+markers", "name": "if cut at that point",
         "line": {"color": "#d62728", "width": 3, "dash": "dot"}},
    ])
    fig.update_layout(title={"text": "Test accuracy along the geodesic"}, height=480, margin=MARGIN, legend=LEGEND,
                      xaxis={"title": {"text": "fraction of the cut weights' size already removed"}, "tickformat": ".0%"},
                      yaxis={"title": {"text": "test accuracy"}, "tickformat": ".0%"})
    return fig


def figure(picture: str, present: bool = False) -> go.Figure:
    r = sparsify_experiment()
    if picture == "magnitudes":
        fig = _magnitudes(r)
    elif picture == "along":
        fig = _along(r)
    else:
        fig = _bars(r, {"cut": ("dense", "one_shot"), "all": tuple(BARS)}[picture])
    return present_fonts(fig, present)


def prepare() -> None:
    sparsify_experiment()


LESSON = Lesson(
    slug="sparsify",
    title="Pruning without labels",
    summary="Make a digits network 90% sparse: cut its small weights at once, or walk there keeping its outputs.",
    steps=(
        Step("Most weights are small", "A trained digits network ({dense:.1%} test accuracy). To make it {target:.0%} sparse, "
             "remove the {target:.0%} of its weights that are smallest: every one up to {cut:.3f} in size.", "magnitudes"),
        Step("Cut at once", "Setting them to zero in one go (one-shot magnitude pruning) leaves {one_shot:.1%} test accuracy: "
             "small weights, added together, still mattered.", "cut"),
        Step("Walk there instead", "The engine's geodesic shrinks the same weights to zero step by step, keeping the outputs on "
             "training inputs: no label is read. The network works all the way (never below {lowest:.1%}), and the dotted "
             "line shows what a cut at each point would have left.", "along"),
        Step("Where each one ends", "The geodesic ends exactly {sparsity:.0%} sparse at {geodesic:.1%}, against one-shot's "
             "{one_shot:.1%}. Cutting at once and then distilling the dense network's outputs, with the same {evaluations:,} "
             "gradient evaluations and also without labels, reaches {distill:.1%}.", "all"),
    ),
    figure=figure,
    numbers=numbers,
    prepare=prepare,
)
