"""G v and the step solver against dense float64 references on tiny networks."""

import pytest
import torch
from torch import nn

from geoviz.core.engine import solve_step
from geoviz.core.metric import FlatParams, make_metric_product, make_step_product, metric_vector_product


def _mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4))


def _conv_bn():
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 3)
    )


class _InPlaceSkip(nn.Module):
    """An identity skip added in place (``out += h``, as torchvision's BasicBlock writes
    it): the chain conv1 -> relu1 -> conv2 -> relu2 -> fc keeps its storage throughout,
    so only the version counter shows the addition."""

    def __init__(self):
        super().__init__()
        self.conv1, self.relu1 = nn.Conv2d(2, 2, 3, padding=1), nn.ReLU()
        self.conv2, self.relu2 = nn.Conv2d(2, 2, 3, padding=1), nn.ReLU()
        self.flat, self.fc = nn.Flatten(), nn.Linear(2 * 4 * 4, 3)

    def forward(self, x):
        h = self.relu1(self.conv1(x))
        out = self.conv2(h)
        out += h
        return self.fc(self.flat(self.relu2(out)))


class _InPlaceRelu(nn.Module):
    """An activation applied in place between two recorded layers, outside any module."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 5), nn.Linear(5, 3)

    def forward(self, x):
        return self.b(torch.nn.functional.relu(self.a(x), inplace=True))


class _Untraceable:
    """A branch on a tensor's shape stops torch.fx's tracing: the linear backend then
    has only the module hooks of a chain, and must see the in-place write itself."""

    def forward(self, x):
        if x.shape[0] == 0:
            return x
        return super().forward(x)


class _UntraceableInPlaceSkip(_Untraceable, _InPlaceSkip):
    pass


class _UntraceableInPlaceRelu(_Untraceable, _InPlaceRelu):
    pass


CASES = [  # (name, model factory, input shape)
    ("mlp", _mlp, (7, 6)),
    ("conv-bn", _conv_bn, (5, 2, 4, 4)),
    ("in-place skip", _InPlaceSkip, (5, 2, 4, 4)),
    ("in-place relu", _InPlaceRelu, (7, 6)),
    ("in-place skip, untraceable", _UntraceableInPlaceSkip, (5, 2, 4, 4)),
    ("in-place relu, untraceable", _UntraceableInPlaceRelu, (7, 6)),
]


def _dense_metric(model, inputs, kind):
    """G = 1/B sum_b J_b^T H_b J_b from an explicit Jacobian."""
    layout = FlatParams.of(model)
    w = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    buffers = dict(model.named_buffers())

    def f(flat):
        return torch.func.functional_call(model, ({**layout.unflatten(flat), **buffers},), (inputs,))

    jac = torch.autograd.functional.jacobian(f, w)  # (B, K, P)
    logits = f(w).detach()
    batch, k = logits.shape
    if kind == "output":
        h = torch.eye(k, dtype=w.dtype).expand(batch, k, k)
    else:
        p = torch.softmax(logits, -1)
        h = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    return torch.einsum("bkp,bkl,blq->pq", jac, h, jac) / batch


def _setup(factory, shape, seed=0):
    torch.manual_seed(seed)
    model = factory().double().eval()
    # non-trivial BatchNorm statistics, used in eval mode, and affine parameters
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
        if isinstance(m, (nn.LayerNorm, nn.GroupNorm)) and m.weight is not None:
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return model, torch.randn(shape, dtype=torch.float64)


@pytest.mark.parametrize("backend", ["func", "autograd", "linear"])
@pytest.mark.parametrize("kind", ["output", "fisher"])
@pytest.mark.parametrize("name,factory,shape", CASES)
def test_metric_vector_product_matches_explicit_jacobian(name, factory, shape, kind, backend):
    model, inputs = _setup(factory, shape)
    dense = _dense_metric(model, inputs, kind)
    for trial in range(3):
        v = torch.randn(dense.shape[0], dtype=torch.float64)
        got = metric_vector_product(model, inputs, v, kind=kind, backend=backend)
        want = dense @ v
        assert (got - want).norm() / want.norm() < 1e-6, (name, kind, trial)


def test_metric_vector_product_float32_close_to_float64():
    model, inputs = _setup(_mlp, (7, 6))
    v = torch.randn(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    want = metric_vector_product(model, inputs, v)
    got = metric_vector_product(model.float(), inputs.float(), v.float())
    assert (got.double() - want).norm() / want.norm() < 1e-4


def test_metric_is_psd_and_low_rank():
    model, inputs = _setup(_mlp, (3, 6))
    dense = _dense_metric(model, inputs, "output")
    eig = torch.linalg.eigvalsh(dense)
    assert eig.min() > -1e-10
    # rank at most B*K = 12 out of P = 59
    assert int((eig > 1e-10 * eig.max()).sum()) <= 12


def test_metric_rejects_wrong_shape_and_dtype():
    model, inputs = _setup(_mlp, (3, 6))
    with pytest.raises(ValueError, match="shape"):
        metric_vector_product(model, inputs, torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="float32"):
        metric_vector_product(model, inputs, torch.zeros(59, dtype=torch.float32))


def _trust_region_dense(g, v, beta, eps):
    """argmin theta^T G theta - beta v^T theta s.t. |theta| <= eps, by the eigendecomposition.

    theta(mu) = (beta/2) (G + mu I)^-1 v; bisect on mu for |theta(mu)| = eps.
    """
    lam, q = torch.linalg.eigh(g)
    c = q.T @ v

    def norm(mu):
        return float(((beta / 2) * c / (lam + mu)).norm())

    lo, hi = 1e-14, 1.0
    while norm(hi) > eps:
        hi *= 10
    for _ in range(200):
        mid = (lo * hi) ** 0.5
        lo, hi = (mid, hi) if norm(mid) > eps else (lo, mid)
    mu = (lo * hi) ** 0.5
    return q @ ((beta / 2) * c / (lam + mu)), mu


@pytest.mark.parametrize("rho", [1e-3, 1e-1])
@pytest.mark.parametrize("name,factory,shape", CASES)
def test_step_matches_dense_trust_region_solution(name, factory, shape, rho):
    model, inputs = _setup(factory, shape, seed=1)
    g = _dense_metric(model, inputs, "output")
    layout = FlatParams.of(model)
    w = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    product, _ = make_metric_product(model, layout, dict(model.named_buffers()), inputs, w, "output")
    v = torch.randn(w.numel(), dtype=torch.float64)
    mu = rho * float(torch.linalg.eigvalsh(g).max())
    eps = 0.05
    theta, info = solve_step(product, v, mu, eps, max_iterations=500, tolerance=1e-12)
    # (1) the damped solve itself
    u = torch.linalg.solve(g + mu * torch.eye(len(v), dtype=v.dtype), v)
    assert (theta - eps * u / u.norm()).norm() / eps < 1e-6
    # (2) the constrained problem at the reported beta: same step, same multiplier
    dense_theta, dense_mu = _trust_region_dense(g, v, info["beta"], eps)
    assert (theta - dense_theta).norm() / eps < 1e-6
    assert abs(dense_mu - mu) / mu < 1e-5
    # (3) the functional length computed without a product
    assert abs(info["functional_sq"] - float(theta @ g @ theta)) <= 1e-8 * max(float(theta @ g @ theta), 1e-12)


def _wide():
    """A first layer with more inputs (20) than the batch has rows, a deeper one too."""
    return nn.Sequential(nn.Linear(20, 12), nn.Tanh(), nn.Linear(12, 9), nn.ReLU(), nn.Linear(9, 3))


@pytest.mark.parametrize("kind", ["output", "fisher"])
@pytest.mark.parametrize("warm", [False, True])
@pytest.mark.parametrize("rho", [1e-3, 1e-1])
def test_row_space_step_matches_dense_solution(rho, warm, kind):
    """CG on the row-space coordinates plus the exact complement is the same step."""
    model, inputs = _setup(_wide, (5, 20), seed=2)
    g = _dense_metric(model, inputs, kind)
    layout = FlatParams.of(model)
    w = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    product, space = make_step_product(model, layout, {}, inputs, w, kind, "linear", products=1000)
    assert space is not None and set(space.bases) == {"0.weight", "2.weight", "4.weight"}  # 20, 12, 9 inputs; 5 rows
    assert space.size == 12 * 5 + 12 + 9 * 5 + 9 + 3 * 5 + 3
    # the reduced operator is E^T G E, and E is an isometry
    for _ in range(2):
        v_r = torch.randn(space.size, dtype=torch.float64)
        assert (product(v_r) - space.restrict(g @ space.extend(v_r))).norm() / product(v_r).norm() < 1e-10
        assert abs(space.extend(v_r).norm() - v_r.norm()) < 1e-10 * v_r.norm()
    v = torch.randn(w.numel(), dtype=torch.float64)
    mu = rho * float(torch.linalg.eigvalsh(g).max())
    eps = 0.05
    x0 = torch.randn_like(v) if warm else None
    theta, info = solve_step(product, v, mu, eps, max_iterations=500, tolerance=1e-12, x0=x0, space=space)
    u = torch.linalg.solve(g + mu * torch.eye(len(v), dtype=v.dtype), v)
    assert (info["u"] - u).norm() / u.norm() < 1e-8
    assert (theta - eps * u / u.norm()).norm() / eps < 1e-8
    assert abs(info["functional_sq"] - float(theta @ g @ theta)) <= 1e-8 * float(theta @ g @ theta)
    # the equivalent beta it reports: the dense trust-region problem at that beta has
    # this step as its solution and mu as its multiplier
    dense_theta, dense_mu = _trust_region_dense(g, v, float(info["beta"]), eps)
    assert (theta - dense_theta).norm() / eps < 1e-6
    assert abs(dense_mu - mu) / mu < 1e-5


def test_row_space_only_where_it_pays():
    """No reduction when the batch has as many rows as the layer has inputs, or for a
    single product; the engine then gets the plain product."""
    model, inputs = _setup(_wide, (40, 20), seed=2)
    layout = FlatParams.of(model)
    w = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    assert make_step_product(model, layout, {}, inputs, w, "output", "linear", products=11)[1] is None
    model, inputs = _setup(_wide, (5, 20), seed=2)
    assert make_step_product(model, layout, {}, inputs, w, "output", "linear", products=1)[1] is None
    assert make_step_product(model, layout, {}, inputs, w, "output", "autograd", products=11)[1] is None


def test_no_row_space_for_a_small_classifier_on_a_big_body():
    """A wide classifier behind convolutions (resnet18's 512 -> 10 at a small batch)
    saves little in row space, and working there costs passes over the whole vector
    each step: the engine gets the plain product. The classifier alone is reduced."""
    body = nn.Sequential(nn.Conv2d(2, 256, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, 8))
    head = nn.Sequential(nn.Linear(256, 8))
    for model, inputs, reduced in ((body, torch.randn(16, 2, 6, 6), False), (head, torch.randn(16, 256), True)):
        model = model.double().eval()
        layout = FlatParams.of(model)
        w = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
        space = make_step_product(model, layout, {}, inputs.double(), w, "output", "linear", products=11)[1]
        assert (space is not None) == reduced


def test_trajectory_pca_matches_sklearn():
    from sklearn.decomposition import PCA

    from geoviz.figures.landscape import trajectory_pca

    gen = torch.Generator().manual_seed(0)
    snaps = torch.randn(12, 40, generator=gen, dtype=torch.float64).cumsum(0)
    ours = trajectory_pca(snaps, k=2)
    ref = PCA(n_components=2).fit(snaps.numpy())
    assert torch.allclose(ours.explained.double(), torch.tensor(ref.explained_variance_ratio_), atol=1e-5)
    ref_coords = torch.tensor(ref.transform(snaps.numpy()))
    # components are defined up to sign
    for j in range(2):
        a, b = ours.coords[:, j].double(), ref_coords[:, j]
        assert min((a - b).abs().max(), (a + b).abs().max()) < 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("name,factory,shape", CASES)
def test_metric_vector_product_on_cuda_matches_cpu(name, factory, shape):
    model, inputs = _setup(factory, shape)
    v = torch.randn(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    want = metric_vector_product(model, inputs, v)
    got = metric_vector_product(model.float().cuda(), inputs.float().cuda(), v.float().cuda())
    assert got.device.type == "cuda"
    assert (got.double().cpu() - want).norm() / want.norm() < 1e-4


def test_fisher_length_is_twice_the_kl_to_second_order():
    """v^T G_fisher v ~ 2 KL(p(w) || p(w + t v)) / t^2 as t -> 0: the metric measures the function."""
    from geoviz.core.metric import functional_distance

    model, inputs = _setup(_mlp, (7, 6))
    layout = FlatParams.of(model)
    w = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    v = torch.randn_like(w)

    def logits(flat):
        return torch.func.functional_call(model, layout.unflatten(flat), (inputs,))

    for kind in ("fisher", "output"):
        quad = float(v @ metric_vector_product(model, inputs, v, kind=kind))
        t = 1e-4
        finite = float(functional_distance(logits(w + t * v), logits(w), kind)) / t**2
        assert abs(finite - quad) / quad < 1e-3, kind


class _Residual(nn.Module):
    """Not a chain: the skip connection adds the input back."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 6)
        self.b = nn.Linear(6, 3)

    def forward(self, x):
        return self.b(x + torch.relu(self.a(x)))


def _small_vgg():
    from geoviz.setups.models import VGG

    return VGG((4, "M", 8, "M"), num_classes=3, in_channels=2, image_size=8)


def _lenet_like():
    from geoviz.setups.models import MLP

    return MLP((1, 4, 4), hidden=(7, 5), num_classes=3)


def _strided_pools():
    """Overlapping max-pool windows (two outputs can share an input), a strided and
    grouped convolution, BatchNorm1d and Tanh: the transposed pass must add, not copy."""
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=2, padding=1, groups=2),
        nn.Tanh(),
        nn.MaxPool2d(3, stride=1, padding=1),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 6),
        nn.BatchNorm1d(6),
        nn.ReLU(),
        nn.Linear(6, 3),
    )


