"""Datasets, models, training cache, evaluation and BatchNorm recomputation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from geoviz.setups import data, training
from geoviz.setups.data import (
    DATASET_NAMES,
    load_dataset,
    read_idx,
    sample_batch,
    write_idx,
)
from geoviz.errors import ConfigError, DatasetNotFoundError
from geoviz.setups.models import build_model, has_batchnorm, prunable_names
from geoviz.setups.training import (
    TrainConfig,
    default_train_config,
    evaluate,
    recompute_batchnorm,
    resolve_device,
    train_network,
)

# ---------------------------------------------------------------------------
# Data


def test_digits_shapes_and_stratified_split():
    ds = load_dataset("digits")
    assert ds.input_shape == (1, 8, 8) and ds.num_classes == 10
    assert ds.x_train.shape == (1437, 1, 8, 8) and ds.x_test.shape == (360, 1, 8, 8)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert set(ds.y_test.tolist()) == set(range(10))
    # Stratified: every class has ~20% of its samples in the test split.
    per_class = torch.bincount(ds.y_test, minlength=10).float()
    assert per_class.min() >= 34 and per_class.max() <= 38
    # Standardised by train statistics.
    assert abs(ds.x_train.mean().item()) < 1e-4 and abs(ds.x_train.std().item() - 1) < 1e-3
    assert load_dataset("digits") is ds  # cached in-process


def test_digits_split_cache_equals_scikit_learn_and_spares_its_import(tmp_path, monkeypatch):
    monkeypatch.setenv("GEOVIZ_CACHE", str(tmp_path))
    made = data._cached_digits_split()  # made by scikit-learn, then written
    path = data._digits_cache_file()
    assert path is not None and path.is_file() and path.parent == tmp_path / "datasets"
    direct = data._digits_split()
    for key, array in direct.items():
        assert made[key].dtype == array.dtype and np.array_equal(made[key], array), key
    # a fresh process reads the file: the same arrays, and scikit-learn's datasets never imported
    code = (
        "import sys, numpy as np; from geoviz.setups import data; s = data._cached_digits_split(); "
        "np.savez(sys.argv[1], **s); print('sklearn.datasets' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "read.npz")], capture_output=True, text=True,
                         env={**os.environ, "GEOVIZ_CACHE": str(tmp_path)}, cwd=str(Path(__file__).resolve().parents[1]))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
    with np.load(tmp_path / "read.npz") as read:
        for key, array in direct.items():
            assert np.array_equal(read[key], array), key
    # a torn file is made again, not trusted
    path.write_bytes(b"not an npz")
    again = data._cached_digits_split()
    assert all(np.array_equal(again[k], direct[k]) for k in direct)


def _fake_fashion(folder, gz: bool, n_train=12, n_test=5, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for stem, array in arrays.items():
        write_idx(folder / (stem + suffix), array)
    return arrays


@pytest.mark.parametrize(
    "gz, subfolder",
    [(True, ""), (False, ""), (True, "fashion-mnist"), (False, "FashionMNIST/raw")],
)
def test_fashion_reads_idx_files_from_data_dir(tmp_path, gz, subfolder):
    arrays = _fake_fashion(tmp_path / subfolder if subfolder else tmp_path, gz)
    ds = load_dataset("fashion-mnist", data_dir=tmp_path)
    assert ds.x_train.shape == (12, 1, 28, 28) and ds.x_test.shape == (5, 1, 28, 28)
    assert ds.y_train.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    expected = (arrays["t10k-images-idx3-ubyte"][2] / 255.0 - 0.2860) / 0.3530
    np.testing.assert_allclose(ds.x_test[2, 0].numpy(), expected, rtol=1e-5, atol=1e-5)


def test_missing_fashion_names_every_place_looked(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "FASHION_SYSTEM_DIR", tmp_path / "system")
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("fashion-mnist", data_dir=missing)
    message = str(info.value)
    # a folder the user named is the only place looked (no silent fallback)
    assert str(missing) in message and str(tmp_path / "system") not in message
    assert "dataset-fashion-mnist" in message and "--data-dir" in message
    data._load_cached.cache_clear()  # an earlier test may have loaded the real copy
    try:
        with pytest.raises(DatasetNotFoundError) as info:
            load_dataset("fashion-mnist")
        assert str(tmp_path / "system") in str(info.value)
    finally:
        data._load_cached.cache_clear()


@pytest.mark.skipif(
    not (data.FASHION_SYSTEM_DIR / "train-images-idx3-ubyte.gz").exists(),
    reason="Debian package dataset-fashion-mnist not installed",
)
def test_fashion_from_debian_package():
    ds = load_dataset("fashion-mnist")
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert abs(ds.x_train.mean().item()) < 0.01 and abs(ds.x_train.std().item() - 1) < 0.01


def test_mnist_through_torchvision_from_fake_raw_files(tmp_path):
    rng = np.random.default_rng(1)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", 6), ("t10k", 4)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte",
                  rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n, dtype=np.uint8))
    ds = load_dataset("mnist", data_dir=tmp_path)
    assert ds.x_train.shape == (6, 1, 28, 28) and ds.input_shape == (1, 28, 28)
    assert ds.y_test.tolist() == [0, 1, 2, 3] and ds.y_test.dtype == torch.int64


@pytest.mark.parametrize("name", ["mnist", "cifar10", "cifar100"])
def test_torchvision_datasets_missing(tmp_path, name):
    with pytest.raises(DatasetNotFoundError, match="--data-dir"):
        load_dataset(name)
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset(name, data_dir=tmp_path)
    assert str(tmp_path) in str(info.value) and "--download" in str(info.value)


@pytest.mark.parametrize(
    "array",
    [
        np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
        np.array([-3, 0, 7], dtype=np.int32),
        np.linspace(0, 1, 6, dtype=np.float32).reshape(3, 2),
    ],
)
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, array, suffix):
    path = write_idx(tmp_path / f"a{suffix}", array)
    back = read_idx(path)
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_read_idx_rejects_other_files(tmp_path):
    path = tmp_path / "junk"
    path.write_bytes(b"not an idx file")
    with pytest.raises(ConfigError, match="not an IDX file"):
        read_idx(path)


def test_sample_batch_is_seeded_rows():
    x = torch.arange(50.0).reshape(25, 2)
    a, b = sample_batch(x, 8, 3), sample_batch(x, 8, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == (8, 2)
    assert len(set(a[:, 0].tolist())) == 8 and all(r in x.tolist() for r in a.tolist())
    assert not torch.equal(a, sample_batch(x, 8, 4))
    assert sample_batch(x, 100, 0).shape == (25, 2)


# ---------------------------------------------------------------------------
# Names


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: load_dataset("imagenet"), ["imagenet", "digits", "cifar100"]),
        (lambda: build_model("resnet", (1, 8, 8), 10), ["resnet", "mlp", "vgg16"]),
        (lambda: build_model("vgg11", (1, 8, 8), 10, dataset="digits"),
         ["vgg11 needs 32x32", "digits has 1x8x8"]),
        (lambda: default_train_config("imagenet"), ["imagenet"]),
        (lambda: train_network(load_dataset("digits"), "mlp", 0,
                               config=TrainConfig(optimizer="lbfgs")), ["lbfgs"]),
    ],
)
def test_bad_names_raise_config_error(call, words):
    with pytest.raises(ConfigError) as info:
        call()
    for word in words:
        assert word in str(info.value)


def test_dataset_names_are_all_known():
    assert DATASET_NAMES == ("digits", "fashion-mnist", "mnist", "cifar10", "cifar100")
    for name in DATASET_NAMES:
        assert isinstance(default_train_config(name), TrainConfig)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no GPU is visible"):
            resolve_device("cuda")
    with pytest.raises(ConfigError):
        resolve_device("tpu")


# ---------------------------------------------------------------------------
# Models


@pytest.mark.parametrize(
    "name, input_shape, num_classes, n_prunable, batchnorm",
    [
        ("mlp", (1, 8, 8), 10, 3, False),
        ("lenet300", (1, 28, 28), 10, 3, False),
        ("vgg11", (3, 32, 32), 10, 9, True),
        ("vgg16", (3, 32, 32), 100, 14, True),
    ],
)
def test_build_model(name, input_shape, num_classes, n_prunable, batchnorm):
    torch.manual_seed(0)
    model = build_model(name, input_shape, num_classes)
    torch.manual_seed(0)
    twin = build_model(name, input_shape, num_classes)
    with torch.no_grad():
        out = model.eval()(torch.randn(2, *input_shape))
    assert out.shape == (2, num_classes)
    names = prunable_names(model)
    assert len(names) == n_prunable and all(n.endswith(".weight") for n in names)
    params = dict(model.named_parameters())
    assert all(params[n].ndim in (2, 4) for n in names)  # no bias, no BatchNorm scale
    assert names == [n for n in params if n in names]  # named_parameters order
    assert has_batchnorm(model) is batchnorm
    for (_, a), (_, b) in zip(model.named_parameters(), twin.named_parameters()):
        assert torch.equal(a, b)  # deterministic under manual_seed


def test_mlp_layers_and_lenet_widths():
    assert prunable_names(build_model("mlp", (1, 8, 8), 10, hidden=(32,))) == [
        "net.1.weight", "net.3.weight",
    ]
    lenet = build_model("lenet300", (1, 28, 28), 10)
    shapes = [tuple(lenet.get_parameter(n).shape) for n in prunable_names(lenet)]
    assert shapes == [(300, 784), (100, 300), (10, 100)]


# ---------------------------------------------------------------------------
# Evaluation and BatchNorm


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_evaluate_matches_direct_forward(dtype):
    ds = load_dataset("digits")
    torch.manual_seed(0)
    model = build_model("mlp", ds.input_shape, 10, hidden=(16,)).to(dtype)
    params = {k: v.detach() for k, v in model.named_parameters()}
    loss, acc = evaluate(model, params, {}, ds.x_test, ds.y_test, batch_size=50)
    with torch.no_grad():
        logits = model(ds.x_test.to(dtype))
    assert loss == pytest.approx(F.cross_entropy(logits, ds.y_test).item(), rel=1e-5)
    assert acc == pytest.approx((logits.argmax(1) == ds.y_test).double().mean().item())
    assert isinstance(loss, float) and isinstance(acc, float)
    # A different point gives different numbers (the params really are used).
    moved = {k: v + 0.5 for k, v in params.items()}
    assert evaluate(model, moved, {}, ds.x_test, ds.y_test)[0] != pytest.approx(loss)


def _bn_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2))


def test_recompute_batchnorm_averages_batch_statistics():
    model = _bn_net()
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
    x = torch.randn(100, 4) * 3 + 1
    new = recompute_batchnorm(model, params, buffers, x, batch_size=25, max_batches=4)
    # Independent reference: plain average of the 4 batch means / unbiased variances.
    with torch.no_grad():
        h = (x @ params["0.weight"].T + params["0.bias"]).reshape(4, 25, 3)
    torch.testing.assert_close(new["1.running_mean"], h.mean(1).mean(0))
    torch.testing.assert_close(new["1.running_var"], h.var(1, unbiased=True).mean(0))
    assert new["1.num_batches_tracked"].item() == 4
    # Nothing shared was touched: the model's own buffers and the input dict.
    for name, value in model.named_buffers():
        assert torch.equal(value, buffers[name])
    assert torch.equal(buffers["1.running_mean"], torch.zeros(3))
    assert model.training and model[1].momentum == 0.1
    # Evaluating with the new statistics differs from the stale ones.
    y = torch.randint(0, 2, (100,))
    assert evaluate(model, params, new, x, y)[0] != evaluate(model, params, buffers, x, y)[0]


def test_recompute_batchnorm_without_batchnorm_returns_same_dict():
    model = build_model("mlp", (1, 8, 8), 10)
    buffers: dict = {}
    params = dict(model.named_parameters())
    assert recompute_batchnorm(model, params, buffers, torch.randn(8, 1, 8, 8)) is buffers


# ---------------------------------------------------------------------------
# Training and its cache


def test_train_digits_then_served_from_cache(tmp_path):
    ds = load_dataset("digits")
    calls: list[float] = []
    rng_before = torch.get_rng_state()
    model, params, buffers = train_network(
        ds, "mlp", seed=0, cache_dir=tmp_path, progress=calls.append
    )
    assert torch.equal(torch.get_rng_state(), rng_before)  # caller's RNG untouched
    assert calls and calls[-1] == 1.0
    assert not model.training
    _, acc = evaluate(model, params, buffers, ds.x_test, ds.y_test)
    assert acc > 0.94

    saved = list((tmp_path / "networks").glob("*.safetensors"))
    info = json.loads(saved[0].with_suffix(".json").read_text())
    assert len(saved) == 1 and info["test_accuracy"] == pytest.approx(acc)
    assert info["settings"]["seed"] == 0 and info["settings"]["model"] == "mlp"

    training._MEMORY_CACHE.clear()  # force the disk path
    again_calls: list[float] = []
    _, params2, buffers2 = train_network(
        ds, "mlp", seed=0, cache_dir=tmp_path, progress=again_calls.append
    )
    assert again_calls == []  # did not train
    assert params2.keys() == params.keys()
    assert all(torch.equal(params[k], params2[k]) for k in params)
    # Returned dicts are copies: editing them does not leak into the cache.
    params2["net.1.weight"].zero_()
    _, params3, _ = train_network(ds, "mlp", seed=0, cache_dir=tmp_path)
    assert torch.equal(params3["net.1.weight"], params["net.1.weight"])


def test_train_on_a_subset_of_classes(tmp_path):
    ds = load_dataset("digits")
    config = TrainConfig(epochs=3, lr=1e-3, batch_size=64)
    model, params, buffers = train_network(
        ds, "mlp", seed=1, config=config, hidden=(16,), cache_dir=tmp_path,
        classes=(0, 1),
    )
    with torch.no_grad():
        predicted = model(ds.x_test).argmax(1)
    assert set(predicted.tolist()) <= {0, 1}
    keys = training.network_key(ds, "mlp", 1, config, (16,), (0, 1)), training.network_key(
        ds, "mlp", 1, config, (16,), None
    )
    assert keys[0] != keys[1]
    with pytest.raises(ConfigError, match="No training sample"):
        train_network(ds, "mlp", 1, config=config, cache_dir=tmp_path, classes=(42,))
