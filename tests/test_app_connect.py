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
    table = at.table[0].value
    assert list(table.index) == ["geodesic", "straight line", "Bezier curve", "Bezier curve, no labels"]
    barrier = {path: float(v) for path, v in table["barrier (train loss)"].items()}
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


def _replay_script(folder):
    from geoviz.record.runs import read_run
    from pages.connect import replay_record

    replay_record(read_run(folder))


def replayed(folder) -> AppTest:
    """The connect replay of a run folder, drawn (no exception)."""
    at = AppTest.from_function(_replay_script, args=(str(folder),), default_timeout=60)
    at.run()
    assert not at.exception
    return at


def test_a_connect_run_replays_from_its_folder(runs_dir):
    """What the Runs page can draw of a finished connect run, from disk only."""
    from geoviz.applications.connect import ConnectConfig, connect_runner, run_landscape
    from geoviz.core.engine import SolverConfig
    from geoviz.setups.problem import SetupConfig, load_problem

    problem = load_problem(SetupConfig(dataset="digits", model="mlp", seed=0))
    runner = connect_runner(problem, ConnectConfig(), SolverConfig(eps=0.3, damping=1e-3), str(runs_dir))
    assert runner.run() == "finished"
    run_landscape(runner, 4)
    at = replayed(runner.writer.dir)
    charts = at.get("plotly_chart")
    assert len(charts) == 3  # profiles, PCA with line and Bezier, landscape
    assert "Bezier curve" in charts[1].proto.spec and "contour" in charts[2].proto.spec
    assert list(at.table[0].value.index) == ["geodesic", "straight line", "Bezier curve", "Bezier curve, no labels"]


def test_runs_page_replays_a_connect_run(runs_dir, monkeypatch):
    """The Runs page sends a connect run to its own replay (profiles, PCA, table)."""
    from geoviz.applications.connect import ConnectConfig, connect_runner
    from geoviz.core.engine import SolverConfig
    from geoviz.setups.problem import SetupConfig, load_problem

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
    assert list(at.table[0].value.index) == ["geodesic", "straight line", "Bezier curve", "Bezier curve, no labels"]
    assert len(at.get("plotly_chart")) >= 2


def _own_weights(monkeypatch, **files):
    """What the upload widgets return (AppTest cannot upload): the saved files' paths by setting name."""
    from pages import _live

    monkeypatch.setattr(_live, "weights_ui", lambda page, name="weights", what="": files.get(name))


def _saved_network(tmp_path, seed: int, model: str = "mlp"):
    from safetensors.torch import save_file

    from geoviz.setups.data import load_dataset
    from geoviz.setups.training import train_network

    net, _, _ = train_network(load_dataset("digits"), model, seed)
    path = tmp_path / f"{model}_{seed}.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return net, path


def test_connect_page_walks_to_an_uploaded_second_network(runs_dir, monkeypatch, tmp_path):
    """w_B from the user's file: the seed of w_B is then unused (equal seeds are no clash), and the
    geodesic ends exactly on the file's weights, whose sha256 the run keeps."""
    import hashlib
    import json

    net_b, path = _saved_network(tmp_path, 5)
    _own_weights(monkeypatch, weights_b=str(path))
    monkeypatch.setenv("GEOVIZ_RUNS", str(runs_dir))
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.run()
    at.sidebar.number_input(key="connect:seed_b").set_value(0)  # w_A's seed: no clash with a file
    at.sidebar.number_input(key="connect:eps").set_value(0.3)
    at.run()
    assert not at.exception and not at.error
    at.button(key="connect:Run").click().run()
    assert not at.exception and not at.error
    runner = at.session_state["connect:runner"]
    _wait(lambda: runner.touch() or runner.finished)
    assert runner.state == "finished", runner.message
    w_b = torch.cat([p.detach().flatten() for p in net_b.parameters()])
    assert torch.equal(runner.task.w_b, w_b)
    assert runner.path.end_reason == "reached the target network"  # landed on the file's weights
    config = json.loads((runner.writer.dir / "config.json").read_text())
    assert config["connect"]["weights_b_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert config["connect"]["seed_b"] is None


def test_connect_page_refuses_a_second_network_of_another_architecture(runs_dir, monkeypatch, tmp_path):
    _, path = _saved_network(tmp_path, 0, "lenet300")
    _own_weights(monkeypatch, weights_b=str(path))
    monkeypatch.setenv("GEOVIZ_RUNS", str(runs_dir))
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.run()
    at.button(key="connect:Run").click().run()
    assert not at.exception
    assert "connect:runner" not in at.session_state  # nothing ran
    errors = [e.value.replace("\\", "") for e in at.error]  # (the page escapes markdown)
    assert errors == [f"{path.name} has other shapes than the model: net.1.bias (300,) where the model has (128,) (and 4 more)."]


@pytest.mark.parametrize("weights, weights_b, refused", [
    (None, None, True),  # both trained from seed 0: one network twice
    ("/x/a.safetensors", None, False),
    (None, "/x/b.safetensors", False),
    ("/x/a.safetensors", "/x/b.safetensors", False),
])
def test_equal_seeds_are_refused_only_when_both_networks_are_trained(weights, weights_b, refused):
    from geoviz.errors import ConfigError
    from pages.connect import CONTROLS, configs

    values = {c.name: c.default for c in CONTROLS} | {"seed": 0, "seed_b": 0, "weights": weights, "weights_b": weights_b}
    if refused:
        with pytest.raises(ConfigError, match=r"^The two networks need different seeds; both are 0\.$"):
            configs(values)
    else:
        _, config, _ = configs(values)
        assert config.weights_b == weights_b


def test_an_empty_chart_says_one_thing_in_its_middle():
    # the PCA's own note and the generic "no step yet" were drawn at one place, over each other
    import torch

    from geoviz.figures.plots import _figure
    from geoviz.figures.plots_connect import connect_pca_figure

    assert [a.text for a in connect_pca_figure(torch.zeros(1, 10), {}).layout.annotations] == [
        "the trajectory appears after the first steps"]
    assert [a.text for a in _figure([], [], "t", "x", "y").layout.annotations] == ["no step yet"]


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
