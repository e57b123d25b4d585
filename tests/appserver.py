"""Start the real app (`streamlit run app.py`) on a free loopback port, and a headless
Chromium to drive it. Shared by tests/test_browser.py and bench/app_latency.py."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("GEOVIZ_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class AppServer:
    """`streamlit run app.py` in a subprocess, for a ``with`` block.

    Args:
        runs_dir: the server's runs folder ($GEOVIZ_RUNS).
        env: extra environment variables.
        log: file that receives the server's output.
        prefix: words put before the command (e.g. ``["taskset", "-c", "0"]``).
    """

    def __init__(
        self,
        runs_dir: str | os.PathLike,
        env: dict | None = None,
        log: str | os.PathLike | None = None,
        prefix: list[str] | None = None,
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # the lessons' numbers are prepared in the background at start only where a test
        # asks (GEOVIZ_PREPARE_LESSONS=1): elsewhere that work would slow the timed pages
        self.env = {**os.environ, "GEOVIZ_RUNS": str(runs_dir), "GEOVIZ_PREPARE_LESSONS": "0", **(env or {})}
        self.log_path = Path(log) if log else Path(runs_dir) / "server.log"
        self.proc: subprocess.Popen | None = None
        self.prefix = list(prefix or [])

    def __enter__(self) -> AppServer:
        command = [
            *self.prefix, sys.executable, "-m", "streamlit", "run", "app.py",
            "--server.headless", "true",
            "--server.address", "127.0.0.1",
            "--server.port", str(self.port),
            "--server.fileWatcherType", "none",
            "--browser.gatherUsageStats", "false",
        ]  # fmt: skip
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.time() + 90
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with {self.proc.returncode}: {self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as reply:
                    if reply.read().strip() == b"ok":
                        return self
            except OSError:
                time.sleep(0.3)
        self.__exit__()
        raise TimeoutError(f"streamlit did not answer on {self.url} within 90 s: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text()[-4000:] if self.log_path.exists() else ""

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def launch_chromium(playwright):
    """Debian's Chromium, headless, with nothing that reaches outside the machine."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


# JavaScript: how many points the first trace of the first plotly chart has drawn
# (plotly.py sends arrays base64-encoded; plotly.js's own count is _fullData[i]._length)
FIRST_CHART_POINTS = """() => {
  const div = document.querySelector('.js-plotly-plot');
  if (!div || !div._fullData || !div._fullData.length) return 0;
  return div._fullData[0]._length || 0;
}"""


def rss_mb(pid: int) -> float:
    """A process's resident memory (VmRSS), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_in_new_tabs(browser, urls: list[str]) -> list:
    """A new tab (browser context) on each live page's URL, loading side by side: press
    Run in each and wait until its path's first point is drawn. Returns the contexts
    (close one to close its tab)."""
    contexts, pages = [], []
    for url in urls:
        contexts.append(browser.new_context(viewport={"width": 1400, "height": 1600}))
        pages.append(contexts[-1].new_page())
        pages[-1].goto(url, wait_until="commit", timeout=120_000)
    for page in pages:
        run = page.get_by_test_id("stMainBlockContainer").get_by_role("button", name="Run", exact=True)
        run.wait_for(timeout=120_000)
        page.wait_for_selector(".js-plotly-plot .main-svg", timeout=120_000)
        run.click()
    for page in pages:
        page.wait_for_function(f"({FIRST_CHART_POINTS})() > 0", timeout=120_000, polling=200)
    return contexts


def run_states(runs_dir: str | os.PathLike) -> list[str]:
    """The status of every run folder in ``runs_dir`` (from its status.json)."""
    import json

    states = []
    for folder in Path(runs_dir).iterdir():
        if not folder.is_dir():  # the server's log lies there too
            continue
        try:
            states.append(json.loads((folder / "status.json").read_text())["status"])
        except (OSError, ValueError, KeyError, TypeError):  # being written, or not a run
            states.append("unknown")
    return states


def wait_runs_ended(runs_dir: str | os.PathLike, count: int, timeout: float = 300, poll: float = 1.0) -> None:
    """Until ``count`` run folders exist and none is running or paused (server-side evidence)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        states = run_states(runs_dir)
        if len(states) >= count and not any(s in ("running", "paused", "unknown") for s in states):
            return
        time.sleep(poll)
    raise TimeoutError(f"the runs did not end within {timeout} s: {run_states(runs_dir)}")
