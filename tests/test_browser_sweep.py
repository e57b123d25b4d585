"""The Sweep panel of /sparsify in a real browser (server, Chromium and fixtures of
tests/test_browser.py): vary damping over two values, press Sweep, and the table and
the error bars fill in while the page stays usable."""

from __future__ import annotations

import re

from playwright.sync_api import TimeoutError as PlaywrightTimeout

from test_browser import SHOTS, browser, server  # noqa: F401 (fixtures)


def test_sweep_panel_fills_in_in_the_browser(server, browser):
    context = browser.new_context(viewport={"width": 1280, "height": 720})
    page = context.new_page()
    try:
        page.goto(f"{server.url}/sparsify?steps=20&eval_every=5")
        page.get_by_test_id("stMainBlockContainer").get_by_role("button", name="Run", exact=True).wait_for(timeout=120_000)
        panel = page.get_by_text("Sweep: vary one or two settings over seeds")
        panel.wait_for(timeout=60_000)
        panel.click()
        choose = page.get_by_test_id("stMultiSelect").filter(has_text="Settings to vary")
        values = page.get_by_label("Values of damping, comma-separated")
        for attempt in range(3):  # a fresh server's multiselect can miss the first Enter (seen in CI)
            choose.click()
            page.keyboard.type("damping")
            page.keyboard.press("Enter")
            try:
                values.wait_for(timeout=15_000)
                break
            except PlaywrightTimeout:
                if attempt == 2:
                    raise
        values.fill("1e-4,1e-2")
        values.press("Enter")
        seeds = page.get_by_label("Seeds per setting")
        seeds.fill("1")
        seeds.press("Enter")
        page.wait_for_timeout(1000)
        page.get_by_role("button", name="Sweep", exact=True).click()
        page.get_by_text(re.compile(r"trials done")).first.wait_for(timeout=120_000)
        # the rest of the page answers while the sweep runs: the Run button is there and enabled
        assert page.get_by_test_id("stMainBlockContainer").get_by_role("button", name="Run", exact=True).is_enabled()
        page.get_by_text(re.compile(r"2 of 2 trials done")).first.wait_for(timeout=400_000)
        page.wait_for_selector(".js-plotly-plot .trace.scatter", timeout=60_000)
        page.get_by_text(re.compile(r"mean ± sd over seeds, per setting")).first.scroll_into_view_if_needed(timeout=30_000)
        assert "Traceback" not in page.content()
        page.screenshot(path=str(SHOTS / "sparsify_sweep_panel.png"))
    finally:
        context.close()
