"""The chart layout of each application, shared by its live page and the Runs page replay.

Each function takes plain data (rows, reference figures, snapshots) so it draws a live
path and a run read back from disk the same way. Figures come from geoviz.figures.plots.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from geoviz.figures import plots
from pages import _present, _safe

__all__ = ["sparsify_charts", "sparsify_curves", "sparsify_pictures", "sparsify_numbers", "sparsify_summary", "generic_charts", "continual_curves", "continual_pictures", "x_axis_ui"]

# one run's differences this small are within what another seed changes (bench/claims.py)
NOISE = "A single run's difference below about two test images is noise; compare over seeds (bench/claims.py)."


def row():
    """Side by side while they fit, one under the other when not (a narrow or projected
    screen): a wrapping row, where each element keeps Streamlit's minimum width."""
    return st.container(horizontal=True, gap="small")


def x_axis_ui(key: str) -> str:
    """Which x axis the loss curve uses: step, or one of the two path lengths."""
    # the label beside the choices, not above them: a line less, so the charts and their
    # legends fit above the fold at 1280x720
    row = st.container(horizontal=True, vertical_alignment="center", gap="medium")
    row.markdown("Loss against", width="content", help="Euclidean length sums |θ| over the steps; functional length sums √(θᵀGθ), "
                   "how far the network's outputs moved.")
    return row.radio(
        "Loss against",
        list(plots.X_AXES),
        format_func=lambda k: {"step": "step", "path_length": "Euclidean length", "functional_length": "functional length"}[k],
        horizontal=True,
        key=key,
        label_visibility="collapsed",
        width="content",
    )


def sparsify_charts(
    rows,
    reference: dict,
    baselines: dict | None,
    target: float,
    layers: dict,
    layers_title: str,
    steps: list[int],
    snapshots,
    key: str,
    marker: int | None = None,
    moving: bool = False,
    projected: bool = False,
) -> None:
    """Accuracy, loss, sparsity, per-layer sparsity and the PCA of the trajectory.

    ``moving``: the path is growing; the charts are drawn static (no hover, zoom or
    toolbar), which costs the browser much less on every redraw.
    """
    sparsify_curves(rows, reference, baselines, target, key, marker, moving)
    sparsify_pictures(layers, target, layers_title, steps, snapshots, key, marker, moving, projected)


def sparsify_curves(rows, reference: dict, baselines: dict | None, target: float, key: str,
                    marker: int | None = None, moving: bool = False) -> None:
    """The figures along the path: four numbers, then accuracy, loss and sparsity against step."""
    table = plots.as_table(rows)
    sparsify_numbers(table if marker is None else table[table["step"] <= marker], reference)  # the numbers at the marker
    x = x_axis_ui(f"{key}:x")
    x_marker = None
    if marker is not None and x in table and len(table):
        x_marker = float(table.loc[(table["step"] - marker).abs().idxmin(), x])
    config = {"staticPlot": True} if moving else None
    left = middle = right = row()
    _present.chart(left, plots.accuracy_figure(table, reference, baselines, marker=marker), key=f"{key}:accuracy", config=config)
    _present.chart(middle, plots.loss_figure(table, x, marker=x_marker), key=f"{key}:loss", config=config)
    _present.chart(right, plots.sparsity_figure(table, target, marker=marker), key=f"{key}:sparsity", config=config)


def sparsify_pictures(layers: dict, target: float, layers_title: str, steps: list[int], snapshots, key: str,
                      marker: int | None = None, moving: bool = False, projected: bool = False) -> None:
    """The pictures of one point and of the whole trajectory: per-layer sparsity and the PCA."""
    config = {"staticPlot": True} if moving else None
    left = right = row()
    _present.chart(left, plots.layer_sparsity_figure(layers, target, layers_title), key=f"{key}:layers", config=config)
    _present.chart(right, plots.trajectory_figure(steps, snapshots, current=marker, projected=projected), key=f"{key}:pca",
                   config=config)


def sparsify_numbers(rows, reference: dict) -> None:
    """The latest evaluated point in four large numbers, beside their references."""
    table = plots.as_table(rows)
    if "test_accuracy" not in table or table["test_accuracy"].notna().sum() == 0:
        return
    last = table[table["test_accuracy"].notna()].iloc[-1]
    dense, one_shot = reference.get("dense_accuracy"), reference.get("one_shot_accuracy")
    a = b = c = d = row()
    a.metric("test accuracy", f"{last['test_accuracy']:.3f}", None if dense is None else f"{last['test_accuracy'] - dense:+.3f} vs dense")
    b.metric("if pruned now", f"{last['pruned_accuracy']:.3f}", None if one_shot is None else f"{last['pruned_accuracy'] - one_shot:+.3f} vs one-shot")
    left = last["remaining_norm"]  # a diverging path can push them far out: say "x times", not 88987.6%
    c.metric("masked weights left", f"{left:.1%}" if left <= 2 else f"{left:.3g}× the start", help="|(1-m)·w| as a fraction of its start; the path ends near zero")
    d.metric("functional length", f"{last['functional_length']:.3g}", help="How far the outputs have moved, summed over the steps: Σ√(θᵀGθ) in exact mode; in penalty mode the "
            "finite output change of each step on 64 inputs, the same quantity to leading order. So the two modes compare: "
            "a penalty path's larger figure means its outputs really travelled further.")


