"""Datasets as whole in-memory tensors: digits, Fashion-MNIST, MNIST, CIFAR-10/100.

Every loader returns one frozen :class:`Dataset` holding normalised float32 images
``(N, C, H, W)`` and int64 labels on the CPU. The embedded default is
scikit-learn's 8x8 digits (no download); Fashion-MNIST is read straight from IDX
files (Debian's ``dataset-fashion-mnist`` or a data folder); MNIST and CIFAR are
read from a data folder by geoviz.setups.folders (not torchvision's dataset
classes: its CIFAR loader unpickles the batch files).
"""

from __future__ import annotations

import functools
import gzip
import os
import pickle
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from geoviz.errors import ConfigError, DatasetNotFoundError, GeovizError
from geoviz.validation import check_dataset

__all__ = [
    "DATASET_NAMES",
    "Dataset",
    "load_dataset",
    "read_idx",
    "write_idx",
    "sample_batch",
]

DATASET_NAMES = ("digits", "fashion-mnist", "mnist", "cifar10", "cifar100")

# Where Debian's package dataset-fashion-mnist puts the four gzipped IDX files.
FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")

# Standard normalisation constants (train-set statistics of each dataset).
_FASHION_MEAN, _FASHION_STD = 0.2860, 0.3530
_CHANNEL_STATS = {
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
_NUM_CLASSES = {
    "digits": 10, "fashion-mnist": 10, "mnist": 10, "cifar10": 10, "cifar100": 100
}


@dataclass(frozen=True)
class Dataset:
    """A whole dataset in memory, normalised, on the CPU.

    Attributes:
        name: One of :data:`DATASET_NAMES`.
        x_train: Float32 images ``(N, C, H, W)``.
        y_train: Int64 labels ``(N,)``.
        x_test: Float32 images ``(M, C, H, W)``.
        y_test: Int64 labels ``(M,)``.
        num_classes: Number of classes.
        input_shape: ``(C, H, W)`` of one image.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    input_shape: tuple[int, int, int]

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, train={len(self.y_train)}, "
            f"test={len(self.y_test)}, input_shape={self.input_shape}, "
            f"num_classes={self.num_classes})"
        )


# ---------------------------------------------------------------------------
# IDX files (the MNIST / Fashion-MNIST format)

# IDX type codes -> numpy big-endian dtypes.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_CODES = {dtype: code for code, dtype in _IDX_DTYPES.items()}


def write_idx(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file (gzipped when ``path`` ends in ``.gz``).

    Args:
        path: Destination file.
        array: Array of uint8, int8, int16, int32, float32 or float64.

    Returns:
        The path written.

    Raises:
        ConfigError: The array's dtype has no IDX code.
    """
    path = Path(path)
    array = np.asarray(array)
    big = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    if big not in _IDX_CODES:
        raise ConfigError(
            f"IDX files cannot hold dtype {array.dtype}; use uint8, int8, int16, "
            "int32, float32 or float64."
        )
    header = struct.pack(">BBBB", 0, 0, _IDX_CODES[big], array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=big).tobytes()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(payload)
    return path


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (plain or gzipped) into a numpy array in native byte order.

    Args:
        path: The file; gzip is detected from its first bytes, not its name.

    Returns:
        The array with the shape stored in the header.

    Raises:
        ConfigError: The file is not a valid IDX file.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:  # a cut or corrupt .gz, an unreadable file
        raise ConfigError(f"{path} cannot be read ({type(err).__name__}: {err}); the file is damaged or cut short.") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ConfigError(f"{path} is not an IDX file (bad magic number).")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise ConfigError(f"{path} is truncated: its header names {ndim} dimensions but ends before their sizes.")
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    count = int(np.prod(shape)) if ndim else 1
    offset = 4 + 4 * ndim
    if len(raw) - offset < count * dtype.itemsize:
        raise ConfigError(f"{path} is truncated: header says shape {shape}.")
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=offset)
    return data.reshape(shape).astype(dtype.newbyteorder("="))


# ---------------------------------------------------------------------------
# Loaders


