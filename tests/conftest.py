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
