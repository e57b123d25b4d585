"""Comparing runs and sweeps: overlaid curves, settings side by side, mean ± sd over seeds.

Every function takes run records (``geoviz.record.runs.RunRecord``) or a sweep's results
table and returns a plotly figure or a pandas table; the /compare page only places them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from geoviz.figures.plots import X_AXES, _figure, _line
from geoviz.record.sweep_spec import final_figures

__all__ = [
    "CURVES",
    "run_settings",
    "differing",
    "run_labels",
    "settings_table",
    "highlight_rows",
    "overlay_figure",
    "errorbar_figure",
    "parallel_figure",
    "cost_figure",
    "COSTS",
]

# each application's key figures along the path: (step-table column, title)
CURVES = {
    "sparsify": [("test_accuracy", "Test accuracy"), ("pruned_accuracy", "Accuracy if pruned now"), ("sparsity", "Sparsity")],
    "continual": [("task1_accuracy", "Task 1 accuracy"), ("task2_accuracy", "Task 2 accuracy"), ("average_accuracy", "Average accuracy")],
    "connect": [("test_accuracy", "Test accuracy"), ("train_loss", "Train loss"), ("distance_to_b", "Distance to w_B")],
}
COSTS = {"wall_seconds": "wall time of the trial (s)", "gradient_evaluations": "gradient evaluations", "steps_taken": "steps"}
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
_SECTIONS = ("setup", "sparsify", "continual", "connect", "solver")


def _shown(value):
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return value


def run_settings(record) -> dict:
    """Every setting of a run, flat: the setup, the application's config, the solver."""
    out = {}
    for section in _SECTIONS:
        for key, value in record.config.get(section, {}).items():
            out[key if key not in out else f"{section}.{key}"] = _shown(value)
    return out


def run_results(record) -> dict:
    """A finished run's final figures (the sweep's names), else nothing."""
    application = record.config.get("application", "")
    try:
        return final_figures(application, record.summary)
    except (KeyError, TypeError):
        return {}


def differing(settings: Sequence[dict]) -> list[str]:
    """The settings whose values are not all the same, in their first order."""
    names = list(dict.fromkeys(k for s in settings for k in s))
    return [k for k in names if len({repr(s.get(k)) for s in settings}) > 1]


def run_labels(records) -> list[str]:
    """A short label per run: its differing settings, else its folder name."""
    settings = [run_settings(r) for r in records]
    keys = differing(settings)
    labels = [", ".join(f"{k}={s.get(k)}" for k in keys) for s in settings]
    if not all(labels) or len(set(labels)) < len(labels):
        return [r.name for r in records]
    return labels


