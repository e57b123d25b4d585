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
    from geoviz.runner import PathRunner

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
