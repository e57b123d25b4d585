"""How much the live page costs: time from clicking Run to the first point drawn, and the
steps/s a path sustains while the page draws it, against the CLI on the same settings.

    python bench/app_latency.py [--sparsity 0.9 --steps 300 --eval-every 10 --repeats 2]
    python bench/app_latency.py --compare GEOVIZ_POLL=3 --repeats 5   # A/B of page settings

Starts the real app on a free loopback port and drives it with headless Chromium (on
the same CPU, as a user's browser would be). Warm start network cache and server first,
then, per repeat, one CLI run and one page run (each page run in a fresh browser
session), side by side. Steps/s are read the same way for both: from the run record
(steps / path seconds, the engine's own clock, which pauses do not count). The browser
runs on the same CPU as the server, so its drawing is charged to the page.

With ``--compare NAME=VALUE`` a second server runs with that environment setting (a
page's poll interval, say), and its page runs alternate with the first's: an A/B of
page settings that the machine's drift affects alike.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from appserver import FIRST_CHART_POINTS, AppServer, launch_chromium  # noqa: E402

from geoviz.record.runs import list_runs, read_run  # noqa: E402


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _pin_browser(core: int) -> None:
    """Move this script's Chromium processes to one core (renderers fork from them)."""
    for pid in _descendants(os.getpid()):
        try:
            if "chrom" in Path(f"/proc/{pid}/comm").read_text():
                os.sched_setaffinity(pid, {core})
        except OSError:
            pass


def _rate(run_dir: Path) -> tuple[int, float]:
    table = read_run(run_dir).table
    steps, seconds = int(table["step"].max()), float(table["seconds"].max())
    return steps, steps / seconds


def cli_run(args, runs: Path, env: dict) -> dict:
    command = [
        *args.prefix, sys.executable, "-m", "geoviz", "sparsify", "--quiet", "--json", "--out", str(runs),
        "--sparsity", str(args.sparsity), "--steps", str(args.steps), "--eval-every", str(args.eval_every),
    ]  # fmt: skip
    out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
    run_dir = Path(json.loads(out.strip().splitlines()[-1])["run_dir"])
    steps, rate = _rate(run_dir)
    return {"steps": steps, "rate": rate}


def page_run(browser, server: AppServer, args, runs: Path) -> dict:
    query = f"sparsity={args.sparsity}&steps={args.steps}&eval_every={args.eval_every}"
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.goto(f"{server.url}/sparsify?{query}")
    run = page.get_by_role("button", name="Run", exact=True)
    run.wait_for(timeout=60_000)
    # the empty charts are drawn before the first run: a user sees them before clicking
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=120_000)
    before = {r.name for r in list_runs(runs)}
    t0 = time.perf_counter()
    run.click()
    page.wait_for_function(f"({FIRST_CHART_POINTS})() > 0", timeout=120_000, polling=20)
    first = time.perf_counter() - t0
    page.get_by_text(re.compile(r"^finished · step")).wait_for(timeout=600_000)
    context.close()
    new = [r for r in list_runs(runs) if r.name not in before]
    steps, rate = _rate(new[0].path)
    return {"first_point_s": first, "steps": steps, "rate": rate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--pin", action="store_true",
        help="server and CLI on core 0, the browser on core 1: as if the browser ran on the user's machine",
    )  # fmt: skip
    parser.add_argument("--compare", action="append", default=[], metavar="NAME=VALUE",
                        help="run a second server with this environment setting, alternating with the first")
    args = parser.parse_args()
    args.prefix = ["taskset", "-c", "0"] if args.pin else []
    if args.compare:
        return compare(args)
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp) / "runs"
        runs.mkdir()
        # one thread for torch in both, so that neither fights the other for the 2 cores
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "GEOVIZ_RUNS": str(runs)}
        with AppServer(runs, env=env, prefix=args.prefix) as server, sync_playwright() as pw:
            browser = launch_chromium(pw)
            if args.pin:
                _pin_browser(1)
            warm = page_run(browser, server, args, runs)  # trains/loads the start network once
            cli_run(args, runs, env)
            print(f"warm-up (cold server): first point {warm['first_point_s']:.2f} s")
            pages, clis = [], []
            for _ in range(args.repeats):
                clis.append(cli_run(args, runs, env))
                pages.append(page_run(browser, server, args, runs))
            browser.close()
    where = "server and CLI pinned to core 0, browser to core 1" if args.pin else "server, CLI and browser share the cores"
    print(f"settings: digits mlp, sparsity {args.sparsity}, steps {args.steps}, eval every {args.eval_every}, CPU; {where}")
    print(f"{'repeat':>6} {'first point s':>14} {'page steps/s':>13} {'CLI steps/s':>12} {'ratio':>6}")
    for i, (p, c) in enumerate(zip(pages, clis)):
        print(f"{i:>6} {p['first_point_s']:>14.2f} {p['rate']:>13.1f} {c['rate']:>12.1f} {p['rate'] / c['rate']:>6.2f}")
    page_rate = sum(p["rate"] for p in pages) / len(pages)
    cli_rate = sum(c["rate"] for c in clis) / len(clis)
    first = max(p["first_point_s"] for p in pages)
    print(f"first point drawn within {first:.2f} s (worst of {len(pages)}); page {page_rate:.1f} steps/s vs CLI {cli_rate:.1f} steps/s: ratio {page_rate / cli_rate:.2f}")


def compare(args) -> None:
    """Two servers, A (as is) and B (with ``--compare`` settings), page runs alternating."""
    from contextlib import ExitStack

    from playwright.sync_api import sync_playwright

    extra = dict(item.split("=", 1) for item in args.compare)
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        base = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        servers, runs = {}, {}
        for name, env in (("A", base), ("B", {**base, **extra})):
            runs[name] = Path(tmp) / name
            runs[name].mkdir()
            servers[name] = stack.enter_context(AppServer(runs[name], env={**env, "GEOVIZ_RUNS": str(runs[name])}, prefix=args.prefix))
        pw = stack.enter_context(sync_playwright())
        browser = launch_chromium(pw)
        if args.pin:
            _pin_browser(1)
        for name in servers:  # warm: load the start network, plotly, the server's imports
            page_run(browser, servers[name], args, runs[name])
        results = {"A": [], "B": []}
        for i in range(args.repeats):
            for name in (("A", "B") if i % 2 == 0 else ("B", "A")):
                results[name].append(page_run(browser, servers[name], args, runs[name]))
        browser.close()
    print(f"A: as configured; B: {' '.join(args.compare)}; digits mlp, {args.steps} steps, CPU")
    for name, rows in results.items():
        rates = [r["rate"] for r in rows]
        print(f"{name}: page steps/s {sum(rates) / len(rates):.1f} (runs {', '.join(f'{r:.1f}' for r in rates)}); "
              f"first point within {max(r['first_point_s'] for r in rows):.2f} s")
    a = sum(r["rate"] for r in results["A"]) / len(results["A"])
    b = sum(r["rate"] for r in results["B"]) / len(results["B"])
    print(f"B/A page steps/s: {b / a:.2f}")


if __name__ == "__main__":
    main()
