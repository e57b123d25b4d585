"""Issue 14: the runs folder on a disk budget; the Runs page shows the space used and
deletes a run after a confirmation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from geoviz.errors import ConfigError
from geoviz.record import disk
from geoviz.record.runs import RunWriter, list_runs, read_run

ROOT = Path(__file__).resolve().parents[1]
SNAPSHOT = 25_000  # float32 weights: 100 kB a snapshot


def _run(root: Path, name: str, status: str = "finished", snapshots: int = 20) -> Path:
    writer = RunWriter(root, "sparsify", {}, name=name)
    for step in range(snapshots):
        writer.append({"step": step + 1})
        writer.snapshot(step, torch.full((SNAPSHOT,), float(step)))
    if status == "finished":
        writer.close("finished", "done")
    return writer.dir


def test_budget_thins_the_oldest_finished_runs_first_and_never_a_running_one(tmp_path, monkeypatch):
    monkeypatch.setenv("GEOVIZ_RUNS_BUDGET_MB", "0")  # no thinning while the folder is built
    old, middle = _run(tmp_path, "1-old"), _run(tmp_path, "2-middle")
    live = _run(tmp_path, "3-live", status="running")
    before = {p.name: disk.folder_bytes(p) for p in (old, middle, live)}
    total = sum(before.values())
    budget = total - 500_000  # about 5 snapshots too many: halving the oldest run's is enough
    freed = disk.enforce_budget(tmp_path, budget=budget)
    after = {p.name: disk.folder_bytes(p) for p in (old, middle, live)}
    assert sum(after.values()) <= budget and freed == total - sum(after.values())
    assert after["3-live"] == before["3-live"]  # a running run is never thinned
    assert after["1-old"] < before["1-old"] and after["2-middle"] == before["2-middle"]  # the oldest first
    steps = read_run(old).snapshot_steps()
    assert steps[0] == 0 and steps[-1] == 19 and len(steps) < 20  # first and last kept, evenly thinned
    assert list(read_run(old).table["step"]) == list(range(1, 21))  # steps are never thinned
    disk.enforce_budget(tmp_path, budget=budget - 1_500_000)  # more: each finished run halves, oldest first
    again = {p.name: len(read_run(p).snapshot_steps()) for p in (old, middle, live)}
    assert again["3-live"] == 20 and again["1-old"] <= again["2-middle"] < 20


def test_a_new_run_keeps_the_folder_on_its_budget(tmp_path, monkeypatch):
    monkeypatch.setenv("GEOVIZ_RUNS_BUDGET_MB", "0")
    for i in range(4):
        _run(tmp_path, f"{i}-run")
    used = disk.usage(list_runs(tmp_path)).used
    monkeypatch.setenv("GEOVIZ_RUNS_BUDGET_MB", str(used / 2 / 2**20))
    _run(tmp_path, "9-new", snapshots=1)
    runs = list_runs(tmp_path)
    assert disk.usage(runs).used <= used / 2 + 2 * SNAPSHOT * 4
    assert all(len(r.snapshot_steps()) >= 2 for r in runs if r.name != "9-new")


def test_thinning_stops_at_first_and_last_snapshot(tmp_path, monkeypatch):
    monkeypatch.setenv("GEOVIZ_RUNS_BUDGET_MB", "0")
    run = _run(tmp_path, "1-run")
    disk.enforce_budget(tmp_path, budget=1)
    assert read_run(run).snapshot_steps() == [0, 19]


def test_bad_budget_setting_and_bad_deletes_are_sentences(tmp_path, monkeypatch):
    monkeypatch.setenv("GEOVIZ_RUNS_BUDGET_MB", "lots")
    with pytest.raises(ConfigError, match="GEOVIZ_RUNS_BUDGET_MB"):
        disk.budget_bytes()
    monkeypatch.setenv("GEOVIZ_RUNS_BUDGET_MB", "0")
    live = _run(tmp_path, "live", status="running", snapshots=1)
    with pytest.raises(ConfigError, match="still running"):
        disk.delete_run(tmp_path, "live")
    for bad in ("..", "", "../x", "nope"):
        with pytest.raises(ConfigError):
            disk.delete_run(tmp_path, bad)
    assert live.is_dir()


def test_runs_page_shows_space_and_deletes_after_confirmation(tmp_path, monkeypatch):
    monkeypatch.setenv("GEOVIZ_RUNS_BUDGET_MB", "0")
    monkeypatch.setenv("GEOVIZ_RUNS", str(tmp_path))
    _run(tmp_path, "1-keep", snapshots=2)
    gone = _run(tmp_path, "2-delete", snapshots=2)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.run()
    at.switch_page("pages/runs.py")
    at.run()
    assert any("Space used" in c.value and "in 2 runs" in c.value for c in at.caption)
    at.selectbox(key="runs:open").set_value("2-delete").run()
    assert at.button(key="runs:delete").disabled  # not before the confirmation
    at.checkbox(key="runs:sure:2-delete").check().run()
    at.button(key="runs:delete").click().run()
    assert not at.exception, at.exception
    assert not gone.exists() and (tmp_path / "1-keep").is_dir()
    assert at.selectbox(key="runs:open").options == ["1-keep"]
