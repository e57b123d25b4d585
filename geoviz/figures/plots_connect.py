"""Plotly figures of the Connect application: three paths between two networks.

Pure functions (plain lists/arrays in, a Figure out), no Streamlit; drawn alike for a
live run and one read back from its folder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
import torch

from geoviz.figures.landscape import trajectory_pca
from geoviz.figures.plots import _figure, variance_share

__all__ = ["PATH_COLORS", "profiles_figure", "landscape_figure", "connect_pca_figure", "summary_rows"]

PATH_COLORS = {"geodesic": "#1f77b4", "line": "#d62728", "bezier": "#2ca02c", "bezier_inputs": "#9467bd"}
_LABELS = {"geodesic": "geodesic", "line": "straight line", "bezier": "Bezier curve",
           "bezier_inputs": "Bezier curve, no labels"}


def profiles_figure(profiles: Mapping[str, Mapping[str, Sequence[float]]], marker: float | None = None) -> go.Figure:
    """Train loss (solid, left axis) and test accuracy (dotted, right axis) along each path.

    Args:
        profiles: path name -> {"length": Euclidean length so far, "train_loss", "test_accuracy"}.
        marker: a Euclidean length to mark with a vertical line (the replay slider).
    """
    shapes = [] if marker is None else [{"type": "line", "yref": "paper", "y0": 0, "y1": 1, "x0": marker, "x1": marker,
                                         "line": {"color": "#444", "width": 1.5, "dash": "dot"}}]
    data = []
    lowest = 1.0
    for name, profile in profiles.items():
        if not profile or not len(profile.get("length", [])):
            continue
        color = PATH_COLORS.get(name, "#7f7f7f")
        x = np.asarray(profile["length"], dtype=float)
        lowest = min(lowest, float(np.nanmin(np.asarray(profile["test_accuracy"], dtype=float))))
        data.append({"type": "scatter", "x": x, "y": np.asarray(profile["train_loss"], dtype=float), "mode": "lines",
                     # the legend entry of both curves: the path's name alone; the hover says the axis, the
                     # axis titles say solid and dotted
                     "name": _LABELS.get(name, name), "hovertemplate": "%{x:.2f}, train loss %{y:.4f}",
                     "line": {"color": color, "width": 2.5},
                     "legendgroup": name})
        data.append({"type": "scatter", "x": x, "y": np.asarray(profile["test_accuracy"], dtype=float), "mode": "lines",
                     "name": f"{_LABELS.get(name, name)}: test accuracy", "yaxis": "y2",
                     "line": {"color": color, "width": 2, "dash": "dot"}, "legendgroup": name,
                     # one legend entry per path (it toggles both curves): eight entries took eight rows,
                     # about as much height as the plot; the axis titles say which line is which
                     "showlegend": False})
    return _figure(
        data, shapes, "Loss and accuracy along the paths", "Euclidean length along the path  Σ|Δw|", "train loss (solid)",
        yaxis2={"title": {"text": "test accuracy (dotted)"}, "overlaying": "y", "side": "right", "range": [max(0.0, lowest - 0.05), 1.005], "showgrid": False, "tickformat": ".2f"},
        height=420,
    )


def landscape_figure(
    landscape: Mapping,
    value: str = "train_loss",
    cost: str | None = None,
) -> go.Figure:
    """The landscape on the plane (contour; loss on a log scale) with the paths over it.

    Args:
        landscape: {"xs", "ys", "values": {name: (n_y, n_x) with None where not yet
            computed}, "paths": {name: (T, 2)}, "rows_done", "third"} as saved in
            landscape.json.
        value: which grid to draw: train_loss, train_accuracy, test_loss, test_accuracy.
        cost: a line saying what the grid costs, shown until it is filled.
    """
    xs, ys = np.asarray(landscape["xs"], dtype=float), np.asarray(landscape["ys"], dtype=float)
    z = np.array([[np.nan if v is None else v for v in row] for row in landscape["values"][value]], dtype=float)
    is_loss = value.endswith("loss")
    shown = np.log10(np.clip(z, 1e-4, None)) if is_loss else z
    finite = shown[np.isfinite(shown)]
    rows = int(landscape.get("rows_done", 0))
    colorbar = {"title": {"text": "log10 " + value.replace("_", " ") if is_loss else value.replace("_", " ")}, "thickness": 12}
    data: list[dict] = [{
        "type": "contour", "x": xs, "y": ys, "z": shown, "colorscale": "Viridis" if is_loss else "Viridis_r",
        "reversescale": False, "ncontours": 24, "connectgaps": False, "colorbar": colorbar,
        "contours": {"coloring": "heatmap"}, "name": value, "hovertemplate": "x %{x:.2f}<br>y %{y:.2f}<br>%{z:.3f}<extra></extra>",
        **({"zmin": float(finite.min()), "zmax": float(finite.max())} if finite.size else {}),
    }]
    for name, points in landscape.get("paths", {}).items():
        if name == "points":
            continue
        xy = np.asarray(points, dtype=float).reshape(-1, 2)
        data.append({"type": "scatter", "x": xy[:, 0], "y": xy[:, 1], "mode": "lines", "name": _LABELS.get(name, name),
                     "line": {"color": PATH_COLORS.get(name, "white"), "width": 3}})
    points = np.asarray(landscape.get("paths", {}).get("points", []), dtype=float).reshape(-1, 2)
    third = "Bezier control point" if landscape.get("third", "bezier") == "bezier" else "geodesic midpoint"
    for (px, py), label, symbol in zip(points, ("w_A", "w_B", third), ("circle", "circle", "x")):
        data.append({"type": "scatter", "x": [px], "y": [py], "mode": "markers+text", "text": [label],
                     "textposition": "top center", "name": label, "showlegend": False, "textfont": {"color": "white"},
                     "marker": {"size": 12, "color": "white", "symbol": symbol, "line": {"width": 1.5, "color": "black"}}})
    n_rows = len(ys)
    title = f"{value.replace('_', ' ')} on the plane through w_A, w_B and the {third}"
    if rows < n_rows:
        title += f" · {rows} of {n_rows} rows"
    annotations = []
    if cost and rows < n_rows:
        annotations.append({"text": cost, "showarrow": False, "xref": "paper", "yref": "paper", "x": 0.5, "y": 1.0, "yanchor": "bottom"})
    return _figure(data, [], title, "along w_B − w_A", "in the plane, ⟂", annotations=annotations, height=560,
                   yaxis={"scaleanchor": "x", "scaleratio": 1})


def connect_pca_figure(
    snapshots: torch.Tensor,
    others: Mapping[str, torch.Tensor] | None = None,
    max_points: int = 60,
    current: int | None = None,
    projected: bool = False,
) -> go.Figure:
    """The geodesic's trajectory on its top two principal components, with the line and
    the Bezier curve projected into the same frame.

    Args:
        snapshots: (S, P) geodesic snapshots (the first is w_A, the last the current point).
        others: name -> (T, P) points of the other paths (the line's last point is w_B).
        current: index of a snapshot to mark (the replay slider); the PCA is of them all.
        projected: the snapshots (and ``others``) are random projections, said in the title.
    """
    title = "Paths on the geodesic's top two PCs" + (" (of random projections)" if projected else "")
    if snapshots.shape[0] < 3:
        note = {"text": "the trajectory appears after the first steps", "showarrow": False, "xref": "paper", "yref": "paper", "x": 0.5, "y": 0.5}
        return _figure([], [], title, "PC1", "PC2", annotations=[note])
    s = snapshots.shape[0]
    index = sorted(set(np.linspace(0, s - 1, min(s, max_points)).round().astype(int).tolist()))
    pca = trajectory_pca(snapshots[index].detach().float().cpu(), k=2)
    xy = pca.coords.numpy()
    ev = pca.explained.numpy()
    data = [{"type": "scatter", "x": xy[:, 0], "y": xy[:, 1], "mode": "lines+markers", "name": "geodesic",
             "line": {"color": PATH_COLORS["geodesic"], "width": 2.5}, "marker": {"size": 5}}]
    for name, points in (others or {}).items():
        proj = pca.project(points.detach().float().cpu()).numpy()
        data.append({"type": "scatter", "x": proj[:, 0], "y": proj[:, 1], "mode": "lines", "name": _LABELS.get(name, name),
                     "line": {"color": PATH_COLORS.get(name, "#7f7f7f"), "width": 2, "dash": "dash"}})
    ends = [("w_A", xy[0])]
    if others and "line" in others:  # the line ends exactly on w_B
        ends.append(("w_B", pca.project(others["line"][-1:].detach().float().cpu()).numpy()[0]))
    labels = []
    for name, point in ends:  # the label beside its marker, not on it
        data.append({"type": "scatter", "x": [point[0]], "y": [point[1]], "mode": "markers", "cliponaxis": False,
                     "name": name, "showlegend": False, "marker": {"size": 12, "color": "black"}})
        # an annotation on a pale box, above every trace: a path that loops around w_B before
        # landing (a small damping) drew over a trace's text label
        labels.append({"text": name, "x": float(point[0]), "y": float(point[1]), "xref": "x", "yref": "y",
                       "yshift": -18, "showarrow": False, "font": {"size": 14}, "bgcolor": "rgba(255,255,255,0.85)"})
    if current is not None:
        at = pca.project(snapshots[current : current + 1].detach().float().cpu()).numpy()[0]
        data.append({"type": "scatter", "x": [at[0]], "y": [at[1]], "mode": "markers", "name": "replay",
                     "marker": {"size": 18, "color": "#d62728", "symbol": "star", "line": {"width": 1, "color": "black"}}})
    return _figure(data, [], title, f"PC1 ({variance_share(ev[0])} of variance)", f"PC2 ({variance_share(ev[1])} of variance)",
                   annotations=labels)


def summary_rows(summary: Mapping) -> list[dict]:
    """One row per path for the summary table: barrier, minimum accuracy, lengths, data used."""
    rows = []
    for name in ("geodesic", "line", "bezier", "bezier_inputs"):
        r = summary.get(name)
        if not r:
            continue
        note = {"geodesic": f"{summary.get('gradient_evaluations', '')} G·v products",
                "line": "no training"}.get(name, f"{r.get('training_steps', '')} SGD steps")
        rows.append({
            "path": _LABELS[name],
            "barrier (train loss)": r["barrier"],
            "min test accuracy": r["min_accuracy"],
            "Euclidean length": r["length"],
            "functional length": r.get("functional_length"),
            "cost": note,
            "data used": (summary.get("data_used") or {}).get(name, ""),
        })
    return rows
