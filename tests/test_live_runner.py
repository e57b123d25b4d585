"""The after-path phase of a runner (issue 13, item 1.3), without a browser: every
baseline shows its progress, Stop skips the baselines not yet done while the path's
figures are kept, and the summary (and the run record) says which were skipped."""

from __future__ import annotations

import json
import shutil
import threading

import pytest
import torch

from geoviz.applications.connect import SOLVER_DEFAULTS, ConnectConfig, connect_runner
from geoviz.applications.continual import ContinualConfig, continual_runner, load_continual
from geoviz.core.engine import SolverConfig
from geoviz.setups.problem import SetupConfig, load_problem
from geoviz.record.runner import PathRunner
from geoviz.applications.sparsify import SparsifyConfig, sparsify_runner


@pytest.fixture(scope="module")
def digits():
    return load_problem(SetupConfig(dataset="digits", model="mlp", seed=0))


def _stop_when_baselines_start(runner: PathRunner) -> list[dict]:
    """Press Stop the moment the path has ended (when the first part of the summary is
    published, just before the first baseline); returns what was published by then."""
    published, original = [], runner.publish

    def publish_then_stop(**parts):
        original(**parts)
        published.append(dict(runner.partial))
        runner.stop()

    runner.publish = publish_then_stop
    return published


def test_baseline_reports_progress_and_stop_skips_it():
    """The generic mechanism: progress is seen from another thread, Stop raises inside
    the baseline's loop, the baseline is listed as skipped and returns None."""
    runner = PathRunner.__new__(PathRunner)  # only the after-path parts are used here
    runner._stop, runner.abandon_after, runner.progress, runner.skipped = False, None, {}, []
    seen, go_on = [], threading.Event()

    def work(report):
        for i in range(100):
            report(i, 100)
            if i == 50:
                seen.append(runner.progress["slow"])
                go_on.wait(5)
        return "done"

    assert runner.baseline("quick", lambda report: 42) == 42 and runner.progress["quick"] == 1.0
    thread = threading.Thread(target=lambda: seen.append(runner.baseline("slow", work)))
    thread.start()
    while not seen:
        pass
    runner._stop = True
    go_on.set()
    thread.join(5)
    assert seen == [0.5, None]
    assert runner.skipped == ["slow"] and "slow" not in runner.progress


def test_sparsify_stop_during_the_baselines_keeps_the_path(digits, tmp_path):
    runner = sparsify_runner(digits, SparsifyConfig(steps=15, eval_every=5), SolverConfig(), str(tmp_path))
    published = _stop_when_baselines_start(runner)
    assert runner.run() == "stopped"
    assert "skipped: finetune" in runner.message
    summary = runner.summary
    assert published[0]["baselines"] == {"one_shot": summary["baselines"]["one_shot"]}  # drawn before fine-tuning
    assert summary["skipped"] == ["finetune", "distill"] and summary["baselines"]["finetune"] is None
    assert summary["steps"] == 15 and 0 < summary["accuracy"] <= 1
    on_disk = json.loads((runner.writer.dir / "summary.json").read_text())
    assert on_disk["skipped"] == ["finetune", "distill"]
    assert json.loads((runner.writer.dir / "status.json").read_text())["status"] == "stopped"
    assert len((runner.writer.dir / "steps.jsonl").read_text().splitlines()) == 15


def test_continual_baselines_each_published_when_ready(tmp_path):
    problem, sequence = load_continual(SetupConfig(), ContinualConfig(steps=10))
    runner = continual_runner(problem, sequence, ContinualConfig(steps=10, eval_every=5), SolverConfig(eps=0.1),
                              str(tmp_path), baselines=("finetune", "ewc"))
    published, original = [], runner.publish

    def publish_and_stop_after_the_first(**parts):
        original(**parts)
        published.append(sorted(runner.partial.get("baselines", {})))
        if parts.get("baselines"):  # fine-tune is ready: Stop before EWC
            runner.stop()

    runner.publish = publish_and_stop_after_the_first
    assert runner.run() == "stopped"
    assert published == [[], ["finetune"]]
    assert runner.summary["skipped"] == ["ewc"] and list(runner.summary["baselines"]) == ["finetune"]
    assert (runner.writer.dir / "weights" / "finetune.safetensors").exists()
    assert not (runner.writer.dir / "weights" / "ewc.safetensors").exists()


def test_connect_draws_the_line_at_once_and_stop_skips_the_bezier(digits, tmp_path):
    runner = connect_runner(digits, ConnectConfig(steps=10, eval_every=5, grid=3), SolverConfig(**SOLVER_DEFAULTS),
                            str(tmp_path))
    line = runner.partial["profiles"]["line"]  # before the first step
    assert runner.path.step == 0 and len(line["train_loss"]) == len(line["length"]) > 2
    assert "line" in runner.curves
    _stop_when_baselines_start(runner)
    assert runner.run() == "stopped"
    summary = runner.summary
    assert summary["skipped"] == ["bezier", "bezier_inputs"] and summary["bezier"] is None
    assert summary["line"]["barrier"] > 0 and summary["geodesic"]["length"] > 0
    assert set(summary["profiles"]) == {"geodesic", "line"}
    # the landscape still draws: its plane falls back on the geodesic's midpoint
    task = runner.task
    assert task.third_point(runner.curves).shape == task.w_a.shape


def test_an_ended_runner_reads_its_trajectory_back_from_disk(digits, tmp_path):
    """Issue 14 (memory): once a run has ended with its record on disk, the runner (which a
    page and the server's registry keep) holds no copy of its trajectory; trajectory()
    gives the same steps and weights back from the run folder."""
    runner = sparsify_runner(digits, SparsifyConfig(steps=30, eval_every=10), SolverConfig(), str(tmp_path), baselines=False)
    held, release = {}, runner._release_trajectory

    def remember_then_release():
        held["steps"], held["w"] = runner.trajectory()
        release()

    runner._release_trajectory = remember_then_release
    assert runner.run() in ("finished", "stopped")
    assert runner._trajectory == {} and len(held["steps"]) > 10
    steps, w = runner.trajectory()
    assert steps == held["steps"] and torch.equal(w, held["w"])
    # the folder's snapshots gone (deleted from the Runs page): the final point, not an error
    shutil.rmtree(runner.writer.dir / "snapshots")
    steps, w = runner.trajectory()
    assert steps == [runner.path.step] and w.shape == (1, runner.path.w.numel())
