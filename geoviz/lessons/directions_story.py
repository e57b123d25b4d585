"""The lesson "Most directions do not matter": its steps and pictures."""

from __future__ import annotations

import plotly.graph_objects as go

from geoviz.lessons import Lesson, Step, present_fonts
from geoviz.lessons.directions import directions_experiment

COLORS = {"random": "#d62728", "near-null": "#1f77b4"}
NAMES = {"random": "random direction", "near-null": "near-null direction of G"}


def numbers() -> dict:
    r = directions_experiment()
    near = 1  # the first distance: where a straight move is still a first-order move
    return {
        "start_accuracy": r.accuracy["random"][0],
        "distance": r.distances[-1],
        "near_distance": r.distances[near],
        "random_change": r.output_change["random"][-1],
        "null_change": r.output_change["near-null"][-1],
        "near_ratio": r.output_change["near-null"][near] / r.output_change["random"][near],
        "random_accuracy": r.accuracy["random"][-1],
        "null_accuracy": r.accuracy["near-null"][-1],
        "stiffness_ratio": r.stiffness["random"] / r.stiffness["near-null"],
        "weight_norm": r.weight_norm,
    }


def figure(picture: str, present: bool = False) -> go.Figure:
    r = directions_experiment()
    shown = ["random"] if picture == "random" else ["random", "near-null"]
    value = r.accuracy if picture == "accuracy" else r.output_change
    if picture == "stiffness":
        fig = go.Figure([{"type": "bar", "x": [NAMES[n] for n in r.stiffness], "y": list(r.stiffness.values()),
                          "marker": {"color": [COLORS[n] for n in r.stiffness]},
                          "text": [f"{v:.2g}" for v in r.stiffness.values()], "textposition": "outside"}])
        fig.update_layout(title={"text": "uᵀGu: how fast the outputs move per unit step"}, height=480,
                          yaxis={"type": "log", "dtick": 1, "title": {"text": "uᵀGu (log scale)"}}, margin={"l": 70, "r": 20, "t": 60, "b": 60})
        return present_fonts(fig, present)
    fig = go.Figure([{"type": "scatter", "x": r.distances, "y": value[n], "mode": "lines+markers", "name": NAMES[n],
                      "line": {"color": COLORS[n], "width": 4}, "marker": {"size": 9}} for n in shown])
    title = ("Test accuracy after the move" if picture == "accuracy" else "How far the outputs moved (test set)")
    fig.update_layout(title={"text": title}, height=480, margin={"l": 70, "r": 20, "t": 60, "b": 60},
                      xaxis={"title": {"text": "distance moved |Δw|"}},
                      yaxis={"title": {"text": "test accuracy" if picture == "accuracy" else "RMS change of the outputs"}},
                      legend={"orientation": "h", "y": -0.2, "x": 0})
    return present_fonts(fig, present)


def prepare() -> None:
    directions_experiment()


LESSON = Lesson(
    slug="directions",
    title="Most directions do not matter",
    summary="Move a trained digits network a fixed distance two ways, and measure what changed.",
    steps=(
        Step("A random push", "A trained digits network ({start_accuracy:.1%} test accuracy) is moved in a straight line along a "
             "random direction, up to {distance:.1f}, the length of its whole weight vector. Its outputs change in proportion.",
             "random"),
        Step("A push G does not feel", "Now the same distances along a direction where G, the metric, is nearly zero. At the first "
             "distance the outputs moved {near_ratio:.1%} as much; at the last by {null_change:.2f} against {random_change:.2f}.",
             "both"),
        Step("Accuracy says the same", "After the whole distance the random push left {random_accuracy:.1%} accuracy; the near-null "
             "push {null_accuracy:.1%}, as before it moved.", "accuracy"),
        Step("Why", "G measures how much the outputs move per unit step. Along the near-null direction it is {stiffness_ratio:,.0f} "
             "times smaller: the network has far more weights than its outputs need, and a geodesic uses that room.", "stiffness"),
    ),
    figure=figure,
    numbers=numbers,
    prepare=prepare,
)
