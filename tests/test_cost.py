"""The cost said before a path runs: measured on its first steps, within 2x of what it took."""

import pytest
import torch

import geoviz
from geoviz.applications.cost import BIG_ON_CPU, estimate_cost, size_warning
from geoviz.setups.problem import SetupConfig, load_problem


def test_estimate_counts_the_first_step_and_the_evaluations_apart():
    # (as the runner writes them: each row stamped with its wall-clock time)
    rows = [{"step": 1, "seconds": 1.0, "test_accuracy": 0.9, "time": 1e9}]
    rows += [{"step": s, "seconds": 1.0 + 0.1 * (s - 1), "time": 1e9 + s} for s in (2, 3, 4)]
    assert estimate_cost(rows[:3], 100, 10, 1000, "cpu") is None  # not enough steps yet
    cost = estimate_cost(rows, 100, 10, 1000, "cpu", snapshot_mb=3.0)
    assert cost.seconds_per_step == pytest.approx(0.1) and cost.evaluation_seconds == pytest.approx(0.9)
    assert cost.total_seconds == pytest.approx(1.0 + 99 * 0.1 + 10 * 0.9)
    assert "100 steps x 0.1 s/step" in cost.sentence() and "3 MB" in cost.sentence()


def test_big_networks_on_a_cpu_get_a_warning():
    assert "11.2 M weights" in size_warning(11_172_810, "cpu")
    assert size_warning(BIG_ON_CPU, "cpu") is None and size_warning(11_172_810, torch.device("cuda")) is None


def test_estimate_within_2x_of_the_measured_time_on_digits(runs_dir):
    problem = load_problem(SetupConfig(device="cpu"))
    run = geoviz.sparsify(problem.model, train=(problem.x_train, problem.y_train), test=(problem.x_test, problem.y_test),
                          steps=80, eval_every=10, baselines=False, out=str(runs_dir), device="cpu", progress=False)
    assert run.state == "finished" and len(run.table) == 80  # the whole budget ran
    measured = float(run.table["seconds"].iloc[-1])
    assert run.cost.steps_measured == 4
    assert 0.5 <= run.cost.total_seconds / measured <= 2.0, (run.cost, measured)


def test_a_big_network_on_a_cpu_is_warned_before_its_path(runs_dir):
    digits = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 50_000), torch.nn.Linear(50_000, 10))
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    with pytest.warns(UserWarning, match="3.8 M weights; on a CPU"):
        run = geoviz.sparsify(digits, train=(x, y), test=(x, y), steps=1, baselines=False, out=str(runs_dir),
                              device="cpu", progress=False, solver=geoviz.SolverConfig(metric_batch=8, cg_iterations=2))
    assert run.state == "finished"
