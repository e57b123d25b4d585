"""Snapshots of big networks on a budget: the sparse sign projection keeps the trajectory's
geometry (Johnson-Lindenstrauss), its PCA agrees with the full snapshots', and the budget holds."""

import pytest
import torch

from geoviz.applications.curves import BezierCurve, curve_points
from geoviz.errors import ConfigError
from geoviz.figures.landscape import trajectory_pca
from geoviz.record import sketch as sketch_module
from geoviz.record.sketch import SparseSignSketch, check_budget_mb, sketch_for_budget
from test_app_connect import replayed


def _trajectory(parameters: int, steps: int = 24, seed: int = 0) -> torch.Tensor:
    """(S, P) a walk from a big common start: a drift along two directions (3:1) plus noise."""
    gen = torch.Generator().manual_seed(seed)
    start = torch.randn(parameters, generator=gen)
    d1, d2 = torch.randn(2, parameters, generator=gen)
    t = torch.linspace(0, 1, steps)[:, None]
    walk = 3.0 * t * d1 + torch.sin(3 * t) * d2 + 0.05 * torch.randn(steps, parameters, generator=gen)
    return start + 0.01 * walk


def test_distances_and_pca_agree_with_the_full_snapshots(monkeypatch):
    monkeypatch.setattr(sketch_module, "_CHUNK", 7919)  # many chunks, the last one short
    full = _trajectory(60_000)
    sketch = SparseSignSketch(full.shape[1], dim=4096, seed=3)
    small = torch.stack([sketch(w) for w in full])  # (S, k)
    # every pairwise distance within 10% (one standard deviation is about 2.2% at k = 4096)
    ratio = torch.pdist(small.double()) / torch.pdist(full.double())
    assert (ratio - 1).abs().max() < 0.10, ratio
    # the PCA: the same order and nearly the same share of variance, the same picture
    a, b = trajectory_pca(full, k=3), trajectory_pca(small, k=3)
    assert a.explained[0] > a.explained[1] > a.explained[2] and b.explained[0] > b.explained[1] > b.explained[2]
    assert (a.explained - b.explained).abs().max() < 0.03, (a.explained, b.explained)
    for i in range(2):  # coordinates up to each axis's sign
        x, y = a.coords[:, i], b.coords[:, i]
        y = y * torch.sign((x * y).sum())
        assert (x - y).norm() / x.norm() < 0.10


def test_the_sketch_is_fixed_linear_and_rebuilt_from_its_metadata(monkeypatch):
    monkeypatch.setattr(sketch_module, "_CHUNK", 1000)
    w_a, theta, w_b = torch.randn(3, 5_500, dtype=torch.float64)
    sketch = SparseSignSketch(5_500, dim=64, seed=1)
    again = SparseSignSketch.from_metadata(sketch.to_metadata())
    assert again == sketch and torch.equal(again(w_a), sketch(w_a))
    assert not torch.equal(SparseSignSketch(5_500, dim=64, seed=2)(w_a), sketch(w_a))
    # a curve's points projected through its bends = each point projected
    curve, ts = BezierCurve(w_a, theta, w_b), torch.linspace(0, 1, 5, dtype=torch.float64)
    each = torch.stack([sketch(w) for w in curve.weights(ts)])
    torch.testing.assert_close(curve_points(curve, ts, sketch), each, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="5500 weights; got 10"):
        sketch(torch.zeros(10))


def test_full_snapshots_while_32_fit_then_projections_within_the_budget():
    assert sketch_for_budget(25_000, 32 * 2**20) is None  # digits MLP: 100 KB each
    big = sketch_for_budget(11_000_000, 32 * 2**20)  # resnet18: 44 MB each, not even one fits
    assert big is not None and big.dim == 4096 and 200 * 4 * big.dim <= 32 * 2**20
    tight = sketch_for_budget(11_000_000, 2**20)
    assert 200 * 4 * tight.dim <= 2**20
    for bad in (0.5, float("nan"), -3):
        with pytest.raises(ConfigError, match="snapshot budget must be a number of MB of at least 1"):
            check_budget_mb(bad)


def _digits_run(runs_dir, budget_mb: float):
    from geoviz.applications.sparsify import SparsifyConfig, sparsify_runner
    from geoviz.core.engine import SolverConfig
    from geoviz.setups.problem import SetupConfig, load_problem

    problem = load_problem(SetupConfig(dataset="digits", model="mlp", seed=0))
    runner = sparsify_runner(problem, SparsifyConfig(sparsity=0.5, steps=60, eval_every=30), SolverConfig(eps=0.05),
                             str(runs_dir), baselines=False, snapshot_budget_mb=budget_mb)
    assert runner.run() in ("finished", "stopped") or runner.path.done
    return runner


