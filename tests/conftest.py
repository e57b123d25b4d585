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


@pytest.fixture
def runs_dir(tmp_path):
    path = tmp_path / "runs"
    path.mkdir()
    return path
