"""Runs: every path this server has walked; replay one, download it."""

from __future__ import annotations

import tempfile
from pathlib import Path

import streamlit as st

from geoviz.figures import plots
from geoviz.errors import GeovizError
from geoviz.record import disk
from geoviz.record.runs import default_runs_dir, list_runs, zip_run
from pages import _charts, _live, _safe


def _zip_bytes(path: Path) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        return zip_run(path, tmp).read_bytes()


def _settings(config: dict) -> str:
    """The settings that tell runs apart, in one short line."""
    solver, setup = config.get("solver", {}), config.get("setup", {})
    parts = [f"{setup.get('dataset', '?')}/{setup.get('model', '?')}", f"ε {solver.get('eps', '?')}",
             f"ρ {solver.get('damping', '?'):.0e}" if isinstance(solver.get("damping"), float) else "", solver.get("mode", "")]
    application = config.get("application")
    if application == "sparsify":
        parts.append(f"target {config.get('sparsify', {}).get('sparsity', '?')}")
    elif application == "continual":
        parts.append(f"{config.get('continual', {}).get('scenario', '')}, M {config.get('memory_size', '?')}")
    elif application == "connect":
        parts.append(f"seeds {setup.get('seed', '?')}/{config.get('seed_b', '?')}")
    parts.append(f"seed {setup.get('seed', '?')}" if application != "connect" else "")
    return " · ".join(p for p in parts if p)


def _runs_table(runs):
    """The list of runs with their settings; missing figures shown as a dash, not None."""
    table = plots.runs_table(runs)
    table.insert(3, "settings", [_settings(r.config) for r in runs])
    for column in ("test accuracy", "sparsity", "barrier"):
        if column in table:
            table[column] = [("—" if v is None or v != v else f"{v:.4f}") for v in table[column]]
    return table


RUNS_COLUMNS = {
    "test accuracy": st.column_config.TextColumn(
        "test accuracy", help="sparsify: at the end of the path (before the fine-tuned baseline); continual: the mean "
        "of both tasks at the end; connect: the lowest along the path"),
    "sparsity": st.column_config.TextColumn("sparsity", help="exact zeros among the prunable weights at the end: 0 for "
                                            "a run stopped before its mask was applied"),
}


def _layers_at(record, at: int, last: int, steps: list[int], snapshots) -> tuple[dict, str]:
    """Per-layer sparsity at the slider's step: the final weights at the end (the mask
    applied exactly), else the latest snapshot at or before the step."""
    final = (record.path / "weights" / "final.safetensors").exists()
    if at >= last and final:
        return plots.layer_sparsity(record.weights("final")), "Per-layer sparsity at the end"
    params = record.unflatten(snapshots[-1]) if steps else None
    if params is not None:
        return plots.layer_sparsity(params), f"Per-layer sparsity at step {steps[-1]}"
    if final:  # a run from before snapshots could be laid out
        return plots.layer_sparsity(record.weights("final")), "Per-layer sparsity at the end"
    return {}, "Per-layer sparsity"


def replay(record) -> None:
    """The run's charts, drawn from its record up to the step chosen on the slider."""
    table = record.table
    if table.empty:
        st.info("This run has no finished step yet.")
        return
    last = int(table["step"].max())
    at = st.slider("Replay: the point at step", 1, last, last, key="runs:step") if last > 1 else last
    # the charts are of the whole run (fixed axes, one PCA); the slider moves a marker
    steps, snapshots = record.snapshots()
    keep = [i for i, s in enumerate(steps) if s <= at]
    if record.config.get("application") == "sparsify":
        summary = record.summary
        layers, title = _layers_at(record, at, last, [steps[i] for i in keep], snapshots[keep] if keep else snapshots)
        _charts.sparsify_charts(
            table,
            summary.get("reference", {}),
            summary.get("baselines"),
            record.config.get("sparsify", {}).get("sparsity"),
            layers,
            title,
            steps,
            snapshots,
            "replay",
            marker=at,
            projected=record.sketch() is not None,
        )
        _charts.sparsify_summary(
            summary, table, record.config.get("sparsify", {}).get("sparsity"), record.config.get("solver", {}).get("mode")
        )
    elif record.config.get("application") == "continual":
        _charts.continual_charts(table, record.summary.get("start", {}), steps, snapshots, "replay", marker=at,
                                 projected=record.sketch() is not None)
        _charts.continual_summary(record.summary, "replay")
    elif record.config.get("application") == "connect":
        from pages.connect import replay_record

        replay_record(record, at=at)
    else:
        _charts.generic_charts(table[table["step"] <= at], "replay")


def _delete_ui(root: Path, record) -> None:
    """Delete the open run, after a confirmation; a running run cannot be."""
    with st.expander("Delete this run"):
        if record.state in ("running", "paused"):
            st.caption("A running run cannot be deleted; stop it first.")
            return
        sure = st.checkbox(f"Yes, delete {_safe.md(record.name)} and every file in it", key=f"runs:sure:{record.name}")
        if st.button("Delete run", type="primary", disabled=not sure, key="runs:delete"):
            try:
                disk.delete_run(root, record.name)
            except GeovizError as err:
                _safe.error(err)
            else:
                st.query_params.pop("run", None)
                st.rerun()


def page() -> None:
    _live.through_app()
    st.title("Runs")
    root = default_runs_dir()
    runs = list_runs(root)
    if not runs:
        st.info(f"No runs yet in {_safe.md(root)}. Start one on the Sparsify page.")
        return
    names = [r.name for r in runs]
    listing = st.dataframe(_runs_table(runs), hide_index=True, key="runs:list", column_config=RUNS_COLUMNS,
                           on_select="rerun", selection_mode="multi-row")
    st.caption(f"Space used: {_safe.md(disk.usage(runs).sentence())}; the oldest finished runs' snapshots are thinned "
               "when a new run would go over it.")
    ticked = [names[i] for i in listing.selection.rows]
    if ticked:
        st.page_link("pages/compare.py", label=f"Open {len(ticked)} ticked runs in Compare", icon=":material/compare_arrows:",
                     query_params={"runs": ",".join(ticked)})
    else:
        st.caption("Tick runs in the table to open them side by side in Compare.")
    wanted = st.query_params.get("run")
    index = names.index(wanted) if wanted in names else 0
    if wanted and wanted not in names:  # (the name is not repeated: it came from the link, not from us)
        st.warning("The link names a run that is not on this server; the newest run is shown instead.")
    name = st.selectbox("Open a run", names, index=index, key="runs:open")
    st.query_params["run"] = name
    record = next(r for r in runs if r.name == name)
    line = [f"**{_safe.md(record.state)}**", f"{len(record.table)} steps"] + ([_safe.md(record.message)] if record.message else [])
    st.markdown(" · ".join(line))  # (no dangling separator when the record has no message)
    _delete_ui(root, record)
    if record.state == "unreadable":
        return
    # side by side, each as wide as its label (fixed columns cut the labels to "Downl…" at 800 px)
    with st.container(horizontal=True):
        st.download_button("Download run (zip)", lambda: _zip_bytes(record.path), f"{name}.zip", "application/zip",
                           key="runs:zip", width="content")
        st.download_button("Download table (CSV)", record.table.to_csv(index=False), f"{name}.csv", "text/csv",
                           key="runs:csv", width="content")
    with st.expander("Settings of this run"):
        st.json(record.config)
    try:
        replay(record)
    except Exception as err:  # a run folder is untrusted: a bad figure in it must not take the page down
        _safe.error(f"This run's record cannot be drawn ({type(err).__name__}: {err}).")


if __name__ == "__main__":
    page()
