"""The Continual page driven by Streamlit's AppTest: settings, Run, Pause/Step, the charts, the baselines."""

import time
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
PAGE = str(ROOT / "pages" / "continual.py")


def _wait(predicate, timeout: float = 240.0) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise TimeoutError("the page's background work did not finish in time")
        time.sleep(0.1)


@pytest.fixture
def app(runs_dir, monkeypatch):
    monkeypatch.setenv("GEOVIZ_RUNS", str(runs_dir))
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.run()
    assert not at.exception
    return at


def test_continual_page_runs_and_draws_everything(app, runs_dir):
    at = app
    assert at.title[0].value == "Continual learning along a geodesic"
    # the metric memory is explained, with its size, and follows the setting
    assert any("M = 100 task-1 inputs" in m.value for m in at.markdown)
    at.sidebar.number_input(key="continual:memory").set_value(60)
    at.sidebar.number_input(key="continual:steps").set_value(60)
    at.sidebar.number_input(key="continual:eval_every").set_value(20)
    at.run()
    assert any("M = 60 task-1 inputs" in m.value for m in at.markdown)
    assert at.query_params["memory"] == "60" and at.query_params["scenario"] == "class-incremental"
    at.button(key="continual:Run").click().run()
    assert not at.exception and not at.error
    runner = at.session_state["continual:runner"]
    _wait(lambda: runner.touch() or runner.finished)  # touched as the page's poll would: not abandoned
    assert runner.state == "finished", runner.message
    at.run()
    assert not at.exception and not at.error
    # accuracy per task, loss per task, PCA, then the bars of the baselines
    assert len(at.get("plotly_chart")) == 4
    table = at.dataframe[0].value
    assert list(table["method"]) == ["start (task 1 only)", "geodesic (exact)", "fine-tune", "EWC", "replay"]
    rows = dict(zip(table["method"], table["task 1"]))
    assert rows["geodesic (exact)"] > rows["fine-tune"], table
    assert {str(v) for v in table["gradient evaluations"]} - {"—"} == {str(runner.path.gradient_evaluations)}  # start: a dash
    # the run is on disk for the Runs page, with M recorded
    assert runner.writer.config["memory_size"] == 60 and runner.summary["memory_size"] == 60
    assert runner.writer.dir.parent == runs_dir


def test_pause_and_step_then_stop(app):
    at = app
    at.sidebar.number_input(key="continual:steps").set_value(3000)
    at.run()
    at.button(key="continual:Run").click().run()
    runner = at.session_state["continual:runner"]
    at.button(key="continual:Pause").click().run()
    _wait(lambda: runner.state == "paused", 30)
    before = runner.path.step
    at.button(key="continual:Step").click().run()
    _wait(lambda: runner.path.step == before + 1, 30)
    time.sleep(0.3)
    assert runner.path.step == before + 1 and runner.state == "paused"
    at.button(key="continual:Stop").click().run()
    _wait(lambda: runner.finished, 30)
    at.run()
    assert runner.state == "stopped" and not at.exception
    assert set(runner.summary) <= {"backend"}  # no baselines for a path that did not end


def test_continual_page_says_what_is_wrong(runs_dir, monkeypatch):
    monkeypatch.setenv("GEOVIZ_RUNS", str(runs_dir))
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.query_params["scenario"] = "domain-incremental"
    at.run()
    assert not at.exception
    assert any("scenario" in e.value and "allowed" in e.value for e in at.error)
    # a memory larger than task 1: one sentence when Run is pressed, no traceback
    at.sidebar.number_input(key="continual:memory").set_value(5000)
    at.run()
    at.button(key="continual:Run").click().run()
    assert not at.exception
    assert any("cannot exceed task 1's" in e.value for e in at.error)
    # a memory of 0 cannot be typed: the widget's lower limit is 1
    assert at.sidebar.number_input(key="continual:memory").min == 1


def test_runs_page_replays_a_continual_run(runs_dir, monkeypatch):
    from geoviz.applications.continual import ContinualConfig, continual_runner, load_continual
    from geoviz.core.engine import SolverConfig
    from geoviz.setups.problem import SetupConfig

    config = ContinualConfig(steps=12, eval_every=4, memory=40)
    problem, sequence = load_continual(SetupConfig(), config)
    runner = continual_runner(problem, sequence, config, SolverConfig(cg_iterations=3), str(runs_dir))
    assert runner.run() == "finished"
    monkeypatch.setenv("GEOVIZ_RUNS", str(runs_dir))
    at = AppTest.from_file(str(ROOT / "pages" / "runs.py"), default_timeout=60)
    at.run()
    assert not at.exception and not at.error
    assert len(at.get("plotly_chart")) == 4
    assert list(at.dataframe[-1].value["method"])[1] == "geodesic (exact)"
