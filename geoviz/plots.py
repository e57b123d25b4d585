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

from geoviz.landscape import trajectory_pca

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
_HEIGHT = 420


def as_table(rows: Sequence[Mapping] | pd.DataFrame) -> pd.DataFrame:
    """Rows (list of dicts, as the runner keeps them) or a table -> a table."""
    return rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))


def _layout(fig: go.Figure, title: str, x_title: str, y_title: str) -> go.Figure:
    fig.update_layout(
        title={"text": title, "x": 0.0, "xanchor": "left"},
        height=_HEIGHT,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        # below the plot, so it never covers the title or the curves
        legend={"orientation": "h", "yanchor": "top", "y": -0.22, "x": 0.0, "xanchor": "left"},
        # keep the user's zoom while the path grows
        uirevision="keep",
        font={"size": 14},
    )
    fig.update_layout(xaxis_title=x_title, yaxis_title=y_title)
    return fig


def _evaluated(table: pd.DataFrame, column: str) -> pd.DataFrame:
    if column not in table:
        return table.iloc[0:0]
    return table[table[column].notna()]


def _line(table: pd.DataFrame, x: str, y: str, name: str, color: str, **kw) -> go.Scatter:
    return go.Scatter(
        x=table[x] if x in table else [],
        y=table[y] if y in table else [],
        mode="lines+markers" if len(table) < 40 else "lines",
        name=name,
        line={"color": color, "width": 2.5, **kw.pop("line", {})},
        **kw,
    )


def _reference(fig: go.Figure, value: float | None, name: str, color: str) -> None:
    """A horizontal reference line with its name, drawn as a trace so the legend shows it."""
    if value is None or not np.isfinite(value):
        return
    fig.add_hline(y=value, line={"color": color, "dash": "dash", "width": 1.5})
    fig.add_trace(
        go.Scatter(x=[None], y=[None], mode="lines", name=f"{name} {value:.3f}", line={"color": color, "dash": "dash"})
    )


def _marker(fig: go.Figure, x_value: float | None) -> None:
    if x_value is not None:
        fig.add_vline(x=x_value, line={"color": _COLORS["grey"], "dash": "dot", "width": 1.5})


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
    fig = go.Figure()
    fig.add_trace(_line(table, x, "test_accuracy", "as is", _COLORS["path"]))
    fig.add_trace(_line(table, x, "pruned_accuracy", "if pruned now", _COLORS["pruned"]))
    reference, baselines = reference or {}, baselines or {}
    _reference(fig, reference.get("dense_accuracy"), "dense", _COLORS["dense"])
    _reference(fig, reference.get("one_shot_accuracy"), "one-shot", _COLORS["one_shot"])
    _reference(fig, baselines.get("finetune"), "prune+fine-tune", _COLORS["finetune"])
    _marker(fig, marker)
    return _layout(fig, "Test accuracy along the path", X_AXES[x], "accuracy")


def loss_figure(rows, x: str = "step", marker: float | None = None) -> go.Figure:
    """Test loss (as is, if pruned now) and the objective L2, against step or a path length."""
    all_rows = as_table(rows)
    table = _evaluated(all_rows, "test_loss")
    fig = go.Figure()
    fig.add_trace(_line(table, x, "test_loss", "test loss", _COLORS["path"]))
    fig.add_trace(_line(table, x, "pruned_loss", "test loss if pruned", _COLORS["pruned"]))
    fig.add_trace(
        _line(all_rows, x, "objective", "objective L2 (right)", _COLORS["grey"], line={"dash": "dot"}, yaxis="y2")
    )
    fig.update_layout(yaxis2={"overlaying": "y", "side": "right", "showgrid": False, "title": "L2", "rangemode": "tozero"})
    _marker(fig, marker)
    return _layout(fig, "Loss along the path", X_AXES[x], "cross-entropy")


def sparsity_figure(rows, target: float | None = None, marker: float | None = None) -> go.Figure:
    """Sparsity along the path: exact zeros, near zeros, and what is left of the masked weights."""
    table = _evaluated(as_table(rows), "sparsity")
    fig = go.Figure()
    fig.add_trace(_line(table, "step", "near_zero_fraction", "|w| ≤ 1e-3", _COLORS["path"]))
    fig.add_trace(_line(table, "step", "sparsity", "exact zeros", _COLORS["dense"]))
    fig.add_trace(
        _line(table, "step", "remaining_norm", "masked weights left (norm)", _COLORS["grey"], line={"dash": "dot"})
    )
    if target is not None:
        _reference(fig, target, "target", _COLORS["one_shot"])
    _marker(fig, marker)
    fig.update_yaxes(range=[-0.02, 1.02])
    return _layout(fig, "Sparsity along the path", "step", "fraction")


def layer_sparsity(params: Mapping[str, torch.Tensor], names: Sequence[str] | None = None, zero: float = 1e-3) -> dict:
    """Fraction of weights with |w| <= ``zero`` per tensor (default: every tensor of 2+ dimensions)."""
    names = list(names) if names is not None else [n for n, p in params.items() if p.ndim >= 2]
    return {n: float((params[n].abs() <= zero).float().mean()) for n in names}


