"""A user's own modules (skips, in-place adds, LayerNorm, GELU, a reduced-width resnet18):
their G v against an explicit float64 Jacobian, and each application's Python call on digits."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock

import geoviz
from geoviz.setups.data import load_dataset
from geoviz.core.metric import FlatParams


class ResidualMLP(nn.Module):
    """h <- h + W2 GELU(W1 LayerNorm(h)), twice, on flattened inputs."""

    def __init__(self, width=24, classes=10):
        super().__init__()
        self.inp = nn.Linear(64, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))
            for _ in range(2)
        )
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        h = self.inp(x.flatten(1))
        for block in self.blocks:
            h = h + block(h)
        return self.head(self.norm(h))


class ConvInplaceAdd(nn.Module):
    """A conv net whose skip is an in-place add (``out += h``) and whose ReLU is F.relu."""

    def __init__(self, channels=6, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.head = nn.Linear(channels * 16, classes)

    def forward(self, x):
        h = F.relu(self.conv1(x))
        out = self.conv2(h)
        out += h
        out = F.avg_pool2d(F.relu(out), 2)  # (B, C, 4, 4)
        return self.head(out.flatten(1))


class SmallResNet18(nn.Module):
    """resnet18's blocks (torchvision's BasicBlock, BatchNorm, skips) at widths 4-32, CIFAR stem."""

    def __init__(self, widths=(4, 8, 16, 32), classes=10, in_channels=1):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        layers, planes = [], widths[0]
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            down = None
            if stride != 1 or planes != width:
                down = nn.Sequential(nn.Conv2d(planes, width, 1, stride, bias=False), nn.BatchNorm2d(width))
            layers += [BasicBlock(planes, width, stride, down), BasicBlock(width, width)]
            planes = width
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(planes, classes)

    def forward(self, x):
        return self.head(torch.flatten(F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1), 1))


MODULES = {"residual-mlp": ResidualMLP, "conv-inplace-add": ConvInplaceAdd, "small-resnet18": SmallResNet18}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _trained(name, data, steps=60, seed=0):
    torch.manual_seed(seed)
    model = MODULES[name]()
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        index = torch.randint(0, data.x_train.shape[0], (128,), generator=gen)
        loss = F.cross_entropy(model(data.x_train[index]), data.y_train[index])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _explicit_product(model, inputs, kind):
    """v -> (1/B) sum_b J_b^T H_b J_b v with J the explicit Jacobian (float64), never forming G."""
    layout = FlatParams.of(model)
    w = layout.flatten(dict(model.named_parameters())).detach()
    buffers = dict(model.named_buffers())

    def f(flat):
        return torch.func.functional_call(model, ({**layout.unflatten(flat), **buffers},), (inputs,))

    jac = torch.autograd.functional.jacobian(f, w)  # (B, K, P)
    logits = f(w).detach()
    batch, classes = logits.shape
    if kind == "output":
        hessian = torch.eye(classes, dtype=w.dtype).expand(batch, classes, classes)
    else:
        p = torch.softmax(logits, -1)
        hessian = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]

    def product(v):
        jv = torch.einsum("bkp,p->bk", jac, v)  # (B, K)
        return torch.einsum("bkp,bkl,bl->p", jac, hessian, jv) / batch  # (P,)

    return product, w


@pytest.mark.parametrize("backend", ["linear", "autograd", "func"])
@pytest.mark.parametrize("kind", ["output", "fisher"])
@pytest.mark.parametrize("name", list(MODULES))
def test_metric_product_of_own_modules_matches_the_explicit_jacobian(digits, name, kind, backend):
    model = _trained(name, digits, steps=20).double()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.3)
                m.running_var.uniform_(0.5, 2.0)
    inputs = digits.x_train[:5].double()
    explicit, w = _explicit_product(model, inputs, kind)
    gen = torch.Generator().manual_seed(1)
    for _ in range(2):
        v = torch.randn(w.shape, generator=gen, dtype=torch.float64)
        product = geoviz.metric_vector_product(model, inputs, v, kind=kind, backend=backend)
        torch.testing.assert_close(product, explicit(v), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("name", list(MODULES))
def test_own_modules_through_each_application(digits, name, runs_dir):
    train, test = (digits.x_train, digits.y_train), (digits.x_test, digits.y_test)
    solver = geoviz.SolverConfig(metric_batch=64, cg_iterations=4, power_iterations=4)
    common = {"out": str(runs_dir), "device": "cpu", "progress": False, "steps": 3, "eval_every": 3}

    model = _trained(name, digits)
    run = geoviz.sparsify(model, train, test, sparsity=0.5, solver=solver, **common)
    assert run.state == "finished", run.message
    assert run.table["path_length"].iloc[-1] == pytest.approx(3 * solver.eps, rel=1e-4)
    assert run.config["setup"]["model"] == type(model).__name__
    assert 0.0 <= run.summary["accuracy"] <= 1.0 and run.summary["baselines"]["finetune"] is not None

    first, second = digits.y_train < 5, digits.y_train >= 5
    t1, t2 = digits.y_test < 5, digits.y_test >= 5
    run = geoviz.continual(
        model, task1=((digits.x_train[first], digits.y_train[first]), (digits.x_test[t1], digits.y_test[t1])),
        task2=((digits.x_train[second], digits.y_train[second]), (digits.x_test[t2], digits.y_test[t2])),
        memory=32, solver=solver, baselines=False, **common,
    )
    assert run.state == "finished", run.message
    assert run.table["path_length"].iloc[-1] > 0 and "task2_accuracy" in run.table

    other = _trained(name, digits, seed=1)
    # the line and the curve are judged at `points` points, each with BatchNorm recomputed on the
    # training rows: 41 points on all of digits cost the small resnet 20 s, so fewer of both here
    small = (digits.x_train[:512], digits.y_train[:512])
    run = geoviz.connect(model, other, small, test, solver=solver, baselines=False, points=5, **common)
    assert run.state == "finished", run.message
    w_b = FlatParams.of(other).flatten(dict(other.named_parameters())).detach()
    assert run.summary["geodesic"]["length"] > 0
    assert run.summary["reference"]["distance"] == pytest.approx(float((run.runner.task.w_a - w_b).norm()), rel=1e-5)
