"""The Continual page in a real browser: the server on a free loopback port, Debian's
Chromium driven by Playwright. Runs a path, waits for the per-task curves to really draw,
then for the baselines' bars and table, and keeps a screenshot ($GEOVIZ_SCREENSHOTS, else
the test's tmp folder)."""

import os
import re
from pathlib import Path

import pytest

from appserver import CHROMIUM, AppServer, launch_chromium

playwright = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM}")

TRACES = "() => document.querySelectorAll('.js-plotly-plot .trace').length"
BARS = "() => document.querySelectorAll('.js-plotly-plot .barlayer .point').length"


def test_continual_page_in_the_browser(runs_dir, tmp_path):
    shots = Path(os.environ.get("GEOVIZ_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    env = {"OMP_NUM_THREADS": "1"}
    with AppServer(runs_dir, env=env) as server, playwright.sync_playwright() as pw:
        browser = launch_chromium(pw)
        page = browser.new_page(viewport={"width": 1400, "height": 2200})
        # the settings come from the link
        page.goto(f"{server.url}/continual?memory=60&steps=80&eval_every=10")
        page.get_by_role("heading", name="Continual learning along a geodesic").wait_for(timeout=90_000)
        page.get_by_text(re.compile(r"Metric memory: M = 60 task-1 inputs")).wait_for(timeout=60_000)
        run = page.get_by_role("button", name="Run", exact=True)
        run.wait_for(timeout=60_000)
        run.click()
        # the per-task curves draw while the path grows ...
        page.wait_for_function(f"({TRACES})() >= 3", timeout=120_000, polling=100)
        # ... then the baselines train, and their bars and table appear beside the geodesic
        page.get_by_text(re.compile(r"^finished · step 80 of 80")).wait_for(timeout=300_000)
        page.get_by_text("Geodesic and baselines", exact=True).wait_for(timeout=60_000)
        page.wait_for_function(f"({BARS})() >= 15", timeout=60_000, polling=100)  # 5 methods x 3 bars
        table = page.locator('[data-testid="stDataFrame"]')
        table.scroll_into_view_if_needed(timeout=30_000)  # the grid draws once it is in view
        page.wait_for_timeout(1500)
        page.screenshot(path=str(shots / "continual.png"), full_page=True)
        assert "Traceback" not in page.content()
        browser.close()
    assert (shots / "continual.png").stat().st_size > 10_000
    assert any((runs_dir / d / "summary.json").is_file() for d in os.listdir(runs_dir) if (runs_dir / d).is_dir())