class _Unused(nn.Module):
    """A parameter the outputs never use: its rows of G are zero."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 4)
        self.act = nn.ReLU()
        self.spare = nn.Linear(2, 2)
        self.b = nn.Linear(4, 3)

    def forward(self, x):
        return self.b(self.act(self.a(x)))


def _transformer_mlp():
    """LayerNorm and the smooth activations of today's MLPs."""
    return nn.Sequential(
        nn.Linear(6, 8), nn.LayerNorm(8), nn.GELU(), nn.Linear(8, 8), nn.SiLU(),
        nn.LayerNorm(8, elementwise_affine=False), nn.Linear(8, 7), nn.GELU(approximate="tanh"),
        nn.LeakyReLU(0.1), nn.Linear(7, 5), nn.Sigmoid(), nn.Linear(5, 3),
    )


def _modern_conv():
    """GroupNorm, padding='same', average pools (fixed and adaptive), an in-place Sigmoid-free ReLU."""
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding="same"), nn.GroupNorm(2, 4), nn.SiLU(), nn.AvgPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.LayerNorm(16), nn.Linear(16, 3),
    )


def _even_same():
    """padding='same' with an even kernel pads one side more: not a chain we linearise."""
    return nn.Sequential(nn.Conv2d(2, 3, 2, padding="same"), nn.Flatten(), nn.Linear(3 * 4 * 4, 3))


