"""The Connect page driven by Streamlit's AppTest: settings, Run, the charts, the table, the landscape."""

import threading
import time
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from geoviz.applications.connect import LandscapeJob

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
PAGE = str(ROOT / "pages" / "connect.py")


def _wait(predicate, timeout: float = 240.0) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise TimeoutError("the page's background work did not finish in time")
        time.sleep(0.2)


@pytest.fixture
def app(runs_dir, monkeypatch):
    monkeypatch.setenv("GEOVIZ_RUNS", str(runs_dir))
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.run()
    assert not at.exception
    return at


def test_connect_page_runs_and_draws_everything(app):
    at = app
    assert at.title[0].value == "Connect two networks"
    at.sidebar.number_input(key="connect:eps").set_value(0.2)
    at.sidebar.number_input(key="connect:grid").set_value(5)
    at.run()
    at.button(key="connect:Run").click().run()
    assert not at.exception and not at.error
    runner = at.session_state["connect:runner"]
    _wait(lambda: runner.touch() or runner.finished)  # touched as the page's poll would: not abandoned
    assert runner.state == "finished", runner.message
    at.run()
    assert not at.exception and not at.error
    # profiles and PCA, then the summary table with the three paths
    assert len(at.get("plotly_chart")) >= 2
    table = at.dataframe[0].value
    assert list(table["path"]) == ["geodesic", "straight line", "Bezier curve", "Bezier curve, no labels"]
    barrier = dict(zip(table["path"], table["barrier (train loss)"]))
    assert barrier["geodesic"] < barrier["straight line"]
    # the landscape: its cost is said before it runs, then the grid fills in
    assert any("5 × 5 grid is 25 network evaluations" in c.value for c in at.caption)
    at.button(key="connect:draw").click().run()
    assert not at.exception
    job = at.session_state["connect:landscape"]
    _wait(lambda: not job.alive)
    at.run()
    assert not at.exception and not at.error
    assert job.landscape.complete
    assert len(at.get("plotly_chart")) >= 3
    assert (runner.writer.dir / "landscape.json").is_file()


def test_connect_page_says_what_is_wrong(runs_dir, monkeypatch):
    monkeypatch.setenv("GEOVIZ_RUNS", str(runs_dir))
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.query_params["third"] = "corner"
    at.run()
    assert not at.exception
    assert any("third" in e.value and "allowed" in e.value for e in at.error)
    # the same seed twice: one sentence before Run, which stays disabled
    at.sidebar.number_input(key="connect:seed_b").set_value(0)
    at.run()
    assert not at.exception
    assert any("different seeds" in e.value for e in at.error)
    assert at.button(key="connect:Run").disabled


def test_a_connect_run_replays_from_its_folder(runs_dir):
    """What the Runs page can draw of a finished connect run, from disk only."""
    from geoviz.applications.connect import ConnectConfig, connect_runner, run_landscape
    from geoviz.core.engine import SolverConfig
    from geoviz.problem import SetupConfig, load_problem

    problem = load_problem(SetupConfig(dataset="digits", model="mlp", seed=0))
    runner = connect_runner(problem, ConnectConfig(), SolverConfig(eps=0.3, damping=1e-3), str(runs_dir))
    assert runner.run() == "finished"
    run_landscape(runner, 4)

    def script(folder):
        from geoviz.runs import read_run
        from pages.connect import replay_record

        replay_record(read_run(folder))

    at = AppTest.from_function(script, args=(str(runner.writer.dir),), default_timeout=60)
    at.run()
    assert not at.exception
    charts = at.get("plotly_chart")
    assert len(charts) == 3  # profiles, PCA with line and Bezier, landscape
    assert "Bezier curve" in charts[1].proto.spec and "contour" in charts[2].proto.spec
    assert list(at.dataframe[0].value["path"]) == ["geodesic", "straight line", "Bezier curve", "Bezier curve, no labels"]


def test_runs_page_replays_a_connect_run(runs_dir, monkeypatch):
    """The Runs page sends a connect run to its own replay (profiles, PCA, table)."""
    from geoviz.applications.connect import ConnectConfig, connect_runner
    from geoviz.core.engine import SolverConfig
    from geoviz.problem import SetupConfig, load_problem

    monkeypatch.setenv("GEOVIZ_RUNS", str(runs_dir))
    problem = load_problem(SetupConfig(dataset="digits", model="mlp", seed=0))
    runner = connect_runner(problem, ConnectConfig(), SolverConfig(eps=0.3, damping=1e-3), str(runs_dir))
    assert runner.run() == "finished"
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=120)
    at.query_params["run"] = runner.writer.dir.name
    at.run()
    at.switch_page("pages/runs.py")
    at.run()
    assert not at.exception, at.exception
    listing = at.dataframe[0].value
    row = listing[listing["run"] == runner.writer.dir.name]
    assert row["application"].item() == "connect"
    assert float(row["barrier"].item()) == pytest.approx(runner.summary["geodesic"]["barrier"], abs=5e-5)  # shown to 4 places
    assert list(at.dataframe[1].value["path"]) == ["geodesic", "straight line", "Bezier curve", "Bezier curve, no labels"]
    assert len(at.get("plotly_chart")) >= 2


class _WaitingJob(LandscapeJob):
    """A landscape job whose grid never fills: it runs until stopped or abandoned (the
    real class's touch / abandon logic, without training two networks first)."""

    def __init__(self, abandon_after: float):
        self.abandon_after, self._clock, self._last_touch, self._stop = abandon_after, time.time, time.time(), False
        self._thread = threading.Thread(target=self._run, name="geoviz-landscape-test", daemon=True)

    def _run(self) -> None:
        while not (self._stop or self._abandoned()):
            time.sleep(0.05)


def test_a_landscape_job_lives_while_its_session_is_on_another_page():
    """Issue 14: a landscape job stops when its tab goes away (nothing polls), as paths do,
    but not while its session is on another page of the app: app.py runs keep_alive on
    every page, whose fragment touches the session's live runs and landscape job."""
    at = AppTest.from_string("from pages import _live\n_live.keep_alive()", default_timeout=60)
    at.run()
    job = _WaitingJob(abandon_after=3.0).start()
    at.session_state["connect:landscape"] = job
    started = time.time()
    while time.time() - started < 8.0:  # the session is on another page, its keep-alive rerunning
        at.run()
        assert not at.exception, at.exception
        time.sleep(0.5)
    assert job.alive, "the job stopped while its session was on another page"
    # the tab closes: nothing reruns any more, and the job stops itself
    _wait(lambda: not job.alive, timeout=30)
    assert time.time() - job._last_touch >= job.abandon_after
    job.stop()
