"""The app server's resident memory: warm, with N browser sessions running paths, and
after their tabs closed and the paths ended (issue 14: within 20% of warm).

    python bench/server_memory.py [--sessions 4] [--steps 300]

Starts the real server (tests/appserver.py) and Debian's Chromium; prints one line
per phase. Figures on a busy machine move by tens of MB between repeats.

Measured 2026-12-02 (2 busy cores, 4 sessions x 300 digits steps): warm 885-888 MB,
running 1125-1355 MB, after the tabs closed and the sessions expired 1109-1341 MB
(1.25-1.51x warm). The target (within 20% of warm) is NOT met yet: gc.unfreeze,
gc.collect and malloc_trim after the runs (pages/_safe.release_memory) did not bring
it down; what still holds the memory is not found.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from appserver import FIRST_CHART_POINTS, AppServer, launch_chromium  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def open_and_run(browser, url: str):
    context = browser.new_context(viewport={"width": 1400, "height": 1600})
    page = context.new_page()
    page.goto(url)
    run = page.get_by_test_id("stMainBlockContainer").get_by_role("button", name="Run", exact=True)
    run.wait_for(timeout=120_000)
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=120_000)
    run.click()
    page.wait_for_function(f"({FIRST_CHART_POINTS})() > 0", timeout=120_000, polling=200)
    return context


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as runs, AppServer(runs, env={"OMP_NUM_THREADS": "1", "GEOVIZ_ABANDON_AFTER": "10",
                                                                   "GEOVIZ_MAX_RUNS": str(args.sessions)}) as app, \
            sync_playwright() as pw:
        browser = launch_chromium(pw)
        url = f"{app.url}/sparsify?steps={args.steps}&sparsity=0.9&eval_every=10"
        warm = open_and_run(browser, url.replace(f"steps={args.steps}", "steps=5"))
        time.sleep(8)
        warm.close()
        time.sleep(15)
        before = rss_mb(app.proc.pid)
        print(f"warm (one short run done, tab closed): {before:.0f} MB")
        contexts = [open_and_run(browser, url) for _ in range(args.sessions)]
        time.sleep(5)
        during = rss_mb(app.proc.pid)
        print(f"{args.sessions} sessions running paths: {during:.0f} MB")
        for context in contexts:
            context.close()  # the tabs go away while their paths run
        deadline = time.time() + 300
        runs_dir = Path(runs)
        while time.time() < deadline:  # every run ends (finished, or stopped: nobody watched)
            time.sleep(3)
            states = [p.joinpath("status.json").read_text() for p in runs_dir.iterdir() if p.is_dir()]
            if states and not any('"running"' in s or '"paused"' in s for s in states):
                break
        time.sleep(10)  # the release thread polls every second
        after = rss_mb(app.proc.pid)
        print(f"after the paths ended: {after:.0f} MB ({after / before:.2f}x warm)")
        # Streamlit keeps a closed tab's session (and its state) for server.disconnectedSessionTTL
        # (120 s) in case it reconnects; then the session, its runners and their memory go
        time.sleep(150)
        gone = rss_mb(app.proc.pid)
        print(f"after the closed sessions expired (+150 s): {gone:.0f} MB ({gone / before:.2f}x warm)")
        browser.close()


if __name__ == "__main__":
    main()
