"""The runs folder on a disk budget: space used, thinning of old runs' snapshots, deletion.

Run folders grow with their weight snapshots (a digits run about 14 MB, 27 of them
384 MB). Before a run starts, :func:`enforce_budget` thins the snapshots of the
oldest finished runs (every other one, keeping the first and the last: the PCA of
the trajectory keeps its shape with fewer points) until the folder fits its budget.
A running run is never touched; steps, summaries and the start/final weights are
never thinned. What is still over the budget after that is the user's to delete
(:func:`delete_run`, with a confirmation on the Runs page).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from geoviz.errors import ConfigError
from geoviz.record.runs import FINAL_STATUSES, list_runs

__all__ = ["DEFAULT_BUDGET_MB", "budget_bytes", "folder_bytes", "usage", "enforce_budget", "delete_run", "Usage"]

# a budget for a class's or one user's runs: ~70 digits runs, or ~25 Fashion-MNIST ones
DEFAULT_BUDGET_MB = 1024.0


def budget_bytes() -> int:
    """$GEOVIZ_RUNS_BUDGET_MB (megabytes; 0 turns thinning off), else the default."""
    text = os.environ.get("GEOVIZ_RUNS_BUDGET_MB", "")
    try:
        mb = float(text) if text.strip() else DEFAULT_BUDGET_MB
    except ValueError:
        raise ConfigError(f"GEOVIZ_RUNS_BUDGET_MB must be a number of megabytes, got '{text[:40]}'.") from None
    if not (mb >= 0 and mb < 1e9):
        raise ConfigError(f"GEOVIZ_RUNS_BUDGET_MB must be between 0 and 1e9 megabytes, got {text[:40]}.")
    return int(mb * 2**20)


def folder_bytes(path: Path) -> int:
    """Bytes of the regular files under ``path`` (links are not followed nor counted)."""
    total = 0
    for folder, dirs, files in os.walk(path, followlinks=False):
        for name in files:
            try:
                st = os.lstat(os.path.join(folder, name))
            except OSError:
                continue
            if not os.path.islink(os.path.join(folder, name)):
                total += st.st_size
    return total


@dataclass(frozen=True)
class Usage:
    used: int  # bytes of every run folder
    budget: int  # bytes allowed (0: no budget)
    per_run: dict[str, int]  # bytes by run folder name

    def sentence(self) -> str:
        used = f"{self.used / 2**20:,.1f} MB in {len(self.per_run)} runs"
        if not self.budget:
            return f"{used} (no budget set)"
        return f"{used} of a {self.budget / 2**20:,.0f} MB budget (GEOVIZ_RUNS_BUDGET_MB)"


def usage(runs, budget: int | None = None) -> Usage:
    """Space used by ``runs`` (RunRecords, e.g. :func:`~geoviz.record.runs.list_runs`)."""
    per_run = {r.name: folder_bytes(r.path) for r in runs}
    return Usage(sum(per_run.values()), budget_bytes() if budget is None else budget, per_run)


def _thin_once(snapshots: Path) -> int:
    """Remove every other snapshot (the first and the last stay); the bytes freed."""
    files = sorted(p for p in snapshots.glob("*.safetensors") if p.stem.isdigit() and not p.is_symlink())
    freed = 0
    for file in files[1:-1:2]:
        size = file.stat().st_size
        file.unlink(missing_ok=True)
        freed += size
    return freed


def enforce_budget(root: Path, budget: int | None = None, spare: Path | None = None) -> int:
    """Thin the oldest finished runs' snapshots until ``root`` fits ``budget``; bytes freed.

    Args:
        root: the runs folder.
        budget: bytes allowed; None: :func:`budget_bytes`; 0: no budget.
        spare: a run folder never thinned (the one being started).
    """
    budget = budget_bytes() if budget is None else budget
    if not budget or not Path(root).is_dir():
        return 0
    folders = [p for p in Path(root).iterdir() if p.is_dir() and not p.is_symlink()]
    used = sum(folder_bytes(p) for p in folders)
    if used <= budget:
        return 0  # the usual case: sizes only, no run read
    runs = list_runs(root)
    # oldest first (names begin with their start time); only runs that have ended
    finished = [r for r in sorted(runs, key=lambda r: (r.status.get("started") or 0, r.name))
                if r.state in FINAL_STATUSES and (spare is None or r.path != Path(spare))]
    freed = 0
    while used - freed > budget:
        progress = 0
        for run in finished:
            if used - freed <= budget:
                break
            step = _thin_once(run.path / "snapshots")
            freed += step
            progress += step
        if not progress:
            break  # every finished run is down to its first and last snapshot
    return freed


def delete_run(root: Path, name: str) -> None:
    """Delete the run folder ``name`` under ``root``; ConfigError for a running run or a bad name."""
    root = Path(root)
    target = root / name
    if name in ("", ".", "..") or "/" in name or os.sep in name or not target.is_dir() or target.is_symlink():
        raise ConfigError(f"There is no run folder '{name[:80]}' in {root}.")
    record = next((r for r in list_runs(root) if r.name == name), None)
    if record is not None and record.state in ("running", "paused"):
        raise ConfigError(f"The run {name} is still running; stop it before deleting it.")
    shutil.rmtree(target)
