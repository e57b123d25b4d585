"""One check for every setting with a finite range, shared by the CLI, the pages and the Python API.

Every number a user can set has a range here (:data:`LIMITS`); a config object's
``validate()`` calls :func:`check_fields` first, so a value out of range is refused
with one sentence before any data is loaded or any network trained. The checks of a
config's own meaning (a sparsity below 1, a known scenario) stay in its ``validate``.
Also here: the output folder is checked before the work starts
(:func:`check_output_dir`), the memory a network would need is estimated before it
is built (:func:`check_network_size`), and a loaded dataset is checked for labels and
shapes that would break training later with an unreadable error
(:func:`check_dataset`).

No Streamlit, no torch at import: the pages and the CLI call this before anything heavy.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from geoviz.errors import ConfigError

__all__ = [
    "Range",
    "LIMITS",
    "check_value",
    "check_fields",
    "check_settings",
    "check_network_size",
    "check_output_dir",
    "check_writable_dir",
    "check_runs_folder",
    "check_dataset",
    "cut",
]

SEED_MAX = 2**32 - 1  # numpy's seeds stop here; torch's would go further


@dataclass(frozen=True)
class Range:
    """The allowed values of one number: ``low`` .. ``high``, ends open or closed."""

    low: float
    high: float
    integer: bool = False
    low_open: bool = False  # low itself is not allowed (a positive number)

    def holds(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.integer and not isinstance(value, int):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        return above and value <= self.high

    def describe(self) -> str:
        kind = "a whole number" if self.integer else "a finite number"
        if self.low_open and self.low == 0:
            return f"a positive finite number up to {_fmt(self.high)}"
        return f"{kind} from {_fmt(self.low)} to {_fmt(self.high)}"


def _fmt(x: float) -> str:
    if isinstance(x, int) or (isinstance(x, float) and x.is_integer() and abs(x) < 1e7):
        return f"{int(x):,}".replace(",", "")
    return f"{x:g}"


_WHOLE = 10_000_000  # a count of steps, rows or samples: beyond it no run here ends
LIMITS: dict[str, Range] = {
    # setup
    "seed": Range(0, SEED_MAX, integer=True),
    "seed_b": Range(0, SEED_MAX, integer=True),
    "memory_seed": Range(0, SEED_MAX, integer=True),
    "threads": Range(1, 1024, integer=True),
    "hidden": Range(1, 2**31 - 1, integer=True),  # each width; the whole network: check_network_size
    # solver
    # a step longer than this overflows float32 weights at once (a divergence, said as such)
    "eps": Range(0, 1e15, low_open=True),
    "damping": Range(0, 1e6, low_open=True),
    "cg_iterations": Range(1, 1000, integer=True),
    "cg_tolerance": Range(0, 1),  # 0: always all cg_iterations (the benchmarks)
    "power_iterations": Range(1, 1000, integer=True),
    "eigen_refresh": Range(1, _WHOLE, integer=True),
    "refresh_iterations": Range(1, 1000, integer=True),
    # more rows than any training set here holds (60,000): a bigger number is a typo
    "metric_batch": Range(1, 100_000, integer=True),
    "penalty_lr": Range(0, 10, low_open=True),
    "penalty_weight": Range(0, 1e9, low_open=True),
    "penalty_ramp": Range(1, _WHOLE, integer=True),
    "explode_factor": Range(1, 1e300, low_open=True),
    # applications
    "steps": Range(1, _WHOLE, integer=True),
    "eval_every": Range(1, _WHOLE, integer=True),
    "tolerance": Range(0, 1e6, low_open=True),
    "monitor_size": Range(1, _WHOLE, integer=True),
    "mask_every": Range(0, _WHOLE, integer=True),  # 0: the start's mask, fixed
    "finetune_lr": Range(0, 10, low_open=True),
    "finetune_batch": Range(1, 100_000, integer=True),
    "memory": Range(1, 100_000, integer=True),  # the metric batch of a continual path; at most task 1's size
    "batch_size": Range(1, 100_000, integer=True),
    "baseline_lr": Range(0, 10, low_open=True),
    "ewc_lambda": Range(0, 1e9),
    "ewc_samples": Range(1, 100_000, integer=True),
    "points": Range(3, 10_001, integer=True),
    "eval_subset": Range(0, _WHOLE, integer=True),
    "bezier_lr": Range(0, 10, low_open=True),
    "bezier_batch": Range(1, 100_000, integer=True),
    "grid": Range(0, 201, integer=True),
    "margin": Range(0, 2),
    # training of start networks
    "epochs": Range(1, 100_000, integer=True),
    "lr": Range(0, 10, low_open=True),
    "weight_decay": Range(0, 10),
    "momentum": Range(0, 1),
}


def cut(text, limit: int = 400) -> str:
    """``text`` as a string of at most ``limit`` characters (a long one ends in '…')."""
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_value(name: str, value, limits: dict[str, Range] | None = None):
    """``value`` if it lies in ``name``'s range; ConfigError with one sentence otherwise.

    A whole number given as a float (``3.0``) is accepted as the int. Names without a
    range pass unchecked.
    """
    table = LIMITS if limits is None else limits
    rule = table.get(name)
    if rule is None or value is None:
        return value
    if rule.integer and isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        value = int(value)
    if not rule.holds(value):
        raise ConfigError(f"{name} must be {rule.describe()}, got {cut(repr(value), 60)}.")
    return value


def check_settings(values: dict) -> dict:
    """Every named value of ``values`` checked against :data:`LIMITS` (a new dict)."""
    checked = {}
    for name, value in values.items():
        if name == "hidden" and isinstance(value, (tuple, list)):
            checked[name] = tuple(check_value(name, v) for v in value)
        else:
            checked[name] = check_value(name, value)
    return checked


def check_fields(config) -> None:
    """Check every field of a dataclass config that has a range (ConfigError on the first)."""
    check_settings({f.name: getattr(config, f.name) for f in dataclasses.fields(config)})


# -- memory a network needs --------------------------------------------------------
_INPUT_SIZE = {"digits": 64, "fashion-mnist": 784, "mnist": 784, "cifar10": 3072, "cifar100": 3072}
_CLASSES = {"cifar100": 100}
# float32 copies of the weight vector a run holds at once: the parameters, their
# gradient, two Adam moments while training, w0, w, the step, the CG vectors (4),
# the snapshot budget's copies: about 16
_COPIES = 16


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def mlp_parameters(dataset: str, hidden) -> int:
    """Weights and biases of the MLP input-hidden...-classes for ``dataset``."""
    sizes = [_INPUT_SIZE.get(dataset, 3072), *[int(h) for h in hidden], _CLASSES.get(dataset, 10)]
    return sum((a + 1) * b for a, b in zip(sizes, sizes[1:]))


def check_network_size(dataset: str, model: str, hidden, memory_bytes: int | None = None) -> None:
    """Refuse an MLP whose weights alone would not fit in memory, saying what it needs."""
    if model != "mlp":
        return
    for width in hidden:
        check_value("hidden", width)
    count = mlp_parameters(dataset, hidden)
    need = count * 4 * _COPIES
    have = _physical_memory() if memory_bytes is None else memory_bytes
    if need > have // 2:
        widths = ",".join(str(int(h)) for h in hidden)
        raise ConfigError(
            f"hidden widths {widths} make a network of {count:,} parameters, which needs about "
            f"{need / 2**30:,.1f} GB of memory; this machine has {have / 2**30:,.1f} GB (half of it may be used)."
        )


# -- where runs are written -----------------------------------------------------------
def check_output_dir(out: str | os.PathLike | None, default: Path | None = None) -> Path:
    """The folder run folders go to, created and shown writable before any work starts.

    Args:
        out: the folder asked for (``--out``); None: ``default`` (``$GEOVIZ_RUNS`` or ./runs).
        default: the folder used when ``out`` is None.
    """
    if out is not None and str(out).strip() == "":
        raise ConfigError("The output folder is an empty string; give a folder name (or leave --out out for ./runs).")
    if out is None:
        from geoviz.record.runs import default_runs_dir

        root = default if default is not None else default_runs_dir()
        where = "the runs folder (GEOVIZ_RUNS or ./runs)"
    else:
        root = Path(out)
        where = "the output folder"
    return check_writable_dir(root, where)


def check_writable_dir(root: str | os.PathLike, where: str) -> Path:
    """``root`` created if missing and shown writable; ConfigError naming ``where`` otherwise."""
    root = Path(root).expanduser()
    if root.exists() and not root.is_dir():
        raise ConfigError(f"{where[0].upper() + where[1:]} {cut(root, 200)} is a file, not a folder; name a folder.")
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".geoviz-write-test.", dir=root)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ConfigError(f"Cannot write in {where} {cut(root, 200)}: {err.strerror or err}.") from None
    return root


def check_runs_folder(out: str | os.PathLike | None) -> Path | None:
    """The folder to list runs from; None when the default one does not exist yet."""
    if out is None:
        from geoviz.record.runs import default_runs_dir

        root = default_runs_dir()
        if root.exists() and not root.is_dir():
            raise ConfigError(f"The runs folder {cut(root, 200)} (GEOVIZ_RUNS or ./runs) is a file, not a folder.")
        return root if root.is_dir() else None
    if str(out).strip() == "":
        raise ConfigError("The runs folder is an empty string; give the folder that holds the run folders.")
    root = Path(out).expanduser()
    if not root.exists():
        raise ConfigError(f"There is no folder {cut(root, 200)}; give the folder that holds the run folders.")
    if not root.is_dir():
        raise ConfigError(f"{cut(root, 200)} is a file, not a folder of run folders.")
    return root


# -- a loaded dataset -------------------------------------------------------------------
def check_dataset(data) -> None:
    """Refuse a dataset whose labels or image shapes would break training later."""
    name = data.name
    for split in ("train", "test"):
        x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        if x.ndim != 4 or tuple(x.shape[1:]) != tuple(data.input_shape):
            raise ConfigError(
                f"The {name} {split} images have shape {tuple(x.shape[1:])}, expected {tuple(data.input_shape)}; "
                "the data files are damaged or of another dataset."
            )
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise ConfigError(
                f"The {name} {split} set has {x.shape[0]} images but {tuple(y.shape)} labels; the data files do not match."
            )
        if y.numel() == 0:
            raise ConfigError(f"The {name} {split} set is empty.")
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= data.num_classes:
            raise ConfigError(
                f"The {name} {split} labels run from {low} to {high}, outside 0 to {data.num_classes - 1}; "
                "the label file is damaged."
            )
