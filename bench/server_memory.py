"""The app server's resident memory: warm, with N browser sessions running digits paths
to their end, and after their tabs closed (issue 14: within 20% of warm).

    python bench/server_memory.py [--sessions 4] [--steps 300] [--ttl 5] [--no-tune]

Starts the real server (tests/appserver.py) and Debian's Chromium; prints one line per
phase. Streamlit keeps a closed tab's session for server.disconnectedSessionTTL (120 s
by default) in case it reconnects; --ttl shortens it so the figure comes sooner.
--no-tune starts the server with GEOVIZ_MALLOC_TUNE=0 (glibc's malloc left as it is).
Figures on a busy machine move by tens of MB between repeats.

Measured 2026-12-02 (2 cores shared with other work), 4 sessions x 300 steps, before
the fix: warm 900 MB, running 1458 MB, after 1370 MB (1.52x). In the server then:
mallinfo2 said 253 MB in use (189 MB warm; +65 MB of which the ended runs'
in-memory trajectories) and 551 MB free inside malloc's arenas, which malloc_trim did
not give back. See pages/_safe.tune_allocator and PathRunner._release_trajectory.
After (same machine, same command, 2026-12-02 18:00): warm 882 MB, running 1009 MB,
paths ended with tabs open 945 MB, tabs closed and sessions expired 914 MB (1.04x).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from appserver import AppServer, launch_chromium, rss_mb, run_in_new_tabs, wait_runs_ended  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--ttl", type=int, default=5, help="server.disconnectedSessionTTL, seconds")
    parser.add_argument("--no-tune", action="store_true", help="GEOVIZ_MALLOC_TUNE=0")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    env = {"OMP_NUM_THREADS": "1", "GEOVIZ_MAX_RUNS": str(args.sessions), "GEOVIZ_MALLOC_TUNE": "0" if args.no_tune else "1",
           "STREAMLIT_SERVER_DISCONNECTED_SESSION_TTL": str(args.ttl)}
    with tempfile.TemporaryDirectory() as runs, AppServer(runs, env=env) as app, sync_playwright() as pw:
        browser = launch_chromium(pw)
        url = f"{app.url}/sparsify?sparsity=0.9&eval_every=10&steps="
        warm, = run_in_new_tabs(browser, [url + "5"])
        wait_runs_ended(runs, 1)
        warm.close()
        time.sleep(args.ttl + 6)
        before = rss_mb(app.proc.pid)
        print(f"warm (one short run done, tab closed): {before:.0f} MB", flush=True)
        tabs = run_in_new_tabs(browser, [url + str(args.steps)] * args.sessions)
        time.sleep(5)
        print(f"{args.sessions} sessions running paths: {rss_mb(app.proc.pid):.0f} MB", flush=True)
        wait_runs_ended(runs, 1 + args.sessions, timeout=900)
        print(f"the paths ended, tabs open: {rss_mb(app.proc.pid):.0f} MB", flush=True)
        for tab in tabs:
            tab.close()
        time.sleep(args.ttl + 6)
        after = rss_mb(app.proc.pid)
        print(f"tabs closed, sessions expired: {after:.0f} MB ({after / before:.2f}x warm)", flush=True)
        browser.close()


if __name__ == "__main__":
    main()