@pytest.mark.parametrize(
    "factory,shape,is_chain",
    [
        (_transformer_mlp, (7, 6), True),
        (_modern_conv, (5, 2, 8, 8), True),
        (_even_same, (5, 2, 4, 4), False),
        (_strided_pools, (5, 2, 8, 8), True),
        (_Unused, (7, 6), True),
        (_mlp, (7, 6), True),
        (_conv_bn, (5, 2, 4, 4), True),
        (_lenet_like, (6, 1, 4, 4), True),
        (_small_vgg, (4, 2, 8, 8), True),  # in-place ReLU, max-pools, torch.flatten before the head
        # not chains, but graphs of known layers, additions and relus (geoviz.core.linear_graph)
        (_Residual, (7, 6), True),
        (_InPlaceSkip, (5, 2, 4, 4), True),
        (_InPlaceRelu, (7, 6), True),
        # neither: the in-place write must be seen, and the product falls back
        (_UntraceableInPlaceSkip, (5, 2, 4, 4), False),
        (_UntraceableInPlaceRelu, (7, 6), False),
    ],
)
def test_linearised_product_is_used_for_chains_and_matches_dense(factory, shape, is_chain):
    model, inputs = _setup(factory, shape)
    layout = FlatParams.of(model)
    w = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    buffers = dict(model.named_buffers())
    dense = _dense_metric(model, inputs, "fisher")
    for backend in ("linear", "autograd"):
        product, _ = make_metric_product(model, layout, buffers, inputs, w, "fisher", backend)
        assert product.backend == ("linear" if is_chain and backend == "linear" else "autograd")
        for _ in range(2):
            v = torch.randn(layout.size, dtype=torch.float64)
            assert (product(v) - dense @ v).norm() / (dense @ v).norm() < 1e-6, backend


