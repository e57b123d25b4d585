"""Shared fixtures: a private network cache and runs folder per test session."""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Start networks are cached across test runs in the repo (git-ignored), so a second
# `pytest` does not retrain; GEOVIZ_CACHE set by the caller wins.
os.environ.setdefault("GEOVIZ_CACHE", str(ROOT / ".geoviz-cache"))

import torch  # noqa: E402

# The networks under test are small: one thread is fastest, and two threads on a
# busy 2-core machine spin against each other (20x slower seen here).
torch.set_num_threads(1)


@pytest.fixture
def runs_dir(tmp_path):
    path = tmp_path / "runs"
    path.mkdir()
    return path


# With pytest-xdist (`-n 2 --dist loadgroup`, as `make test` runs it), a file's tests stay on
# one worker (its module fixtures are built once), and the files that drive a real server
# in Chromium or start Ray form one group that runs one after another: a page's timings
# then compete with at most one other test, and no two Ray clusters start at once.
_SERIAL_FILES = ("test_browser", "test_sweep")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    if not getattr(config.option, "loadgroup", False):  # set on xdist's workers under --dist loadgroup
        return
    for item in items:
        name = item.path.stem
        item.add_marker(pytest.mark.xdist_group("serial" if name.startswith(_SERIAL_FILES) else name))
