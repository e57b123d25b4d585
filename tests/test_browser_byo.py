"""Bring your own weights in the browser: upload a file on the Sparsify page and run from it;
a pickle that needs code is one sentence and nothing runs."""

from __future__ import annotations

import pickle

import torch
from playwright.sync_api import expect
from safetensors.torch import save_file

from geoviz.setups.data import load_dataset
from geoviz.setups.models import build_model
from test_browser import CUT_TEXTS, SHOTS, _button, _status, browser, page, server  # noqa: F401
from payloads import Payload


def _upload(page, path):
    page.get_by_test_id("stSidebar").locator("input[type=file]").set_input_files(str(path))


def test_upload_weights_and_run_from_them(server, page, tmp_path):  # noqa: F811
    data = load_dataset("digits")
    torch.manual_seed(21)
    good = tmp_path / "mine.safetensors"
    save_file(build_model("mlp", data.input_shape, data.num_classes).state_dict(), str(good))
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"net.1.weight": Payload(marker)}, protocol=2))

    page.goto(f"{server.url}/sparsify?steps=20&sparsity=0.5&eval_every=5")
    _button(page, "Run").wait_for(timeout=90_000)
    # the sidebar in an 800 px window: every label whole, the snapshot budget included, and the upload
    # box's file types whole (they ended "PT…")
    page.get_by_test_id("stSidebar").get_by_role("spinbutton", name="Snapshot budget (MB)").wait_for(timeout=30_000)
    page.set_viewport_size({"width": 800, "height": 900})
    page.wait_for_function("() => window.innerWidth === 800")
    sidebar = '[data-testid="stSidebar"] [data-testid="stWidgetLabel"], [data-testid="stFileUploaderDropzoneInstructions"]'
    assert page.evaluate(CUT_TEXTS, sidebar) == []
    page.set_viewport_size({"width": 1400, "height": 2400})
    _upload(page, evil)
    page.get_by_text("Start weights in use: evil.pt", exact=False).wait_for(timeout=60_000)
    _button(page, "Run").click()
    page.get_by_text("evil.pt is a pickle that needs code to run to load").wait_for(timeout=60_000)
    assert not marker.exists()
    page.screenshot(path=str(SHOTS / "byo_refused.png"))

    _upload(page, good)  # replaces the refused file
    # the server has the new file once its caption shows (a Run clicked while the file is still on its
    # way runs with the file before: the CI failure of 2026-12-02)
    page.get_by_text("Start weights in use: mine.safetensors", exact=False).wait_for(timeout=60_000)
    _button(page, "Run").click()
    _status(page, r"^finished · step 20 of 20", timeout=180_000)
    # one cost line once the page has settled (while a rerun draws, an element it has moved can
    # still show at its old place for a moment: seen once as two lines in a fresh-clone run)
    expect(page.get_by_text("estimated cost: 20 steps")).to_have_count(1, timeout=30_000)
    page.screenshot(path=str(SHOTS / "byo_uploaded_run.png"))