def _jacobian_rows(model, inputs):
    """The explicit Jacobian (B*K, P), one reverse pass per output: for networks too big
    for torch.autograd.functional.jacobian's (B, K, P) intermediate."""
    params = list(model.parameters())
    out = model(inputs).reshape(-1)
    rows = []
    for i in range(out.numel()):
        grads = torch.autograd.grad(out[i], params, retain_graph=True, allow_unused=True)
        rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)]))
    return torch.stack(rows), out.detach().reshape(inputs.shape[0], -1)


def test_resnet18_product_matches_explicit_jacobian_on_every_backend():
    """torchvision's resnet18 (BatchNorm, skips added in place, a ReLU module called
    twice per block): every backend gives G v = J^T J v / B, ``linear`` over its traced
    graph. (Output metric; 2 images of 16x16 and 2 classes keep J at 4 x 11.2 M.)"""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=2).double().eval()
    inputs = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    jac, logits = _jacobian_rows(model, inputs)
    v = torch.randn(jac.shape[1], dtype=torch.float64)
    want = jac.t() @ (jac @ v) / inputs.shape[0]
    layout = FlatParams.of(model)
    w = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    buffers = dict(model.named_buffers())
    for backend in ("linear", "autograd", "func"):
        product, _ = make_metric_product(model, layout, buffers, inputs, w, "output", backend)
        got = product(v)
        assert product.backend == backend
        assert (got - want).norm() / want.norm() < 1e-8, backend


