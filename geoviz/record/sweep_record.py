"""A sweep folder's results table: written as trials change, read back, summarised.

See ``geoviz.record.sweep`` for what a sweep folder holds. The table is rewritten
whole and atomically (write, then rename) at each change: a sweep has tens to
hundreds of rows, and a reader never sees half a file.
"""

from __future__ import annotations

import io
import json
import math
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from geoviz.record.runs import _atomic_write_text, default_runs_dir, read_folders, writer_gone

__all__ = ["SweepBook", "SweepRecord", "read_sweep", "list_sweeps", "summarize", "mean_sd_table", "sweeps_dir", "UNFINISHED"]

UNFINISHED = ("pending", "running")
FAILED = ("failed", "diverged")
# every row's columns besides its settings and figures (a table not yet written reads as these, empty)
BASE_ROW = {"trial": 0, "seed": 0, "status": "pending", "message": "", "run_dir": None, "last_step": 0, "steps_taken": 0,
            "gradient_evaluations": 0, "wall_seconds": float("nan"), "setup_seconds": float("nan"),
            "report_seconds": float("nan")}


def sweeps_dir(runs_root: str | os.PathLike | None = None) -> Path:
    """Where sweep folders live: ``<runs>/sweeps``."""
    return Path(runs_root if runs_root is not None else default_runs_dir()) / "sweeps"


class SweepBook:
    """The driver's side of a sweep folder: spec, status and the results table.

    Args:
        folder: the sweep folder (created).
        plan: the checked plan (``SweepSpec.plan()``), saved as spec.json.
    """

    def __init__(self, folder: Path, plan: dict):
        self.dir = Path(folder)
        self.dir.mkdir(parents=True, exist_ok=False)
        self.plan = plan
        self.started = time.time()
        self._beat = 0.0
        _atomic_write_text(self.dir / "spec.json", json.dumps(plan, indent=2, default=str))
        self.rows: dict[int, dict] = {}
        for trial in plan["trials"]:
            self.rows[trial["trial"]] = self._row(trial["trial"], trial["values"], trial["seed"])
        # the table before the status: a reader finds the folder by the pid in status.json, and
        # must then find a table too (the other order left a moment with none, seen in CI)
        self.write_table()
        self.write_status("running")

    def _row(self, index: int, settings: dict, seed: int) -> dict:
        return {"trial": index, **settings, "seed": seed, "status": "pending", "message": "", "run_dir": None,
                **{name: value for name, value in BASE_ROW.items() if name not in ("trial", "seed", "status", "message", "run_dir")}}

    def add(self, settings: dict, seed: int) -> int:
        """A trial not planned up front (Optuna): its index."""
        index = len(self.rows)
        self.rows[index] = self._row(index, settings, seed)
        return index

    def update(self, index: int, **values) -> None:
        self.rows[index].update(values)
        self.write_table()
        self.write_status("running")

    def heartbeat(self) -> None:
        if time.time() - self._beat > 5.0:
            self.write_status("running")

    def write_status(self, status: str, message: str = "") -> None:
        self._beat = time.time()
        _atomic_write_text(self.dir / "status.json", json.dumps({
            "status": status, "message": message, "pid": os.getpid(), "host": platform.node(),
            "started": self.started, "updated": self._beat, "trials": len(self.rows),
        }))

    def table(self) -> pd.DataFrame:
        return _table(list(self.rows.values()))

    def write_table(self) -> None:
        tmp = self.dir / f".results.{os.getpid()}.tmp.parquet"
        self.table().to_parquet(tmp, index=False)
        os.replace(tmp, self.dir / "results.parquet")

    def close(self, status: str = "finished", message: str = "", unfinished: str = "interrupted") -> None:
        """End the sweep with ``status``; trials not done get ``unfinished`` (interrupted, or stopped)."""
        why = "the sweep was stopped before this trial finished" if unfinished == "stopped" else \
            "the sweep ended before this trial finished"
        for row in self.rows.values():
            if row["status"] in UNFINISHED:
                row.update(status=unfinished, message=row["message"] or why)
        self.write_table()
        self.write_status(status, message)


def _table(rows: list[dict]) -> pd.DataFrame:
    table = pd.DataFrame(rows)
    for column in table.columns:  # settings typed on the CLI may mix ints and floats
        if table[column].dtype == object and table[column].map(lambda v: isinstance(v, (int, float))).all():
            table[column] = table[column].astype(float)
    return table


