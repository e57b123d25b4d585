"""The penalty path against a plain training loop written without the engine."""

import copy

import pytest
import torch
from torch import nn

from geoviz.core.engine import Path, SolverConfig
from geoviz.core.metric import functional_distance
from geoviz.applications.objectives import SparsifyObjective, magnitude_mask
from geoviz.core.optim import Adam


@pytest.mark.parametrize("fused", [None, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_adam_matches_torch_adam(fused, dtype):
    torch.manual_seed(0)
    shapes = [(7, 5), (5,), (3, 7)]
    ours = [torch.randn(s, dtype=dtype) for s in shapes]
    theirs = [p.clone().requires_grad_(True) for p in ours]
    adam = Adam(ours, lr=3e-2, fused=fused)
    reference = torch.optim.Adam(theirs, lr=3e-2, foreach=False)  # the single-tensor loop
    assert adam.fused == (fused is None)
    for _ in range(25):
        grads = [torch.randn(s, dtype=dtype) for s in shapes]
        adam.step(grads)
        for p, g in zip(theirs, grads):
            p.grad = g
        reference.step()
    tol = 1e-6 if dtype == torch.float32 else 1e-13
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b.detach(), rtol=tol, atol=tol)


def _model():
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).double().eval()


@pytest.mark.parametrize("kind", ["output", "fisher"])
def test_penalty_path_is_adam_on_distance_plus_weighted_objective(kind):
    """Each step is Adam on D(f(w), f(w0)) + weight_t * 1/2 |(1 - m) w|^2, weight_t ramping."""
    model = _model()
    x = torch.randn(40, 3, 4, dtype=torch.float64)
    w0 = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    mask = magnitude_mask(w0, torch.ones_like(w0), 0.5)
    solver = SolverConfig(mode="penalty", metric=kind, metric_batch=32, penalty_lr=1e-2, penalty_weight=0.5, penalty_ramp=4)
    path = Path(model, {}, w0, SparsifyObjective(mask, w0, 1e-9), x, solver, lambda w: {}, max_steps=12, resample=False)
    records = list(path)

    # the same optimisation written out: a copy of the module, autograd on the whole
    # loss, torch.optim.Adam, the first 32 rows as the batch
    net = copy.deepcopy(model)
    batch = x[:32]
    with torch.no_grad():
        reference = net(batch).reshape(32, -1)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2, foreach=False)
    previous = w0.clone()
    for step, record in enumerate(records, start=1):
        weight = 0.5 * (1.0 + step / 4)
        opt.zero_grad()
        out = net(batch).reshape(32, -1)
        w = torch.nn.utils.parameters_to_vector(net.parameters())
        loss = functional_distance(out, reference, kind) + weight * 0.5 * ((1.0 - mask) * w).square().sum()
        loss.backward()
        opt.step()
        with torch.no_grad():
            w = torch.nn.utils.parameters_to_vector(net.parameters())
            moved = net(batch[:64]).reshape(32, -1)
            assert record.eps_length == pytest.approx(float((w - previous).norm()), rel=1e-9)
            # the step's functional length: the finite distance on the batch's head
            assert record.functional_sq == pytest.approx(float(functional_distance(moved, out.detach(), kind)), rel=1e-9)
        previous = w.clone()
    torch.testing.assert_close(path.w, previous, rtol=1e-10, atol=1e-12)
    assert path.gradient_evaluations == len(records) == 12


def test_app_path_thread_flushes_subnormals():
    """The app's path thread treats subnormal floats as zero (they made late sparsify steps 6x slower)."""
    from geoviz.record.runner import PathRunner

    seen = []

    def evaluate(w):
        tiny = torch.full((64,), 1e-40, dtype=torch.float32)  # subnormal in float32
        seen.append(float((tiny * 1.5).sum()))
        return {}

    model = _model().float()
    x = torch.randn(40, 3, 4)
    w0 = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    objective = SparsifyObjective(magnitude_mask(w0, torch.ones_like(w0), 0.5), w0, 1e-9)
    path = Path(model, {}, w0, objective, x, SolverConfig(mode="penalty", metric_batch=32), evaluate, max_steps=2)
    runner = PathRunner(path)
    runner.start()
    runner.join(60)
    assert runner.state == "finished" and seen == [0.0, 0.0]


def test_cli_flushes_subnormals_and_gives_the_thread_back():
    from geoviz import cli
    from geoviz.core.engine import flushing_denormals

    torch.set_flush_denormal(False)
    seen = []
    original = cli._main
    try:
        cli._main = lambda argv: seen.append(flushing_denormals()) or 0
        assert cli.main(["sparsify"]) == 0
    finally:
        cli._main = original
    assert seen == [True] and not flushing_denormals()


class _TowardZero:
    """L2 = 1/2 |w - t|^2 with no end (the path runs its budget)."""

    def __init__(self, target):
        self.target = target

    def value_and_grad(self, w):
        diff = w - self.target
        return 0.5 * diff.square().sum(), diff

    def distance(self, w):
        return None