class _HardGate(nn.Module):
    """A Hardsigmoid gate (as in mobilenet_v3's squeeze-excitation): its backward has no
    derivative, so the double-backward product cannot run."""

    def __init__(self):
        super().__init__()
        self.a, self.gate, self.b = nn.Linear(6, 5), nn.Hardsigmoid(), nn.Linear(5, 3)

    def forward(self, x):
        h = self.a(x)
        return self.b(h * self.gate(h))


@pytest.mark.parametrize("backend", ["linear", "autograd", "func"])
def test_network_without_double_backward_falls_back_to_func(backend):
    model, inputs = _setup(_HardGate, (7, 6))
    dense = _dense_metric(model, inputs, "fisher")
    layout = FlatParams.of(model)
    w = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    for _ in range(2):  # the second build goes to torch.func directly
        product, _ = make_metric_product(model, layout, {}, inputs, w, "fisher", backend)
        v = torch.randn(layout.size, dtype=torch.float64)
        assert (product(v) - dense @ v).norm() / (dense @ v).norm() < 1e-8
        assert product.backend == "func"


@pytest.mark.parametrize("factory,backend,used", [(_UntraceableInPlaceRelu, "linear", "autograd"), (_mlp, "linear", "linear"), (_HardGate, "linear", "func")])
def test_the_backend_that_ran_is_in_the_run_record(tmp_path, factory, backend, used):
    """A path records the backend that really computed G v, and the runner writes it
    into the run's summary (config.json keeps the one asked for)."""
    from geoviz.core.engine import Path, SolverConfig
    from geoviz.applications.objectives import SparsifyObjective, magnitude_mask
    from geoviz.record.runner import PathRunner

    model, inputs = _setup(factory, (16, 6))
    w0 = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    mask = magnitude_mask(w0, torch.ones_like(w0), 0.5)
    path = Path(model, {}, w0, SparsifyObjective(mask, w0, 1e-9), inputs, SolverConfig(backend=backend, metric_batch=8),
                lambda w: {}, max_steps=3)
    runner = PathRunner(path)
    assert runner.run() == "finished"
    assert path.backend_used == used and runner.summary["backend"] == used


