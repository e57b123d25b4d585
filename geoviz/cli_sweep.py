"""`python -m geoviz sweep APP ...`: a sweep over settings and seeds on Ray Tune.

Flags the sweep does not know are the application's own, fixed for every trial
(``python -m geoviz sweep sparsify --grid damping=1e-4,1e-3 --seeds 3 --steps 300``).
A progress bar over trials goes to stderr; the summary (mean ± sd over seeds per
setting, best first) to stdout; with ``--json`` the last stdout line is one object.
A bad specification is one sentence on stderr and exit status 2, before any trial.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence

from geoviz.errors import ConfigError, GeovizError

__all__ = ["main"]


def _pair(text: str, flag: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise ConfigError(f"{flag} takes NAME=VALUES, got '{text}'.")
    return name.strip(), value


def _range(text: str) -> tuple[str, tuple[float, float, bool]]:
    name, value = _pair(text, "--range")
    parts = value.split(":")
    try:
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
            raise ValueError
        return name, (float(parts[0]), float(parts[1]), len(parts) == 3)
    except ValueError:
        raise ConfigError(f"--range takes NAME=LOW:HIGH or NAME=LOW:HIGH:log, got '{text}'.") from None


def build_parser() -> argparse.ArgumentParser:
    from geoviz.cli import _Parser
    from geoviz.record.sweep_spec import APPLICATIONS, SCHEDULERS, SEARCHES

    p = _Parser(prog="python -m geoviz sweep", allow_abbrev=False,
                description="Sweep settings and seeds of one application on Ray Tune; "
                            "other flags are the application's, fixed for every trial.")
    p.add_argument("application", choices=APPLICATIONS)
    p.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2", help="values of one setting (repeatable)")
    p.add_argument("--range", action="append", default=[], metavar="NAME=LO:HI[:log]", help="a range (random, optuna search)")
    p.add_argument("--seeds", type=int, default=1, help="seeds each setting is repeated over (--seed, --seed+1, ...)")
    p.add_argument("--search", default="grid", choices=SEARCHES)
    p.add_argument("--samples", type=int, default=8, help="settings drawn by random or optuna search")
    p.add_argument("--objective", default=None, help="the final figure to rank by (default: the application's)")
    direction = p.add_mutually_exclusive_group()
    direction.add_argument("--maximize", dest="maximize", action="store_true", default=None)
    direction.add_argument("--minimize", dest="maximize", action="store_false")
    p.add_argument("--scheduler", default="none", choices=SCHEDULERS, help="asha: stop settings that trail early")
    p.add_argument("--grace", type=int, default=None, help="ASHA's first rung in steps (default a tenth of --steps)")
    p.add_argument("--workers", type=int, default=None, help="trials at once (default: every CPU Ray has)")
    p.add_argument("--address", default=None, help="HOST:PORT of a Ray cluster (default $RAY_ADDRESS, else local)")
    p.add_argument("--out", default=None, help="runs folder; the sweep goes to OUT/sweeps/ (default ./runs or $GEOVIZ_RUNS)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


class _TrialBar:
    """A one-line progress bar over trials on stderr."""

    def __init__(self, quiet: bool):
        self.quiet, self.t0, self._last = quiet, time.time(), 0.0

    def __call__(self, book) -> None:
        now = time.time()
        if self.quiet or now - self._last < 0.2:
            return
        self._last = now
        states = [row["status"] for row in book.rows.values()]
        total = max(len(states), book.plan["planned"])
        done = sum(s not in ("pending", "running") for s in states)
        counts = {s: states.count(s) for s in ("finished", "failed", "diverged", "stopped_early", "running")}
        bar = "#" * int(30 * done / max(total, 1))
        sys.stderr.write(f"\rsweep [{bar:-<30s}] {done}/{total} trials: {counts['finished']} finished, "
                         f"{counts['failed'] + counts['diverged']} failed, {counts['stopped_early']} stopped early, "
                         f"{counts['running']} running, {now - self.t0:.0f} s   ")
        sys.stderr.flush()

    def close(self) -> None:
        if self._last:
            sys.stderr.write("\n")


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value.item() if hasattr(value, "item") else value


def report(record, wall: float) -> tuple[list[str], dict]:
    """The summary lines and the --json object of a finished sweep."""
    from geoviz.record.sweep_spec import BASELINE_FIGURES, FIGURES
    from geoviz.record.sweep_record import mean_sd_table, summarize

    table, names, objective = record.table, record.setting_names, record.objective
    summary = summarize(table, names, objective, record.maximize)
    lines = [f"{record.application} sweep: {len(table)} trials, objective {objective} "
             f"({'higher' if record.maximize else 'lower'} is better); mean ± sd (finished seeds) per setting, best first"]
    shown = [objective, *(f for f in BASELINE_FIGURES[record.application] if f != objective)]
    lines += ["  " + line for line in mean_sd_table(table, names, shown, record.maximize).to_string(index=False).splitlines()]
    for _, row in table[~table["status"].isin(["finished"])].iterrows():
        shown = ", ".join(f"{k}={row[k]}" for k in names)
        lines.append(f"  trial {row['trial']} ({shown}, seed {row['seed']}) {row['status']}: {row['message']}")
    lines.append(f"sweep folder: {record.path}")
    figures = [f for f in FIGURES[record.application] if f in table]
    keep = [*names, "seed", "status", "message", *figures, "steps_taken", "gradient_evaluations", "wall_seconds", "run_dir"]
    rows = [{k: _clean(row[k]) for k in keep if k in row} for row in table.to_dict("records")]
    best = summary.iloc[0] if len(summary) and math.isfinite(summary.iloc[0]["mean"]) else None
    states = list(table["status"])
    payload = {
        "sweep_dir": str(record.path),
        "trials": len(table),
        "finished": states.count("finished"),
        "failed": states.count("failed") + states.count("diverged"),
        "stopped_early": states.count("stopped_early"),
        "best": None if best is None else {"settings": {k: _clean(best[k]) for k in names},
                                           "mean": _clean(best["mean"]), "sd": _clean(best["sd"])},
        "table": rows,
        "wall_seconds": round(wall, 3),
    }
    return lines, payload


def main(argv: Sequence[str]) -> int:
    from geoviz.record.sweep import SweepSpec, run_sweep

    parser = build_parser()
    try:
        args, fixed = parser.parse_known_args(list(argv))
    except SystemExit as exc:  # the parser already said its one sentence
        return int(exc.code or 0)
    try:
        grid = {}
        for text in args.grid:
            name, values = _pair(text, "--grid")
            grid[name] = values.split(",")
        spec = SweepSpec(
            application=args.application, fixed=tuple(fixed), grid=grid, ranges=dict(map(_range, args.range)),
            seeds=args.seeds, search=args.search, samples=args.samples, objective=args.objective,
            maximize=args.maximize, scheduler=args.scheduler, grace=args.grace, workers=args.workers,
            address=args.address,
        )
        bar = _TrialBar(args.quiet)
        try:
            record, wall = run_sweep(spec, args.out, progress=bar)
        finally:
            bar.close()
    except GeovizError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stopped: the finished trials are kept in the sweep folder; the others read 'stopped'", file=sys.stderr)
        return 130
    lines, payload = report(record, wall)
    for line in lines:
        print(line)
    if args.json:
        print(json.dumps(payload))
    return 0 if payload["finished"] else 1
