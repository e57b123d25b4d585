"""The Compare page in a real browser (server, Chromium and fixtures of
tests/test_browser.py): two runs made from the command line, opened from a link,
their curves overlaid and the one setting they differ in (eps) highlighted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from geoviz.record.runs import list_runs
from test_browser import SHOTS, TRACES, browser, server  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parents[1]
# JavaScript: [top, width] of each plotly chart, in px
CHART_BOXES = "() => [...document.querySelectorAll('.js-plotly-plot')].map(d => [Math.round(d.getBoundingClientRect().top), d.getBoundingClientRect().width])"
# JavaScript: every chart's title ends inside its chart
TITLES_FIT = """() => [...document.querySelectorAll('.js-plotly-plot')].every(d => {
  const title = d.querySelector('.gtitle');
  return !title || title.getBoundingClientRect().right <= d.getBoundingClientRect().right + 1; })"""
# background colour of each cell in the row of the settings table headed ``name``
ROW_COLORS = """(name) => {
  for (const row of document.querySelectorAll('[data-testid="stTable"] tr')) {
    const head = row.querySelector('th');
    if (head && head.innerText.trim() === name)
      return [...row.querySelectorAll('td')].map(td => getComputedStyle(td).backgroundColor);
  }
  return null;
}"""


def test_compare_overlays_two_runs_and_marks_the_differing_setting(server, browser):
    runs = server.env["GEOVIZ_RUNS"]
    before = {r.name for r in list_runs(runs)}
    for eps in ("0.05", "1.0"):  # curves that part visibly
        command = [sys.executable, "-m", "geoviz", "sparsify", "--quiet", "--steps", "10", "--eval-every", "5",
                   "--eps", eps, "--out", runs]
        subprocess.run(command, check=True, env=server.env, cwd=ROOT, capture_output=True)
    made = sorted(r.name for r in list_runs(runs) if r.name not in before)
    assert len(made) == 2
    context = browser.new_context(viewport={"width": 1280, "height": 720})
    page = context.new_page()
    try:
        page.goto(f"{server.url}/compare?runs={made[0]},{made[1]}")
        page.get_by_role("heading", name="Compare").wait_for(timeout=90_000)
        page.wait_for_function(f"({TRACES})() >= 6", timeout=90_000, polling=100)  # 3 charts x 2 runs
        legend = page.evaluate("() => [...document.querySelectorAll('.js-plotly-plot .legendtext')].map(t => t.textContent)")
        assert "eps=0.05" in legend and "eps=1.0" in legend
        page.locator(".js-plotly-plot").first.scroll_into_view_if_needed(timeout=30_000)
        page.screenshot(path=str(SHOTS / "compare_runs.png"))
        # at 1280 px the three charts share a row; at 800 px each takes the width (three
        # columns of 150 px cut their titles and legends)
        assert len({top for top, _ in page.evaluate(CHART_BOXES)[:3]}) == 1, page.evaluate(CHART_BOXES)
        page.set_viewport_size({"width": 800, "height": 900})
        page.wait_for_function(f"({CHART_BOXES})().every(b => b[1] >= 400)", timeout=10_000)
        page.wait_for_function(TITLES_FIT, timeout=10_000)  # (fails when a title runs past its chart)
        page.screenshot(path=str(SHOTS / "compare_runs_800.png"))
        page.set_viewport_size({"width": 1280, "height": 720})
        table = page.get_by_test_id("stTable").first
        table.scroll_into_view_if_needed(timeout=30_000)
        marked = page.evaluate(ROW_COLORS, "eps")
        plain = page.evaluate(ROW_COLORS, "result: accuracy")
        assert marked and len(set(marked)) == 1 and marked[0] == "rgb(255, 243, 176)", marked
        assert plain and marked[0] not in plain, plain
        assert "Traceback" not in page.content()
        page.screenshot(path=str(SHOTS / "compare_table.png"))
    finally:
        context.close()
