"""The app in a real browser: `streamlit run app.py` on a free loopback port, driven by
Playwright with Debian's Chromium. Screenshots go to tests/screenshots/ (git-ignored).

Where Chromium or Playwright is missing these tests skip, except under CI (env CI set),
where that is a failure: in CI they must run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from appserver import CHROMIUM, FIRST_CHART_POINTS, AppServer, launch_chromium
from geoviz.record.runs import list_runs

SHOTS = Path(__file__).parent / "screenshots"
TRACES = "() => document.querySelectorAll('.js-plotly-plot .trace').length"
# JavaScript: the visible texts under `selector` that do not fit their box (cut, or spilling out of it)
CUT_TEXTS = """(selector) => {
  const cut = [];
  for (const box of document.querySelectorAll(selector))
    for (const el of [box, ...box.querySelectorAll('*')])
      if (el.offsetParent && el.textContent.trim() && el.scrollWidth > el.clientWidth + 1) cut.push(el.textContent.trim());
  return [...new Set(cut)];
}"""


def _require_browser():
    missing = []
    try:
        from playwright.sync_api import sync_playwright  # noqa: F401
    except ImportError:
        missing.append("the playwright package")
    if not Path(CHROMIUM).exists():
        missing.append(f"Chromium at {CHROMIUM}")
    if missing:
        reason = "browser tests need " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(reason + " (CI is set: these tests must run)")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    _require_browser()
    runs = tmp_path_factory.mktemp("runs")
    with AppServer(runs, env={"OMP_NUM_THREADS": "1"}) as app:
        yield app


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        chromium = launch_chromium(pw)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 2400})
    yield context.new_page()
    context.close()


def _button(page, label: str):
    # the main area's buttons (Streamlit's header has a "Stop" of its own)
    return page.get_by_test_id("stMainBlockContainer").get_by_role("button", name=label, exact=True)


def _status(page, pattern: str, timeout: float = 120_000):
    """Wait until the status line matches ``pattern`` (a regex on its text); the match."""
    locator = page.get_by_text(re.compile(pattern)).first
    locator.wait_for(timeout=timeout)
    return re.search(pattern, locator.inner_text())


def test_home_page(server, page):
    page.goto(server.url)
    page.get_by_role("heading", name=re.compile("walk through a network's weight space")).wait_for(timeout=90_000)
    page.wait_for_selector(".js-plotly-plot .trace", timeout=90_000)
    for name in ("Sparsify", "Continual", "Connect", "Runs"):
        assert page.get_by_role("link", name=f"Try it: {name}").count() == 1
    page.screenshot(path=str(SHOTS / "home.png"))
    # a projector (1280x720) and a narrow window (800 px): no card's text or link is cut, and at
    # 800 px the cards wrap (five columns there broke words mid-letter)
    for width, height in ((1280, 720), (800, 900)):
        page.set_viewport_size({"width": width, "height": height})
        page.wait_for_function("(w) => window.innerWidth === w", arg=width)
        widths = page.evaluate("() => [...document.querySelectorAll('.st-key-home-cards [data-testid=stColumn]')]"
                               ".map(c => c.getBoundingClientRect().width)")
        assert len(widths) == 5 and min(widths) >= 130, f"card widths at {width} px: {widths}"
        assert page.evaluate(CUT_TEXTS, ".st-key-home-cards [data-testid=stColumn]") == [], f"cut at {width}x{height}"
    page.screenshot(path=str(SHOTS / "home_800.png"))


def test_sparsify_runs_to_the_end_in_the_browser(server, page):
    page.goto(f"{server.url}/sparsify?steps=30&sparsity=0.5&eval_every=5")
    run = _button(page, "Run")
    run.wait_for(timeout=90_000)
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=90_000)  # the empty charts
    assert "eps=0.05" in page.url and "steps=30" in page.url, "the settings are in the URL"
    page.screenshot(path=str(SHOTS / "sparsify_ready.png"))
    run.click()
    page.wait_for_function(f"({FIRST_CHART_POINTS})() > 0", timeout=60_000, polling=50)
    _status(page, r"^finished · step 30 of 30", timeout=180_000)
    # (.first: while the page redraws after the run ends, the last drawing's heading can linger a moment)
    page.get_by_text("Summary", exact=True).first.wait_for(timeout=60_000)
    page.wait_for_function(f"({FIRST_CHART_POINTS})() == 7", timeout=30_000, polling=100)
    page.wait_for_timeout(2000)
    assert page.get_by_text("Summary", exact=True).count() == 1, "one summary once the page has settled"
    assert page.evaluate(TRACES) >= 10
    page.screenshot(path=str(SHOTS / "sparsify_finished.png"))


def _run_pause_step(page, url: str, drawn: str, timeout: float = 60_000, polling: int = 50) -> int:
    """Open ``url``, click Run, wait until ``drawn()`` (JS) is true, then Pause and Step.

    Returns the step the path was paused at; it is paused one step later on return.
    """
    page.goto(url)
    _button(page, "Run").wait_for(timeout=90_000)
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=90_000)  # the empty charts
    _button(page, "Run").click()
    page.wait_for_function(drawn, timeout=timeout, polling=polling)
    _button(page, "Pause").click()
    step = int(_status(page, r"^paused · step (\d+)").group(1))
    _button(page, "Step").click()
    _status(page, rf"^paused · step {step + 1} ")
    return step


def test_pause_step_resume_stop_in_the_browser(server, page):
    step = _run_pause_step(page, f"{server.url}/sparsify?steps=2000&sparsity=0.9&eval_every=10", f"({FIRST_CHART_POINTS})() > 0")
    page.screenshot(path=str(SHOTS / "sparsify_paused.png"))
    _button(page, "Resume").click()
    _status(page, r"^running · step")
    _button(page, "Pause").wait_for(timeout=30_000)
    _button(page, "Stop").click()
    stopped = int(_status(page, r"^stopped · step (\d+)").group(1))
    assert stopped > step + 1, "Resume walked on"
    assert _button(page, "Stop").is_disabled()
    page.screenshot(path=str(SHOTS / "sparsify_stopped.png"))


def test_runs_page_in_the_browser(server, page):
    runs = server.env["GEOVIZ_RUNS"]
    if not list_runs(runs):  # run alone: make one from the command line
        command = [sys.executable, "-m", "geoviz", "sparsify", "--quiet", "--steps", "10", "--eval-every", "5", "--out", runs]
        subprocess.run(command, check=True, env=server.env, cwd=Path(__file__).parents[1], capture_output=True)
    page.goto(f"{server.url}/runs")
    page.get_by_role("heading", name="Runs").wait_for(timeout=90_000)
    page.get_by_text("Download run (zip)").wait_for(timeout=60_000)
    page.wait_for_selector(".js-plotly-plot .trace", timeout=60_000)
    assert page.get_by_text(re.compile(r"^(finished|stopped) · \d+ steps")).count() == 1
    assert page.get_by_text(re.compile(r"^(finished|stopped) · \d+ steps.*·\s*$")).count() == 0, "no dangling separator"
    page.screenshot(path=str(SHOTS / "runs.png"))
    # a researcher's 800 px window: the download buttons keep their whole labels (they read "Downl…")
    page.set_viewport_size({"width": 800, "height": 900})
    page.wait_for_function("() => window.innerWidth === 800")
    assert page.evaluate(CUT_TEXTS, '[data-testid="stDownloadButton"]') == []
    page.screenshot(path=str(SHOTS / "runs_800.png"))