@dataclass
class SweepRecord:
    """A sweep folder read back."""

    path: Path
    plan: dict
    status: dict
    table: pd.DataFrame

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def state(self) -> str:
        return self.status.get("status", "unknown")

    @property
    def application(self) -> str:
        return self.plan["spec"]["application"]

    @property
    def setting_names(self) -> list[str]:
        return list(self.plan["setting_names"])

    @property
    def objective(self) -> str:
        return self.plan["spec"]["objective"]

    @property
    def maximize(self) -> bool:
        return self.plan["spec"]["mode"] == "max"

    def trial_runs(self) -> list[tuple[dict, object]]:
        """(table row, its run record) of every trial whose run folder is there to read."""
        from geoviz.record.runs import read_run

        found = []
        for row in self.table.to_dict("records"):
            folder = row.get("run_dir")
            if isinstance(folder, str) and (Path(folder) / "config.json").exists():
                found.append((row, read_run(folder)))
        return found


def _read_table(parquet: Path) -> pd.DataFrame:
    """The results table, read through one open file: the driver replaces it atomically as
    trials change, and a reader that looked the path up twice (size, then contents) could
    mix two versions ("Page was smaller than expected", seen while a sweep ran)."""
    try:
        with open(parquet, "rb") as fh:
            return pd.read_parquet(io.BytesIO(fh.read()))
    except FileNotFoundError:
        return pd.DataFrame(columns=list(BASE_ROW))


def read_sweep(path: str | os.PathLike) -> SweepRecord:
    """Read a sweep folder; once its driver is gone, unfinished trials read as ``interrupted``."""
    path = Path(path)
    if not (path / "spec.json").exists():
        raise FileNotFoundError(f"{path} is not a geoviz sweep folder (it has no spec.json).")
    plan = json.loads((path / "spec.json").read_text())
    status = json.loads((path / "status.json").read_text()) if (path / "status.json").exists() else {}
    table = _read_table(path / "results.parquet")
    if status.get("status") == "running" and writer_gone(status):
        status = {**status, "status": "interrupted", "message": "the process running this sweep ended before it finished"}
    if status.get("status") != "running" and len(table):
        unfinished = table["status"].isin(UNFINISHED)
        table.loc[unfinished, "status"] = "interrupted"
        table.loc[unfinished, "message"] = "the sweep ended before this trial finished"
    return SweepRecord(path, plan, status, table)


def list_sweeps(runs_root: str | os.PathLike | None = None) -> list[SweepRecord]:
    """Every readable sweep under ``<runs>/sweeps``, newest first."""
    return read_folders(sweeps_dir(runs_root), "spec.json", read_sweep)


def summarize(table: pd.DataFrame, settings: list[str], objective: str, maximize: bool = True) -> pd.DataFrame:
    """Mean and sample sd of the objective over seeds, one row per setting, best first.

    Only finished trials count; ``n`` is how many there were, ``trials`` how many ran.
    A setting with one finished seed has sd NaN (there is no spread to show).
    """
    if table.empty:
        return pd.DataFrame(columns=[*settings, "n", "trials", "mean", "sd"])
    keys = settings or ["_all"]
    work = table.assign(_all="all") if not settings else table
    rows = []
    for values, group in work.groupby(keys, sort=False, dropna=False):
        values = values if isinstance(values, tuple) else (values,)
        done = group[group["status"] == "finished"]
        scores = done[objective].astype(float).to_numpy() if objective in done else np.array([])
        scores = scores[np.isfinite(scores)]
        rows.append({
            **(dict(zip(settings, values)) if settings else {}),
            "n": int(len(scores)), "trials": int(len(group)),
            "mean": float(scores.mean()) if len(scores) else math.nan,
            "sd": float(scores.std(ddof=1)) if len(scores) > 1 else math.nan,
        })
    out = pd.DataFrame(rows)
    return out.sort_values("mean", ascending=not maximize, na_position="last", kind="stable").reset_index(drop=True)


def mean_sd_table(table: pd.DataFrame, settings: Sequence[str], figures: Sequence[str], maximize: bool = True) -> pd.DataFrame:
    """Per setting, "mean ± sd (n)" over seeds of each figure (the objective first, then
    e.g. the baselines'), ordered best first by the first figure."""
    figures = [f for f in figures if f in table]
    if not figures:
        return pd.DataFrame()
    order = summarize(table, list(settings), figures[0], maximize)
    out = order[list(settings)].copy() if settings else pd.DataFrame(index=order.index)
    for figure in figures:
        part = summarize(table, list(settings), figure, maximize)
        part = order[list(settings)].merge(part, on=list(settings), how="left") if settings else part
        out[figure] = [f"{m:.4f} ± {s:.4f} ({n})" if math.isfinite(s) else (f"{m:.4f} ({n})" if math.isfinite(m) else "-")
                       for m, s, n in zip(part["mean"], part["sd"], part["n"])]
    return out
