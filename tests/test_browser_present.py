"""Presentation mode on the application pages (?present=1 and the toggle), in a real
browser at 1280x720: no sidebar, the key chart's text enlarged (from plotly's own
layout in the DOM), the key chart inside the screen before a run, and the toggle
takes the page out of it again with the settings kept. Screenshots in
tests/screenshots/present_*.png."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appserver import AppServer, launch_chromium
from test_browser import _require_browser

SHOTS = Path(__file__).parent / "screenshots"
KEY_CHART = {  # page -> the title of its key chart
    "sparsify": "Test accuracy along the path",
    "continual": "Test accuracy per task",
    "connect": "Loss and accuracy along the paths",
}
# JavaScript: the chart titled TITLE: its font sizes (plotly's layout), and its box with its legend
CHART = """(title) => {
  const div = [...document.querySelectorAll('.js-plotly-plot')].find(d => (d.querySelector('.gtitle') || {}).textContent === title);
  if (!div || !div._fullLayout) return null;
  const fl = div._fullLayout;
  const boxes = [div, ...div.querySelectorAll('.legend')].map(el => el.getBoundingClientRect());
  // before a run an axis without data has no laid-out tick font: the size the figure asks for
  const tick = axis => ((fl[axis] || {}).tickfont || ((div.layout[axis] || {}).tickfont) || {size: 0}).size;
  return {title: fl.title.font.size, ticks: Math.min(tick('xaxis'), tick('yaxis')),
          bottom: Math.max(...boxes.map(b => b.bottom)), right: Math.max(...boxes.map(b => b.right))};
}"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    _require_browser()
    with AppServer(tmp_path_factory.mktemp("runs"), env={"OMP_NUM_THREADS": "1"}) as app:
        yield app


@pytest.mark.parametrize("name", list(KEY_CHART))
def test_presentation_mode_on_an_application_page(server, name):
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(exist_ok=True)
    title = json.dumps(KEY_CHART[name])
    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        page = browser.new_page(viewport={"width": 1280, "height": 720})
        page.goto(f"{server.url}/{name}?present=1&eps=0.07")
        page.get_by_role("button", name="Run").first.wait_for(timeout=120_000)
        # the server wrote the settings back into the address, keeping present=1 (else the charts lose their fonts)
        page.wait_for_function("() => location.search.includes('present=1') && location.search.includes('eps=0.07')",
                               timeout=30_000)
        page.wait_for_function(f"(() => {{ const c = ({CHART})({title}); return c && c.title >= 22; }})()", timeout=30_000)
        chart = page.evaluate(f"({CHART})({title})")
        page.screenshot(path=str(SHOTS / f"present_{name}.png"))
        assert chart["title"] >= 22 and chart["ticks"] >= 16, chart
        assert chart["bottom"] <= 720 and chart["right"] <= 1280, f"{name}: the key chart is not inside 1280x720: {chart}"
        assert not page.get_by_test_id("stSidebar").is_visible()
        # the toggle: out of presentation mode, the settings kept, the sidebar back, the chart text as it was
        page.get_by_text("Presentation mode", exact=True).click()
        page.wait_for_function("() => !location.search.includes('present=1') && location.search.includes('eps=0.07')",
                               timeout=30_000)
        page.get_by_test_id("stSidebar").wait_for(state="visible", timeout=30_000)
        page.wait_for_function(f"(() => {{ const c = ({CHART})({title}); return c && c.title < 22; }})()", timeout=30_000)
        assert "Traceback" not in page.content()
        browser.close()