def sparsify_summary(summary: dict, rows, target: float | None, mode: str | None = None) -> None:
    """The end of a sparsification path beside its baselines, once the path has ended
    (a stopped path: its last evaluated point, the baselines not computed)."""
    evaluated = plots.as_table(rows)
    stopped = not summary.get("baselines")
    if stopped and ("pruned_accuracy" not in evaluated or evaluated["pruned_accuracy"].notna().sum() == 0):
        return
    mode = mode or summary.get("mode", "exact")
    path = "the geodesic path" if mode == "exact" else f"the path ({mode} mode)"
    reference = summary.get("reference", {})
    baselines = summary.get("baselines") or {"one_shot": reference.get("one_shot_accuracy")}
    last = evaluated[evaluated["pruned_accuracy"].notna()].iloc[-1] if "pruned_accuracy" in evaluated else {}
    if stopped:
        path = f"{path} where it was stopped (step {int(last['step'])})"
        summary = {**summary, "accuracy": last.get("test_accuracy"), "sparsity": last.get("sparsity")}
    budget = "not computed: stopped" if stopped else f"{summary.get('gradient_evaluations')} gradient evaluations, as many as the path used"
    table = pd.DataFrame(
        [
            ("dense start network", reference.get("dense_accuracy"), 0.0, "—"),
            (f"end of {path}, as is", summary.get("accuracy"), summary.get("sparsity"), "inputs only"),
            (f"end of {path}, pruned to the target", last.get("pruned_accuracy"), target, "inputs only"),
            ("one-shot magnitude pruning", baselines.get("one_shot"), target, "none"),
            (f"pruning + fine-tuning ({budget})", baselines.get("finetune"), target, "inputs + labels"),
            (f"pruning + distillation to the dense outputs ({budget})", baselines.get("distill"), target, "inputs only"),
        ],
        columns=["network", "test accuracy", "sparsity", "data used"],
    )
    table["test accuracy"] = table["test accuracy"].map(lambda v: "—" if v is None or v != v else f"{v:.4f}")
    table["sparsity"] = table["sparsity"].map(lambda v: "—" if v is None or v != v else f"{v:.3f}")
    st.subheader("Summary")
    st.table(table.set_index("network"))
    if stopped:
        st.caption("The path was stopped before its end: the fine-tuned baseline was not computed.")
    else:
        st.caption(f"The path ended: {_safe.md(summary.get('end_reason', ''))}. {NOISE}")
    skipped_note(summary)


def skipped_note(summary: dict) -> None:
    """Which baselines Stop skipped (their rows are left empty)."""
    if summary.get("skipped"):
        st.caption(f"Stopped during the baselines: {', '.join(summary['skipped'])} skipped, not computed.")


def generic_charts(rows, key: str) -> None:
    """For applications without their own layout yet: loss along the path."""
    table = plots.as_table(rows)
    x = x_axis_ui(f"{key}:x")
    _present.chart(st, plots.loss_figure(table, x), key=f"{key}:loss")


def continual_charts(rows, start: dict, steps: list[int], snapshots, key: str, marker: int | None = None,
                     moving: bool = False, projected: bool = False) -> None:
    """Per-task accuracy and loss along a continual path, and the PCA of its trajectory."""
    continual_curves(rows, start, key, marker, moving)
    continual_pictures(steps, snapshots, key, marker, moving, projected)


def continual_curves(rows, start: dict, key: str, marker: int | None = None, moving: bool = False) -> None:
    """Per-task accuracy and loss along a continual path (static while the path grows)."""
    table = plots.as_table(rows)
    x = x_axis_ui(f"{key}:x")
    x_marker = None
    if marker is not None and x in table and len(table):
        x_marker = float(table.loc[(table["step"] - marker).abs().idxmin(), x])
    config = {"staticPlot": True} if moving else None
    left = right = row()
    _present.chart(left, plots.task_accuracy_figure(table, x, start, marker=x_marker), key=f"{key}:accuracy", config=config)
    _present.chart(right, plots.task_loss_figure(table, x, marker=x_marker), key=f"{key}:loss", config=config)


def continual_pictures(steps: list[int], snapshots, key: str, marker: int | None = None, moving: bool = False,
                       projected: bool = False) -> None:
    """The PCA of a continual path's trajectory."""
    config = {"staticPlot": True} if moving else None
    _present.chart(st, plots.trajectory_figure(steps, snapshots, current=marker, start_label="start (task 1 learnt)",
                                               projected=projected),
               key=f"{key}:pca", config=config)


def continual_summary(summary: dict, key: str) -> None:
    """The geodesic's final per-task accuracies beside the baselines' (bars and a table)."""
    if not summary.get("geodesic"):
        return
    st.subheader("Geodesic and baselines")
    _present.chart(st, plots.continual_bars_figure(summary), key=f"{key}:bars")
    percent = st.column_config.NumberColumn(format="%.4f")
    table = plots.continual_results(summary)
    table["gradient evaluations"] = [("—" if v is None or v != v else int(v)) for v in table["gradient evaluations"]]
    st.dataframe(
        table,
        hide_index=True,
        column_config={"task 1": percent, "task 2": percent, "average": percent},
        key=f"{key}:table",
    )
    st.caption(
        f"Scenario: {_safe.md(summary.get('scenario'))} ({_safe.md(summary.get('task_sequence', ''))}). Every baseline trains from the "
        f"same start for as many gradient evaluations as the path used ({summary.get('gradient_evaluations')}), "
        f"one SGD step on a task-2 minibatch each. {NOISE}"
    )
    skipped_note(summary)
