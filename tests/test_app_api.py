"""The pages go through the Python API's functions (one code path with the CLI and the
notebooks), and the snapshot budget is a page setting that reaches the run."""

from __future__ import annotations

import json

import pytest
import torch
from streamlit.testing.v1 import AppTest

from geoviz import cli
from geoviz.applications import api
from geoviz.core.engine import SolverConfig

from test_app import APP, SHORT, _app, _click, _finish, _set

BUDGET_SENTENCE = "The snapshot budget must be a number of MB of at least 1, got 0.5."


@pytest.fixture(autouse=True)
def _runs(runs_dir, monkeypatch):
    monkeypatch.setenv("GEOVIZ_RUNS", str(runs_dir))
    torch.set_num_threads(1)


def _spy(monkeypatch, name: str) -> list[dict]:
    """Every call of ``api.<name>`` (its keyword arguments), passed on to the real function."""
    calls, real = [], getattr(api, name)

    def spy(*args, **kwargs):
        calls.append({"args": args, **kwargs})
        return real(*args, **kwargs)

    monkeypatch.setattr(api, name, spy)
    return calls


def _config(folder) -> dict:
    config = json.loads((folder / "config.json").read_text())
    config.pop("versions")  # (the same process: equal anyway, but not a setting)
    return config


def test_a_page_run_is_the_apis_run_and_records_what_the_cli_records(runs_dir, monkeypatch):
    calls = _spy(monkeypatch, "prepare_sparsify")
    at = _app("pages/sparsify.py")
    _set(at, {**SHORT, "snapshot_mb": 8.0})
    assert at.query_params["snapshot_mb"] == "8.0", "kept in the address like the other settings"
    _click(at, "Run")
    runner = _finish(at)
    assert runner.state == "finished", runner.message
    assert len(calls) == 1, "the page built its runner through geoviz.applications.api.prepare_sparsify"
    page_call = calls[0]
    assert (page_call["sparsity"], page_call["steps"], page_call["eval_every"]) == (0.5, 30, 5)
    assert page_call["snapshot_mb"] == 8.0 and page_call["abandon_after"] is not None
    assert page_call["solver"] == SolverConfig(damping=page_call["solver"].damping)  # the page's defaults
    page_config = _config(runner.writer.dir)
    assert page_config["snapshot_mb"] == 8.0

    # the CLI with the same settings: the same function, the same record
    damping = page_call["solver"].damping
    code = cli.main(["sparsify", "--steps", "30", "--sparsity", "0.5", "--eval-every", "5", "--snapshot-mb", "8",
                     "--damping", repr(damping), "--out", str(runs_dir / "cli"), "--quiet"])
    assert code == 0
    assert len(calls) == 2, "the CLI built its runner through the same function"
    (cli_run,) = (runs_dir / "cli").iterdir()
    assert _config(cli_run) == page_config


def test_a_budget_below_one_mb_is_one_sentence_and_nothing_runs(runs_dir, monkeypatch):
    calls = _spy(monkeypatch, "prepare_sparsify")
    at = _app("pages/sparsify.py")
    _set(at, {**SHORT, "snapshot_mb": 0.5})
    assert [e.value for e in at.error] == [BUDGET_SENTENCE], "the CLI's own sentence, once"
    assert at.button(key="sparsify:Run").disabled  # (a browser cannot press it)
    assert not calls and "sparsify:runner" not in at.session_state
    assert not any(runs_dir.iterdir()), "nothing was written"
    # the same from a link
    at = _app("pages/sparsify.py", {"snapshot_mb": "0.5"})
    assert [e.value for e in at.error] == [BUDGET_SENTENCE]
    assert at.button(key="sparsify:Run").disabled


@pytest.mark.parametrize("page, prepare", [("continual", "prepare_continual"), ("connect", "prepare_connect")])
def test_the_other_pages_run_through_the_api_with_their_budget(page, prepare, runs_dir, monkeypatch):
    calls = _spy(monkeypatch, prepare)
    big = "The network has 11.2 M weights; on a CPU each exact step costs about 20 forward-backward passes."
    monkeypatch.setattr(api, "size_warning", lambda parameters, device: big)  # as if the network were big
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.switch_page(f"pages/{page}.py")
    at.run()
    at.number_input(key=f"{page}:snapshot_mb").set_value(4.0)
    at.number_input(key=f"{page}:steps").set_value(3)
    at.run()
    assert not at.error, [e.value for e in at.error]
    at.button(key=f"{page}:Run").click()
    at.run()
    assert not at.exception, at.exception
    runner = at.session_state[f"{page}:runner"]
    runner.stop()
    runner.join(120)
    at.run()  # the ended run unlocks the sidebar
    assert len(calls) == 1 and calls[0]["snapshot_mb"] == 4.0 and calls[0]["steps"] == 3
    assert _config(runner.writer.dir)["snapshot_mb"] == 4.0
    assert runner.warnings == [big], "the API's size warning is said for a page run too (shown until the cost line)"
    # out of range: the same sentence on this page, Run disabled
    at.number_input(key=f"{page}:snapshot_mb").set_value(0.5)
    at.run()
    assert BUDGET_SENTENCE in [e.value for e in at.error]
    assert at.button(key=f"{page}:Run").disabled
