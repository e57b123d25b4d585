"""Train start networks (cached on disk), evaluate parameter dicts, recompute BatchNorm.

The engine works on ``dict[str, Tensor]`` parameters and buffers through
``torch.func.functional_call``; this module produces those dicts for a trained
network and evaluates any such point. Trained networks are stored as safetensors
under ``<cache>/networks/<key>.safetensors`` (never pickled) with a JSON beside
each holding its settings and test accuracy.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import contextlib
import fcntl
import logging
import shutil
import weakref
import os
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torch.func import functional_call

from geoviz.setups.data import Dataset
from geoviz.errors import ConfigError
from geoviz.validation import check_fields, check_writable_dir
from geoviz.setups.models import build_model, has_batchnorm
from geoviz.setups.stream import subset

__all__ = [
    "CODE_VERSION",
    "TrainConfig",
    "default_train_config",
    "resolve_device",
    "evaluate",
    "recompute_batchnorm",
    "network_key",
    "network_cache_dir",
    "network_cached",
    "load_network_info",
    "train_network",
]

_log = logging.getLogger("geoviz")

# Bump when training code changes in a way that makes old cached networks stale.
CODE_VERSION = 1

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class TrainConfig:
    """How a start network is trained.

    Attributes:
        epochs: Passes over the training set.
        lr: Learning rate (peak learning rate when ``cosine``).
        batch_size: Mini-batch size.
        weight_decay: L2 penalty (decoupled for Adam: AdamW).
        optimizer: ``"adam"`` or ``"sgd"``.
        momentum: SGD momentum (ignored by Adam).
        cosine: Cosine-anneal the learning rate to zero over training.
    """

    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 128
    weight_decay: float = 0.0
    optimizer: str = "adam"
    momentum: float = 0.9
    cosine: bool = False

    def validate(self) -> None:
        """Raise ConfigError naming the first setting out of range."""
        if self.optimizer not in ("adam", "sgd"):
            raise ConfigError(
                f"Unknown optimizer {self.optimizer!r}; choose adam or sgd."
            )
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(
                f"epochs and batch_size must be at least 1; got {self.epochs} and "
                f"{self.batch_size}."
            )
        if not self.lr > 0 or self.weight_decay < 0:
            raise ConfigError(
                f"lr must be positive and weight_decay non-negative; got {self.lr} and "
                f"{self.weight_decay}."
            )
        check_fields(self)  # and every number in its finite range (geoviz.validation)


_DEFAULT_CONFIGS = {
    # MLP 64-128-128-10 reaches ~0.97 test accuracy in ~1-2 s on a laptop CPU.
    "digits": TrainConfig(epochs=40, lr=1e-3, batch_size=64),
    # LeNet-300-100 reaches ~0.88 in a few epochs; more buys little for a start point.
    "fashion-mnist": TrainConfig(epochs=5, lr=1e-3, batch_size=128),
    "mnist": TrainConfig(epochs=3, lr=1e-3, batch_size=128),
    # Standard CIFAR VGG recipe, sized for a GPU (~90% on CIFAR-10 with vgg11).
    "cifar10": TrainConfig(
        epochs=30, lr=0.05, batch_size=128, weight_decay=5e-4, optimizer="sgd", cosine=True
    ),
    "cifar100": TrainConfig(
        epochs=30, lr=0.05, batch_size=128, weight_decay=5e-4, optimizer="sgd", cosine=True
    ),
}


def default_train_config(dataset_name: str) -> TrainConfig:
    """The default :class:`TrainConfig` for a dataset.

    Raises:
        ConfigError: Unknown dataset name.
    """
    if dataset_name not in _DEFAULT_CONFIGS:
        raise ConfigError(
            f"Unknown dataset {dataset_name!r}; "
            f"choose one of {', '.join(_DEFAULT_CONFIGS)}."
        )
    return _DEFAULT_CONFIGS[dataset_name]


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` into a torch.device.

    Raises:
        ConfigError: CUDA requested but not visible, or an unknown device name.
    """
    if isinstance(name, torch.device):
        name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"Unknown device {name!r}; use auto, cpu or cuda.") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "CUDA was requested but no GPU is visible; use --device cpu or auto."
        )
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"Unknown device {name!r}; use auto, cpu or cuda.")
    return device


