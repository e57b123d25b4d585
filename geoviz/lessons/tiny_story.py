"""The lesson "A world small enough to see": its steps and pictures."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from geoviz.lessons import Lesson, Step, present_fonts
from geoviz.lessons.tiny import BOX, TARGET_SLOPE, walk, world

START, GOAL = (0.5, 2.0), (2.0, 0.5)  # on the same curve a * b = 1: the same function
CLICK_GRID = np.round(np.arange(0.3, 2.51, 0.1), 2)  # where a click lands (so a walk is cached per point)


def numbers(start=START, goal=GOAL) -> dict:
    w = walk(tuple(start), tuple(goal))
    c = start[0] * start[1]
    return {
        "geodesic_drift": max(abs(p - c) for p in w.geodesic_product) / c,
        "line_drift": max(abs(p - c) for p in w.line_product) / c,
        "geodesic_loss": max(w.geodesic_loss),
        "line_loss": max(w.line_loss),
        "steps": w.steps,
    }


def _curve(slope: float, name: str, dash: str = "dash") -> dict:
    a = np.linspace(slope / BOX[1], BOX[1], 200)
    keep = (slope / a >= BOX[0]) & (slope / a <= BOX[1])
    return {"type": "scatter", "x": a[keep], "y": slope / a[keep], "mode": "lines", "name": name,
            "line": {"color": "white", "width": 2, "dash": dash}, "hoverinfo": "skip"}


def figure(picture: str, present: bool = False, start=START, goal=GOAL) -> go.Figure:
    """The steps' pictures: the loss landscape of (a, b), G's ellipses, the two walks."""
    if picture == "slope":
        return _slope_figure(present, start, goal)
    screen = world()
    data = [{"type": "contour", "x": screen.a, "y": screen.b, "z": np.log10(np.asarray(screen.loss) + 1e-4),
             "colorscale": "Blues_r", "showscale": False, "hoverinfo": "skip", "contours": {"coloring": "heatmap"},
             "name": "log10 loss"},
            _curve(start[0] * start[1] if picture == "walk" else TARGET_SLOPE,
                   "a·b constant: the same function")]
    if picture in ("ellipses",):
        for n, (xs, ys) in enumerate(screen.ellipses):
            data.append({"type": "scatter", "x": xs, "y": ys, "mode": "lines", "line": {"color": "#ff7f0e", "width": 2},
                         "name": "G's ellipses", "showlegend": n == 0, "legendgroup": "ellipses", "hoverinfo": "skip"})
    if picture == "walk":
        w = walk(tuple(start), tuple(goal))
        geo, line = np.asarray(w.geodesic), np.asarray(w.line)
        data += [
            {"type": "scatter", "x": line[:, 0], "y": line[:, 1], "mode": "lines", "name": "straight line",
             "line": {"color": "#d62728", "width": 4, "dash": "dot"}},
            {"type": "scatter", "x": geo[:, 0], "y": geo[:, 1], "mode": "lines+markers", "name": "geodesic (engine)",
             "line": {"color": "#ffbf00", "width": 4}, "marker": {"size": 5}},
            {"type": "scatter", "x": [start[0], goal[0]], "y": [start[1], goal[1]], "mode": "markers+text",
             "text": ["start", "goal"], "textposition": "top right", "textfont": {"color": "white", "size": 18}, "cliponaxis": False,
             "marker": {"size": 14, "color": "white", "line": {"width": 2, "color": "black"}}, "showlegend": False},
        ]
        # a grid of invisible points: a click on one picks it as the next start or goal
        ga, gb = np.meshgrid(CLICK_GRID, CLICK_GRID)
        data.append({"type": "scatter", "x": ga.ravel(), "y": gb.ravel(), "mode": "markers", "name": "click",
                     "marker": {"size": 14, "color": "rgba(255,255,255,0.02)"}, "showlegend": False, "hovertemplate": "a %{x}, b %{y}<extra></extra>"})
    fig = go.Figure(data)
    fig.update_layout(
        title={"text": {"landscape": "The loss over the whole weight space (dark: low)", "ellipses": "G's ellipses: long where the function does not change",
                        "walk": "Geodesic and straight line from start to goal"}[picture]},
        xaxis={"title": {"text": "weight a"}, "range": list(BOX), "constrain": "domain"},
        yaxis={"title": {"text": "weight b"}, "range": list(BOX), "scaleanchor": "x", "scaleratio": 1},
        height=520, margin={"l": 60, "r": 20, "t": 60, "b": 50}, clickmode="event+select",
        legend={"orientation": "h", "y": -0.2, "x": 0, "bgcolor": "#3d5a80", "font": {"color": "white"}},  # white curves show
    )
    return present_fonts(fig, present)


def _slope_figure(present: bool, start, goal) -> go.Figure:
    w = walk(tuple(start), tuple(goal))
    geo = np.linspace(0, 1, len(w.geodesic_product))
    line = np.linspace(0, 1, len(w.line_product))
    fig = go.Figure([
        {"type": "scatter", "x": geo, "y": w.geodesic_product, "mode": "lines", "name": "geodesic", "line": {"color": "#ffbf00", "width": 4}},
        {"type": "scatter", "x": line, "y": w.line_product, "mode": "lines", "name": "straight line", "line": {"color": "#d62728", "width": 4, "dash": "dot"}},
    ])
    fig.update_layout(title={"text": "What the network computes along the way: its slope a·b"}, height=480,
                      xaxis={"title": {"text": "fraction of the way"}}, yaxis={"title": {"text": "a·b (the function is y = a·b·relu(x))"}},
                      legend={"orientation": "h", "y": -0.2, "x": 0}, margin={"l": 60, "r": 20, "t": 60, "b": 50})
    return present_fonts(fig, present)


def prepare() -> None:
    world()
    walk(START, GOAL)


LESSON = Lesson(
    slug="tiny",
    title="A world small enough to see",
    summary="A network with two weights, where the whole weight space fits on the screen.",
    steps=(
        Step("Two weights, one screen", "This network computes f(x) = a·relu(b·x): two weights, so every network of its kind is one "
             "point of this square. The data is y = relu(x); the dark valley holds the networks that fit it.", "landscape"),
        Step("A curve of identical networks", "Halve a and double b: the network computes exactly the same thing. The dashed curve "
             "a·b = 1 is one function drawn many times, and the valley follows it.", "landscape"),
        Step("G's ellipses", "G, the metric, says how much the outputs move for a small step. Its ellipses are long along the "
             "curve (the function does not change there) and thin across it.", "ellipses"),
        Step("Geodesic against the straight line", "The engine's geodesic walks from start to goal keeping the outputs still, so it "
             "slides along the curve; the straight line cuts across the valley. Click the picture to choose a new start, then a goal.",
             "walk"),
        Step("What each one kept", "Along the geodesic the slope a·b drifted by at most {geodesic_drift:.1%}; along the straight line "
             "by {line_drift:.0%}: a network that computes something else on the way.", "slope"),
    ),
    figure=figure,
    numbers=numbers,
    prepare=prepare,
)
