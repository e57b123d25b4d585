"""Compare: runs side by side, or a sweep's settings over seeds. The selection is in the URL."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from geoviz.figures import compare
from geoviz.figures.plots import X_AXES
from geoviz.record.sweep_record import list_sweeps, summarize
from geoviz.record.runs import default_runs_dir, list_runs, read_run
from pages import _charts, _live


def curves_ui(records, labels=None, key: str = "compare") -> None:
    """Each application's key curves, one line per run, against the chosen x axis."""
    x = st.radio("Against", list(X_AXES), format_func=X_AXES.get, horizontal=True, key=f"{key}:x")
    applications = dict.fromkeys(r.config.get("application", "") for r in records)
    for application in applications:
        group = [i for i, r in enumerate(records) if r.config.get("application", "") == application]
        shown = [records[i] for i in group]
        names = [labels[i] for i in group] if labels else None
        row = _charts.row()  # wraps: three fixed columns cut the titles and legends at 800 px
        for name, title in compare.CURVES.get(application, []):
            row.plotly_chart(compare.overlay_figure(shown, name, title, x, names), key=f"{key}:{application}:{name}")


def runs_ui(root: Path) -> None:
    names = [r.name for r in list_runs(root)]
    wanted = [n for n in st.query_params.get("runs", "").split(",") if n in names]
    chosen = st.multiselect("Runs", names, default=wanted or names[:2], key="compare:runs")
    st.query_params["runs"] = ",".join(chosen)
    st.query_params.pop("sweep", None)
    if not chosen:
        st.info("Choose two or more runs to compare.")
        return
    records = [read_run(root / n) for n in chosen]
    curves_ui(records)
    table, shared, differ = compare.settings_table(records)
    st.subheader("Settings and results")
    st.caption("Highlighted: the settings that differ between these runs." if differ else "These runs share every setting.")
    st.table(compare.highlight_rows(table, differ))
    with st.expander(f"The {len(shared)} settings these runs share"):
        st.table(shared)


def sweep_ui(root: Path) -> None:
    sweeps = {s.name: s for s in list_sweeps(root)}
    if not sweeps:
        st.info(f"No sweeps yet in {root / 'sweeps'}. Start one with `python -m geoviz sweep sparsify --grid damping=1e-4,1e-3 --seeds 3`.")
        return
    names = list(sweeps)
    wanted = st.query_params.get("sweep")
    name = st.selectbox("Sweep", names, index=names.index(wanted) if wanted in names else 0, key="compare:sweep")
    st.query_params["sweep"] = name
    st.query_params.pop("runs", None)
    sweep = sweeps[name]
    table, settings, objective = sweep.table, sweep.setting_names, sweep.objective
    counts = table["status"].value_counts().to_dict() if len(table) else {}
    st.markdown(f"**{sweep.state}** · {sweep.application} · {len(table)} trials · "
                + " · ".join(f"{n} {s}" for s, n in counts.items())
                + f" · objective **{objective}** ({'higher' if sweep.maximize else 'lower'} is better)")
    summary = summarize(table, settings, objective, sweep.maximize)
    st.dataframe(summary, hide_index=True, key="compare:summary")
    left = right = _charts.row()  # wraps on a narrow window (two fixed columns cut the titles at 800 px)
    left.plotly_chart(compare.errorbar_figure(summary, settings, objective), key="compare:errorbars")
    right.plotly_chart(compare.parallel_figure(table, settings, objective, sweep.maximize), key="compare:parallel")
    cost = st.radio("Cost", list(compare.COSTS), format_func=compare.COSTS.get, horizontal=True, key="compare:cost")
    st.plotly_chart(compare.cost_figure(table, settings, objective, cost), key="compare:costplot")
    with st.expander("Every trial"):
        st.dataframe(table, hide_index=True, key="compare:trials")
    trials = sweep.trial_runs()
    if trials:
        labels = [", ".join(f"{k}={row[k]}" for k in settings) + f", seed {row['seed']}" for row, _ in trials]
        curves_ui([run for _, run in trials], labels, key="compare:trialcurves")


def page() -> None:
    _live.through_app()
    st.title("Compare")
    root = default_runs_dir()
    sources = ("Runs", "A sweep")
    source = st.radio("Compare", sources, index=1 if "sweep" in st.query_params else 0, horizontal=True, key="compare:source")
    if source == "Runs":
        runs_ui(root)
    else:
        sweep_ui(root)


if __name__ == "__main__":
    page()
