"""The lesson "The straight line has a barrier; the geodesic does not": its steps and pictures."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from geoviz.lessons import Lesson, Step, present_fonts
from geoviz.lessons.connect import connect_experiment

COLORS = {"line": "#d62728", "geodesic": "#1f77b4"}
NAMES = {"line": "straight line", "geodesic": "geodesic (engine)"}
LEGEND = {"orientation": "h", "y": -0.2, "x": 0}
MARGIN = {"l": 70, "r": 20, "t": 60, "b": 60}


def numbers() -> dict:
    r = connect_experiment()
    line, geo = r.summaries["line"], r.summaries["geodesic"]
    return {
        "accuracy_a": r.endpoints["a"]["test_accuracy"],
        "accuracy_b": r.endpoints["b"]["test_accuracy"],
        "end_loss": max(r.endpoints["a"]["train_loss"], r.endpoints["b"]["train_loss"]),
        "line_barrier": line["barrier"],
        "line_max_loss": line["max_loss"],
        "line_min_accuracy": line["min_accuracy"],
        "geodesic_barrier": geo["barrier"],
        "geodesic_max_loss": geo["max_loss"],
        "geodesic_min_accuracy": geo["min_accuracy"],
        "barrier_ratio": line["barrier"] / max(geo["barrier"], 1e-12),
        "steps": r.steps,
        "line_length": line["length"],
        "geodesic_length": geo["length"],
        "line_functional": line["functional_length"],
        "geodesic_functional": geo["functional_length"],
    }


def _profiles(r, shown: tuple[str, ...], key: str, title: str, axis: str) -> go.Figure:
    fig = go.Figure([{"type": "scatter", "x": r.profiles[n]["fraction"], "y": r.profiles[n][key], "mode": "lines",
                      "name": NAMES[n], "line": {"color": COLORS[n], "width": 4}} for n in shown])
    fig.update_layout(title={"text": title}, height=480, margin=MARGIN, legend=LEGEND,
                      xaxis={"title": {"text": "fraction of the way from network A to network B"}},
                      yaxis={"title": {"text": axis}})
    return fig


def _landscape(r) -> go.Figure:
    ls = r.landscape
    loss = np.log10(np.asarray(ls["train_loss"], dtype=float) + 1e-3)
    data = [{"type": "contour", "x": ls["xs"], "y": ls["ys"], "z": loss, "colorscale": "Viridis", "ncontours": 20,
             "colorbar": {"title": {"text": "log10 loss"}}, "hoverinfo": "skip", "name": "train loss"}]
    for n in ("line", "geodesic"):
        xy = np.asarray(ls["paths"][n])
        data.append({"type": "scatter", "x": xy[:, 0], "y": xy[:, 1], "mode": "lines", "name": NAMES[n],
                     "line": {"color": "white" if n == "line" else "#ff7f0e", "width": 4, "dash": "dot" if n == "line" else "solid"}})
    ends = np.asarray(ls["paths"]["points"])[:2]  # w_A, w_B
    data.append({"type": "scatter", "x": ends[:, 0], "y": ends[:, 1], "mode": "markers+text", "text": ["A", "B"],
                 "textposition": "top center", "textfont": {"color": "white", "size": 20}, "showlegend": False,
                 "marker": {"size": 14, "color": "white", "line": {"width": 2, "color": "black"}}})
    fig = go.Figure(data)
    fig.update_layout(title={"text": "Train loss on a plane through A and B"}, height=480,
                      margin=MARGIN, legend={**LEGEND, "bgcolor": "#44475a", "font": {"color": "white"}},
                      xaxis={"title": {"text": "towards B (weight-space distance)"}},
                      yaxis={"title": {"text": "towards the geodesic's midpoint"}, "scaleanchor": "x", "scaleratio": 1,
                             "constrain": "domain"})
    return fig


def _lengths(r) -> go.Figure:
    kinds = (("length", "in the weights |Δw|"), ("functional_length", "in the outputs (functional)"))
    fig = go.Figure([{"type": "bar", "name": NAMES[n], "x": [label for _, label in kinds],
                      "y": [r.summaries[n][k] for k, _ in kinds], "marker": {"color": COLORS[n]},
                      "text": [f"{r.summaries[n][k]:.1f}" for k, _ in kinds], "textposition": "outside"} for n in ("line", "geodesic")])
    fig.update_layout(title={"text": "How long each path is"}, height=480, margin=MARGIN, legend=LEGEND, barmode="group",
                      yaxis={"title": {"text": "length"}})
    return fig


def figure(picture: str, present: bool = False) -> go.Figure:
    r = connect_experiment()
    if picture == "landscape":
        fig = _landscape(r)
    elif picture == "lengths":
        fig = _lengths(r)
    elif picture == "accuracy":
        fig = _profiles(r, ("line", "geodesic"), "test_accuracy", "Test accuracy along each path", "test accuracy")
    else:
        shown = ("line",) if picture == "line" else ("line", "geodesic")
        fig = _profiles(r, shown, "train_loss", "Train loss along the way", "train loss")
    return present_fonts(fig, present)


def prepare() -> None:
    connect_experiment()


LESSON = Lesson(
    slug="connect",
    title="The straight line has a barrier; the geodesic does not",
    summary="Two digits networks trained from different seeds, joined by a straight line and by a geodesic.",
    steps=(
        Step("Two good networks", "Two digits networks, trained from different random seeds, reach {accuracy_a:.1%} and "
             "{accuracy_b:.1%} test accuracy. On the straight line between their weights the train loss climbs to "
             "{line_max_loss:.2f} (at the ends it is below {end_loss:.3f}): a barrier.", "line"),
        Step("The geodesic", "The engine's geodesic walks from A to B in {steps} steps, keeping the outputs on training inputs "
             "as still as it can (no label read). Its highest loss is {geodesic_max_loss:.3f}: a barrier {barrier_ratio:.0f} "
             "times lower than the line's.", "both"),
        Step("Seen from above", "The loss on the plane through A, B and the geodesic's midpoint. The line crosses the high "
             "ground between A and B; the geodesic's shadow bends around it (the geodesic itself leaves this plane: its own "
             "loss was the previous picture).", "landscape"),
        Step("What a user would see", "Along the line the test accuracy drops to {line_min_accuracy:.1%}; along the geodesic it "
             "never falls below {geodesic_min_accuracy:.1%}.", "accuracy"),
        Step("Longer, yet gentler", "The geodesic is longer in the weights ({geodesic_length:.1f} against {line_length:.1f}), but "
             "the outputs travel {geodesic_functional:.1f} along it against {line_functional:.1f} along the line: it saves on "
             "what the network computes, not on its weights.", "lengths"),
    ),
    figure=figure,
    numbers=numbers,
    prepare=prepare,
)