def layer_sparsity_figure(fractions: Mapping[str, float], target: float | None = None, title: str = "") -> go.Figure:
    """Per-layer sparsity as bars."""
    names = list(fractions)
    fig = go.Figure(
        go.Bar(
            x=names,
            y=[fractions[n] for n in names],
            marker_color=_COLORS["path"],
            text=[f"{fractions[n]:.0%}" for n in names],
            textposition="outside",
            name="layer",
        )
    )
    if target is not None:
        _reference(fig, target, "target", _COLORS["one_shot"])
    fig.update_yaxes(range=[0, 1.1])
    return _layout(fig, title or "Per-layer sparsity", "layer", "fraction of |w| ≤ 1e-3")


def _subsample(steps: list[int], count: int) -> list[int]:
    """At most ``count`` indices, evenly spread, always the first and the last."""
    n = len(steps)
    if n <= count:
        return list(range(n))
    return sorted(set(np.linspace(0, n - 1, count).round().astype(int).tolist()))


def trajectory_figure(
    steps: Sequence[int], snapshots: torch.Tensor, current: int | None = None, max_points: int = 80
) -> go.Figure:
    """The weight trajectory on its top two principal components, the current point highlighted.

    Args:
        steps: the step of each snapshot.
        snapshots: (S, P) flat weights.
        current: the step to highlight (default: the last).
        max_points: at most this many snapshots enter the PCA (evenly spread), so the
            figure costs O(max_points^2 P) however long the path is.
    """
    fig = go.Figure()
    if len(steps) < 2:
        fig.add_annotation(text="the trajectory appears after the first steps", showarrow=False)
        return _layout(fig, "Weight trajectory (PCA)", "PC1", "PC2")
    index = _subsample(list(steps), max_points)
    if current is not None:  # make sure the highlighted point is in the picture
        nearest = int(np.argmin([abs(s - current) for s in steps]))
        index = sorted(set(index) | {nearest})
    chosen = [steps[i] for i in index]
    pca = trajectory_pca(snapshots[index], k=2)
    xy = pca.coords.numpy()  # (S, 2)
    ev = pca.explained.numpy()
    fig.add_trace(
        go.Scatter(
            x=xy[:, 0],
            y=xy[:, 1],
            mode="lines+markers",
            name="path",
            line={"color": _COLORS["grey"], "width": 1.5},
            marker={"color": chosen, "colorscale": "Viridis", "size": 6, "colorbar": {"title": "step", "thickness": 12}},
            text=[f"step {s}" for s in chosen],
            hoverinfo="text",
        )
    )
    at = len(chosen) - 1 if current is None else int(np.argmin([abs(s - current) for s in chosen]))
    fig.add_trace(
        go.Scatter(x=[xy[0, 0]], y=[xy[0, 1]], mode="markers", name="start", marker={"size": 13, "color": _COLORS["dense"], "symbol": "circle"})
    )
    fig.add_trace(
        go.Scatter(
            x=[xy[at, 0]],
            y=[xy[at, 1]],
            mode="markers",
            name=f"step {chosen[at]}",
            marker={"size": 18, "color": _COLORS["one_shot"], "symbol": "star", "line": {"width": 1, "color": "black"}},
        )
    )
    return _layout(fig, "Weight trajectory (PCA)", f"PC1 ({ev[0]:.1%} of variance)", f"PC2 ({ev[1]:.1%} of variance)")


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
    fig = go.Figure(
        go.Contour(x=a, y=b, z=np.log1p(5 * loss), colorscale="Blues_r", showscale=False, contours={"coloring": "heatmap"}, hoverinfo="skip")
    )
    fig.add_trace(go.Scatter(x=t, y=0.5 * t**2, mode="lines", name="geodesic: function kept", line={"color": "#ff7f0e", "width": 4}))
    fig.add_trace(
        go.Scatter(x=[t[0], t[-1]], y=[0.5 * t[0] ** 2] * 2, mode="lines", name="straight line: function lost", line={"color": "#d62728", "width": 3, "dash": "dash"})
    )
    fig.add_trace(
        go.Scatter(x=[t[0], t[-1]], y=[0.5 * t[0] ** 2] * 2, mode="markers+text", text=["network A", "network B"], textposition="top center", marker={"size": 14, "color": "black"}, showlegend=False)
    )
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False)
    return _layout(fig, "Two good networks, and two ways between them", "weight direction 1", "weight direction 2")


def _last(table: pd.DataFrame, column: str):
    if column not in table or table[column].notna().sum() == 0:
        return None
    return float(table[column].dropna().iloc[-1])


def runs_table(runs) -> pd.DataFrame:
    """One line per run record: status and key figures, for a list of runs."""
    lines = []
    for run in runs:
        table, summary = run.table, run.summary
        lines.append(
            {
                "run": run.name,
                "application": run.config.get("application", ""),
                "status": run.state,
                "steps": int(table["step"].max()) if "step" in table and len(table) else 0,
                "test accuracy": summary.get("accuracy", _last(table, "test_accuracy")),
                "sparsity": summary.get("sparsity", _last(table, "sparsity")),
                "message": run.status.get("message", ""),
            }
        )
    return pd.DataFrame(lines)
