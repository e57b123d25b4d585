"""The run record: one folder per run, written as the run grows, read back the same way.

A run folder holds

    config.json       every setting (application, setup, solver, seed, versions)
    status.json       running / paused / finished / stopped / diverged / interrupted,
                      with a message, the pid and a heartbeat; written atomically
    steps.jsonl       one JSON object per finished step, appended and flushed, so a
                      run killed half-way keeps every finished step
    steps.parquet     the same table, rewritten atomically now and then and at the end
    summary.json      the final figures (baselines, accuracies), when there are any
    snapshots/        flat weight vectors (safetensors) on a memory budget, for PCA
    weights/          whole parameter dicts (start, final, ...) as safetensors

Nothing here is ever unpickled.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import platform
import secrets
import stat
import threading
import time
import weakref
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from geoviz.core.metric import FlatParams
from geoviz.record.sketch import SparseSignSketch

__all__ = [
    "default_runs_dir",
    "RunWriter",
    "RunRecord",
    "read_run",
    "list_runs",
    "zip_run",
    "UnreadableRun",
    "FINAL_STATUSES",
]

FINAL_STATUSES = ("finished", "stopped", "diverged", "interrupted", "failed")
_HEARTBEAT_STALE_S = 120.0


def default_runs_dir() -> Path:
    """$GEOVIZ_RUNS, else ./runs."""
    return Path(os.environ.get("GEOVIZ_RUNS", "runs"))


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(3)}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _json_default(value):
    if isinstance(value, (tuple, set)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return str(value)


def _dumps(obj) -> str:
    # NaN is written as null so that every reader (browsers too) can parse it
    return json.dumps(_nan_to_none(obj), default=_json_default)


def _nan_to_none(obj):
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return obj


def versions() -> dict[str, str]:
    import geoviz

    return {
        "geoviz": getattr(geoviz, "__version__", "0"),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


class SnapshotBudget:
    """Which steps to keep weights of, so that the kept ones fit a byte budget.

    Keeps every ``interval``-th step; when the budget would be exceeded, every other
    kept snapshot is dropped and the interval doubles. The trajectory stays evenly
    sampled and its memory bounded.
    """

    def __init__(self, bytes_per_snapshot: int, budget_bytes: int, interval: int = 1, max_count: int = 200):
        # a PCA of a trajectory needs a few hundred points at most
        self.capacity = max(2, min(max_count, budget_bytes // max(1, bytes_per_snapshot)))
        self.interval = max(1, interval)
        self.kept: list[int] = []

    def wants(self, step: int) -> bool:
        return step % self.interval == 0

    def add(self, step: int) -> list[int]:
        """Record that ``step`` was kept; return the steps to drop now."""
        self.kept.append(step)
        dropped: list[int] = []
        while len(self.kept) > self.capacity:
            self.interval *= 2
            keep = [s for s in self.kept if s % self.interval == 0 or s == self.kept[0]]
            dropped += [s for s in self.kept if s not in keep]
            self.kept = keep
        return dropped


# seconds between heartbeats of a live run, in every phase (path, baselines, summary):
# a reader takes a "running" status older than _HEARTBEAT_STALE_S for a dead run
HEARTBEAT_EVERY = 10.0


def _start_heartbeat(writer: RunWriter) -> None:
    """A daemon thread that beats for ``writer`` until it is closed or forgotten."""
    ref = weakref.ref(writer)

    def beat() -> None:
        while True:
            time.sleep(min(HEARTBEAT_EVERY, 1.0))
            current = ref()
            if current is None or current._closed:
                return
            current.heartbeat()
            del current

    threading.Thread(target=beat, name="geoviz-heartbeat", daemon=True).start()


def _save_file(tensors: dict, path: Path, metadata: dict | None = None) -> None:
    """safetensors' save_file, whose I/O errors (a full disk) become the OSError they are."""
    try:
        save_file(tensors, str(path), metadata=metadata)
    except OSError:
        raise
    except Exception as err:  # SafetensorError: "I/O error: No space left on device (os error 28)"
        text = str(err)
        if "os error" not in text and "I/O error" not in text:
            raise
        code = errno.ENOSPC if "No space left" in text else errno.EIO
        raise OSError(code, os.strerror(code), str(path)) from None


