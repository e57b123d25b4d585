"""MNIST and CIFAR-10/100 from a data folder: tiny files in the real on-disk formats, written here."""

import pickle

import numpy as np
import pytest
import torch

from geoviz.setups.data import _CHANNEL_STATS, load_dataset, write_idx
from geoviz.errors import ConfigError
from geoviz.setups import folders
from payloads import Payload


def _pixels(ds, name):
    """The uint8 pixels back from the normalised tensors."""
    mean, std = (torch.tensor(s).view(1, -1, 1, 1) for s in _CHANNEL_STATS[name])
    return ((ds.x_train * std + mean) * 255).round().to(torch.uint8).numpy()


def test_mnist_from_gzipped_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images = {"train": rng.integers(0, 256, (7, 28, 28), dtype=np.uint8), "t10k": rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)}
    for prefix, x in images.items():
        write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", x)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", np.arange(len(x), dtype=np.uint8) % 10)
    ds = load_dataset("mnist", data_dir=tmp_path)
    assert ds.x_train.shape == (7, 1, 28, 28) and ds.x_test.shape == (3, 1, 28, 28)
    assert np.array_equal(_pixels(ds, "mnist")[:, 0], images["train"])
    assert ds.y_train.tolist() == list(range(7)) and ds.y_train.dtype == torch.int64
    write_idx(raw / "t10k-labels-idx1-ubyte.gz", np.zeros(2, dtype=np.uint8))  # 3 images, 2 labels
    with pytest.raises(ConfigError, match="test files do not match"):
        folders.read_mnist(tmp_path)


def _cifar_batch(n, rng, labels_key):
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    batch = {b"batch_label": b"training batch", labels_key: [int(v) for v in rng.integers(0, 10, n)],
             b"data": data, b"filenames": [b"img_%d.png" % i for i in range(n)]}
    if labels_key == b"fine_labels":
        batch[b"coarse_labels"] = [0] * n
    return batch


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_from_python_batches(tmp_path, name):
    rng = np.random.default_rng(1)
    folder = tmp_path / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    folder.mkdir()
    key = b"labels" if name == "cifar10" else b"fine_labels"
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"] if name == "cifar10" else ["train", "test"]
    batches = {f: _cifar_batch(3, rng, key) for f in files}
    for f, batch in batches.items():
        (folder / f).write_bytes(pickle.dumps(batch, protocol=2))  # as the real files: protocol 2, bytes keys
    ds = load_dataset(name, data_dir=tmp_path)
    train = [f for f in files if "test" not in f]
    assert ds.x_train.shape == (3 * len(train), 3, 32, 32) and ds.input_shape == (3, 32, 32)
    expected = np.concatenate([batches[f][b"data"] for f in train]).reshape(-1, 3, 32, 32)
    assert np.array_equal(_pixels(ds, name), expected)  # channel-major rows, as CIFAR stores them
    assert ds.y_train.tolist() == sum((batches[f][key] for f in train), [])
    assert ds.num_classes == (10 if name == "cifar10" else 100)


def test_a_cifar_batch_that_names_code_is_refused_without_running(tmp_path):
    rng = np.random.default_rng(2)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for f in [f"data_batch_{i}" for i in range(1, 6)]:
        (folder / f).write_bytes(pickle.dumps(_cifar_batch(2, rng, b"labels"), protocol=2))
    marker = tmp_path / "marker"
    evil = _cifar_batch(2, rng, b"labels")
    evil[b"labels"] = Payload(marker)
    (folder / "test_batch").write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(ConfigError, match=r"exec is not allowed in a dataset file"):
        load_dataset("cifar10", data_dir=tmp_path)
    assert not marker.exists()
    pickle.loads((folder / "test_batch").read_bytes())  # the control: Python's own unpickler runs it
    assert marker.read_text() == "ran"


def test_a_file_larger_than_the_datasets_is_not_read(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    marker = tmp_path / "marker"
    (folder / "train").write_bytes(pickle.dumps({b"x": Payload(marker), b"pad": b"0" * 5000}, protocol=2))
    (folder / "test").write_bytes(b"")
    monkeypatch.setitem(folders.FILE_LIMITS, "cifar100-train", 4096)
    with pytest.raises(ConfigError, match="larger than the dataset's own file"):
        folders.read_cifar("cifar100", tmp_path)
    assert not marker.exists()
    assert folders.FILE_LIMITS["cifar10"] < 33 * 2**20  # the real batches are about 31 MB
