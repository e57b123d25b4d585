"""Issue 14: the server's memory comes back after its sessions end. Several browser
sessions run digits paths to their end (baselines included), then their tabs close;
once Streamlit has dropped the closed sessions, the server's resident memory is within
20% of what it was warm (one short run done, its tab closed)."""

from __future__ import annotations

import time

from appserver import AppServer, launch_chromium, rss_mb, run_in_new_tabs, run_states, wait_runs_ended
from test_browser import _require_browser

SESSIONS, STEPS = 3, 100  # each run with its baselines holds its trajectory, figures and buffers
# Streamlit keeps a closed tab's session for server.disconnectedSessionTTL (120 s) in case
# it reconnects; here 2 s, so the closed sessions (and what they hold) go within the test
TTL = 2


def _settled_rss(pid: int) -> float:
    """RSS once the closed sessions have expired and the release thread has run: the
    smallest of a few readings a second apart (a redraw in flight is not memory held)."""
    time.sleep(TTL + 6)
    readings = []
    for _ in range(4):
        readings.append(rss_mb(pid))
        time.sleep(1)
    return min(readings)


def test_server_memory_returns_within_20_percent_of_warm_after_sessions_end(tmp_path):
    _require_browser()
    from playwright.sync_api import sync_playwright

    runs = tmp_path / "runs"
    runs.mkdir()
    env = {"OMP_NUM_THREADS": "1", "GEOVIZ_MAX_RUNS": str(SESSIONS), "STREAMLIT_SERVER_DISCONNECTED_SESSION_TTL": str(TTL)}
    with AppServer(runs, env=env) as app, sync_playwright() as pw:
        browser = launch_chromium(pw)
        url = f"{app.url}/sparsify?sparsity=0.9&eval_every=10&steps="
        warm, = run_in_new_tabs(browser, [url + "5"])  # imports, data, start network, plotly: the warm server
        wait_runs_ended(runs, 1, timeout=600)
        warm.close()
        before = _settled_rss(app.proc.pid)
        tabs = run_in_new_tabs(browser, [url + str(STEPS)] * SESSIONS)
        during = rss_mb(app.proc.pid)
        wait_runs_ended(runs, 1 + SESSIONS, timeout=600)  # to their end, watched (generous: a busy machine)
        # watched to their end ("stopped" only if a very slow browser let a poll lapse 30 s)
        assert set(run_states(runs)) <= {"finished", "stopped"}, run_states(runs)
        for tab in tabs:
            tab.close()
        after = _settled_rss(app.proc.pid)
        browser.close()
    print(f"server RSS: warm {before:.0f} MB, {SESSIONS} sessions running {during:.0f} MB, "
          f"after they ended {after:.0f} MB ({after / before:.2f}x warm)")
    assert after <= 1.2 * before, f"warm {before:.0f} MB, after the sessions {after:.0f} MB ({after / before:.2f}x)"
