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

import json
import os
import platform
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from geoviz.metric import FlatParams

__all__ = [
    "default_runs_dir",
    "RunWriter",
    "RunRecord",
    "read_run",
    "list_runs",
    "zip_run",
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


class RunWriter:
    """Writes one run folder as the run grows.

    Args:
        root: folder that holds run folders.
        application: ``sparsify``, ``continual`` or ``connect``.
        config: every setting, JSON-serialisable (dataclasses as dicts).
        snapshot_budget_mb: memory budget of the weight snapshots.
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
        self.config = {"application": application, **config, "versions": versions()}
        _atomic_write_text(self.dir / "config.json", json.dumps(self.config, indent=2, default=_json_default))
        self._steps = open(self.dir / "steps.jsonl", "a", buffering=1)
        self._rows: list[dict] = []
        self._last_parquet = time.time()
        self._last_heartbeat = 0.0
        self._budget_mb = snapshot_budget_mb
        self._budget: SnapshotBudget | None = None
        self.status = "running"
        self.write_status("running")

    # -- status -------------------------------------------------------------
    def write_status(self, status: str, message: str = "", **extra) -> None:
        self.status = status
        self._last_heartbeat = time.time()
        _atomic_write_text(
            self.dir / "status.json",
            _dumps(
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
            ),
        )

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
        pd.DataFrame(self._rows).to_parquet(tmp, index=False)
        os.replace(tmp, self.dir / "steps.parquet")
        self._last_parquet = time.time()

    # -- weights --------------------------------------------------------------
    def snapshot(self, step: int, w: torch.Tensor) -> None:
        """Keep the flat weights of ``step`` if the budget wants them."""
        if self._budget is None:
            size = w.numel() * 4
            self._budget = SnapshotBudget(size, int(self._budget_mb * 2**20))
        if not self._budget.wants(step):
            return
        save_file({"w": w.detach().float().cpu().contiguous()}, str(self.dir / "snapshots" / f"{step:07d}.safetensors"))
        for old in self._budget.add(step):
            (self.dir / "snapshots" / f"{old:07d}.safetensors").unlink(missing_ok=True)

    def save_weights(self, name: str, params: dict[str, torch.Tensor]) -> None:
        tensors = {k: v.detach().cpu().contiguous() for k, v in params.items()}
        tmp = self.dir / "weights" / f".{name}.tmp"
        # safetensors keeps its own order of names: the flat order goes in the metadata
        save_file(tensors, str(tmp), metadata={"order": json.dumps(list(tensors))})
        os.replace(tmp, self.dir / "weights" / f"{name}.safetensors")

    def write_summary(self, summary: dict) -> None:
        _atomic_write_text(self.dir / "summary.json", json.dumps(_nan_to_none(summary), indent=2, default=_json_default))

    def close(self, status: str, message: str = "") -> None:
        """Write the full table and the final status."""
        self.write_table()
        self._steps.close()
        self.write_status(status, message)


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

    def snapshot_steps(self) -> list[int]:
        return sorted(int(p.stem) for p in (self.path / "snapshots").glob("*.safetensors"))

    def snapshots(self) -> tuple[list[int], torch.Tensor]:
        """(steps, stacked flat weights (S, P))."""
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


def _read_table(path: Path) -> pd.DataFrame:
    rows = []
    jsonl = path / "steps.jsonl"
    if jsonl.exists():
        with open(jsonl) as fh:
            for line in fh:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a line cut by a kill: every line before it is whole
    parquet = path / "steps.parquet"
    if parquet.exists():
        table = pd.read_parquet(parquet)
        if len(table) >= len(rows):
            return table
    return pd.DataFrame(rows)


def writer_gone(status: dict) -> bool:
    """Whether the process that wrote a status.json (pid, host, heartbeat) is gone.

    Dead when on this host and its pid is gone; else stale when a ``running`` heartbeat
    is older than two minutes (a paused run writes none).
    """
    same_host = status.get("host") == platform.node()
    dead = same_host and not _pid_alive(int(status.get("pid", -1)))
    return dead or (status.get("status") == "running" and time.time() - status.get("updated", 0) > _HEARTBEAT_STALE_S)


def read_folders(root: Path, marker: str, read) -> list:
    """``read(folder)`` of every readable folder under ``root`` that holds ``marker``, newest first."""
    if not root.exists():
        return []
    found = []
    for sub in sorted(root.iterdir(), reverse=True):
        if (sub / marker).exists():
            try:
                found.append(read(sub))
            except (OSError, ValueError):
                continue
    return found


def read_run(path: str | os.PathLike) -> RunRecord:
    """Read a run folder; a ``running`` run whose process is gone reads as ``interrupted``."""
    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} is not a geoviz run folder (it has no config.json).")
    config = json.loads((path / "config.json").read_text())
    status = json.loads((path / "status.json").read_text()) if (path / "status.json").exists() else {}
    summary = json.loads((path / "summary.json").read_text()) if (path / "summary.json").exists() else {}
    table = _read_table(path)
    if status.get("status") in ("running", "paused"):
        if writer_gone(status):
            status = {**status, "status": "interrupted", "message": "the process writing this run ended before it finished"}
    return RunRecord(path, config, status, table, summary)


def list_runs(root: str | os.PathLike | None = None) -> list[RunRecord]:
    """Every readable run under ``root``, newest first."""
    return read_folders(Path(root) if root is not None else default_runs_dir(), "config.json", read_run)


def zip_run(path: str | os.PathLike, dest_dir: str | os.PathLike) -> Path:
    """A zip of the run folder; returns its path."""
    path = Path(path)
    base = Path(dest_dir) / path.name
    return Path(shutil.make_archive(str(base), "zip", root_dir=path.parent, base_dir=path.name))