def test_schedule_factor_shapes():
    """constant is 1; linear and cosine fall from 1.9 to 0.1 with mean 1 over the path, the cosine
    flat at both ends (its slope at p = 0 is zero, the linear one's -1.8)."""
    from geoviz.core.engine import schedule_factor

    grid = [(i + 0.5) / 1000 for i in range(1000)]  # midpoints: the mean over [0, 1]
    assert all(schedule_factor("constant", p) == 1.0 for p in (0.0, 0.3, 1.0))
    for kind in ("linear", "cosine"):
        assert schedule_factor(kind, 0.0) == pytest.approx(1.9) and schedule_factor(kind, 1.0) == pytest.approx(0.1)
        assert sum(schedule_factor(kind, p) for p in grid) / len(grid) == pytest.approx(1.0, abs=1e-6)
        values = [schedule_factor(kind, p) for p in grid]
        assert all(a > b for a, b in zip(values, values[1:]))  # strictly decreasing
        assert schedule_factor(kind, -1.0) == schedule_factor(kind, 0.0) and schedule_factor(kind, 2.0) == schedule_factor(kind, 1.0)
    assert schedule_factor("cosine", 0.01) > 1.89 and schedule_factor("linear", 0.01) < 1.883
    assert schedule_factor("linear", 0.5) == pytest.approx(1.0) == schedule_factor("cosine", 0.5)


@pytest.mark.parametrize("kind", ["constant", "linear", "cosine"])
def test_exact_step_lengths_follow_the_schedule_over_the_budget(kind):
    """Without an end distance, step s of N has length eps * f((s - 1) / N); the path's length
    is their sum, and beta = 2 eps_s / |u| scales with the step."""
    from geoviz.core.engine import schedule_factor

    model = _model()
    x = torch.randn(40, 3, 4, dtype=torch.float64)
    w0 = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    solver = SolverConfig(eps=0.02, eps_schedule=kind, metric_batch=32, backend="func")
    n = 20
    records = list(Path(model, {}, w0, _TowardZero(torch.zeros_like(w0)), x, solver, lambda w: {}, max_steps=n, resample=False))
    assert len(records) == n
    expected = [0.02 * schedule_factor(kind, (s - 1) / n) for s in range(1, n + 1)]
    for r, e in zip(records, expected):
        assert r.eps_length == pytest.approx(e, rel=1e-6)
    assert records[-1].path_length == pytest.approx(sum(expected), rel=1e-6)
    if kind != "constant":
        assert records[0].eps_length > 1.8 * 0.02 and records[-1].eps_length < 0.2 * 0.02


def test_schedule_follows_the_distance_covered_when_the_path_has_an_end():
    """A sparsifying path's progress is the larger of step / budget and 1 - distance / start
    distance: with a long budget the step length is set by how far the masked weights have shrunk."""
    from geoviz.core.engine import schedule_factor

    model = _model()
    x = torch.randn(40, 3, 4, dtype=torch.float64)
    w0 = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    mask = magnitude_mask(w0, torch.ones_like(w0), 0.5)
    objective = SparsifyObjective(mask, w0, 1e-9)
    solver = SolverConfig(eps=0.05, eps_schedule="linear", metric_batch=32, backend="func")
    path = Path(model, {}, w0, objective, x, solver, lambda w: {}, max_steps=1000, resample=False)
    w_before = path.w.clone()
    for _ in range(25):
        d = float(objective.distance(w_before))
        record = next(path)
        expected = 0.05 * schedule_factor("linear", max((record.step - 1) / 1000, 1.0 - d))
        assert record.eps_length == pytest.approx(expected, rel=1e-6)
        w_before = path.w.clone()
    assert float(objective.distance(path.w)) < 0.9  # the distance, not the step count, moved it


def test_penalty_learning_rate_follows_the_schedule():
    from geoviz.core.engine import schedule_factor

    model = _model()
    x = torch.randn(40, 3, 4, dtype=torch.float64)
    w0 = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    solver = SolverConfig(mode="penalty", eps_schedule="cosine", penalty_lr=1e-2, metric_batch=32)
    path = Path(model, {}, w0, _TowardZero(torch.zeros_like(w0)), x, solver, lambda w: {}, max_steps=10, resample=False)
    for record in path:
        assert path._adam.lr == pytest.approx(1e-2 * schedule_factor("cosine", (record.step - 1) / 10))


def test_unknown_schedule_is_one_sentence():
    from geoviz.errors import ConfigError

    with pytest.raises(ConfigError, match="Unknown eps schedule 'exp'; choose constant, linear, cosine."):
        SolverConfig(eps_schedule="exp").validate()


def test_cli_takes_the_schedule_and_the_mask_revision():
    from geoviz.applications.sparsify import SparsifyConfig
    from geoviz.cli import application_configs, build_parser

    args = build_parser().parse_args(["sparsify", "--eps-schedule", "cosine", "--mask-every", "25"])
    config, solver = application_configs(args)
    assert solver.eps_schedule == "cosine" and config.mask_every == 25
    args = build_parser().parse_args(["sparsify"])
    config, solver = application_configs(args)
    assert solver.eps_schedule == "constant" and config == SparsifyConfig()  # the CLI's defaults are the config's
    args = build_parser().parse_args(["sparsify", "--mask-every", "0"])
    assert application_configs(args)[0].mask_every == 0  # off
