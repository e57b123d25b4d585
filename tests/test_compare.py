"""The /compare page and its figures: two real runs overlaid and their differing setting
marked; a sweep folder (written through SweepBook from real runs) with mean ± sd, the
parallel coordinates and the cost chart. No Ray here: test_sweep.py covers the runs."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from geoviz.cli import main
from geoviz.figures import compare
from geoviz.record.sweep import SweepSpec, final_figures
from geoviz.record.sweep_record import SweepBook, read_sweep, summarize, sweeps_dir
from geoviz.record.runs import list_runs

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
SHORT = ["--steps", "6", "--eval-every", "3", "--quiet"]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two sparsify runs that differ in damping only (and the sweep's seed repeat)."""
    root = tmp_path_factory.mktemp("runs")
    torch.set_num_threads(1)
    for damping, seed in (("1e-4", 0), ("1e-2", 0), ("1e-4", 1)):
        assert main(["sparsify", "--damping", damping, "--seed", str(seed), "--out", str(root), *SHORT]) == 0
    runs = sorted(list_runs(root), key=lambda r: r.path.stat().st_mtime)
    return root, runs


@pytest.fixture
def runs_env(two_runs, monkeypatch):
    monkeypatch.setenv("GEOVIZ_RUNS", str(two_runs[0]))
    return two_runs


def _figures(at: AppTest) -> dict[str, dict]:
    return {json.loads(e.proto.spec)["layout"]["title"]["text"]: json.loads(e.proto.spec) for e in at.get("plotly_chart")}


def _points(values) -> np.ndarray:
    if isinstance(values, dict):
        return np.frombuffer(base64.b64decode(values["bdata"]), dtype=np.dtype(values["dtype"]))
    return np.asarray([v for v in values if v is not None], dtype=float)


def _compare(query: dict) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params.update(query)
    at.run()
    at.switch_page("pages/compare.py")
    at.run()
    assert not at.exception, at.exception
    return at


def test_settings_table_marks_only_the_differing_setting(two_runs):
    _, (a, b, _) = two_runs
    table, shared, differ = compare.settings_table([a, b])
    assert differ == ["damping"] and "damping" not in shared.index and shared.loc["eps"].tolist() == ["0.05", "0.05"]
    assert list(table.index[:1]) == ["damping"] and table.loc["damping"].tolist() == ["0.0001", "0.01"]
    assert table.loc["result: accuracy"].tolist() == [f"{r.summary['accuracy']:.4f}" for r in (a, b)]
    html = compare.highlight_rows(table, differ).to_html()
    style = html[html.index("<style"): html.index("</style>")]
    assert "background-color" in style
    assert set(re.findall(r"_row(\d+)_col\d+", style)) == {"0"}  # the damping row, and only it
    assert compare.run_labels([a, b]) == ["damping=0.0001", "damping=0.01"]


def test_compare_page_overlays_two_runs_from_the_url(runs_env):
    _, (a, b, _) = runs_env
    at = _compare({"runs": f"{a.name},{b.name}"})
    assert at.multiselect(key="compare:runs").value == [a.name, b.name]
    assert at.query_params["runs"] == f"{a.name},{b.name}"
    figures = _figures(at)
    accuracy = figures["Test accuracy: 2 runs"]
    assert [t["name"] for t in accuracy["data"]] == ["damping=0.0001", "damping=0.01"]
    for trace, run in zip(accuracy["data"], (a, b)):
        evaluated = run.table[run.table["test_accuracy"].notna()]
        assert list(_points(trace["x"])) == list(evaluated["step"])
        assert np.allclose(_points(trace["y"]), evaluated["test_accuracy"])
    at.radio(key="compare:x").set_value("path_length").run()
    trace = _figures(at)["Test accuracy: 2 runs"]["data"][0]
    assert np.allclose(_points(trace["x"]), a.table[a.table["test_accuracy"].notna()]["path_length"])
    shown = at.table[0].value
    assert shown.index[0] == "damping"


def _sweep_from(runs, root) -> Path:
    """A sweep folder for runs that differ in damping, written as the driver writes one."""
    spec = SweepSpec("sparsify", ("--steps", "6", "--eval-every", "3"), grid={"damping": ["1e-4", "1e-2"]}, seeds=2)
    plan = spec.plan()
    folder = sweeps_dir(root) / "20260101-000000-sparsify-sweep-test"
    plan.update(runs_root=str(root), sweep_dir=str(folder))
    book = SweepBook(folder, plan)
    by_key = {(r.config["solver"]["damping"], r.config["setup"]["seed"]): r for r in runs}
    for trial in plan["trials"]:
        run = by_key.get((trial["values"]["damping"], trial["seed"]))
        if run is None:  # damping 1e-2 with seed 1 never ran: it reads as interrupted
            continue
        book.update(trial["trial"], status="finished", run_dir=str(run.path), steps_taken=run.summary["steps"],
                    gradient_evaluations=run.summary["gradient_evaluations"], wall_seconds=1.0 + trial["trial"],
                    **final_figures("sparsify", run.summary))
    book.close()
    return folder


def test_sweep_figures_show_mean_and_sd_over_seeds(two_runs, tmp_path):
    _, runs = two_runs
    sweep = read_sweep(_sweep_from(runs, tmp_path))
    assert list(sweep.table["status"]) == ["finished", "finished", "finished", "interrupted"]
    summary = summarize(sweep.table, ["damping"], "accuracy")
    low = [r.summary["accuracy"] for r in runs if r.config["solver"]["damping"] == 1e-4]
    row = summary[summary["damping"] == 1e-4].iloc[0]
    assert row["mean"] == pytest.approx(np.mean(low)) and row["sd"] == pytest.approx(np.std(low, ddof=1))
    bars = compare.errorbar_figure(summary, ["damping"], "accuracy").data[0]
    assert list(bars.y) == list(summary["mean"]) and np.isnan(summary["sd"]).sum() == 1
    assert list(bars.error_y.array) == [0.0 if np.isnan(v) else v for v in summary["sd"]]
    parallel = compare.parallel_figure(sweep.table, ["damping"], "accuracy").data[0]
    assert [d.label for d in parallel.dimensions] == ["damping (log)", "seed", "accuracy"]
    assert sorted(parallel.dimensions[2].values) == sorted(r.summary["accuracy"] for r in runs)
    cost = compare.cost_figure(sweep.table, ["damping"], "accuracy", "gradient_evaluations").data
    assert sorted(x for t in cost for x in t.x) == sorted(r.summary["gradient_evaluations"] for r in runs)


def test_compare_page_shows_a_sweep(runs_env, tmp_path):
    root, runs = runs_env
    folder = _sweep_from(runs, root)
    at = _compare({"sweep": folder.name})
    assert at.radio(key="compare:source").value == "A sweep"
    assert at.query_params["sweep"] == folder.name
    titles = set(_figures(at))
    # a sparsify sweep ranks by the accuracy hard-pruned to the target (its default objective)
    assert {"pruned_accuracy: mean ± sd over seeds, per setting", "Settings → pruned_accuracy (3 finished trials)",
            "pruned_accuracy against cost"} <= titles
    assert "Test accuracy: 3 runs" in titles  # the trials' own curves
    summary = at.dataframe[0].value
    assert sorted(zip(summary["damping"], summary["n"], summary["trials"])) == [(1e-4, 2, 2), (1e-2, 1, 2)]
