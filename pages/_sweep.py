"""The Sweep panel of the live pages: vary one or two settings over seeds, on Ray, in a
process of its own; the comparison fills in as trials finish. Not a page itself."""

from __future__ import annotations

from collections.abc import Sequence

import streamlit as st

from geoviz.errors import GeovizError
from geoviz.figures import compare
from geoviz.record.sweep import BASELINE_FIGURES, SweepProcess, SweepSpec, settings_of
from geoviz.record.sweep_record import mean_sd_table, summarize
from geoviz.record.runs import default_runs_dir

_SWEEP_FLAGS = {"grid", "range", "seeds", "search", "samples", "objective", "scheduler", "grace", "workers", "address"}


def _fixed(application: str, values: dict, varied: Sequence[str]) -> tuple[str, ...]:
    """The page's other settings as the CLI's flags, fixed for every trial."""
    known, fixed = settings_of(application), []
    for name, value in values.items():
        flag = name.replace("_", "-")
        if value is None:  # a setting left empty (no uploaded weights): the CLI's default
            continue
        if flag in varied or flag in _SWEEP_FLAGS or (flag not in known and name != "seed"):
            continue  # the landscape's --grid is not a path setting; the sweep's own --grid wins
        if flag in known and known[flag].nargs == 0:  # a yes/no switch
            fixed += [f"--{flag}"] if str(value).lower() in ("yes", "true", "1") else []
        else:
            fixed += [f"--{flag}", str(value)]
    return tuple(fixed)


def sweep_panel(page: str, application: str, values: dict, choices: Sequence[str]) -> None:
    """Pick one or two of ``choices`` and their values, and seeds; Sweep runs them; Stop ends them."""
    key = f"{page}:sweep"
    with st.expander("Sweep: vary one or two settings over seeds", expanded=key in st.session_state):
        varied = st.multiselect("Settings to vary", list(choices), max_selections=2, key=f"{key}:names")
        grid = {name: st.text_input(f"Values of {name}, comma-separated", key=f"{key}:values:{name}") for name in varied}
        left, right = st.columns(2)
        seeds = left.number_input("Seeds per setting", 1, 50, 2, key=f"{key}:seeds")
        workers = right.number_input("Trials at once", 1, 64, 2, key=f"{key}:workers")
        start, stop = st.columns(2)
        running: SweepProcess | None = st.session_state.get(key)
        if start.button("Sweep", key=f"{key}:start", disabled=not varied or (running is not None and running.alive)):
            spec = SweepSpec(application, _fixed(application, values, [n.replace("_", "-") for n in varied]),
                             grid={n: v.split(",") for n, v in grid.items()}, seeds=int(seeds), workers=int(workers))
            try:
                st.session_state[key] = SweepProcess(spec, default_runs_dir())
            except GeovizError as err:
                st.error(str(err))
        if stop.button("Stop sweep", key=f"{key}:stop", disabled=running is None or not running.alive):
            running.stop()
        if st.session_state.get(key) is not None:
            _progress(key, application)


def _progress(key: str, application: str) -> None:
    running: SweepProcess = st.session_state[key]

    @st.fragment(run_every=2.0 if running.alive else None)
    def view() -> None:
        record = running.record()
        if running.error():
            st.error(running.error())
        if record is None:
            st.info("Starting Ray and the first trials ...")
            return
        table = record.table
        done = int((~table["status"].isin(["pending", "running"])).sum())
        st.markdown(f"**{record.state if not running.alive else 'running'}** · {done} of {len(table)} trials done · "
                    f"[open in Compare](/compare?sweep={record.name})")
        shown = [record.objective, *(f for f in BASELINE_FIGURES[application] if f != record.objective)]
        st.dataframe(mean_sd_table(table, record.setting_names, shown, record.maximize), hide_index=True,
                     key=f"{key}:table")
        if (table["status"] == "finished").any():
            summary = summarize(table, record.setting_names, record.objective, record.maximize)
            st.plotly_chart(compare.errorbar_figure(summary, record.setting_names, record.objective), key=f"{key}:bars")

    view()
