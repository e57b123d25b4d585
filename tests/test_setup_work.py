"""Set-up work that repeated (issue 15): the magnitude mask by selection instead of a full
sort, and BatchNorm statistics recomputed once per point, on resnet18's blocks at reduced width."""

import pytest
import torch

from geoviz.applications.objectives import kth_smallest, magnitude_mask
from geoviz.setups.data import load_dataset
from geoviz.setups.problem import SetupConfig
from geoviz.setups.own import problem_from_module
from test_own_modules import SmallResNet18


@pytest.mark.parametrize("n, ties", [(300_000, False), (300_000, True), (1_000, False)])
def test_kth_smallest_is_the_sorted_value(n, ties):
    gen = torch.Generator().manual_seed(n)
    a = torch.randn(n, generator=gen).abs()
    if ties:  # half exact zeros, and values rounded so many repeat (an already sparse network)
        a = (a * 100).round() / 100
        a[: n // 2] = 0.0
    ordered = a.sort().values
    for k in (1, n // 3, n // 2, n // 2 + 1, int(0.9 * n), n):
        assert kth_smallest(a, k) == ordered[k - 1], k


@pytest.mark.parametrize("ties", [False, True])
def test_magnitude_mask_prunes_exactly_the_smallest(ties):
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(400_000, generator=gen)
    if ties:
        w[::3] = 0.0  # a third of the weights already zero
        w = (w * 50).round() / 50
    prunable = torch.ones_like(w)
    prunable[:1000] = 0.0  # biases, say: never pruned
    mask = magnitude_mask(w, prunable, 0.9)
    k = round(0.9 * int(prunable.sum()))
    assert int((mask == 0).sum()) == k and bool((mask[:1000] == 1).all())
    pruned, kept = w[mask == 0].abs(), w[(mask == 1) & (prunable == 1)].abs()
    assert pruned.max() <= kept.min()
    if not ties:  # distinct magnitudes: the very set a full argsort prunes
        index = prunable.nonzero().squeeze(1)
        reference = torch.ones_like(w)
        reference[index[w[index].abs().argsort()[:k]]] = 0.0
        assert torch.equal(mask, reference)


def test_batchnorm_statistics_are_recomputed_once_per_point(monkeypatch):
    import geoviz.setups.problem as problem_module

    data = load_dataset("digits")
    torch.manual_seed(0)
    problem = problem_from_module(SmallResNet18(), (data.x_train, data.y_train), (data.x_test, data.y_test),
                                  device="cpu", setup=SetupConfig(model="own"))
    calls = []
    real = problem_module.recompute_batchnorm
    monkeypatch.setattr(problem_module, "recompute_batchnorm", lambda *a, **k: calls.append(1) or real(*a, **k))
    w0, pruned = problem.w0, problem.w0 * (problem.w0.abs() > 0.05)
    first = problem.buffers_at(w0)
    problem.buffers_at(pruned)
    assert problem.buffers_at(w0.clone()) is first and problem.buffers_at(pruned.clone()) is not first
    assert len(calls) == 2  # a sparsification's dense and one-shot points, asked for twice each
    moved = problem.buffers_at(w0 * 1.01)  # another point: recomputed, and right
    assert len(calls) == 3
    fresh = real(problem.model, problem.params(w0 * 1.01), problem.buffers, problem.x_train)
    for name, value in fresh.items():
        assert torch.equal(moved[name], value)
    problem.buffers_at(pruned)
    assert len(calls) == 3  # the memo holds the last two points: w0 * 1.01 and the pruned w0
    assert problem.buffers_at(w0) is not first and len(calls) == 4  # w0 was the third
