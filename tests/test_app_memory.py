"""Issue 14: server memory comes back after the sessions end. Several sessions start
paths and go away (tabs closed mid-run); once the paths have ended, the process's
resident memory is within 20% of what it was warm."""

from __future__ import annotations

import gc
import os
import time
from pathlib import Path

import torch
from streamlit.testing.v1 import AppTest

import pages._safe as safe

ROOT = Path(__file__).resolve().parents[1]


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096


def _session_runs(steps: int) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.query_params.update({"steps": str(steps), "sparsity": "0.9", "eval_every": "5"})
    at.run()
    at.switch_page("pages/sparsify.py")
    at.run()
    at.button(key="sparsify:Run").click()
    at.run()
    assert not at.exception, at.exception
    return at


def _wait_all_ended(timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and any(r.alive for r in list(safe._RUNNERS)):
        time.sleep(0.5)
    assert not any(r.alive for r in list(safe._RUNNERS))
    time.sleep(2.5)  # the release thread polls every second


def test_memory_returns_within_20_percent_of_warm_after_sessions_end(runs_dir, monkeypatch):
    monkeypatch.setenv("GEOVIZ_RUNS", str(runs_dir))
    monkeypatch.setattr(safe, "MAX_SESSION_RUNS", 10)
    monkeypatch.setattr(safe, "MAX_RUNS", 10)
    if os.environ.get("GEOVIZ_TEST_NO_RELEASE"):  # the figure without the release, for comparison
        monkeypatch.setattr(safe, "release_memory", lambda: None)
    torch.set_num_threads(1)
    warm = _session_runs(5)  # imports, data, start network, caches: the warm server
    _wait_all_ended()
    del warm
    gc.collect()
    before = _rss()
    sessions = [_session_runs(100) for _ in range(3)]
    during = _rss()
    del sessions  # the tabs close while their paths run
    _wait_all_ended()
    after = _rss()
    print(f"RSS warm {before / 2**20:.0f} MB, 3 runs {during / 2**20:.0f} MB, after {after / 2**20:.0f} MB")
    assert after <= 1.2 * before, (before, during, after)