def test_a_real_run_on_a_tight_budget_keeps_every_step_projected(runs_dir):
    """Digits MLP (25,482 weights, 100 KB a snapshot) with a 1 MB budget: 5 full snapshots would
    fit the live half; instead all 61 steps are kept as projections, and their PCA draws what the
    full snapshots of the same (seeded) run draw."""
    from geoviz.record.runs import read_run

    tight, full = _digits_run(runs_dir, 1.0), _digits_run(runs_dir, 64.0)
    assert full.sketch is None and tight.sketch is not None
    steps, small = tight.trajectory()
    steps_full, big = full.trajectory()
    assert steps == steps_full and len(steps) == 61  # every step, as with the full budget
    assert small.shape == (61, tight.sketch.dim) and small.numel() * 4 <= 2**20 / 2
    a, b = trajectory_pca(big, k=2), trajectory_pca(small, k=2)
    assert (a.explained - b.explained).abs().max() < 0.03, (a.explained, b.explained)
    ratio = torch.pdist(small.double()) / torch.pdist(big.double())
    assert (ratio - 1).abs().max() < 0.15
    # the record on disk: within its budget, and it says how it was projected
    record = read_run(tight.writer.dir)
    files = sorted((record.path / "snapshots").glob("*.safetensors"))
    assert sum(f.stat().st_size for f in files) <= 2**20
    assert record.sketch() == tight.sketch
    _, on_disk = record.snapshots()
    assert torch.equal(on_disk, small)
    assert read_run(full.writer.dir).sketch() is None


def test_connect_on_a_tight_budget_draws_its_paths_in_the_projected_frame(runs_dir):
    """The line and the Bezier curve are projected with the snapshots' sketch (live and in the
    replay); the landscape on the geodesic's midpoint is one sentence (no full snapshots to take it from)."""
    from dataclasses import replace

    from geoviz.applications.connect import ConnectConfig, connect_runner, run_landscape
    from geoviz.core.engine import SolverConfig
    from geoviz.setups.problem import SetupConfig, load_problem

    problem = load_problem(SetupConfig(dataset="digits", model="mlp", seed=0))
    runner = connect_runner(problem, ConnectConfig(), SolverConfig(eps=0.3, damping=1e-3), str(runs_dir), snapshot_budget_mb=1.0)
    assert runner.run() == "finished" and runner.sketch is not None
    assert "geodesic" not in runner.curves
    _, snapshots = runner.trajectory()
    line = curve_points(runner.curves["line"], torch.tensor([0.0, 1.0]), runner.sketch)
    torch.testing.assert_close(line[0], snapshots[0], rtol=1e-4, atol=1e-3)  # w_A, both ways
    runner.task.config = replace(runner.task.config, third="midpoint")
    with pytest.raises(ConfigError, match="^The geodesic's midpoint is unknown"):
        run_landscape(runner, 3)
    at = replayed(runner.writer.dir)
    pca = at.get("plotly_chart")[1].proto.spec
    assert "Bezier curve" in pca and "top two PCs (of random projections)" in pca


def test_cli_budget_flag_is_checked_before_anything_loads(tmp_path, capsys):
    from geoviz.cli import main

    assert main(["sparsify", "--snapshot-mb", "0.5", "--quiet", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: The snapshot budget must be a number of MB of at least 1, got 0.5." and not list(tmp_path.iterdir())


def test_sparsify_page_draws_a_projected_trajectory(runs_dir, monkeypatch):
    """The page's PCA with projected snapshots, thinned so the current step is not among them
    (the page then adds the current point, projected as the others)."""
    import functools

    import geoviz.record.runner as runner_module
    from test_app import SHORT, _app, _click, _figures, _finish, _points, _set

    monkeypatch.setenv("GEOVIZ_RUNS", str(runs_dir))
    monkeypatch.setattr(runner_module, "sketch_for_budget", lambda parameters, budget: SparseSignSketch(parameters, 64))
    monkeypatch.setattr(runner_module, "SnapshotBudget", functools.partial(runner_module.SnapshotBudget, max_count=8))
    # an ended run reads its trajectory back from disk, where the last step is kept: hold the in-memory
    # one (as during a run, or for a runner without a folder), where it is not
    monkeypatch.setattr(runner_module.PathRunner, "_release_trajectory", lambda self: None)
    at = _app("pages/sparsify.py")
    _set(at, SHORT | {"steps": 31})
    _click(at, "Run")
    runner = _finish(at)
    steps, kept = runner.trajectory()
    assert runner.state == "finished" and kept.shape[1] == 64 and steps[-1] != 31
    pca = _figures(at)["Weight trajectory (PCA of random projections of the snapshots)"]
    assert len(_points(pca["data"][0]["x"])) == len(steps) + 1  # the kept steps and the current one