@pytest.mark.parametrize("rho", [1e-4, 1e-3])
def test_row_space_path_takes_the_plain_solves_steps_along_a_real_path(rho):
    """Along a digits sparsification path at the default 10 warm CG iterations, the
    row-space solve (a 64-input first layer seen through a 16-row batch) takes the same
    steps as CG on the full system, so it is exactly as close to the dense damped step.
    (Solving the span's complement exactly, as before, gave cos 0.93-0.99 against the
    plain solve's 0.97-0.998 at rho = 1e-4, and weights 6% apart after 30 steps.)"""
    from sklearn.datasets import load_digits

    from geoviz.core.engine import Path, SolverConfig
    from geoviz.applications.objectives import SparsifyObjective, magnitude_mask

    x = torch.tensor(load_digits().data[:400] / 16.0, dtype=torch.float64)
    batch = 16

    def walk(backend):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 24), nn.ReLU(), nn.Linear(24, 10)).double().eval()
        w0 = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
        mask = magnitude_mask(w0, FlatParams.of(model).mask(["0.weight", "2.weight"], w0), 0.8)
        config = SolverConfig(backend=backend, damping=rho, metric_batch=batch)
        path = Path(model, {}, w0, SparsifyObjective(mask, w0, 1e-9), x, config, lambda w: {}, max_steps=20, resample=False)
        points, mus = [w0], []
        for record in path:
            points.append(path.w.clone())
            mus.append(record.damping_mu)
        return model, mask, points, mus

    model, mask, reduced, mus = walk("linear")
    layout = FlatParams.of(model)
    product, space = make_step_product(model, layout, {}, x[:batch], reduced[0], "output", "linear", products=11)
    assert space is not None and set(space.bases) == {"0.weight"}  # the path really solved in row space
    _, _, plain, plain_mus = walk("autograd")
    for a, b in zip(reduced, plain):
        assert (a - b).norm() <= 1e-10 * b.norm()
    for t in (0, 9, 19):  # each step against the dense solve at its point, with its mu
        w, theta = reduced[t], reduced[t + 1] - reduced[t]
        g = _dense_metric(_load(model, w), x[:batch], "output")
        v = -((1 - mask) * w)
        u = torch.linalg.solve(g + mus[t] * torch.eye(len(v), dtype=v.dtype), v)
        cos = float(theta @ u / (theta.norm() * u.norm()))
        plain_theta = plain[t + 1] - plain[t]
        assert cos >= float(plain_theta @ u / (plain_theta.norm() * u.norm())) - 1e-9
        assert cos > 0.95


def _load(model, w):
    torch.nn.utils.vector_to_parameters(w, model.parameters())
    return model


def _textbook_cg(a, b, x0, iterations):
    """Conjugate gradients on a dense matrix, as in the books (no early stop)."""
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - a @ x
    p = r.clone()
    for _ in range(iterations):
        ap = a @ p
        alpha = (r @ r) / (p @ ap)
        x = x + alpha * p
        r_new = r - alpha * ap
        p = r_new + ((r_new @ r_new) / (r @ r)) * p
        r = r_new
    return x


@pytest.mark.parametrize("backend", ["linear", "autograd"])
@pytest.mark.parametrize("name,factory,shape", [CASES[1], CASES[2]])
def test_path_steps_are_warm_started_partial_solves_of_the_dense_system(name, factory, shape, backend):
    """Each exact step of a path is eps u / |u| with u from k textbook CG iterations on
    the dense (G + mu I) u = -grad, started from the previous step's u: the engine
    solves in the warm start's storage and on +grad (negated iterates), which must not
    change a step. A chain (conv-bn) and a traced graph (an in-place skip)."""
    from geoviz.applications.objectives import SparsifyObjective, magnitude_mask
    from geoviz.core.engine import Path, SolverConfig

    model, inputs = _setup(factory, shape, seed=3)
    w0 = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    mask = magnitude_mask(w0, torch.ones_like(w0), 0.5)
    k, eps = 3, 0.05
    config = SolverConfig(backend=backend, cg_iterations=k, cg_tolerance=0.0, eps=eps, metric_batch=shape[0])
    path = Path(model, dict(model.named_buffers()), w0, SparsifyObjective(mask, w0, 1e-9), inputs, config,
                lambda w: {}, max_steps=4, resample=False)
    points, mus = [w0], []
    for record in path:
        points.append(path.w.clone())
        mus.append(record.damping_mu)
    assert path.backend_used == backend
    u_prev = None
    for t, mu in enumerate(mus):
        w = points[t]
        g = _dense_metric(_load(model, w.clone()), inputs, "output")
        u = _textbook_cg(g + mu * torch.eye(len(w), dtype=w.dtype), -((1 - mask) * w), u_prev, k)
        theta = points[t + 1] - w
        assert (theta - eps * u / u.norm()).norm() / eps < 1e-9, t
        u_prev = u
