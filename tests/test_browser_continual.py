"""The Continual page in a real browser, with the server, Chromium and helpers of
tests/test_browser.py (skipped where Chromium or Playwright is missing, a failure under
CI). Runs a path from a link, waits for the per-task curves to really draw, then for the
baselines' bars and table, and keeps screenshots in tests/screenshots/."""

from __future__ import annotations

import re

from test_browser import SHOTS, TRACES, _button, _run_pause_step, _status, browser, page, server  # noqa: F401 (fixtures)

BARS = "() => document.querySelectorAll('.js-plotly-plot .barlayer .point').length"


def test_continual_runs_to_the_end_in_the_browser(server, page):
    # the settings come from the link, and the metric memory is explained with its size
    page.goto(f"{server.url}/continual?memory=60&steps=80&eval_every=10")
    run = _button(page, "Run")
    run.wait_for(timeout=90_000)
    page.get_by_text(re.compile(r"Metric memory: M = 60 task-1 inputs")).wait_for(timeout=60_000)
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=90_000)  # the empty charts
    assert "memory=60" in page.url and "scenario=class-incremental" in page.url
    run.click()
    # the per-task curves draw while the path grows ...
    page.wait_for_function(f"({TRACES})() >= 3", timeout=120_000, polling=100)
    # ... then the baselines train, and their bars and table appear beside the geodesic
    _status(page, r"^finished · step 80 of 80", timeout=300_000)
    # (.first: while the fragment redraws, the stale copy of the heading can still be on the page)
    page.get_by_text("Geodesic and baselines", exact=True).first.wait_for(timeout=60_000)
    page.wait_for_function(f"({BARS})() >= 15", timeout=60_000, polling=100)  # 5 methods x 3 bars
    table = page.locator('[data-testid="stDataFrame"]')
    table.scroll_into_view_if_needed(timeout=30_000)  # the grid draws once it is in view
    page.wait_for_timeout(1500)
    assert "Traceback" not in page.content()
    page.screenshot(path=str(SHOTS / "continual_finished.png"), full_page=True)
    assert (SHOTS / "continual_finished.png").stat().st_size > 10_000


def test_continual_pause_and_step_in_the_browser(server, page):
    url = f"{server.url}/continual?steps=3000&eval_every=10&scenario=permuted"
    _run_pause_step(page, url, f"({TRACES})() >= 3", timeout=120_000, polling=100)
    _button(page, "Stop").click()
    _status(page, r"^stopped · step")
    page.screenshot(path=str(SHOTS / "continual_stopped.png"), full_page=True)
