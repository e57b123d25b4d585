"""The Connect page in a real browser: the server on a free loopback port, Debian's
Chromium driven by Playwright. Runs a path, waits for the charts to really draw, draws
the landscape, and keeps screenshots ($GEOVIZ_SCREENSHOTS, else the test's tmp folder)."""

import os
import re
from pathlib import Path

import pytest

from appserver import CHROMIUM, AppServer, launch_chromium

playwright = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM}")

TRACES = "() => document.querySelectorAll('.js-plotly-plot .trace').length"
CONTOUR = "() => document.querySelectorAll('.js-plotly-plot .contour, .js-plotly-plot .hm').length"


def test_connect_page_in_the_browser(runs_dir, tmp_path):
    shots = Path(os.environ.get("GEOVIZ_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    env = {"OMP_NUM_THREADS": "1"}
    with AppServer(runs_dir, env=env) as server, playwright.sync_playwright() as pw:
        browser = launch_chromium(pw)
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
        page.goto(f"{server.url}/connect?eps=0.2&grid=9")
        page.get_by_role("heading", name="Connect two networks").wait_for(timeout=90_000)
        run = page.get_by_role("button", name="Run", exact=True)
        run.wait_for(timeout=60_000)
        run.click()
        # the geodesic's profile draws while it grows ...
        page.wait_for_function(f"({TRACES})() >= 2", timeout=120_000, polling=100)
        # ... then the baselines, and the summary table
        page.get_by_text(re.compile(r"^finished · step")).wait_for(timeout=300_000)
        page.get_by_text("Summary", exact=True).wait_for(timeout=60_000)
        page.get_by_text(re.compile(r"9 × 9 grid is 81 network evaluations")).wait_for(timeout=60_000)
        page.screenshot(path=str(shots / "connect_paths.png"), full_page=True)
        page.get_by_role("button", name="Draw the landscape").click()
        page.wait_for_function(f"({CONTOUR})() >= 1", timeout=120_000, polling=100)
        page.get_by_text(re.compile(r"^9 of 9 rows in")).wait_for(timeout=120_000)
        page.wait_for_timeout(1000)
        page.screenshot(path=str(shots / "connect_landscape.png"), full_page=True)
        assert "Traceback" not in page.content()
        assert page.get_by_text("Draw the landscape").count() == 1
        browser.close()
    assert (shots / "connect_landscape.png").stat().st_size > 10_000
