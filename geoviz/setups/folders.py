"""MNIST and CIFAR-10/100 read from a data folder, without torchvision's dataset classes.

torchvision's CIFAR classes unpickle their batch files with Python's full
``pickle.load``, which runs whatever code a file names: a data folder from
somewhere else could run code on load. Here only files with the dataset's own
names are opened, only when their sizes are within the real files' (a file
larger than the real dataset's is refused before it is read), and the CIFAR
batches go through a restricted unpickler that can build nothing but dicts,
lists, bytes, numbers and numpy arrays. MNIST's IDX files hold no pickle at all.

Layouts accepted under the folder (torchvision's, or the files directly):

- MNIST: ``MNIST/raw/``, ``mnist/`` or the folder itself, with
  ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
  ``t10k-labels-idx1-ubyte`` (each plain or ``.gz``);
- CIFAR-10: ``cifar-10-batches-py/`` or the folder itself, with ``data_batch_1`` ...
  ``data_batch_5`` and ``test_batch``;
- CIFAR-100: ``cifar-100-python/`` or the folder itself, with ``train`` and ``test``.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np

from geoviz.errors import ConfigError, DatasetNotFoundError

__all__ = ["FILE_LIMITS", "found_in", "read_mnist", "read_cifar", "safe_unpickle", "download"]

_MB = 2**20
# the largest each real file is (a little above it): a file beyond is not the dataset's
FILE_LIMITS = {
    "mnist-images": 48 * _MB,  # train-images-idx3-ubyte: 47,040,016 bytes (9.9 MB gzipped)
    "mnist-labels": 61 * 1024,  # train-labels-idx1-ubyte: 60,008 bytes
    "cifar10": 32 * _MB,  # each batch of 10,000 images: about 31.0 MB
    "cifar100-train": 160 * _MB,  # 50,000 images: about 155 MB
    "cifar100-test": 32 * _MB,
}

_MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
_CIFAR = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels"),
}


def _check_size(path: Path, limit_key: str) -> None:
    size = path.stat().st_size
    if size > FILE_LIMITS[limit_key]:
        raise ConfigError(
            f"{path} is {size / _MB:.1f} MB, larger than the dataset's own file ({FILE_LIMITS[limit_key] / _MB:.0f} MB at most); "
            "it was not read."
        )


def _mnist_files(base: Path) -> dict[str, Path] | None:
    for folder in (base / "MNIST" / "raw", base / "mnist", base):
        found = {}
        for key, stem in _MNIST_FILES.items():
            for name in (stem, stem + ".gz"):
                if (folder / name).is_file():
                    found[key] = folder / name
                    break
        if len(found) == 4:
            return found
    return None


def _cifar_folder(name: str, base: Path) -> Path | None:
    folder_name, train_files, test_files, _ = _CIFAR[name]
    for folder in (base / folder_name, base):
        if all((folder / f).is_file() for f in train_files + test_files):
            return folder
    return None


def found_in(name: str, root: str | os.PathLike | None) -> bool:
    """Whether ``root`` holds dataset ``name`` (mnist, cifar10, cifar100) under its own file
    names and within its files' sizes; nothing is read (a page lists what a folder offers)."""
    if not root or name not in ("mnist", *_CIFAR):
        return False
    base = Path(root).expanduser()
    try:
        if name == "mnist":
            files = _mnist_files(base)
            return files is not None and all(
                p.stat().st_size <= FILE_LIMITS["mnist-images" if k.startswith("x") else "mnist-labels"] for k, p in files.items())
        folder = _cifar_folder(name, base)
        if folder is None:
            return False
        _, train_files, test_files, _ = _CIFAR[name]
        limits = {f: "cifar10" if name == "cifar10" else f"cifar100-{f}" for f in train_files + test_files}
        return all((folder / f).stat().st_size <= FILE_LIMITS[limits[f]] for f in limits)
    except OSError:
        return False


