"""Sweeps on Ray Tune (digits, tiny step budgets, Ray capped at 2 CPUs).

The in-process tests share one local Ray (the module fixture); the kill test and the
cluster test run the CLI in a subprocess with a Ray of its own.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from geoviz.cli import main
from geoviz.record.sweep import SweepSpec, check_address, run_sweep
from geoviz.record.sweep_record import read_sweep, summarize
from geoviz.record.runs import list_runs, read_run

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--steps", "20", "--eval-every", "5"]  # a short path: about a second of stepping
PAYLOAD_KEYS = {"sweep_dir", "trials", "finished", "failed", "stopped_early", "best", "table", "wall_seconds"}


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, object_store_memory=128 * 2**20, include_dashboard=False,
             log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def _assert_row_is_its_run(row: dict) -> None:
    """A finished row's figures are those of its run folder's summary."""
    run = read_run(row["run_dir"])
    s = run.summary
    assert run.state == "finished" and run.config["setup"]["seed"] == row["seed"]
    assert len(run.table) == row["steps_taken"] == s["steps"]
    assert row["accuracy"] == s["accuracy"] and row["reached_sparsity"] == s["sparsity"]
    assert row["pruned_accuracy"] == s["pruned_accuracy"]
    assert row["finetune"] == s["baselines"]["finetune"] and row["one_shot"] == s["baselines"]["one_shot"]
    assert row["gradient_evaluations"] == s["gradient_evaluations"]


def test_four_trial_sweep_records_every_trial(local_ray, runs_dir, capsys):
    rc = main(["sweep", "sparsify", "--grid", "damping=1e-4,1e-2", "--seeds", "2", *FAST,
               "--workers", "2", "--out", str(runs_dir), "--json", "--quiet"])
    out = capsys.readouterr().out
    payload = _last_json(out)
    assert rc == 0 and set(payload) == PAYLOAD_KEYS
    assert (payload["trials"], payload["finished"], payload["failed"], payload["stopped_early"]) == (4, 4, 0, 0)
    table = payload["table"]
    assert sorted((r["damping"], r["seed"]) for r in table) == [(1e-4, 0), (1e-4, 1), (1e-2, 0), (1e-2, 1)]
    for row in table:
        assert row["status"] == "finished"
        _assert_row_is_its_run(row)
        assert read_run(row["run_dir"]).config["solver"]["damping"] == row["damping"]
        assert json.loads((Path(row["run_dir"]) / "sweep.json").read_text())["sweep_dir"] == payload["sweep_dir"]
    # /runs lists the four trials (and not the sweep folder)
    assert sorted(r.name for r in list_runs(runs_dir)) == sorted(Path(r["run_dir"]).name for r in table)
    # best: the mean and sample sd over the two seeds, computed here from the rows, of the
    # accuracy hard-pruned to the target (20 steps end short of it: as is, the network is not sparse)
    assert all(r["reached_sparsity"] < 0.9 for r in table)
    by_damping = {d: [r["pruned_accuracy"] for r in table if r["damping"] == d] for d in (1e-4, 1e-2)}
    best = max(by_damping, key=lambda d: np.mean(by_damping[d]))
    assert payload["best"]["settings"] == {"damping": best}
    assert payload["best"]["mean"] == pytest.approx(np.mean(by_damping[best]))
    assert payload["best"]["sd"] == pytest.approx(np.std(by_damping[best], ddof=1))
    best_line = out.splitlines()[2]  # the header, the table's head, the best setting
    assert best_line.split()[0] == f"{best:g}" or float(best_line.split()[0]) == best
    assert f"{np.mean(by_damping[best]):.4f} ± {np.std(by_damping[best], ddof=1):.4f} (2)" in best_line
    record = read_sweep(payload["sweep_dir"])
    assert record.state == "finished" and list(record.table["status"]) == ["finished"] * 4
    # each trial's set-up and its wait on Tune's reports are parts of its wall time
    times = record.table[["wall_seconds", "setup_seconds", "report_seconds"]]
    assert (times["setup_seconds"] > 0).all() and (times["report_seconds"] >= 0).all()
    assert (times["setup_seconds"] + times["report_seconds"] < times["wall_seconds"]).all()


def test_a_diverging_trial_is_marked_and_the_others_finish(local_ray, runs_dir):
    spec = SweepSpec("sparsify", tuple(FAST), grid={"eps": ["0.05", "1e5"]}, workers=2)
    record, _ = run_sweep(spec, runs_dir)
    rows = {r["eps"]: r for r in record.table.to_dict("records")}
    assert rows[0.05]["status"] == "finished"
    _assert_row_is_its_run(rows[0.05])
    bad = rows[1e5]
    assert bad["status"] == "diverged" and bad["message"].startswith("The path diverged at step")
    assert read_run(bad["run_dir"]).state == "diverged"
    assert summarize(record.table, ["eps"], "accuracy").iloc[0]["eps"] == 0.05


def test_asha_stops_a_hopeless_setting_early(local_ray, runs_dir):
    # damping 100 with eps 2 is close to gradient descent on the mask: accuracy 0.76 at
    # step 5 and 0.43 at step 10, where damping 1e-4 keeps about 0.95; one worker, so
    # the good setting reaches the first rung (step 10) first
    # (20 steps: at eps 2 even damping 1e-4 collapses by step 40, test accuracy 0.39, which
    # the engine now calls a divergence)
    spec = SweepSpec("sparsify", ("--steps", "20", "--eval-every", "5", "--eps", "2"),
                     grid={"damping": ["1e-4", "100"]}, objective="accuracy", scheduler="asha", grace=10, workers=1)
    record, _ = run_sweep(spec, runs_dir)
    rows = {r["damping"]: r for r in record.table.to_dict("records")}
    assert rows[1e-4]["status"] == "finished" and rows[1e-4]["steps_taken"] == 20
    hopeless = rows[100.0]
    assert hopeless["status"] == "stopped_early", hopeless
    assert 10 <= hopeless["last_step"] < 20 and "ASHA" in hopeless["message"]
    run = read_run(hopeless["run_dir"])
    assert run.state == "stopped" and len(run.table) < 20


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--grid", "dampin=1e-4,1e-3"], "Unknown setting 'dampin'"),
        (["--grid", "damping="], "has no values"),
        (["--grid", "damping=1e-4,-1"], "damping must be a positive number"),
        (["--grid", "sparsity=0.5,1.5"], "sparsity must be strictly between 0 and 1"),
        (["--grid", "damping=1e-4", "--seeds", "0"], "--seeds must be at least 1"),
        (["--grid", "damping=abc"], "invalid float value"),
        (["--range", "damping=1e-3:1e-5:log", "--search", "random"], "low end must be below"),
        (["--grid", "damping=1e-4", "--objective", "barrier"], "Unknown objective 'barrier'"),
    ],
)
def test_bad_specifications_say_one_sentence_before_any_trial(flags, says, runs_dir, capsys):
    rc = main(["sweep", "sparsify", *flags, "--out", str(runs_dir)])
    err = capsys.readouterr().err
    assert rc == 2 and says in err and len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert not (runs_dir / "sweeps").exists() and not list_runs(runs_dir)


def test_an_unreachable_address_is_one_sentence(runs_dir, capsys):
    port = _free_port()
    t0 = time.time()
    rc = main(["sweep", "sparsify", "--grid", "damping=1e-4", "--address", f"127.0.0.1:{port}", "--out", str(runs_dir)])
    err = capsys.readouterr().err
    assert rc == 2 and f"Cannot reach a Ray cluster at 127.0.0.1:{port}" in err and len(err.strip().splitlines()) == 1
    assert time.time() - t0 < 15 and not (runs_dir / "sweeps").exists()
    with pytest.raises(Exception, match="HOST:PORT"):
        check_address("nonsense")


def _cli(*args, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "geoviz", "sweep", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_a_killed_sweep_keeps_finished_trials_and_the_rest_read_interrupted(runs_dir):
    proc = _cli("sparsify", "--grid", "damping=1e-4,1e-3,1e-2,1e-1", *FAST, "--workers", "1", "--out", str(runs_dir), "--quiet")
    try:
        deadline, record = time.time() + 300, None
        while time.time() < deadline and proc.poll() is None:
            sweeps = list((runs_dir / "sweeps").glob("*/results.parquet"))
            if sweeps:
                record = read_sweep(sweeps[0].parent)
                if (record.table["status"] == "finished").any():
                    break
            time.sleep(0.3)
        assert proc.poll() is None, proc.communicate()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    record = read_sweep(record.path)
    assert record.state == "interrupted"
    states = list(record.table["status"])
    assert len(states) == 4 and "finished" in states
    assert set(states) <= {"finished", "interrupted"} and "interrupted" in states
    for row in record.table.to_dict("records"):
        if row["status"] == "finished":
            _assert_row_is_its_run(row)


def test_a_sweep_on_a_ray_cluster_through_address(runs_dir):
    port = _free_port()
    ray_cli = Path(sys.executable).parent / "ray"
    # --block: this process owns the node's processes and stops them when it is stopped
    head = subprocess.Popen(
        [str(ray_cli), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
         "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 120
        while True:
            try:
                check_address(f"127.0.0.1:{port}", timeout=1.0)
                break
            except Exception:
                assert time.time() < deadline and head.poll() is None, "ray start --head did not come up"
                time.sleep(0.5)
        proc = _cli("sparsify", "--grid", "damping=1e-4,1e-3", *FAST, "--address", f"127.0.0.1:{port}",
                    "--out", str(runs_dir), "--json", "--quiet")
        out, err = proc.communicate(timeout=400)
        assert proc.returncode == 0, err[-2000:]
        payload = _last_json(out)
        assert payload["finished"] == 2
        for row in payload["table"]:
            _assert_row_is_its_run(row)
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()


def test_sweep_panel_on_the_sparsify_page_fills_in_as_trials_finish(runs_dir, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("GEOVIZ_RUNS", str(runs_dir))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    at.switch_page("pages/sparsify.py")
    at.run()
    for name, value in {"steps": 20, "eval_every": 5}.items():
        at.number_input(key=f"sparsify:{name}").set_value(value)
    at.multiselect(key="sparsify:sweep:names").set_value(["damping"]).run()
    at.text_input(key="sparsify:sweep:values:damping").set_value("1e-4,-1").run()
    at.button(key="sparsify:sweep:start").click().run()
    assert [e.value for e in at.error] == ["damping must be a positive number (rho in mu = rho * lambda_max), got -1.0 "
                                           "(in the trial with damping=-1)."]
    assert "sparsify:sweep" not in at.session_state
    at.text_input(key="sparsify:sweep:values:damping").set_value("1e-4,1e-2").run()
    at.number_input(key="sparsify:sweep:seeds").set_value(1).run()
    at.button(key="sparsify:sweep:start").click().run()
    sweep = at.session_state["sparsify:sweep"]
    try:
        seen = set()
        deadline = time.time() + 400
        while time.time() < deadline:
            at.run()
            assert not at.exception, at.exception
            alive, record = sweep.alive, sweep.record()
            if record is not None:
                if alive:  # what the page showed while the sweep ran
                    seen.add(int((record.table["status"] == "finished").sum()))
                else:
                    break
            time.sleep(1.0)
        assert not sweep.alive and sweep.proc.returncode == 0, sweep.error()
        at.run()
        table = next(d.value for d in at.dataframe if "damping" in d.value)
        assert sorted(table["damping"]) == [1e-4, 1e-2]
        runs = {r["damping"]: r for r in sweep.record().table.to_dict("records")}
        assert table.set_index("damping").loc[1e-4, "pruned_accuracy"] == f"{runs[1e-4]['pruned_accuracy']:.4f} (1)"
        assert table.set_index("damping").loc[1e-4, "accuracy"] == f"{runs[1e-4]['accuracy']:.4f} (1)"
        assert any("mean ± sd over seeds" in m.value or "trials done" in m.value for m in at.markdown)
        assert seen and min(seen) < 2, seen  # the page showed the sweep before its end
    finally:
        sweep.stop()


def test_random_search_plans_draws_inside_the_ranges_repeated_over_seeds():
    spec = SweepSpec("sparsify", ("--seed", "3"), grid={"metric": ["output", "fisher"]},
                     ranges={"damping": (1e-5, 1e-2, True), "cg-iterations": (5, 20, False)},
                     seeds=2, search="random", samples=6, sample_seed=7)
    plan = spec.plan()
    assert plan["planned"] == 12 and [t["seed"] for t in plan["trials"][:2]] == [3, 4]
    draws = [t["values"] for t in plan["trials"][::2]]
    assert all(1e-5 <= d["damping"] <= 1e-2 and 5 <= d["cg-iterations"] <= 20 for d in draws)
    assert all(isinstance(d["cg-iterations"], int) and d["metric"] in ("output", "fisher") for d in draws)
    assert len({d["damping"] for d in draws}) == 6  # a fresh draw per sample, the same for its seeds
    assert [t["values"] for t in plan["trials"][1::2]] == draws
    assert SweepSpec(**{**spec.__dict__}).plan()["trials"] == plan["trials"]  # the draw is seeded
    with pytest.raises(Exception, match="log range needs a positive low end"):
        SweepSpec("sparsify", ranges={"damping": (0.0, 1e-2, True)}, search="random").plan()
    with pytest.raises(Exception, match="damping must be a positive number"):
        SweepSpec("sparsify", ranges={"damping": (-1.0, 1e-2, False)}, search="optuna").plan()


def test_asha_stops_a_hopeless_connect_setting_early(local_ray, runs_dir):
    # connect's live figure is the worst test accuracy met so far along the path; damping 100
    # walks the straight line (its accuracy dips to about 0.86 at the midpoint, reached near
    # step 5 at eps 2) while damping 1e-4 keeps about 0.95 all the way
    spec = SweepSpec("connect", ("--steps", "20", "--eval-every", "3", "--eps", "2", "--grid", "0", "--no-baselines"),
                     grid={"damping": ["1e-4", "100"]}, objective="min_accuracy", scheduler="asha", grace=6, workers=1)
    record, _ = run_sweep(spec, runs_dir)
    rows = {r["damping"]: r for r in record.table.to_dict("records")}
    good, hopeless = rows[1e-4], rows[100.0]
    assert good["status"] == "finished" and good["min_accuracy"] > 0.93, good
    assert np.isnan(good["bezier_barrier"]), "no baselines asked: the Bezier figure is missing, not made up"
    assert hopeless["status"] == "stopped_early", hopeless
    assert "ASHA" in hopeless["message"] and hopeless["last_step"] < 20


def test_optuna_search_runs_its_draws_over_seeds(local_ray, runs_dir, capsys):
    # 3 Optuna draws of damping, each walked for 2 seeds; Optuna sees each draw's result
    rc = main(["sweep", "sparsify", "--search", "optuna", "--samples", "3", "--seeds", "2",
               "--range", "damping=1e-5:1e-1:log", "--steps", "10", "--eval-every", "5", "--no-baselines",
               "--workers", "2", "--out", str(runs_dir), "--json", "--quiet"])
    payload = _last_json(capsys.readouterr().out)
    assert rc == 0 and (payload["trials"], payload["finished"]) == (6, 6), payload
    table = payload["table"]
    dampings = sorted({r["damping"] for r in table})
    assert len(dampings) == 3 and all(1e-5 <= d <= 1e-1 for d in dampings)
    for d in dampings:  # each draw walked once per seed, with the setting its run folder records
        rows = [r for r in table if r["damping"] == d]
        assert sorted(r["seed"] for r in rows) == [0, 1]
        for row in rows:
            assert read_run(row["run_dir"]).config["solver"]["damping"] == pytest.approx(d)
            assert row["finetune"] is None, "--no-baselines: no fine-tune figure is made up (null in JSON)"
    means = {d: np.mean([r["pruned_accuracy"] for r in table if r["damping"] == d]) for d in dampings}
    assert payload["best"]["mean"] == pytest.approx(max(means.values()))


def test_stopping_a_sweep_keeps_finished_trials_and_marks_the_rest_stopped(runs_dir):
    # the Sweep panel's Stop (SIGTERM to the driver): a deliberate stop reads "stopped",
    # not "interrupted" (that is for a driver that died), in the table and in the run folders
    from geoviz.record.sweep import SweepProcess

    spec = SweepSpec("sparsify", ("--steps", "40", "--eval-every", "5", "--no-baselines"),
                     grid={"damping": ["1e-4", "1e-3", "1e-2", "1e-1"]}, workers=1)
    sweep = SweepProcess(spec, runs_dir)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and sweep.alive:
            record = sweep.record()
            if record is not None and (record.table["status"] == "finished").any():
                break
            time.sleep(0.3)
        assert sweep.alive, sweep.error()
    finally:
        sweep.stop()
    assert sweep.proc.returncode == 130, sweep.error()
    record = sweep.record()
    assert record.state == "stopped"
    states = list(record.table["status"])
    assert "finished" in states and "stopped" in states and set(states) <= {"finished", "stopped"}, states
    for row in record.table.to_dict("records"):
        if row["status"] == "stopped" and isinstance(row["run_dir"], str):
            assert read_run(row["run_dir"]).state == "stopped"


def test_a_sweep_folder_read_before_its_table_is_written_has_the_columns(tmp_path, monkeypatch):
    # CI: the Sweep panel found the driver's folder (by the pid in status.json) a moment before
    # results.parquet existed, and the table read as a frame with no columns at all
    from geoviz.record import sweep_record
    from geoviz.record.sweep_record import SweepBook

    order = []
    real_status, real_table = SweepBook.write_status, SweepBook.write_table
    monkeypatch.setattr(SweepBook, "write_status", lambda self, *a, **k: (order.append("status"), real_status(self, *a, **k)))
    monkeypatch.setattr(SweepBook, "write_table", lambda self: (order.append("table"), real_table(self)))
    plan = {"spec": {"application": "sparsify", "objective": "accuracy", "mode": "max"}, "setting_names": ["damping"],
            "trials": [{"trial": 0, "values": {"damping": 1e-4}, "seed": 0}]}
    book = SweepBook(tmp_path / "s", plan)
    assert order[:2] == ["table", "status"]
    assert list(read_sweep(book.dir).table["status"]) == ["pending"]
    (book.dir / "results.parquet").unlink()
    table = read_sweep(book.dir).table
    assert table.empty and set(sweep_record.BASE_ROW) <= set(table.columns)
    assert not (table["status"] == "finished").any()
