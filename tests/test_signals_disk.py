"""Issue 14: signals outside the path loop, a live run's heartbeat in every phase, a full
disk, and a path whose evaluated loss explodes while its objective looks fine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from geoviz.record import runs
from geoviz.record.runs import RunWriter, read_run

ROOT = Path(__file__).resolve().parents[1]

# a CLI run in which one phase is slowed down, so that a signal surely lands in it;
# the phase writes a marker file when it begins. SIGINT gets Python's own handler, as at a
# terminal: a suite started in the background (`cmd &` in a script) ignores SIGINT, and
# so would this child, which then slept on to the test's timeout
DRIVER = """
import signal, sys, time, pathlib
signal.signal(signal.SIGINT, signal.default_int_handler)
import geoviz.{module} as m
marker = pathlib.Path(sys.argv[1])
original = m.{name}
def slow(*args, **kwargs):
    marker.write_text("in")
    time.sleep(60)
    return original(*args, **kwargs)
m.{name} = slow
from geoviz.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _signal_in_phase(tmp_path, module, name, argv, sig=signal.SIGTERM):
    marker = tmp_path / "marker"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GEOVIZ_CACHE": str(tmp_path / "cache")}
    code = DRIVER.format(module=module, name=name)
    proc = subprocess.Popen([sys.executable, "-c", code, str(marker), *argv], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 180
        while not marker.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert marker.exists(), proc.communicate()[1]
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_the_baselines_ends_stopped_with_a_message(tmp_path, sig):
    out = tmp_path / "runs"
    code, err = _signal_in_phase(tmp_path, "applications.sparsify", "finetune_pruned",
                                 ["sparsify", "--steps", "3", "--quiet", "--out", str(out)], sig)
    assert code == 1 and "Traceback" not in err, err
    assert "stopped by a signal while the baselines were computed" in err
    (run_dir,) = out.iterdir()
    run = read_run(run_dir)
    assert run.state == "stopped" and "baselines" in run.message
    assert list(run.table["step"]) == [1, 2, 3]


def test_sigterm_while_training_the_start_network_says_so_and_leaves_no_temp_file(tmp_path):
    code, err = _signal_in_phase(tmp_path, "setups.training", "_fit",
                                 ["sparsify", "--steps", "3", "--quiet", "--out", str(tmp_path / "runs")])
    assert code == 130 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "stopped by a signal" in lines[0] and "start network" in lines[0]
    leftovers = [p.name for p in (tmp_path / "cache" / "networks").rglob("*") if p.is_file() and not p.name.endswith(".lock")]  # (datasets/ holds the digits split, made whole)
    assert leftovers == []
    assert not list((tmp_path / "runs").iterdir())


def test_the_heartbeat_beats_in_every_phase_and_stops_at_the_end(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "HEARTBEAT_EVERY", 0.2)
    writer = RunWriter(tmp_path, "sparsify", {})
    writer.append({"step": 1})
    first = json.loads((writer.dir / "status.json").read_text())["updated"]
    time.sleep(2.5)  # no step: as while the baselines run
    beat = json.loads((writer.dir / "status.json").read_text())
    assert beat["status"] == "running" and beat["updated"] > first + 0.5
    writer.close("finished", "done")
    time.sleep(1.5)
    final = json.loads((writer.dir / "status.json").read_text())
    assert final["status"] == "finished" and final["message"] == "done"


def test_a_temp_file_left_by_a_kill_is_cleaned_when_the_run_is_read(tmp_path):
    writer = RunWriter(tmp_path, "sparsify", {})
    writer.append({"step": 1})
    writer.close("finished")
    for name in (".steps.4242.tmp.parquet", "weights/.final.tmp", ".status.json.4242.ab12cd.tmp"):
        (writer.dir / name).write_bytes(b"half")
    assert read_run(writer.dir).state == "finished"
    assert not [p for p in writer.dir.rglob(".*") if "tmp" in p.name]


def test_a_path_whose_evaluated_loss_explodes_is_diverged_not_finished(tmp_path, capsys):
    from geoviz import cli

    code = cli.main(["sparsify", "--metric", "fisher", "--eps", "50", "--quiet", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 3, err
    assert "test loss rose to" in err and "try a smaller eps" in err
    (run_dir,) = tmp_path.iterdir()
    assert read_run(run_dir).state == "diverged"


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


def test_a_full_disk_is_one_sentence_and_the_status_is_not_left_running(tmp_path):
    disk = tmp_path / "tiny"
    if not _mount_tmpfs(disk, "2m"):
        pytest.skip("needs root to mount a 2 MB tmpfs")
    try:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        done = subprocess.run([sys.executable, "-m", "geoviz", "sparsify", "--steps", "400", "--quiet", "--out", str(disk)],
                              env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode in (1, 2) and "Traceback" not in done.stderr, done.stderr
        assert len(lines) == 1 and "No space left on device" in lines[0], lines
        (run_dir,) = disk.iterdir()
        status = json.loads((run_dir / "status.json").read_text())
        assert status["status"] == "failed" and "No space left" in status["message"]
        assert read_run(run_dir).state == "failed"
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)