def settings_table(records) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(the differing settings, the final figures and the status; the settings every run
    shares; the names of the differing settings). Rows are names, columns are runs."""
    settings = [run_settings(r) for r in records]
    results = [run_results(r) for r in records]
    keys = differing(settings)
    same = [k for k in dict.fromkeys(k for s in settings for k in s) if k not in keys]
    figures = list(dict.fromkeys(k for r in results for k in r))
    columns = [r.name for r in records]

    def table(rows: dict) -> pd.DataFrame:
        out = pd.DataFrame.from_dict(rows, orient="index", columns=columns) if rows else pd.DataFrame(columns=columns)
        out.index.name = "setting"
        return out

    main = {k: [str(s.get(k, "")) for s in settings] for k in keys}
    for k in figures:
        main[f"result: {k}"] = [f"{r[k]:.4f}" if isinstance(r.get(k), float) and math.isfinite(r[k]) else "" for r in results]
    main["status"] = [r.state for r in records]
    return table(main), table({k: [str(s.get(k, "")) for s in settings] for k in same}), keys


def highlight_rows(table: pd.DataFrame, rows: Sequence[str], color: str = "#fff3b0"):
    """A pandas Styler marking ``rows`` (the differing settings) with a background."""
    marked = set(rows)

    def style(row: pd.Series) -> list[str]:
        css = f"background-color: {color}; font-weight: 600" if row.name in marked else ""
        return [css] * len(row)

    return table.style.apply(style, axis=1)


def overlay_figure(records, column: str, title: str, x: str = "step", labels: Sequence[str] | None = None) -> go.Figure:
    """One curve per run of ``column`` against ``x`` (step or either path length)."""
    labels = list(labels) if labels is not None else run_labels(records)
    data = []
    for i, (record, label) in enumerate(zip(records, labels)):
        table = record.table
        if column in table and x in table:
            shown = table[table[column].notna()]
            data.append(_line(shown, x, column, label, _PALETTE[i % len(_PALETTE)]))
    return _figure(data, [], f"{title}: {len(data)} run{'' if len(data) == 1 else 's'}", X_AXES.get(x, x), title)


def _setting_labels(table: pd.DataFrame, settings: Sequence[str]) -> list[str]:
    return [", ".join(f"{k}={row[k]}" for k in settings) or "all" for _, row in table.iterrows()]


def errorbar_figure(summary: pd.DataFrame, settings: Sequence[str], objective: str) -> go.Figure:
    """Mean ± sd of the objective over seeds, one bar per setting (as ``summarize`` orders them)."""
    labels = _setting_labels(summary, settings)
    sd = summary["sd"].fillna(0.0).to_numpy(float)
    data = [{
        "type": "scatter", "mode": "markers", "x": labels, "y": summary["mean"].to_numpy(float),
        "error_y": {"type": "data", "array": sd, "visible": True, "thickness": 2, "width": 8},
        "marker": {"size": 11, "color": _PALETTE[0]}, "name": f"{objective}: mean ± sd over seeds",
        "text": [f"n = {n}" for n in summary["n"]], "hovertemplate": "%{x}<br>%{y:.4f} ± %{error_y.array:.4f}<br>%{text}<extra></extra>",
    }]
    return _figure(data, [], f"{objective}: mean ± sd over seeds, per setting", "setting", objective,
                   xaxis={"type": "category"})


def _dimension(values: pd.Series, name: str) -> dict:
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.notna().all():
        v = numeric.to_numpy(float)
        if (v > 0).all() and v.max() / v.min() >= 100:  # spans decades: a log axis
            ticks = sorted(set(v))
            return {"label": f"{name} (log)", "values": np.log10(v), "tickvals": np.log10(ticks), "ticktext": [f"{t:g}" for t in ticks]}
        return {"label": name, "values": v}
    codes, uniques = pd.factorize(values.astype(str), sort=True)
    return {"label": name, "values": codes, "tickvals": list(range(len(uniques))), "ticktext": list(uniques)}


def parallel_figure(table: pd.DataFrame, settings: Sequence[str], objective: str, maximize: bool = True) -> go.Figure:
    """Parallel coordinates from each finished trial's settings (and seed) to its objective."""
    done = table[(table["status"] == "finished") & table.get(objective, pd.Series(dtype=float)).notna()]
    dims = [_dimension(done[k], k) for k in [*settings, "seed"]]
    score = done[objective].to_numpy(float) if len(done) else np.zeros(0)
    dims.append({"label": objective, "values": score})
    data = [{
        "type": "parcoords", "dimensions": dims,
        "line": {"color": score, "colorscale": "Viridis", "reversescale": not maximize, "showscale": True,
                 "colorbar": {"title": {"text": objective}}},
    }]
    figure = go.Figure({"data": data, "layout": {
        "title": {"text": f"Settings → {objective} ({len(done)} finished trials)", "x": 0.0, "xanchor": "left"},
        "height": 420, "margin": {"l": 60, "r": 40, "t": 80, "b": 30}, "font": {"size": 14},
    }})
    return figure


def cost_figure(table: pd.DataFrame, settings: Sequence[str], objective: str, cost: str = "wall_seconds") -> go.Figure:
    """The objective of each finished trial against its cost, one colour per setting."""
    done = table[table["status"] == "finished"]
    data = []
    labels = _setting_labels(done, settings)
    for i, label in enumerate(dict.fromkeys(labels)):
        part = done[[lab == label for lab in labels]]
        data.append({
            "type": "scatter", "mode": "markers", "x": part[cost].to_numpy(float), "y": part[objective].to_numpy(float),
            "name": label, "marker": {"size": 11, "color": _PALETTE[i % len(_PALETTE)]},
            "text": [f"seed {s}" for s in part["seed"]], "hovertemplate": "%{text}<br>%{x:.3g}, %{y:.4f}<extra></extra>",
        })
    return _figure(data, [], f"{objective} against cost", COSTS.get(cost, cost), objective)

