"""The Connect page in a real browser: the server on a free loopback port, Debian's
Chromium driven by Playwright. Runs a path, waits for the charts to really draw, draws
the landscape, and keeps screenshots in tests/screenshots/ (git-ignored).

Where Chromium or Playwright is missing this test skips, except under CI (env CI set),
where that is a failure.
"""

import os
import re
from pathlib import Path


from appserver import AppServer, launch_chromium
from test_browser import _require_browser

SHOTS = Path(os.environ.get("GEOVIZ_SCREENSHOTS", Path(__file__).parent / "screenshots"))
TRACES = "() => document.querySelectorAll('.js-plotly-plot .trace').length"
CONTOUR = "() => document.querySelectorAll('.js-plotly-plot .contour, .js-plotly-plot .hm').length"


def test_connect_page_in_the_browser(runs_dir):
    _require_browser()
    from playwright.sync_api import sync_playwright

    shots = SHOTS
    shots.mkdir(parents=True, exist_ok=True)
    env = {"OMP_NUM_THREADS": "1"}
    with AppServer(runs_dir, env=env) as server, sync_playwright() as pw:
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