def _digits_split() -> dict[str, np.ndarray]:
    """scikit-learn's digits, split 80/20 stratified (random_state 0), scaled to [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = bunch.data.astype(np.float32) / 16.0  # (1797, 64) in [0, 1]
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    return {"x_train": x_tr, "y_train": y_tr, "x_test": x_te, "y_test": y_te}


def _digits_cache_file() -> Path | None:
    """Where the split is kept, keyed by scikit-learn's version (None: no version known)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        sklearn_version = version("scikit-learn")
    except PackageNotFoundError:
        return None
    root = os.environ.get("GEOVIZ_CACHE") or Path.home() / ".cache" / "geoviz"
    return Path(root).expanduser() / "datasets" / f"digits-split-sklearn-{sklearn_version}.npz"


def _cached_digits_split() -> dict[str, np.ndarray]:
    """The split, read from the cache when a process made it before.

    Importing scikit-learn's datasets module costs 1-2 s of every fresh process (the
    CLI, each sweep worker, each test subprocess) for 115 KB of data: the split is
    made once per scikit-learn version and kept beside the start networks. A cache
    that cannot be written or read is skipped.
    """
    path = _digits_cache_file()
    if path is not None and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as arrays:
                return {k: arrays[k] for k in ("x_train", "y_train", "x_test", "y_test")}
        except (OSError, ValueError, KeyError):
            pass  # torn or foreign: made again below
    split = _digits_split()
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
            np.savez(tmp, **split)
            os.replace(tmp, path)
        except OSError:
            pass
    return split


def _load_digits() -> Dataset:
    split = _cached_digits_split()
    x_tr, x_te = split["x_train"], split["x_test"]
    # One scalar mean/std from the train set, as for the grey-scale image sets.
    mean, std = float(x_tr.mean()), float(x_tr.std())

    def to_tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy((a - mean) / std).float().reshape(-1, 1, 8, 8)

    return Dataset(
        name="digits",
        x_train=to_tensor(x_tr),
        y_train=torch.from_numpy(split["y_train"]),
        x_test=to_tensor(x_te),
        y_test=torch.from_numpy(split["y_test"]),
        num_classes=10,
        input_shape=(1, 8, 8),
    )