def read_mnist(root: str | os.PathLike) -> dict[str, np.ndarray]:
    """MNIST's four IDX files from a folder: uint8 images (N, 28, 28), int64 labels.

    Raises:
        DatasetNotFoundError: the files are not there.
        ConfigError: a file too large or inconsistent (shapes, counts).
    """
    from geoviz.setups.data import read_idx

    base = Path(root).expanduser()
    found = _mnist_files(base)
    if found is None:
        raise DatasetNotFoundError(
            f"MNIST not found in {base} (looked in MNIST/raw, mnist and the folder itself for "
            f"{', '.join(_MNIST_FILES.values())}, plain or .gz)."
        )
    arrays = {}
    for key, path in found.items():
        _check_size(path, "mnist-images" if key.startswith("x") else "mnist-labels")
        arrays[key] = read_idx(path)
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype != np.uint8 or x.ndim != 3 or x.shape[1:] != (28, 28) or y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise ConfigError(
                f"MNIST's {split} files do not match: images {x.shape} {x.dtype}, labels {y.shape}; "
                "expected uint8 (N, 28, 28) and N labels."
            )
        arrays[f"y_{split}"] = y.astype(np.int64)
    return arrays


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds dicts, lists, bytes, numbers and numpy arrays; refuses any other global."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol 2 writes bytes from Python 3
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a dataset file")
        if module.startswith("numpy") and name == "_reconstruct":
            return np.ndarray.__reduce__(np.zeros(0))[0]  # numpy's own _reconstruct, wherever it lives
        if module == "numpy":
            return getattr(np, name)
        import _codecs

        return _codecs.encode


def safe_unpickle(data: bytes):
    """Unpickle ``data`` allowing only plain containers and numpy arrays (no code runs)."""
    return _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()


def _cifar_batch(path: Path, labels_key: bytes, limit_key: str) -> tuple[np.ndarray, np.ndarray]:
    _check_size(path, limit_key)
    try:
        batch = safe_unpickle(path.read_bytes())
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
        raise ConfigError(f"{path} is not a CIFAR batch file ({err}); it was not loaded.") from None
    if not isinstance(batch, dict):
        raise ConfigError(f"{path} is not a CIFAR batch file (it holds no dict).")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(labels_key, batch.get(labels_key.decode()))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ConfigError(f"{path} is not a CIFAR batch file: its data is not uint8 (N, 3072).")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (data.shape[0],):
        raise ConfigError(f"{path} holds {data.shape[0]} images but {labels.size} labels.")
    return data.reshape(-1, 3, 32, 32), labels


def read_cifar(name: str, root: str | os.PathLike) -> dict[str, np.ndarray]:
    """CIFAR-10 or CIFAR-100 (fine labels) from the python batch files: uint8 (N, 3, 32, 32), int64 labels.

    Raises:
        DatasetNotFoundError: the files are not there.
        ConfigError: a file too large, not a batch file, or naming code to run.
    """
    folder_name, train_files, test_files, labels_key = _CIFAR[name]
    base = Path(root).expanduser()
    folder = _cifar_folder(name, base)
    if folder is None:
        raise DatasetNotFoundError(
            f"{name} not found in {base} (looked in {folder_name} and the folder itself for "
            f"{', '.join(train_files + test_files)})."
        )
    out = {}
    for split, files in (("train", train_files), ("test", test_files)):
        limit = "cifar10" if name == "cifar10" else f"cifar100-{split}"
        parts = [_cifar_batch(folder / f, labels_key, limit) for f in files]
        out[f"x_{split}"] = np.concatenate([x for x, _ in parts])
        out[f"y_{split}"] = np.concatenate([y for _, y in parts])
    return out


def download(name: str, root: str | os.PathLike) -> None:
    """Fetch MNIST or CIFAR's archive into ``root`` with torchvision's downloader (checked by MD5).

    Only the download is torchvision's: the files are read by this module, never
    by torchvision's dataset classes (which unpickle CIFAR's batches).
    """
    import torchvision.datasets as tvd
    from torchvision.datasets.utils import download_and_extract_archive

    root = str(Path(root).expanduser())
    if name == "mnist":
        raw = os.path.join(root, "MNIST", "raw")
        for filename, md5 in tvd.MNIST.resources:
            for mirror in tvd.MNIST.mirrors:
                try:
                    download_and_extract_archive(f"{mirror}{filename}", raw, filename=filename, md5=md5)
                    break
                except OSError:
                    continue
        return
    cls = {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100}[name]
    download_and_extract_archive(cls.url, root, filename=cls.filename, md5=cls.tgz_md5)