def _params_device_dtype(
    params: Mapping[str, torch.Tensor],
) -> tuple[torch.device, torch.dtype]:
    first = next(iter(params.values()))
    return first.device, first.dtype


@torch.no_grad()
def evaluate(
    model: nn.Module,
    params: Mapping[str, torch.Tensor],
    buffers: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int = 2048,
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of the network at ``(params, buffers)``.

    The model runs in eval mode (BatchNorm uses ``buffers``' running statistics) on
    the parameters' device and dtype; its own mode is restored afterwards.

    Args:
        model: The module whose structure is used.
        params: Parameter tensors by name.
        buffers: Buffer tensors by name (may be empty).
        x: Inputs ``(N, ...)`` on any device, or a :class:`~geoviz.setups.stream.Stream`
            (read one chunk at a time).
        y: Int64 labels ``(N,)``.
        batch_size: Rows per forward pass.

    Returns:
        ``(loss, accuracy)`` as Python floats.

    Raises:
        ConfigError: ``x`` is empty or ``x`` and ``y`` differ in length.
    """
    n = x.shape[0]
    if n == 0 or y.shape[0] != n:
        raise ConfigError(
            "evaluate needs a non-empty batch with one label per row; "
            f"got x {tuple(x.shape)} and y {tuple(y.shape)}."
        )
    device, dtype = _params_device_dtype(params)
    was_training = model.training
    model.eval()
    try:
        loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        start = 0
        for xb in x.split(batch_size):  # views of a tensor; chunks fetched from a stream
            yb = y[start : start + xb.shape[0]].to(device)
            start += xb.shape[0]
            xb = xb.to(device=device, dtype=dtype)
            logits = functional_call(model, (dict(params), dict(buffers)), (xb,))  # (B, K)
            loss_sum += F.cross_entropy(logits, yb, reduction="sum").double()
            correct += (logits.argmax(dim=1) == yb).sum()
        stats = torch.stack([loss_sum / n, correct.double() / n]).tolist()  # one transfer
    finally:
        model.train(was_training)
    return float(stats[0]), float(stats[1])


@torch.no_grad()
def recompute_batchnorm(
    model: nn.Module,
    params: Mapping[str, torch.Tensor],
    buffers: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    batch_size: int = 256,
    max_batches: int = 20,
    seed: int = 0,
) -> Mapping[str, torch.Tensor]:
    """Recompute BatchNorm running statistics at ``params`` from data.

    Running means/variances are the plain average over up to ``max_batches``
    batches (PyTorch's ``momentum=None`` semantics). The model's own buffers and
    the given ``buffers`` are left untouched.

    Args:
        model: The module whose structure is used.
        params: Parameter tensors by name.
        buffers: Current buffers by name.
        x: Inputs (a tensor or a :class:`~geoviz.setups.stream.Stream`); when it
            holds more than ``batch_size * max_batches`` rows, a seeded random
            subset is used (a stream's is fetched one batch at a time).
        batch_size: Rows per batch.
        max_batches: Most batches used.
        seed: Seed of the subset choice.

    Returns:
        A new buffers dict, or ``buffers`` itself when the model has no BatchNorm.
    """
    if not has_batchnorm(model):
        return buffers
    device, dtype = _params_device_dtype(params)
    need = batch_size * max_batches
    if x.shape[0] > need:
        generator = torch.Generator().manual_seed(seed)
        x = subset(x, torch.randperm(x.shape[0], generator=generator)[:need])
    # Fresh copies of every buffer so in-place BatchNorm updates touch nothing shared.
    new_buffers = {
        name: buffers.get(name, own).detach().clone().to(device)
        for name, own in model.named_buffers()
    }
    bn_modules = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    for name, _ in bn_modules:
        prefix = f"{name}." if name else ""
        new_buffers[prefix + "running_mean"].zero_()
        new_buffers[prefix + "running_var"].fill_(1.0)
        new_buffers[prefix + "num_batches_tracked"].zero_()
    saved_momentum = [m.momentum for _, m in bn_modules]
    was_training = model.training
    try:
        for _, m in bn_modules:
            m.momentum = None  # cumulative average over the batches seen
        model.train()
        for xb in x.split(batch_size):
            if xb.shape[0] < 2:  # batch statistics need two rows
                break
            functional_call(model, (dict(params), new_buffers), (xb.to(device, dtype),))
    finally:
        for (_, m), momentum in zip(bn_modules, saved_momentum):
            m.momentum = momentum
        model.train(was_training)
    return new_buffers


# ---------------------------------------------------------------------------
# Training and the on-disk network cache


def network_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Folder holding cached networks: ``cache_dir`` or $GEOVIZ_CACHE or ~/.cache/geoviz."""
    root = cache_dir or os.environ.get("GEOVIZ_CACHE") or Path.home() / ".cache" / "geoviz"
    return Path(root).expanduser() / "networks"


def _settings(
    dataset: Dataset,
    model_name: str,
    seed: int,
    config: TrainConfig,
    hidden: Sequence[int],
    classes: Sequence[int] | None,
) -> dict:
    return {
        "dataset": dataset.name,
        # the data's content, not only its sizes: another folder of the same sizes is other data
        "data_digest": data_digest(dataset),
        "train_size": int(dataset.y_train.shape[0]),
        "test_size": int(dataset.y_test.shape[0]),
        "input_shape": list(dataset.input_shape),
        "num_classes": int(dataset.num_classes),
        "model": model_name,
        "hidden": [int(h) for h in hidden] if model_name == "mlp" else None,
        "seed": int(seed),
        "config": dataclasses.asdict(config),
        "classes": None if classes is None else sorted(int(c) for c in classes),
        "code_version": CODE_VERSION,
    }


_DIGESTS: dict[int, tuple[weakref.ref, str]] = {}


def data_digest(dataset: Dataset) -> str:
    """A sha256 prefix of the dataset's tensors (computed once per loaded dataset)."""
    seen = _DIGESTS.get(id(dataset))
    if seen is not None and seen[0]() is dataset.x_train:
        return seen[1]
    digest = hashlib.sha256()
    for tensor in (dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test):
        digest.update(str((tuple(tensor.shape), str(tensor.dtype))).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    _DIGESTS[id(dataset)] = (weakref.ref(dataset.x_train), digest.hexdigest()[:24])
    return _DIGESTS[id(dataset)][1]


def network_key(
    dataset: Dataset,
    model_name: str,
    seed: int,
    config: TrainConfig | None = None,
    hidden: Sequence[int] = (128, 128),
    classes: Sequence[int] | None = None,
) -> str:
    """The cache key (hex sha256 prefix) of a trained network's settings."""
    config = config or default_train_config(dataset.name)
    text = json.dumps(_settings(dataset, model_name, seed, config, hidden, classes),
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def network_cached(key: str, cache_dir: str | os.PathLike | None = None) -> bool:
    """Whether the start network of ``key`` (:func:`network_key`) is cached (in memory or on disk)."""
    path = network_cache_dir(cache_dir) / f"{key}.safetensors"
    return str(path) in _MEMORY_CACHE or path.is_file()


def load_network_info(key: str, cache_dir: str | os.PathLike | None = None) -> dict | None:
    """The JSON written beside a cached network (settings, test accuracy), or None."""
    path = network_cache_dir(cache_dir) / f"{key}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# Below this many multiply-adds per step (parameters x batch rows), one CPU thread
# trains faster: tiny ops gain nothing from threads, and on a busy machine
# OpenMP's spinning threads slow them down up to 30x (measured on digits and
# on fashion-mnist with lenet300 on 2 busy cores).
_SINGLE_THREAD_WORK = 64_000_000


@contextlib.contextmanager
def _cpu_threads(count: int | None):
    """Temporarily use ``count`` intra-op threads (process-wide); None: unchanged."""
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: TrainConfig,
    seed: int,
    progress: Callable[[float], None] | None,
) -> None:
    if config.optimizer == "adam":
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr,
                                      weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=config.lr,
                                    momentum=config.momentum,
                                    weight_decay=config.weight_decay)
    n = x.shape[0]
    steps_per_epoch = -(-n // config.batch_size)
    total = steps_per_epoch * config.epochs
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total)
                 if config.cosine else None)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    step, last_report = 0, time.monotonic()
    for _ in range(config.epochs):
        order = torch.randperm(n, generator=generator).to(x.device)
        for start in range(0, n, config.batch_size):
            index = order[start : start + config.batch_size]
            if index.numel() < 2 and step > 0:  # a 1-row batch breaks BatchNorm
                continue
            loss = F.cross_entropy(model(x[index]), y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            step += 1
            if progress is not None and time.monotonic() - last_report > 0.2:
                last_report = time.monotonic()
                progress(step / total)
    if progress is not None:
        progress(1.0)


class _Recent(OrderedDict):
    """A dict that keeps only the ``limit`` entries stored last (a server's memory stays bounded)."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit = max(1, limit)

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)


# In-process cache: key -> CPU copies of (params, buffers). Bounded: on a shared server each
# new seed adds a network (the disk cache keeps them all; one evicted here is read from disk).
_MEMORY_CACHE: _Recent = _Recent(int(os.environ.get("GEOVIZ_CACHED_NETWORKS", "16")))


def _damage(state: Mapping[str, torch.Tensor], model: nn.Module) -> str | None:
    """Why a cached state cannot be this model's trained weights; None when it can."""
    expected = {f"param.{k}": v for k, v in model.named_parameters()}
    expected.update({f"buffer.{k}": v for k, v in model.named_buffers()})
    if set(state) != set(expected):
        missing = sorted(set(expected) - set(state))
        return f"its tensors are not the model's ({'missing ' + missing[0] if missing else 'extra ones'})"
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            return f"{name} has shape {tuple(tensor.shape)}, the model's is {tuple(expected[name].shape)}"
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return f"{name} holds NaN or inf"
    return None


def _load_cached(path: Path, model: nn.Module) -> tuple[Tensors, Tensors] | None:
    """The cached (params, buffers) at ``path``; None (saying why) when absent or damaged.

    A damaged entry is a cache miss: it is logged, removed, and the network retrained.
    """
    if not path.exists() and not path.is_symlink():
        return None
    why = None
    if path.is_symlink() or not path.is_file():
        why = "it is not a file"
    else:
        try:
            state = load_file(str(path))
        except Exception as err:  # safetensors' errors have no common base: any of them is damage
            why = f"it cannot be read ({type(err).__name__})"
        else:
            why = _damage(state, model)
    if why is None:
        return _split_state(state)
    _log.warning("The cached start network %s is damaged (%s); training it again.", path.name, why)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    return None


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock on ``path`` (a lock file beside a cache entry), across processes
    and threads: two runs asking for the same untrained network train it once."""
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _split_state(state: Mapping[str, torch.Tensor]) -> tuple[Tensors, Tensors]:
    params = {k[len("param."):]: v for k, v in state.items() if k.startswith("param.")}
    buffers = {k[len("buffer."):]: v for k, v in state.items() if k.startswith("buffer.")}
    return params, buffers


def train_network(
    dataset: Dataset,
    model_name: str,
    seed: int,
    config: TrainConfig | None = None,
    hidden: Sequence[int] = (128, 128),
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike | None = None,
    progress: Callable[[float], None] | None = None,
    classes: Sequence[int] | None = None,
) -> tuple[nn.Module, Tensors, Tensors]:
    """Train (or load from cache) a start network.

    The model is initialised under ``torch.manual_seed(seed)`` inside
    ``torch.random.fork_rng`` (the caller's random state is untouched) and trained
    on the shuffled train set, optionally restricted to labels in ``classes``.
    Results are cached in-process and on disk by a key over every setting.

    Args:
        dataset: The data.
        model_name: One of ``geoviz.setups.models.MODEL_NAMES``.
        seed: Seed of the initialisation and the shuffling.
        config: Training settings; ``default_train_config(dataset.name)`` if None.
        hidden: Hidden widths of ``"mlp"``.
        device: Where to train and where the results live.
        cache_dir: Cache root (else $GEOVIZ_CACHE, else ~/.cache/geoviz).
        progress: Called with the fraction done, at most ~5 times a second; not
            called when the network comes from a cache.
        classes: Train only on samples with these labels (continual-learning task 1).

    Returns:
        ``(model, params, buffers)``: the module in eval mode on ``device`` and
        detached copies of its parameters and buffers on ``device``.

    Raises:
        ConfigError: Unknown model, bad config, or ``classes`` selecting no sample.
    """
    device = resolve_device(device)
    config = config or default_train_config(dataset.name)
    config.validate()
    hidden = tuple(int(h) for h in hidden)
    classes = None if classes is None else tuple(sorted(int(c) for c in classes))
    key = network_key(dataset, model_name, seed, config, hidden, classes)
    folder = network_cache_dir(cache_dir)
    weights_path = folder / f"{key}.safetensors"
    memory_key = str(weights_path)
    if memory_key not in _MEMORY_CACHE:
        check_writable_dir(folder, "the start-network cache (GEOVIZ_CACHE or ~/.cache/geoviz)")

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        model = build_model(model_name, dataset.input_shape, dataset.num_classes,
                            hidden=hidden, dataset=dataset.name)
    model.to(device)

    # the in-process cache is keyed by the file too: another cache folder is
    # another cache (a test that points at an empty folder must really train)
    cached = _MEMORY_CACHE.get(memory_key)
    if cached is not None:
        model.load_state_dict({**cached[0], **cached[1]})
        lock = contextlib.nullcontext()
    else:
        lock = _locked(folder / f"{key}.lock")
    with lock:
        if cached is None:  # another process may have trained it while we waited
            cached = _load_cached(weights_path, model)
            if cached is not None:
                _MEMORY_CACHE[memory_key] = cached
                model.load_state_dict({**cached[0], **cached[1]})
        if cached is None:
            _train_and_store(model, dataset, model_name, seed, config, hidden, classes, device, progress,
                             key, folder, weights_path)

    model.eval()
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
    return model, params, buffers


def _train_and_store(model, dataset, model_name, seed, config, hidden, classes, device, progress,
                     key: str, folder: Path, weights_path: Path) -> None:
    """Train ``model`` in place and write it (with its info JSON) to the cache."""
    x, y = dataset.x_train, dataset.y_train
    if classes is not None:
        mask = torch.isin(y, torch.tensor(classes, dtype=y.dtype))
        if not bool(mask.any()):
            raise ConfigError(
                f"No training sample has a label in {list(classes)}; labels run from "
                f"0 to {dataset.num_classes - 1}."
            )
        x, y = x[mask], y[mask]
    started = time.monotonic()
    work = sum(p.numel() for p in model.parameters()) * config.batch_size
    threads = 1 if device.type == "cpu" and work < _SINGLE_THREAD_WORK else None
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
            _cpu_threads(threads):
        torch.manual_seed(seed)
        _fit(model, x.to(device), y.to(device), config, seed, progress)
    seconds = time.monotonic() - started
    model.eval()
    params_cpu = {k: v.detach().cpu().clone() for k, v in model.named_parameters()}
    buffers_cpu = {k: v.detach().cpu().clone() for k, v in model.named_buffers()}
    test_loss, test_acc = evaluate(model, dict(model.named_parameters()),
                                   dict(model.named_buffers()),
                                   dataset.x_test, dataset.y_test)
    info = {
        "key": key,
        "settings": _settings(dataset, model_name, seed, config, hidden, classes),
        "test_loss": test_loss,
        "test_accuracy": test_acc,
        "train_seconds": round(seconds, 3),
        "device": str(device),
        "torch": torch.__version__,
    }
    state = {f"param.{k}": v.contiguous() for k, v in params_cpu.items()}
    state.update({f"buffer.{k}": v.contiguous() for k, v in buffers_cpu.items()})
    _atomic_write(folder / f"{key}.json",
                  lambda tmp: Path(tmp).write_text(json.dumps(info, indent=2)))
    _atomic_write(weights_path, lambda tmp: save_file(state, tmp))
    _MEMORY_CACHE[str(weights_path)] = (params_cpu, buffers_cpu)
