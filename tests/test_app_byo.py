"""The pages' share of bringing your own: a weights upload on each page, the cost line, and a
page run from the user's weights file (the same loader as --weights)."""

import hashlib
import json

import pytest
import torch
from streamlit.testing.v1 import AppTest

from geoviz.setups.data import load_dataset
from geoviz.setups.models import build_model
from geoviz.setups.problem import SetupConfig
from pages import sparsify as sparsify_page

from test_app import APP, SHORT, _click, _finish, _set


@pytest.fixture(autouse=True)
def _runs(runs_dir, monkeypatch):
    monkeypatch.setenv("GEOVIZ_RUNS", str(runs_dir))
    torch.set_num_threads(1)


@pytest.mark.parametrize("page", ["pages/sparsify.py", "pages/continual.py", "pages/connect.py"])
def test_each_page_offers_a_weights_upload(page):
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.switch_page(page)
    at.run()
    assert not at.exception
    labels = [u.proto.label for u in at.get("file_uploader")]
    # connect's first network is w_A (its path's start): named as the page names it
    expected = ["Your own weights of w_A", "Your own weights of w_B"] if page == "pages/connect.py" else ["Your own start weights"]
    assert labels == expected


def test_a_page_run_shows_its_cost_and_starts_from_uploaded_weights(tmp_path, runs_dir, monkeypatch):
    data = load_dataset("digits")
    torch.manual_seed(11)
    model = build_model("mlp", data.input_shape, data.num_classes)
    path = tmp_path / "mine.safetensors"
    from safetensors.torch import save_file

    save_file(model.state_dict(), str(path))
    # what the upload widget returns: the saved file's path (AppTest cannot upload)
    monkeypatch.setattr(sparsify_page._live, "weights_ui", lambda page: str(path))
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.switch_page("pages/sparsify.py")
    at.run()
    _set(at, SHORT)
    _click(at, "Run")
    runner = _finish(at)
    assert any("estimated cost: 30 steps" in c.value for c in at.caption)
    config = json.loads((runner.writer.dir / "config.json").read_text())
    assert config["setup"]["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert torch.equal(runner.path.w0[: 64 * 128], model.net[1].weight.detach().flatten())


def test_page_setup_carries_the_weights_path():
    values = {c.name: c.default for c in sparsify_page.CONTROLS} | {"weights": "/x/w.safetensors"}
    setup, _, _ = sparsify_page.configs(values)
    assert setup == SetupConfig(weights="/x/w.safetensors")
