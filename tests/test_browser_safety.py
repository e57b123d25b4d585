"""Issue 14 in a real browser: text from a URL or a run folder is drawn as text. A link
in ?dataset= makes no <a>, an image makes no <img> and no request; a hostile run
message on the Runs page neither."""

from __future__ import annotations

import json
import urllib.parse

import pytest

from test_browser import SHOTS, _require_browser  # noqa: F401
from appserver import AppServer, launch_chromium

HOSTILE = ("[Session expired - click to log in](http://evil.example/login) ![t](http://evil.example/t.png) "
           "<img src=http://evil.example/h.png> www.evil.example http://evil.example/raw :red[red] $x^2$")


@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory):
    _require_browser()
    runs = tmp_path_factory.mktemp("runs")
    folder = runs / "20260101-000000-sparsify-evil"
    folder.mkdir()
    (folder / "config.json").write_text('{"application": "sparsify"}')
    (folder / "status.json").write_text(json.dumps({"status": "finished", "message": HOSTILE}))
    (folder / "steps.jsonl").write_text('{"step": 1, "test_accuracy": 0.5}\n')
    with AppServer(runs, env={"OMP_NUM_THREADS": "1"}) as app:
        yield app


def _check(page, shot: str, requests: list) -> None:
    page.screenshot(path=str(SHOTS / shot))
    main = page.get_by_test_id("stMain")
    assert main.locator("a[href*='evil']").count() == 0
    assert page.locator("img[src*='evil']").count() == 0
    assert main.get_by_text("evil.example/login", exact=False).count() >= 1  # shown, as text
    assert not [url for url in requests if "evil.example" in urllib.parse.urlsplit(url).netloc]  # nothing fetched from it


def test_url_and_run_folder_text_is_never_markdown(hostile_server):
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            page = browser.new_context(viewport={"width": 1400, "height": 1600}).new_page()
            requests: list[str] = []
            page.on("request", lambda request: requests.append(request.url))
            page.goto(f"{hostile_server.url}/sparsify?dataset={urllib.parse.quote(HOSTILE)}")
            page.get_by_test_id("stAlertContentError").first.wait_for(timeout=90_000)
            _check(page, "hostile_url.png", requests)
            page.goto(f"{hostile_server.url}/runs")
            page.get_by_text("unreadable", exact=False).or_(page.get_by_text("finished", exact=False)).first.wait_for(timeout=90_000)
            page.get_by_text("Session expired", exact=False).first.wait_for(timeout=30_000)
            _check(page, "hostile_runs.png", requests)
        finally:
            browser.close()
