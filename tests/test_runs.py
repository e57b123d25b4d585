"""The run record: written as it grows, read back the same way, survives a kill."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from geoviz.record.runs import RunWriter, SnapshotBudget, list_runs, read_run, zip_run

ROOT = Path(__file__).resolve().parents[1]


def test_writer_round_trip(runs_dir):
    writer = RunWriter(runs_dir, "sparsify", {"solver": {"eps": 0.05}, "seed": 3})
    for step in range(1, 6):
        writer.append({"step": step, "test_accuracy": 0.5 + step / 100, "beta": float("nan")})
        writer.snapshot(step, torch.full((10,), float(step)))
    writer.write_summary({"accuracy": 0.9})
    writer.close("finished", "done")
    run = read_run(writer.dir)
    assert run.state == "finished"
    assert run.config["seed"] == 3 and run.config["application"] == "sparsify"
    assert list(run.table["step"]) == [1, 2, 3, 4, 5]
    assert run.table["beta"].isna().all()
    steps, ws = run.snapshots()
    assert steps == [1, 2, 3, 4, 5] and torch.equal(ws[:, 0], torch.arange(1.0, 6.0))
    assert run.summary["accuracy"] == 0.9
    assert [r.name for r in list_runs(runs_dir)] == [writer.dir.name]
    assert zip_run(writer.dir, runs_dir).stat().st_size > 0


def test_snapshot_budget_thins_evenly_and_stays_bounded():
    budget = SnapshotBudget(bytes_per_snapshot=100, budget_bytes=1000)  # 10 snapshots
    kept = []
    for step in range(0, 200):
        if budget.wants(step):
            for s in budget.add(step):
                kept.remove(s)
            kept.append(step)
        assert len(kept) <= 10
    gaps = {b - a for a, b in zip(kept[1:], kept[2:])}
    assert len(gaps) == 1, kept  # evenly spaced after the start
    assert kept[-1] >= 160


def test_cut_line_and_dead_process_read_as_interrupted(runs_dir):
    writer = RunWriter(runs_dir, "sparsify", {})
    writer.append({"step": 1, "x": 1.0})
    writer.append({"step": 2, "x": 2.0})
    with open(writer.dir / "steps.jsonl", "a") as fh:
        fh.write('{"step": 3, "x"')  # a line cut by a kill
    status = json.loads((writer.dir / "status.json").read_text())
    status["pid"] = 2**22 + 12345  # no such process
    (writer.dir / "status.json").write_text(json.dumps(status))
    run = read_run(writer.dir)
    assert run.state == "interrupted"
    assert list(run.table["step"]) == [1, 2]


def test_killed_cli_run_keeps_every_finished_step(runs_dir):
    """A real CLI subprocess, killed with SIGKILL half-way; the record holds every finished step."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "geoviz", "sparsify", "--steps", "100000", "--tolerance", "1e-6",
           "--eval-every", "5", "--out", str(runs_dir), "--quiet"]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240
        rows = 0
        while time.time() < deadline and rows < 30:
            time.sleep(0.5)
            files = list(runs_dir.glob("*/steps.jsonl"))
            rows = len(files[0].read_text().splitlines()) if files else 0
        assert rows >= 30, proc.stderr.read().decode() if proc.poll() is not None else "no steps written"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    (run_dir,) = list(runs_dir.iterdir())
    written = [json.loads(line) for line in (run_dir / "steps.jsonl").read_text().splitlines() if line.endswith("}")]
    run = read_run(run_dir)
    assert run.state == "interrupted"
    assert len(run.table) >= len(written) >= 30
    assert list(run.table["step"][: len(written)]) == list(range(1, len(written) + 1))
    assert run.snapshot_steps()  # the trajectory so far is there too


def test_sigterm_cli_run_says_interrupted(runs_dir):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "geoviz", "sparsify", "--steps", "100000", "--tolerance", "1e-6",
           "--out", str(runs_dir), "--quiet"]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 240  # a step on disk first: the file is made before the first step
    while time.time() < deadline and not any(f.stat().st_size for f in runs_dir.glob("*/steps.jsonl")):
        time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "interrupted" in err.decode()
    (run_dir,) = list(runs_dir.iterdir())
    run = read_run(run_dir)
    assert run.state == "interrupted" and len(run.table) > 0
    assert isinstance(run.table, pd.DataFrame) and (run_dir / "steps.parquet").exists()


def test_runs_table_shows_each_applications_key_figure(runs_dir):
    from geoviz.figures.plots import runs_table

    summaries = {
        "sparsify": {"accuracy": 0.96, "sparsity": 0.9},
        "continual": {"geodesic": {"task1": 0.9, "task2": 0.98, "average": 0.94}},
        "connect": {"geodesic": {"barrier": 0.03, "min_accuracy": 0.95}},
    }
    for application, summary in summaries.items():
        writer = RunWriter(runs_dir, application, {}, name=f"run-{application}")
        writer.append({"step": 1})
        writer.write_summary(summary)
        writer.close("finished")
    table = runs_table(list_runs(runs_dir)).set_index("application")
    assert table.loc["sparsify", "test accuracy"] == 0.96 and table.loc["sparsify", "sparsity"] == 0.9
    assert table.loc["continual", "test accuracy"] == 0.94
    assert table.loc["connect", "test accuracy"] == 0.95 and table.loc["connect", "barrier"] == 0.03


def test_snapshots_read_back_as_named_parameters(runs_dir):
    from geoviz.core.metric import FlatParams
    from geoviz.setups.models import build_model

    torch.manual_seed(0)
    model = build_model("mlp", (1, 8, 8), 10)
    layout = FlatParams.of(model)
    w = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    writer = RunWriter(runs_dir, "sparsify", {})
    writer.save_weights("start", layout.unflatten(w))
    writer.snapshot(7, 2 * w)
    writer.close("finished")
    run = read_run(writer.dir)
    # safetensors sorts names (net.1.bias before net.1.weight); the model's order is kept
    assert list(run.weights("start")) == list(layout.names)
    steps, snapshots = run.snapshots()
    params = run.unflatten(snapshots[0])
    assert steps == [7] and list(params) == list(layout.names)
    for name, p in model.named_parameters():
        torch.testing.assert_close(params[name], 2 * p.detach())