def _thin_old_runs(root: Path, spare: Path) -> None:
    """Keep the runs folder on its disk budget (geoviz.record.disk) as a run starts."""
    from geoviz.errors import GeovizError
    from geoviz.record.disk import enforce_budget

    try:
        freed = enforce_budget(root, spare=spare)
    except (OSError, GeovizError) as err:
        logging.getLogger("geoviz").warning("The runs folder's budget was not enforced: %s", err)
        return
    if freed:
        logging.getLogger("geoviz").info("Thinned old runs' snapshots by %.1f MB to keep %s on its budget.", freed / 2**20, root)


def _sweep_temp_files(folder: Path) -> None:
    """Remove temporary files a killed or failed write left in a run folder."""
    for sub in (folder, folder / "weights", folder / "snapshots"):
        try:
            for tmp in sub.glob(".*tmp*"):
                if tmp.is_file() and not tmp.is_symlink():
                    tmp.unlink(missing_ok=True)
        except OSError:
            pass


class RunWriter:
    """Writes one run folder as the run grows.

    Args:
        root: folder that holds run folders.
        application: ``sparsify``, ``continual`` or ``connect``.
        config: every setting, JSON-serialisable (dataclasses as dicts).
        snapshot_budget_mb: memory budget of the weight snapshots (recorded in the config as ``snapshot_mb``).
        name: folder name; a time stamp plus random suffix by default.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        application: str,
        config: dict,
        snapshot_budget_mb: float = 64.0,
        name: str | None = None,
    ):
        self.root = Path(root)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.dir = self.root / (name or f"{stamp}-{application}-{secrets.token_hex(3)}")
        (self.dir / "snapshots").mkdir(parents=True, exist_ok=False)
        (self.dir / "weights").mkdir()
        self.application = application
        self.started = time.time()
        # the snapshot budget is a setting of the run (CLI --snapshot-mb, snapshot_mb=, the pages')
        self.config = {"application": application, **config, "snapshot_mb": snapshot_budget_mb, "versions": versions()}
        _atomic_write_text(self.dir / "config.json", json.dumps(self.config, indent=2, default=_json_default))
        self._steps = open(self.dir / "steps.jsonl", "a", buffering=1)
        self._rows: list[dict] = []
        self._last_parquet = time.time()
        self._last_heartbeat = 0.0
        self._budget_mb = snapshot_budget_mb
        self._budget: SnapshotBudget | None = None
        self.status = "running"
        self._status_lock = threading.Lock()
        self._status_fields: tuple[str, dict] = ("", {})
        self._closed = False
        self._snapshot_failed = False
        self.write_status("running")
        _start_heartbeat(self)
        _thin_old_runs(self.root, self.dir)

    # -- status -------------------------------------------------------------
    def write_status(self, status: str, message: str = "", **extra) -> None:
        with self._status_lock:
            if self._closed:
                return  # the final status is written once, by close(), and stays
            self._write_status(status, message, extra)

    def _write_status(self, status: str, message: str, extra: dict) -> None:
        self.status = status
        self._status_fields = (message, extra)
        self._last_heartbeat = time.time()
        text = _dumps(
            {
                "status": status,
                "message": message,
                "pid": os.getpid(),
                "host": platform.node(),
                "started": self.started,
                "updated": self._last_heartbeat,
                "steps": len(self._rows),
                **extra,
            }
        )
        try:
            _atomic_write_text(self.dir / "status.json", text)
        except OSError:  # a full disk: no room for a new file; overwrite the old one in place
            _sweep_temp_files(self.dir)
            with open(self.dir / "status.json", "r+") as fh:
                fh.write(text)
                fh.truncate()

    def heartbeat(self) -> None:
        """Rewrite the status with a fresh time stamp (from the heartbeat thread)."""
        with self._status_lock:
            if not self._closed and time.time() - self._last_heartbeat >= HEARTBEAT_EVERY:
                message, extra = self._status_fields
                try:
                    self._write_status(self.status, message, extra)
                except OSError:
                    pass  # the next beat tries again; the run's own writes report the error

    # -- steps ----------------------------------------------------------------
    def append(self, row: dict) -> None:
        """Add one finished step (flushed at once)."""
        self._rows.append(row)
        self._steps.write(_dumps(row) + "\n")
        self._steps.flush()
        now = time.time()
        if now - self._last_parquet > 5.0:
            self.write_table()
        if now - self._last_heartbeat > 2.0:
            self.write_status(self.status)

    def write_table(self) -> None:
        if not self._rows:
            return
        tmp = self.dir / f".steps.{os.getpid()}.tmp.parquet"
        try:
            pd.DataFrame(self._rows).to_parquet(tmp, index=False)
            os.replace(tmp, self.dir / "steps.parquet")
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._last_parquet = time.time()

    # -- weights --------------------------------------------------------------
    def wants_snapshot(self, step: int, numel: int) -> bool:
        """Whether the budget keeps ``step``'s snapshot of ``numel`` numbers."""
        if self._budget is None:
            self._budget = SnapshotBudget(numel * 4, int(self._budget_mb * 2**20))
        return self._budget.wants(step)

    def snapshot(self, step: int, w: torch.Tensor, sketch: SparseSignSketch | None = None) -> None:
        """Keep the flat weights of ``step`` if the budget wants them (``w``: their
        projection by ``sketch`` when given; the sketch is kept in the file's metadata)."""
        if not self.wants_snapshot(step, w.numel()):
            return
        file = self.dir / "snapshots" / f"{step:07d}.safetensors"
        try:
            _save_file({"w": w.detach().float().cpu().contiguous()}, file, metadata=sketch.to_metadata() if sketch else None)
        except BaseException:  # a full disk or a kill: no half-written snapshot stays
            self._snapshot_failed = True
            file.unlink(missing_ok=True)
            raise
        for old in self._budget.add(step):
            (self.dir / "snapshots" / f"{old:07d}.safetensors").unlink(missing_ok=True)

    @property
    def snapshots_complete(self) -> bool:
        """Every snapshot the budget wanted is on disk (none failed to write)."""
        return self._budget is not None and not self._snapshot_failed

    def save_weights(self, name: str, params: dict[str, torch.Tensor]) -> None:
        tensors = {k: v.detach().cpu().contiguous() for k, v in params.items()}
        tmp = self.dir / "weights" / f".{name}.tmp"
        # safetensors keeps its own order of names: the flat order goes in the metadata
        try:
            _save_file(tensors, tmp, metadata={"order": json.dumps(list(tensors))})
            os.replace(tmp, self.dir / "weights" / f"{name}.safetensors")
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def write_summary(self, summary: dict) -> None:
        _atomic_write_text(self.dir / "summary.json", json.dumps(_nan_to_none(summary), indent=2, default=_json_default))

    def close(self, status: str, message: str = "") -> None:
        """Write the full table and the final status (the status even on a full disk)."""
        try:
            self.write_table()
        except OSError as err:  # steps.jsonl already holds every step
            _sweep_temp_files(self.dir)
            message += f"; the step table (parquet) could not be written: {err.strerror or err}"
        try:
            self._steps.close()
        except OSError:
            pass
        with self._status_lock:
            self._write_status(status, message, {})
            self._closed = True


