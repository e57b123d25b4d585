"""Issue 14 in the page: a URL value is checked by the CLI's ranges and echoed as text,
never markdown; a shared server caps step budgets, live runs and new start networks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

import pages._safe as safe

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _runs(runs_dir, monkeypatch):
    monkeypatch.setenv("GEOVIZ_RUNS", str(runs_dir))
    torch.set_num_threads(1)


def _app(query: dict, page: str = "pages/sparsify.py") -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.query_params.update(query)
    at.run()
    at.switch_page(page)
    at.run()
    assert not at.exception, at.exception
    return at


def _errors(at: AppTest, raw: bool = False) -> str:
    """The error boxes' text (``raw``: their markdown source, with its escapes)."""
    source = " ".join(e.value for e in at.error)
    return source if raw else re.sub(r"\\(.)", r"\1", source)


def test_a_link_in_the_url_is_shown_as_text():
    at = _app({"dataset": "[Session expired - click to log in](http://evil.example/login) ![t](http://evil.example/t.png)"})
    shown = _errors(at, raw=True)
    assert "dataset" in shown and "evil" in shown
    assert "](http" not in shown and "![" not in shown  # escaped: no link, no image
    assert at.selectbox(key="sparsify:dataset").value == "digits"


@pytest.mark.parametrize("name, text", [("seed", "99999999999999999999"), ("steps", "99999999999999999999"),
                                        ("eps", "nan"), ("damping", "inf"), ("seed", "-3")])
def test_a_url_number_out_of_range_is_one_sentence_and_the_default(name, text):
    at = _app({name: text})
    shown = _errors(at)
    assert f"sets {name} out of range" in shown, shown
    default = next(c.default for c in __import__("pages.sparsify", fromlist=["CONTROLS"]).CONTROLS if c.name == name)
    widget = at.select_slider if name == "damping" else at.number_input  # damping moves on a log scale
    assert widget(key=f"sparsify:{name}").value == default


@pytest.mark.parametrize("page", ["sparsify", "continual", "connect"])
def test_a_fresh_page_starts_at_the_applications_defaults(page):
    """Every setting's widget starts at its declared default, and the step's settings are
    the CLI's (and so the API's): connect's damping 3e-4, off a 1-2-5 slider scale, was once
    snapped to 2e-4, so the page walked another path than the CLI."""
    import importlib

    from geoviz.cli import build_parser

    at = _app({}, f"pages/{page}.py")
    cli = build_parser().parse_args([page])
    controls = importlib.import_module(f"pages.{page}").CONTROLS
    for control in controls:
        key = f"{page}:{control.name}"
        widget = (at.selectbox if control.options else at.select_slider if control.name == "damping" else at.number_input)
        shown = widget(key=key).value
        assert shown == control.default, (control.name, shown, control.default)
        if control.name in ("eps", "damping"):
            assert shown == getattr(cli, control.name), (control.name, shown, getattr(cli, control.name))


def _run(at: AppTest, page: str = "sparsify") -> None:
    at.button(key=f"{page}:Run").click()
    at.run()
    assert not at.exception, at.exception


def test_step_budget_cap(monkeypatch):
    monkeypatch.setattr(safe, "MAX_STEPS", 20)
    at = _app({"steps": "30"})
    _run(at)
    assert "caps a page's step budget at 20" in _errors(at)
    assert "sparsify:runner" not in at.session_state


def test_live_runs_capped_per_session_and_per_server(monkeypatch):
    monkeypatch.setattr(safe, "MAX_SESSION_RUNS", 1)
    at = _app({"steps": "2000", "sparsity": "0.9"})
    _run(at)
    first = at.session_state["sparsify:runner"]
    try:
        at.switch_page("pages/continual.py")
        at.run()
        _run(at, "continual")
        assert "This session already runs 1 paths" in _errors(at)
        monkeypatch.setattr(safe, "MAX_SESSION_RUNS", 5)
        monkeypatch.setattr(safe, "MAX_RUNS", 1)
        other = _app({}, "pages/continual.py")  # another session
        _run(other, "continual")
        assert "The server already runs 1 paths" in _errors(other)
    finally:
        first.stop()
        first.join(30)


def test_new_start_networks_capped_per_session(monkeypatch, tmp_path):
    monkeypatch.setenv("GEOVIZ_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(safe, "MAX_NEW_NETWORKS", 0)
    at = _app({"seed": "4242", "steps": "5"})
    _run(at)
    assert "trained 0 new start networks, the most one session may" in _errors(at)
    assert not list((tmp_path / "empty-cache").glob("networks/*.safetensors"))


def test_connect_counts_w_b_as_a_new_start_network(monkeypatch, tmp_path):
    monkeypatch.setenv("GEOVIZ_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(safe, "MAX_NEW_NETWORKS", 1)
    at = _app({"seed": "4242", "seed_b": "4243", "steps": "5", "hidden": "16"}, "pages/connect.py")
    _run(at, "connect")
    assert "trained 1 new start networks, the most one session may" in _errors(at)
    assert len(list((tmp_path / "empty-cache").glob("networks/*.safetensors"))) == 1  # w_A only


def test_landscape_grid_cap(monkeypatch):
    from geoviz.errors import ConfigError

    monkeypatch.setattr(safe, "MAX_GRID", 101)
    safe.check_grid(101)
    with pytest.raises(ConfigError, match="at most 101 x 101"):
        safe.check_grid(102)


@pytest.mark.parametrize("page, model", [("sparsify", "vgg16"), ("continual", "mobilenet_v3_small")])
def test_a_model_that_cannot_take_the_data_is_refused_before_run(page, model):
    # vgg16 pools 8x8 digits away: said as the page is drawn, Run disabled, nothing trained
    at = _app({"model": model}, f"pages/{page}.py")
    assert at.selectbox(key=f"{page}:model").value == model
    assert f"{model} needs" in _errors(at) and "8x8" in _errors(at), _errors(at)
    assert at.button(key=f"{page}:Run").disabled
    at.selectbox(key=f"{page}:model").set_value("mlp").run()
    assert not at.error and not at.button(key=f"{page}:Run").disabled


def test_the_server_data_folder_offers_what_it_holds(tmp_path, monkeypatch):
    # without a data folder only digits (and Fashion-MNIST where Debian installed it) are offered;
    # with GEOVIZ_DATA holding MNIST's files, mnist is offered, its help names the folder, and
    # the page's run reads the files from there
    import numpy as np

    from geoviz.setups.data import write_idx

    monkeypatch.delenv("GEOVIZ_DATA", raising=False)
    options = _app({}).selectbox(key="sparsify:dataset").options
    assert "mnist" not in options and "cifar10" not in options
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 60), ("t10k", 30)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n).astype(np.uint8))
    monkeypatch.setenv("GEOVIZ_DATA", str(tmp_path))
    import pages._live as live  # (the pages' controls list these at import: a server reads GEOVIZ_DATA at start)

    assert live.dataset_options()[-1] == "mnist" and "cifar10" not in live.dataset_options()
    assert str(tmp_path) in live.dataset_help()
    assert live.data_dir_for("mnist") == str(tmp_path) and live.data_dir_for("digits") is None
    import pages.sparsify as sparsify

    setup = sparsify.configs({**{c.name: c.default for c in sparsify.CONTROLS}, "dataset": "mnist"})[0]
    assert setup.data_dir == str(tmp_path)