_FASHION_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def _fashion_candidates(data_dir: str | os.PathLike | None) -> list[Path]:
    dirs = []
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        # a folder the user named is the only place looked: falling back to the
        # system copy would silently use other data than the user asked for
        return [root, root / "fashion-mnist", root / "FashionMNIST" / "raw"]
    dirs.append(FASHION_SYSTEM_DIR)
    return dirs


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _load_fashion(data_dir: str | os.PathLike | None) -> Dataset:
    looked = _fashion_candidates(data_dir)
    for folder in looked:
        files = {key: _find_idx(folder, stem) for key, stem in _FASHION_FILES.items()}
        if all(files.values()):
            break
    else:
        places = ", ".join(str(p) for p in looked)
        raise DatasetNotFoundError(
            f"Fashion-MNIST not found (looked in {places}); install the Debian package "
            "dataset-fashion-mnist or pass --data-dir with train-images-idx3-ubyte(.gz), "
            "train-labels-idx1-ubyte(.gz), t10k-images-idx3-ubyte(.gz) and "
            "t10k-labels-idx1-ubyte(.gz)."
        )
    arrays = {key: read_idx(path) for key, path in files.items()}
    for key, ndim in (("x_train", 3), ("y_train", 1), ("x_test", 3), ("y_test", 1)):
        if arrays[key].ndim != ndim:
            raise ConfigError(
                f"{files[key]} holds an array of shape {arrays[key].shape}; Fashion-MNIST "
                f"{'images are (N, 28, 28)' if ndim == 3 else 'labels are (N,)'}."
            )

    def images(a: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(a).float().div_(255.0)
        return x.sub_(_FASHION_MEAN).div_(_FASHION_STD).unsqueeze(1)  # (N, 1, 28, 28)

    return Dataset(
        name="fashion-mnist",
        x_train=images(arrays["x_train"]),
        y_train=torch.from_numpy(arrays["y_train"].astype(np.int64)),
        x_test=images(arrays["x_test"]),
        y_test=torch.from_numpy(arrays["y_test"].astype(np.int64)),
        num_classes=10,
        input_shape=(1, *arrays["x_train"].shape[1:]),
    )


def _load_torchvision(
    name: str, data_dir: str | os.PathLike | None, download: bool
) -> Dataset:
    """MNIST or CIFAR from a data folder (geoviz.setups.folders reads the files: no
    torchvision dataset class, whose CIFAR loader unpickles its batch files)."""
    from geoviz.setups import folders

    hint = "pass --data-dir with the dataset's files, or add --download when online"
    if data_dir is None:
        raise DatasetNotFoundError(
            f"Dataset {name} needs a data folder and none was given; {hint}."
        )
    root = Path(data_dir).expanduser()
    read = folders.read_mnist if name == "mnist" else functools.partial(folders.read_cifar, name)
    try:
        try:
            arrays = read(root)
        except DatasetNotFoundError as exc:
            if not download:
                raise DatasetNotFoundError(f"{exc} Add --download when online.") from None
            folders.download(name, root)
            arrays = read(root)
    except GeovizError:
        raise
    except OSError as exc:  # offline --download (URLError), an unreadable folder
        reason = getattr(exc, "reason", None) or exc.strerror or exc
        raise DatasetNotFoundError(
            f"Dataset {name} could not be {'downloaded' if download else 'read'} into {root} ({reason}); {hint}."
        ) from None
    except (EOFError, ValueError, IndexError, pickle.UnpicklingError) as exc:  # damaged files
        raise ConfigError(f"The {name} files in {root} are damaged ({type(exc).__name__}); remove them and download again.") from None

    mean, std = (torch.tensor(s).view(1, -1, 1, 1) for s in _CHANNEL_STATS[name])

    def images(data: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(data)
        x = x.unsqueeze(1) if x.ndim == 3 else x  # (N, C, H, W)
        return ((x.float() / 255.0 - mean) / std).contiguous()

    x_train = images(arrays["x_train"])
    return Dataset(
        name=name,
        x_train=x_train,
        y_train=torch.from_numpy(arrays["y_train"]),
        x_test=images(arrays["x_test"]),
        y_test=torch.from_numpy(arrays["y_test"]),
        num_classes=_NUM_CLASSES[name],
        input_shape=tuple(x_train.shape[1:]),
    )


@functools.lru_cache(maxsize=8)
def _load_cached(name: str, data_dir: str | None, download: bool) -> Dataset:
    if name == "digits":
        data = _load_digits()
    elif name == "fashion-mnist":
        data = _load_fashion(data_dir)
    else:
        data = _load_torchvision(name, data_dir, download)
    check_dataset(data)  # labels and shapes that would break training later
    return data


def load_dataset(
    name: str, data_dir: str | os.PathLike | None = None, download: bool = False
) -> Dataset:
    """Load a dataset by name (cached in-process; treat the tensors as read-only).

    Args:
        name: One of :data:`DATASET_NAMES`.
        data_dir: Folder with the dataset's files (needed for mnist/cifar; optional
            for fashion-mnist, which falls back to /usr/share/datasets/fashion-mnist).
        download: Let torchvision download mnist/cifar into ``data_dir``.

    Returns:
        The :class:`Dataset`.

    Raises:
        ConfigError: ``name`` is not a known dataset.
        DatasetNotFoundError: The files are not where we looked.
    """
    if name not in DATASET_NAMES:
        raise ConfigError(
            f"Unknown dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}."
        )
    key_dir = None if data_dir is None else str(Path(data_dir).expanduser().resolve())
    return _load_cached(name, key_dir, bool(download))


def sample_batch(
    x: torch.Tensor, size: int, seed_or_generator: int | torch.Generator
) -> torch.Tensor:
    """Return ``size`` random rows of ``x`` (without replacement; all rows if fewer).

    Args:
        x: Tensor whose first dimension indexes samples.
        size: Number of rows wanted.
        seed_or_generator: An int seed or a CPU ``torch.Generator`` (advanced).

    Returns:
        The rows, on ``x``'s device.
    """
    if isinstance(seed_or_generator, torch.Generator):
        generator = seed_or_generator
    else:
        generator = torch.Generator().manual_seed(int(seed_or_generator))
    n = x.shape[0]
    size = min(int(size), n)
    index = torch.randperm(n, generator=generator, device=generator.device)[:size]
    return x[index.to(x.device)]