@dataclass
class RunRecord:
    """A run folder read back."""

    path: Path
    config: dict
    status: dict
    table: pd.DataFrame
    summary: dict

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def state(self) -> str:
        return self.status.get("status", "unknown")

    @property
    def message(self) -> str:
        return str(self.status.get("message", ""))

    def snapshot_steps(self) -> list[int]:
        files = (self.path / "snapshots").glob("*.safetensors")
        return sorted(int(p.stem) for p in files if p.stem.isdigit() and p.is_file() and not p.is_symlink())

    def sketch(self) -> SparseSignSketch | None:
        """The random projection the snapshots were kept as (None: full weights)."""
        steps = self.snapshot_steps()
        if not steps:
            return None
        with safe_open(str(self.path / "snapshots" / f"{steps[0]:07d}.safetensors"), framework="pt") as f:
            return SparseSignSketch.from_metadata(f.metadata())

    def snapshots(self) -> tuple[list[int], torch.Tensor]:
        """(steps, stacked flat weights (S, P)), or their projections (S, k) when
        :meth:`sketch` is set."""
        steps = self.snapshot_steps()
        if not steps:
            return [], torch.empty(0)
        ws = [load_file(str(self.path / "snapshots" / f"{s:07d}.safetensors"))["w"] for s in steps]
        return steps, torch.stack(ws)

    def weights(self, name: str) -> dict[str, torch.Tensor]:
        """Saved parameters by name, in the model's (flat vector's) order where recorded."""
        return self._load_weights(name)[0]

    def unflatten(self, w: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """A flat snapshot as named parameters, laid out like the start weights.

        None when the run did not record its parameters' order (runs before it did).
        """
        if not (self.path / "weights" / "start.safetensors").exists():
            return None
        start, ordered = self._load_weights("start")
        layout = FlatParams(tuple(start), tuple(t.shape for t in start.values()))
        if not ordered or layout.size != w.numel():
            return None
        return layout.unflatten(w)

    def _load_weights(self, name: str) -> tuple[dict[str, torch.Tensor], bool]:
        """(tensors, whether they are in the recorded flat order) of one weights file."""
        file = str(self.path / "weights" / f"{name}.safetensors")
        tensors = load_file(file)
        with safe_open(file, framework="pt") as f:
            order = json.loads((f.metadata() or {}).get("order", "null"))
        if order and set(order) == set(tensors):
            return {n: tensors[n] for n in order}, True
        return tensors, False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# A run folder may come from anywhere (a download, another user): every file is read
# as untrusted. A link is never followed; sizes are capped; a file of the wrong shape
# makes the run "unreadable: <why>" and leaves the other runs alone.
_JSON_LIMIT = 4 * 2**20  # bytes of config.json / status.json / summary.json
_STEPS_LIMIT = 256 * 2**20  # bytes of steps.jsonl
_TEXT_LIMIT = 2000  # characters of a status message kept
_MAX_STEP = 10**9


class UnreadableRun(ValueError):
    """A run folder whose files cannot be read as a run record; the message says why."""


def _regular_file(path: Path, limit: int) -> bool:
    """Whether ``path`` is there; UnreadableRun if it is a link, not a file, or too large."""
    if path.is_symlink():
        raise UnreadableRun(f"{path.name} is a link")
    if not path.exists():
        return False
    if not path.is_file():
        raise UnreadableRun(f"{path.name} is not a file")
    if path.stat().st_size > limit:
        raise UnreadableRun(f"{path.name} is larger than {limit // 2**20} MB")
    return True


def _read_object(path: Path) -> dict:
    """A JSON file that must hold one object ({} when absent)."""
    if not _regular_file(path, _JSON_LIMIT):
        return {}
    try:
        value = json.loads(path.read_text(errors="replace"))
    except (ValueError, RecursionError) as err:
        raise UnreadableRun(f"{path.name} is not valid JSON ({type(err).__name__})") from None
    if not isinstance(value, dict):
        raise UnreadableRun(f"{path.name} holds a {type(value).__name__}, not an object")
    return value


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _clean_status(status: dict) -> dict:
    """Status fields of the types the readers use; a long message cut."""
    for key in ("status", "message", "host"):
        if key in status and not isinstance(status[key], str):
            raise UnreadableRun(f"status.json: {key} is a {type(status[key]).__name__}, not text")
    for key in ("pid", "updated", "started", "steps"):
        if key in status and status[key] is not None and not _is_number(status[key]):
            raise UnreadableRun(f"status.json: {key} is a {type(status[key]).__name__}, not a number")
    if len(status.get("message", "")) > _TEXT_LIMIT:
        status = {**status, "message": status["message"][: _TEXT_LIMIT - 1] + "…"}
    return status


def _clean_row(row, number: int) -> dict:
    if not isinstance(row, dict):
        raise UnreadableRun(f"steps.jsonl line {number} is a {type(row).__name__}, not a step record")
    step = row.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or not 0 <= step <= _MAX_STEP:
        raise UnreadableRun(f"steps.jsonl line {number}: step is {str(step)[:40]!r}, not a whole number of steps")
    # only plain values: a nested list or object in a cell breaks every table below
    return {k: v for k, v in row.items() if isinstance(k, str) and (v is None or isinstance(v, (int, float, str, bool)))}


def _read_table(path: Path) -> pd.DataFrame:
    rows = []
    jsonl = path / "steps.jsonl"
    if _regular_file(jsonl, _STEPS_LIMIT):
        with open(jsonl, errors="replace") as fh:
            for number, line in enumerate(fh, 1):
                try:
                    row = json.loads(line)
                except (json.JSONDecodeError, RecursionError):
                    break  # a line cut by a kill: every line before it is whole
                rows.append(_clean_row(row, number))
    parquet = path / "steps.parquet"
    if _regular_file(parquet, _STEPS_LIMIT):
        try:
            table = pd.read_parquet(parquet)
        except Exception as err:  # pyarrow's errors have no common base
            raise UnreadableRun(f"steps.parquet cannot be read ({type(err).__name__})") from None
        if len(table) >= len(rows):
            if "step" not in table or not pd.api.types.is_integer_dtype(table["step"]):
                raise UnreadableRun("steps.parquet has no whole-number step column")
            return table
    return pd.DataFrame(rows)


def writer_gone(status: dict) -> bool:
    """Whether the process that wrote a status.json (pid, host, heartbeat) is gone.

    Dead when on this host and its pid is gone; else stale when a ``running`` heartbeat
    is older than two minutes (a paused run writes none).
    """
    same_host = status.get("host") == platform.node()
    dead = same_host and not _pid_alive(int(status.get("pid") or -1))
    stale = status.get("status") == "running" and time.time() - (status.get("updated") or 0) > _HEARTBEAT_STALE_S
    return dead or stale


def read_folders(root: Path, marker: str, read, unreadable=None) -> list:
    """``read(folder)`` of every folder under ``root`` that holds ``marker``, newest first.

    Links are never followed (a folder that is a link may point anywhere). A folder
    whose read raises is given to ``unreadable(folder, why)`` when that is given, and
    skipped otherwise.
    """
    if not root.is_dir():
        return []
    found = []
    for sub in sorted(root.iterdir(), reverse=True):
        if sub.is_symlink() or not sub.is_dir():
            continue
        if (sub / marker).exists() or (sub / marker).is_symlink():
            try:
                found.append(read(sub))
            except (OSError, ValueError) as err:
                if unreadable is not None:
                    found.append(unreadable(sub, str(err)))
    return found


def read_run(path: str | os.PathLike) -> RunRecord:
    """Read a run folder; a ``running`` run whose process is gone reads as ``interrupted``.

    Raises:
        FileNotFoundError: no config.json there.
        UnreadableRun (a ValueError): a file of the folder is a link, too large, or not
            of the shape a run record has; the message says which and why.
    """
    path = Path(path)
    if path.is_symlink():
        raise UnreadableRun(f"{path.name} is a link, not a run folder")
    if not (path / "config.json").exists() and not (path / "config.json").is_symlink():
        raise FileNotFoundError(f"{path} is not a geoviz run folder (it has no config.json).")
    config = _read_object(path / "config.json")
    status = _clean_status(_read_object(path / "status.json"))
    summary = _read_object(path / "summary.json")
    table = _read_table(path)
    if status.get("status") in ("running", "paused"):
        if writer_gone(status):
            status = {**status, "status": "interrupted", "message": "the process writing this run ended before it finished"}
    if status.get("status") in FINAL_STATUSES:
        _sweep_temp_files(path)  # a kill during a write (even SIGKILL) leaves its temp file behind
    return RunRecord(path, config, status, table, summary)


def _unreadable(path: Path, why: str) -> RunRecord:
    status = {"status": "unreadable", "message": f"unreadable: {why[:_TEXT_LIMIT]}"}
    return RunRecord(path, {}, status, pd.DataFrame({"step": pd.Series([], dtype="int64")}), {})


def list_runs(root: str | os.PathLike | None = None) -> list[RunRecord]:
    """Every run folder under ``root``, newest first; one that cannot be read is listed
    with the status ``unreadable`` and a message saying why. Links are skipped."""
    return read_folders(Path(root) if root is not None else default_runs_dir(), "config.json", read_run, _unreadable)


def zip_run(path: str | os.PathLike, dest_dir: str | os.PathLike) -> Path:
    """A zip of the run folder's regular files; returns its path.

    Links are never followed nor stored: a link in a run folder may point anywhere
    (/etc/passwd), and a run folder that is itself a link is refused.
    """
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        raise UnreadableRun(f"{path.name} is a link or not a folder; it is not zipped")
    target = Path(dest_dir) / f"{path.name}.zip"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for folder, dirs, files in os.walk(path, followlinks=False):
            dirs[:] = sorted(d for d in dirs if not os.path.islink(os.path.join(folder, d)))
            for name in sorted(files):
                file = Path(folder) / name
                if stat.S_ISREG(os.lstat(file).st_mode):  # not a link, fifo, socket or device
                    archive.write(file, Path(path.name) / file.relative_to(path))
    return target
