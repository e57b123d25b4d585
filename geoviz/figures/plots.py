"""Plotly figures of a path, drawn from its table of steps (live rows or a run record).

Pure functions: a table (or rows) in, a ``plotly.graph_objects.Figure`` out. The app,
tests and notebooks all draw with these; no Streamlit here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch

from geoviz.figures.landscape import trajectory_pca

__all__ = [
    "X_AXES",
    "as_table",
    "accuracy_figure",
    "loss_figure",
    "sparsity_figure",
    "layer_sparsity",
    "layer_sparsity_figure",
    "trajectory_figure",
    "geodesic_sketch",
    "runs_table",
]

# what the x axis of a curve along the path can be, and how it is labelled
X_AXES = {
    "step": "step",
    "path_length": "Euclidean path length  Σ|θ|",
    "functional_length": "functional path length  Σ√(θᵀGθ)",
}

_COLORS = {
    "path": "#1f77b4",
    "pruned": "#ff7f0e",
    "dense": "#2ca02c",
    "one_shot": "#d62728",
    "finetune": "#9467bd",
    "grey": "#7f7f7f",
}
_HEIGHT = 340  # with its legend, a first row of charts fits above the fold at 1280x720


def as_table(rows: Sequence[Mapping] | pd.DataFrame) -> pd.DataFrame:
    """Rows (list of dicts, as the runner keeps them) or a table -> a table."""
    return rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))


def _figure(data: list[dict], shapes: list[dict], title: str, x_title: str, y_title: str, **layout) -> go.Figure:
    """One Figure from plain dicts: plotly's add_* helpers re-validate the whole figure
    on every call (~10x slower), and the live page redraws every second. A figure with
    no point yet says so instead of showing made-up axes."""
    if not any(_has_points(trace) for trace in data):
        empty = {"showticklabels": False, "showgrid": False, "zeroline": False}
        for axis in ("xaxis", "yaxis", *(k for k in layout if k.startswith("yaxis"))):
            layout = {**layout, axis: {**layout.get(axis, {}), **empty}}
        note = {"text": "no step yet", "showarrow": False, "xref": "paper", "yref": "paper", "x": 0.5, "y": 0.5, "font": {"size": 16, "color": _COLORS["grey"]}}
        if not layout.get("annotations"):  # a figure's own note says it already (two at one place overlapped)
            layout["annotations"] = [note]
    return go.Figure(
        {
            "data": data,
            "layout": {
                "title": {"text": title, "x": 0.0, "xanchor": "left"},
                "height": _HEIGHT,
                "margin": {"l": 10, "r": 10, "t": 40, "b": 10},
                # below the plot, so it never covers the title or the curves; anchored to the figure's bottom
                # edge (the room is kept by plotly's automargin), not at a fraction of the plot's height, which
                # at 468 px wide put it over the x axis's tick labels and title
                "legend": {"orientation": "h", "yref": "container", "yanchor": "bottom", "y": 0.0, "x": 0.0,
                           "xanchor": "left", "font": {"size": 12}},
                # keep the user's zoom while the path grows
                "uirevision": "keep",
                "font": {"size": 14},
                "shapes": shapes,
                "xaxis": {"title": {"text": x_title}, **layout.pop("xaxis", {})},
                "yaxis": {"title": {"text": y_title}, **layout.pop("yaxis", {})},
                **layout,
            },
        }
    )


def _has_points(trace: dict) -> bool:
    x = trace.get("x")
    return x is not None and len(x) > 0 and not (len(x) == 1 and x[0] is None)


def _evaluated(table: pd.DataFrame, column: str) -> pd.DataFrame:
    if column not in table:
        return table.iloc[0:0]
    return table[table[column].notna()]


def _column(table: pd.DataFrame, name: str) -> np.ndarray:
    return table[name].to_numpy(dtype=float) if name in table else np.zeros(0)


def _line(table: pd.DataFrame, x: str, y: str, name: str, color: str, dash: str = "solid", **kw) -> dict:
    return {
        "type": "scatter",
        "x": _column(table, x),
        "y": _column(table, y),
        "mode": "lines+markers" if len(table) < 40 else "lines",
        "name": name,
        "line": {"color": color, "width": 2.5, "dash": dash},
        **kw,
    }


def _reference(data: list, shapes: list, value: float | None, name: str, color: str) -> None:
    """A horizontal reference line, with a legend entry that names it and its value."""
    if value is None or not np.isfinite(value):
        return
    line = {"color": color, "dash": "dash", "width": 1.5}
    shapes.append({"type": "line", "xref": "paper", "x0": 0, "x1": 1, "y0": value, "y1": value, "line": line})
    data.append({"type": "scatter", "x": [None], "y": [None], "mode": "lines", "name": f"{name} {value:.3f}", "line": line})


def _marker(shapes: list, x_value: float | None) -> None:
    if x_value is not None:
        line = {"color": _COLORS["grey"], "dash": "dot", "width": 1.5}
        shapes.append({"type": "line", "yref": "paper", "y0": 0, "y1": 1, "x0": x_value, "x1": x_value, "line": line})


def accuracy_figure(
    rows,
    reference: Mapping | None = None,
    baselines: Mapping | None = None,
    x: str = "step",
    marker: float | None = None,
) -> go.Figure:
    """Test accuracy along the path, as is and if hard-pruned now, with reference lines.

    Args:
        rows: the path's steps; only evaluated steps (with ``test_accuracy``) are drawn.
        reference: ``dense_accuracy`` and ``one_shot_accuracy`` (the run's reference).
        baselines: ``finetune`` (prune + fine-tune, known once the path has ended).
        x: a key of :data:`X_AXES`.
        marker: an x value to mark with a vertical line (the replay slider).
    """
    table = _evaluated(as_table(rows), "test_accuracy")
    data = [
        _line(table, x, "test_accuracy", "as is", _COLORS["path"]),
        _line(table, x, "pruned_accuracy", "if pruned now", _COLORS["pruned"]),
    ]
    shapes: list[dict] = []
    reference, baselines = reference or {}, baselines or {}
    _reference(data, shapes, reference.get("dense_accuracy"), "dense", _COLORS["dense"])
    _reference(data, shapes, reference.get("one_shot_accuracy"), "one-shot", _COLORS["one_shot"])
    _reference(data, shapes, baselines.get("finetune"), "prune+fine-tune", _COLORS["finetune"])
    _marker(shapes, marker)
    return _figure(data, shapes, "Test accuracy along the path", X_AXES[x], "accuracy")


def loss_figure(rows, x: str = "step", marker: float | None = None) -> go.Figure:
    """Test loss (as is, if pruned now) and the objective L2, against step or a path length."""
    all_rows = as_table(rows)
    table = _evaluated(all_rows, "test_loss")
    data = [
        _line(table, x, "test_loss", "test loss", _COLORS["path"]),
        _line(table, x, "pruned_loss", "test loss if pruned", _COLORS["pruned"]),
        _line(all_rows, x, "objective", "objective L2 (right axis)", _COLORS["grey"], dash="dot", yaxis="y2"),
    ]
    shapes: list[dict] = []
    _marker(shapes, marker)
    y2 = {"overlaying": "y", "side": "right", "showgrid": False, "title": {"text": "L2"}, "rangemode": "tozero"}
    return _figure(data, shapes, "Loss along the path", X_AXES[x], "cross-entropy", yaxis2=y2)


def sparsity_figure(rows, target: float | None = None, marker: float | None = None) -> go.Figure:
    """Sparsity along the path: exact zeros, near zeros, and what is left of the masked weights."""
    table = _evaluated(as_table(rows), "sparsity")
    data = [
        _line(table, "step", "near_zero_fraction", "|w| ≤ 1e-3", _COLORS["path"]),
        _line(table, "step", "sparsity", "exact zeros", _COLORS["dense"]),
        _line(table, "step", "remaining_norm", "masked weights left (norm)", _COLORS["grey"], dash="dot"),
    ]
    shapes: list[dict] = []
    _reference(data, shapes, target, "target", _COLORS["one_shot"])
    _marker(shapes, marker)
    return _figure(data, shapes, "Sparsity along the path", "step", "fraction", yaxis={"range": [-0.02, 1.02]})


def variance_share(fraction: float) -> str:
    """A share of variance for an axis title: 99.97% and 0.03%, not 100.0% and 0.0%."""
    percent = 100.0 * float(fraction)
    if 0.1 <= percent <= 99.9:
        return f"{percent:.1f}%"
    for digits in (2, 3):
        text = f"{percent:.{digits}f}"
        if float(text) not in (0.0, 100.0):
            return f"{text}%"
    return ">99.999%" if percent > 50 else "<0.001%"


def layer_sparsity(params: Mapping[str, torch.Tensor], names: Sequence[str] | None = None, zero: float = 1e-3) -> dict:
    """Fraction of weights with |w| <= ``zero`` per tensor (default: every tensor of 2+ dimensions)."""
    names = list(names) if names is not None else [n for n, p in params.items() if p.ndim >= 2]
    return {n: float((params[n].abs() <= zero).float().mean()) for n in names}


def layer_sparsity_figure(fractions: Mapping[str, float], target: float | None = None, title: str = "") -> go.Figure:
    """Per-layer sparsity as bars."""
    names = list(fractions)
    data = [
        {
            "type": "bar",
            "x": names,
            "y": [fractions[n] for n in names],
            "marker": {"color": _COLORS["path"]},
            "text": [f"{fractions[n]:.0%}" for n in names],
            # a label just above a bar near the target would be struck through by the
            # target line: those go inside the bar
            "textposition": ["inside" if target is not None and abs(fractions[n] - target) < 0.12 else "outside" for n in names],
            "insidetextanchor": "end",
            "name": "fraction of the layer",
        }
    ]
    shapes: list[dict] = []
    _reference(data, shapes, target, "target", _COLORS["one_shot"])
    return _figure(data, shapes, title or "Per-layer sparsity", "layer", "fraction of |w| ≤ 1e-3", yaxis={"range": [0, 1.1]})


def _subsample(steps: list[int], count: int) -> list[int]:
    """At most ``count`` indices, evenly spread, always the first and the last."""
    n = len(steps)
    if n <= count:
        return list(range(n))
    return sorted(set(np.linspace(0, n - 1, count).round().astype(int).tolist()))


def trajectory_figure(
    steps: Sequence[int], snapshots: torch.Tensor, current: int | None = None, max_points: int = 40,
    start_label: str = "start (dense)", projected: bool = False,
) -> go.Figure:
    """The weight trajectory on its top two principal components, the current point highlighted.

    Args:
        steps: the step of each snapshot.
        snapshots: (S, P) flat weights.
        current: the step to highlight (default: the last).
        max_points: at most this many snapshots enter the PCA (evenly spread, first and
            last always), so a redraw costs O(max_points^2 P) however long the path is.
        projected: the snapshots are random projections (geoviz.record.sketch), said in the title.
    """
    title = "Weight trajectory (PCA of " + ("random projections of the snapshots)" if projected else "the snapshots)")
    if len(steps) < 2:
        return _figure([], [], title, "PC1", "PC2")
    steps = list(steps)
    index = _subsample(steps, max_points)
    chosen = [steps[i] for i in index]
    # one PCA of the whole trajectory, whichever point is highlighted (a replay slider
    # moves the star; the picture stays put); the highlighted point is projected on it
    pca = trajectory_pca(snapshots[index], k=2)
    xy = pca.coords.numpy()  # (S, 2)
    ev = pca.explained.numpy()
    nearest = len(steps) - 1 if current is None else int(np.argmin([abs(s - current) for s in steps]))
    star = pca.project(snapshots[nearest : nearest + 1].float()).numpy()  # (1, 2)
    data = [
        {
            "type": "scatter",
            "x": xy[:, 0],
            "y": xy[:, 1],
            "mode": "lines+markers",
            "name": "path",
            "line": {"color": _COLORS["grey"], "width": 1.5},
            "marker": {"color": chosen, "colorscale": "Viridis", "size": 7, "colorbar": {"title": {"text": "step"}, "thickness": 12}},
            "text": [f"step {s}" for s in chosen],
            "hoverinfo": "text",
        },
        {"type": "scatter", "x": xy[:1, 0], "y": xy[:1, 1], "mode": "markers", "name": start_label, "marker": {"size": 14, "color": _COLORS["dense"]}},
        {
            "type": "scatter",
            "x": star[:, 0],
            "y": star[:, 1],
            "mode": "markers",
            "name": f"now: step {steps[nearest]}",
            "marker": {"size": 20, "color": _COLORS["one_shot"], "symbol": "star", "line": {"width": 1, "color": "black"}},
        },
    ]
    return _figure(data, [], title, f"PC1 ({variance_share(ev[0])} of variance)", f"PC2 ({variance_share(ev[1])} of variance)")


def geodesic_sketch(n: int = 120) -> go.Figure:
    """A picture for the home page: a curved valley of good networks in a 2-D weight plane.

    The straight line between two good networks climbs out of the valley; a path that
    keeps the network's function follows the valley. Illustrative, not computed from
    a network.
    """
    a = np.linspace(-2.2, 2.2, n)
    b = np.linspace(-1.2, 2.4, n)
    ga, gb = np.meshgrid(a, b)
    # loss is low near the parabola b = a^2 / 2 (a banana-shaped valley)
    loss = (gb - 0.5 * ga**2) ** 2 + 0.02 * ga**2
    t = np.linspace(-1.8, 1.8, 60)
    ends = [t[0], t[-1]], [0.5 * t[0] ** 2] * 2
    data = [
        {"type": "contour", "x": a, "y": b, "z": np.log1p(5 * loss), "colorscale": "Blues_r", "showscale": False, "hoverinfo": "skip", "contours": {"coloring": "heatmap"}},
        {"type": "scatter", "x": t, "y": 0.5 * t**2, "mode": "lines", "name": "geodesic: the function is kept", "line": {"color": "#ff7f0e", "width": 5}},
        {"type": "scatter", "x": ends[0], "y": ends[1], "mode": "lines", "name": "straight line: the function is lost", "line": {"color": "#d62728", "width": 3, "dash": "dash"}},
        {"type": "scatter", "x": ends[0], "y": ends[1], "mode": "markers+text", "text": ["network A", "network B"], "textposition": "top center", "textfont": {"color": "white", "size": 16}, "marker": {"size": 16, "color": "white", "line": {"width": 2, "color": "black"}}, "showlegend": False},
    ]
    hidden = {"showticklabels": False}
    return _figure(data, [], "Two good networks, and two ways between them (dark: low loss)", "a direction in weight space", "another direction", xaxis=hidden, yaxis=hidden)


def _last(table: pd.DataFrame, column: str):
    if column not in table or table[column].notna().sum() == 0:
        return None
    try:
        return float(table[column].dropna().iloc[-1])
    except (TypeError, ValueError):  # text where a number belongs (a hand-edited run)
        return None


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def runs_table(runs) -> pd.DataFrame:
    """One line per run record: status and key figures, for a list of runs."""
    lines = []
    for run in runs:
        table, summary = run.table, run.summary
        application = str(run.config.get("application", ""))[:40]
        geodesic = summary.get("geodesic", {})
        geodesic = geodesic if isinstance(geodesic, dict) else {}
        if application == "continual":  # the average over both tasks
            accuracy = geodesic.get("average", _last(table, "average_accuracy"))
        elif application == "connect":  # the worst point of the path
            accuracy = geodesic.get("min_accuracy", _last(table, "test_accuracy"))
        else:
            accuracy = summary.get("accuracy", _last(table, "test_accuracy"))
        lines.append(
            {
                "run": run.name,
                "application": application,
                "status": run.state,
                "steps": int(table["step"].max()) if "step" in table and len(table) else 0,
                # a run folder is untrusted: a figure of another type is left out, not shown
                "test accuracy": _number(accuracy),
                "sparsity": _number(summary.get("sparsity", _last(table, "sparsity"))),
                "barrier": _number(geodesic.get("barrier")) if application == "connect" else None,
                "message": str(run.status.get("message", ""))[:200],
            }
        )
    return pd.DataFrame(lines)


# -- continual learning (application 2) ---------------------------------------------
# Self-contained: plain dicts in, one Figure out, like the figures above.

_TASK_COLORS = {"task1": "#1f77b4", "task2": "#ff7f0e", "average": "#2a2a2a"}
_METHOD_NAMES = {
    "start": "start (task 1 only)",
    "geodesic": "geodesic",
    "finetune": "fine-tune",
    "ewc": "EWC",
    "replay": "replay",
}


def _continual_layout(title: str, x_title: str, y_title: str, **extra) -> dict:
    return {
        "title": {"text": title, "x": 0.0, "xanchor": "left"},
        "height": _HEIGHT,
        "margin": {"l": 10, "r": 10, "t": 40, "b": 10},
        # at the figure's bottom edge, as in _figure (at -0.22 plot-heights it touched the x axis's title)
        "legend": {"orientation": "h", "yref": "container", "yanchor": "bottom", "y": 0.0, "x": 0.0, "xanchor": "left"},
        "uirevision": "keep",
        "font": {"size": 14},
        "xaxis": {"title": {"text": x_title}},
        "yaxis": {"title": {"text": y_title}},
        **extra,
    }


def _continual_line(table: pd.DataFrame, x: str, y: str, name: str, color: str, dash: str = "solid", **kw) -> dict:
    return {
        "type": "scatter",
        "x": table[x].to_numpy(dtype=float) if x in table else [],
        "y": table[y].to_numpy(dtype=float) if y in table else [],
        "mode": "lines+markers" if len(table) < 40 else "lines",
        "name": name,
        "line": {"color": color, "width": 2.5, "dash": dash},
        **kw,
    }


def _vertical(x_value: float | None) -> list[dict]:
    if x_value is None:
        return []
    line = {"color": "#7f7f7f", "dash": "dot", "width": 1.5}
    return [{"type": "line", "yref": "paper", "y0": 0, "y1": 1, "x0": x_value, "x1": x_value, "line": line}]


def task_accuracy_figure(rows, x: str = "step", start: Mapping | None = None, marker: float | None = None) -> go.Figure:
    """Test accuracy of each task along a continual path, and their average.

    Args:
        rows: the path's steps; evaluated ones carry ``task1_accuracy``, ``task2_accuracy``
            and ``average_accuracy``.
        x: a key of :data:`X_AXES`.
        start: the start network's ``task1_accuracy`` (or ``task1``), drawn as a reference.
        marker: an x value to mark with a vertical line (the replay slider).
    """
    table = _evaluated(as_table(rows), "task1_accuracy")
    data = [
        _continual_line(table, x, "task1_accuracy", "task 1 (kept)", _TASK_COLORS["task1"]),
        _continual_line(table, x, "task2_accuracy", "task 2 (learnt)", _TASK_COLORS["task2"]),
        _continual_line(table, x, "average_accuracy", "average", _TASK_COLORS["average"], dash="dash"),
    ]
    shapes = _vertical(marker)
    start = start or {}
    value = start.get("task1_accuracy", start.get("task1"))
    if value is not None:
        line = {"color": _TASK_COLORS["task1"], "dash": "dot", "width": 1.2}
        shapes.append({"type": "line", "xref": "paper", "x0": 0, "x1": 1, "y0": value, "y1": value, "line": line})
        data.append({"type": "scatter", "x": [None], "y": [None], "mode": "lines", "name": f"task 1 at the start {value:.3f}", "line": line})
    layout = _continual_layout("Test accuracy per task", X_AXES[x], "accuracy", shapes=shapes)
    layout["yaxis"]["range"] = [-0.02, 1.02]
    return go.Figure({"data": data, "layout": layout})


def task_loss_figure(rows, x: str = "step", marker: float | None = None) -> go.Figure:
    """Test loss per task, the objective (a task-2 training minibatch) and, on the right
    axis, how far the outputs on the metric memory have moved from the start."""
    all_rows = as_table(rows)
    table = _evaluated(all_rows, "task1_loss")
    data = [
        _continual_line(table, x, "task1_loss", "task 1 test loss", _TASK_COLORS["task1"]),
        _continual_line(table, x, "task2_loss", "task 2 test loss", _TASK_COLORS["task2"]),
        _continual_line(all_rows, x, "objective", "L2: task-2 training minibatch", "#bbbbbb", dash="dot"),
        _continual_line(table, x, "memory_output_change", "output change on memory (right)", "#2ca02c", dash="dash", yaxis="y2"),
    ]
    y2 = {"overlaying": "y", "side": "right", "showgrid": False, "title": {"text": "output change |Δf|²"}, "rangemode": "tozero"}
    layout = _continual_layout("Loss per task", X_AXES[x], "cross-entropy", shapes=_vertical(marker), yaxis2=y2)
    layout["yaxis"]["rangemode"] = "tozero"
    return go.Figure({"data": data, "layout": layout})


def continual_results(summary: Mapping) -> pd.DataFrame:
    """One row per method (start, geodesic, baselines): task-1, task-2 and average test accuracy."""
    rows = []
    start = summary.get("start") or {}
    if start:
        rows.append({"method": _METHOD_NAMES["start"], "task 1": start.get("task1"), "task 2": start.get("task2"),
                     "average": start.get("average"), "task-1 data used": "all, to train it", "gradient evaluations": None})
    geodesic = summary.get("geodesic")
    memory = summary.get("memory_size")
    if geodesic:
        rows.append({"method": f"{_METHOD_NAMES['geodesic']} ({summary.get('mode', 'exact')})", "task 1": geodesic.get("task1"),
                     "task 2": geodesic.get("task2"), "average": geodesic.get("average"),
                     "task-1 data used": f"{memory} inputs, no labels", "gradient evaluations": summary.get("gradient_evaluations")})
    used = {"finetune": "none", "ewc": "Fisher of task 1", "replay": f"{memory} examples with labels"}
    for name, scores in (summary.get("baselines") or {}).items():
        rows.append({"method": _METHOD_NAMES.get(name, name), "task 1": scores.get("task1"), "task 2": scores.get("task2"),
                     "average": scores.get("average"), "task-1 data used": scores.get("data_used", used.get(name, "")),
                     "gradient evaluations": scores.get("gradient_evaluations")})
    return pd.DataFrame(rows, columns=["method", "task 1", "task 2", "average", "task-1 data used", "gradient evaluations"])


def continual_bars_figure(summary: Mapping) -> go.Figure:
    """Final test accuracy per task (and average) of the geodesic beside every baseline."""
    table = continual_results(summary)
    data = [
        {"type": "bar", "x": table["method"].tolist(), "y": table[column].astype(float).tolist(), "name": column,
         "marker": {"color": color}, "text": [f"{v:.2f}" for v in table[column].astype(float)], "textposition": "outside"}
        for column, color in (("task 1", _TASK_COLORS["task1"]), ("task 2", _TASK_COLORS["task2"]), ("average", "#7f7f7f"))
    ]
    layout = _continual_layout("Final test accuracy: geodesic and baselines", "", "accuracy", barmode="group")
    layout["yaxis"]["range"] = [0, 1.12]
    return go.Figure({"data": data, "layout": layout})


__all__ += ["task_accuracy_figure", "task_loss_figure", "continual_results", "continual_bars_figure"]
