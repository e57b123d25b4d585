"""`python -m geoviz ...`: every path the app draws, without a browser.

Prints a progress bar on stderr, a readable summary on stdout, and with ``--json``
one JSON object as the last line of stdout. Bad input is one sentence on stderr
and exit status 2; a diverged path exits 3 after saying where it stopped.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence

from geoviz.applications.sparsify import SparsifyConfig
from geoviz.core.engine import EPS_SCHEDULES, MODES, SolverConfig, denormals_flushed
from geoviz.errors import ConfigError, GeovizError
from geoviz.core.metric import METRIC_KINDS
from geoviz.setups.problem import SetupConfig
from geoviz.record.sketch import DEFAULT_BUDGET_MB, check_budget_mb
from geoviz.validation import check_output_dir, check_runs_folder, check_value, check_writable_dir

__all__ = ["main", "build_parser"]

_DEFAULT_SOLVER = SolverConfig()
_DEFAULT_SPARSIFY = SparsifyConfig()


def _hidden(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--hidden takes comma-separated layer widths like 128,128, got '{text}'")
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"--hidden takes positive widths like 128,128, got '{text}'")
    return sizes  # their memory is checked with the dataset's size (SetupConfig.validate)


def _add_common(parser: argparse.ArgumentParser, default_steps: int) -> None:
    from geoviz.setups.data import DATASET_NAMES
    from geoviz.setups.models import MODEL_NAMES

    g = parser.add_argument_group("data and network")
    g.add_argument("--dataset", default="digits", help=f"one of {', '.join(DATASET_NAMES)}")
    g.add_argument("--model", default="mlp", help=f"one of {', '.join(MODEL_NAMES)}")
    g.add_argument("--hidden", type=_hidden, default=(128, 128), help="MLP hidden widths, e.g. 128,128")
    g.add_argument("--data-dir", default=None,
                   help="folder with the dataset's files (MNIST's IDX files; CIFAR's python batches, which geoviz reads with "
                        "a restricted unpickler: torchvision's CIFAR loader would unpickle them, running any code they name)")
    g.add_argument("--download", action="store_true", help="download mnist/cifar into --data-dir (torchvision's downloader, MD5-checked)")
    g.add_argument("--seed", type=int, default=0, help="seed of the start network")
    g.add_argument("--path-seed", type=int, default=None, help="seed of the path's sampling and its baselines (default --seed)")
    g.add_argument("--weights", "--start", dest="weights", default=None, metavar="FILE",
                   help="bring the start network: these weights for --model (safetensors, or a state_dict read with weights_only=True) instead of training it")
    g.add_argument("--no-baselines", action="store_true", help="skip the baselines (they cost about as many gradient evaluations as the path)")
    g.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    g.add_argument("--threads", type=int, default=1, help="CPU threads for torch (small networks run fastest on 1)")
    s = parser.add_argument_group("path")
    s.add_argument("--mode", default="exact", help=f"one of {', '.join(MODES)} (penalty: Adam on output distance + lambda L2)")
    s.add_argument("--eps", type=float, default=_DEFAULT_SOLVER.eps, help="Euclidean length of each step")
    s.add_argument("--eps-schedule", default=_DEFAULT_SOLVER.eps_schedule,
                   help=f"one of {', '.join(EPS_SCHEDULES)}: the step length along the path (linear/cosine: 1.9 eps down to 0.1 eps, mean eps)")
    s.add_argument("--damping", type=float, default=_DEFAULT_SOLVER.damping, help="rho in mu = rho * lambda_max(G)")
    s.add_argument("--metric", default="output", help=f"one of {', '.join(METRIC_KINDS)}")
    s.add_argument("--cg-iterations", type=int, default=_DEFAULT_SOLVER.cg_iterations)
    s.add_argument("--backend", default=_DEFAULT_SOLVER.backend,
                   help="how G v is computed: linear (linearised forward; other networks fall back to autograd), autograd, func")
    s.add_argument("--metric-batch", type=int, default=_DEFAULT_SOLVER.metric_batch)
    s.add_argument("--penalty-weight", type=float, default=_DEFAULT_SOLVER.penalty_weight, help="lambda of the penalty mode")
    s.add_argument("--penalty-lr", type=float, default=_DEFAULT_SOLVER.penalty_lr, help="Adam learning rate of the penalty mode")
    s.add_argument("--penalty-ramp", type=int, default=_DEFAULT_SOLVER.penalty_ramp, help="steps over which the penalty's lambda grows by its start value")
    s.add_argument("--steps", type=int, default=default_steps, help="step budget of the path")
    o = parser.add_argument_group("output")
    o.add_argument("--out", default=None, help="folder for run folders (default ./runs or $GEOVIZ_RUNS)")
    o.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    o.add_argument("--quiet", action="store_true", help="no progress bar")
    o.add_argument("--snapshot-mb", type=float, default=DEFAULT_BUDGET_MB,
                   help="budget of the run's weight snapshots in MB (the live trajectory gets half); a network too big for "
                        "32 full snapshots keeps fixed random projections of them instead, for the trajectory's PCA")


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one sentence, not a usage block."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see `{self.prog} --help`).\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m geoviz", description="Walk weight-space geodesics of a neural network.")
    sub = parser.add_subparsers(dest="command", required=True)
    sp = sub.add_parser("sparsify", help="walk from a dense network to a sparse one")
    _add_common(sp, default_steps=2000)
    sp.add_argument("--sparsity", type=float, default=0.9, help="fraction of prunable weights to remove, in (0, 1)")
    sp.add_argument("--tolerance", type=float, default=0.02, help="end when |masked weights| falls to this fraction")
    sp.add_argument("--eval-every", type=int, default=10)
    sp.add_argument("--mask-every", type=int, default=_DEFAULT_SPARSIFY.mask_every,
                    help="choose the mask again every K steps, as the smallest |w| now (0: the start's mask, fixed)")
    cl = sub.add_parser("continual", help="learn a second task along a path that keeps the first")
    _add_common(cl, default_steps=150)
    from geoviz.applications.continual import DEFAULT_SOLVER as continual_solver

    cl.set_defaults(
        eps=continual_solver.eps, damping=continual_solver.damping, cg_iterations=continual_solver.cg_iterations,
        metric_batch=None,  # the metric batch is the memory: --memory sets it
    )
    cl.add_argument("--scenario", default="class-incremental", help="class-incremental, task-incremental or permuted")
    cl.add_argument("--split", default="0-4/5-9", help="classes of task 1 / task 2 (split scenarios)")
    cl.add_argument("--memory", type=int, default=100, help="task-1 examples kept: the metric batch (inputs), the replay buffer")
    cl.add_argument("--memory-seed", type=int, default=None, help="seed of the memory's draw alone (default --path-seed)")
    cl.add_argument("--ewc-lambda", type=float, default=100.0, help="strength of the EWC baseline")
    cl.add_argument("--eval-every", type=int, default=10)
    co = sub.add_parser("connect", help="connect two optima: geodesic vs straight line vs Bezier curve")
    _add_common(co, default_steps=3000)
    from geoviz.applications.connect import SOLVER_DEFAULTS as connect_solver

    co.set_defaults(**connect_solver)  # chosen from bench/ablation.py (see there)
    co.add_argument("--seed-b", type=int, default=None, help="seed of the second network (default --seed + 1)")
    co.add_argument("--weights-b", default=None, metavar="FILE", help="the second network's weights (as --weights) instead of training it")
    co.add_argument("--align", action="store_true", help="permute w_B's hidden units to match w_A first (weight matching; mlp, lenet300)")
    co.add_argument("--tolerance", type=float, default=None, help="land on w_B once this close (default: eps)")
    co.add_argument("--grid", type=int, default=0, help="n of an n x n loss landscape on the plane (0: none)")
    co.add_argument("--third", default="bezier", help="the plane's third point: bezier (control point) or midpoint (of the geodesic)")
    co.add_argument("--eval-every", type=int, default=5)
    sub.add_parser("sweep", add_help=False, help="sweep settings and seeds on Ray Tune (python -m geoviz sweep --help)")
    runs = sub.add_parser("runs", help="list the run folders")
    runs.add_argument("--out", default=None)
    return parser


def setup_from(args) -> SetupConfig:
    setup = SetupConfig(
        dataset=args.dataset,
        model=args.model,
        hidden=tuple(args.hidden),
        seed=args.seed,
        device=args.device,
        data_dir=args.data_dir,
        download=args.download,
        path_seed=args.path_seed,
        weights=args.weights,
    )
    setup.validate()
    return setup


def _output_first(args) -> None:
    """The output folder and the setup are checked before any loading or training."""
    from geoviz.setups.training import network_cache_dir

    args.out = str(check_output_dir(args.out))
    check_writable_dir(network_cache_dir(), "the start-network cache (GEOVIZ_CACHE or ~/.cache/geoviz)")
    setup_from(args)


def solver_from(args) -> SolverConfig:
    solver = SolverConfig(
        mode=args.mode,
        eps=args.eps,
        eps_schedule=args.eps_schedule,
        damping=args.damping,
        metric=args.metric,
        cg_iterations=args.cg_iterations,
        backend=args.backend,
        metric_batch=args.metric_batch,
        penalty_weight=args.penalty_weight,
        penalty_lr=args.penalty_lr,
        penalty_ramp=args.penalty_ramp,
    )
    solver.validate()
    return solver


def application_configs(args) -> tuple[object, SolverConfig]:
    """The application's config and the solver of parsed arguments, both validated.

    Raises ConfigError (one sentence) for the first bad setting; loads nothing, so a
    sweep can check every trial's settings before any trial starts.
    """
    if args.command == "sparsify":
        from geoviz.applications.sparsify import SparsifyConfig

        config = SparsifyConfig(sparsity=args.sparsity, tolerance=args.tolerance, steps=args.steps,
                                eval_every=args.eval_every, mask_every=args.mask_every)
    elif args.command == "continual":
        from geoviz.applications.continual import ContinualConfig

        config = ContinualConfig(
            scenario=args.scenario, split=args.split, memory=args.memory, memory_seed=args.memory_seed, steps=args.steps,
            eval_every=args.eval_every, ewc_lambda=args.ewc_lambda,
        )
        config.validate()
        if args.metric_batch is not None:
            raise ConfigError("--metric-batch does not apply to continual: the metric is measured on the whole memory; set its size with --memory.")
        args.metric_batch = config.memory
    else:
        from geoviz.applications.connect import ConnectConfig

        config = ConnectConfig(
            seed_b=args.seed_b, align=args.align, tolerance=args.tolerance, steps=args.steps,
            eval_every=args.eval_every, third=args.third, grid=args.grid,
        )
    config.validate()
    check_budget_mb(args.snapshot_mb)
    return config, solver_from(args)


def _options(config, *positional: str) -> dict:
    """A config's fields as keyword arguments of its ``prepare_<application>`` (less the positional ones)."""
    from dataclasses import asdict

    return {k: v for k, v in asdict(config).items() if k not in positional}


def _load(args, config, training_progress: Callable[[float], None] | None = None) -> dict:
    """The data and start network of parsed arguments (trained unless cached or brought):
    the ``prepare_<application>`` arguments they make."""
    if args.command == "continual":
        from geoviz.applications.continual import load_continual

        problem, sequence = load_continual(setup_from(args), config, progress=training_progress)
        return {"problem": problem, "sequence": sequence}
    from geoviz.setups.problem import load_problem

    problem = load_problem(setup_from(args), progress=training_progress)
    loaded = {"problem": problem, "model_b": None, "options": _options(config)}
    if args.command == "connect" and args.weights_b:  # else w_B is trained from --seed-b
        from geoviz.setups.problem import network_from_file

        loaded["model_b"], _, _, sha = network_from_file(problem.setup, problem.data, problem.device, args.weights_b)
        loaded["options"].update(weights_b=args.weights_b, weights_b_sha256=sha)
    return loaded


def _prepare(args, config, solver: SolverConfig, loaded: dict, warn: Callable[[str], None] | None = None):
    """The application's runner from ``geoviz.applications.api.prepare_<application>``, the
    function the Python API and the pages call: every check and the run record are theirs."""
    from geoviz.applications import api

    common = {"baselines": not args.no_baselines, "out": args.out, "snapshot_mb": args.snapshot_mb, "warn": warn}
    problem = loaded["problem"]
    if args.command == "sparsify":
        return api.prepare_sparsify(problem, None, None, solver=solver, **common, **_options(config))
    if args.command == "continual":
        sequence = loaded["sequence"]
        return api.prepare_continual(problem, sequence.first, sequence.second, solver=solver, setup=problem.setup,
                                     sequence_name=sequence.name, **common, **_options(config))
    return api.prepare_connect(problem, loaded["model_b"], None, None, solver, **common, **loaded["options"])


def application_runner(args, config, solver: SolverConfig, training_progress: Callable[[float], None] | None = None,
                       warn: Callable[[str], None] | None = None):
    """Load the data and start network of parsed arguments; the application's PathRunner, not
    started (``geoviz.applications.api.prepare_<application>``, as the CLI's commands use it)."""
    return _prepare(args, config, solver, _load(args, config, training_progress), warn)


class Progress:
    """A one-line progress bar on stderr."""

    def __init__(self, total: int, quiet: bool = False, label: str = "path"):
        self.total, self.quiet, self.label = total, quiet, label
        self.t0 = time.time()
        self._last = 0.0

    def __call__(self, row: dict) -> None:
        now = time.time()
        if self.quiet or (now - self._last < 0.2):
            return
        self._last = now
        step = row["step"]
        frac = min(1.0, step / max(1, self.total))
        bar = "#" * int(30 * frac) + "-" * (30 - int(30 * frac))
        extra = "".join(f" {k}={row[k]:.3f}" for k in ("test_accuracy", "remaining_norm", "task1_accuracy", "task2_accuracy") if isinstance(row.get(k), float))
        rate = step / max(now - self.t0, 1e-9)
        sys.stderr.write(f"\r{self.label} [{bar}] step {step}/{self.total} {rate:.0f} steps/s{extra}   ")
        sys.stderr.flush()

    def estimate(self, cost) -> None:
        """The path's cost, measured on its first steps (geoviz.applications.cost)."""
        self.warn(cost.sentence())

    def warn(self, text: str) -> None:
        if not self.quiet:
            sys.stderr.write(f"\r{text}\n")
            sys.stderr.flush()

    def training(self, fraction: float) -> None:
        if not self.quiet:
            sys.stderr.write(f"\rtraining the start network: {100 * fraction:3.0f}%   ")
            sys.stderr.flush()

    def close(self) -> None:
        if not self.quiet:
            sys.stderr.write("\n")


def walk_and_report(start: Callable[[], object], args, report: Callable[[object], tuple[list[str], dict]]) -> int:
    """Walk an application (``geoviz.applications.api``: prepare, then walk) and print its summary; the exit status."""
    t0 = time.time()
    run = start()  # SIGTERM is a KeyboardInterrupt here (main): the runner keeps the finished steps
    wall = time.time() - t0
    runner = run.runner
    run_dir = str(run.folder) if run.folder is not None else None
    if run.state != "finished":
        kept = len(runner.rows())
        reason = run.message.rstrip(".")
        head = reason if run.state == "diverged" else f"The path {'failed' if run.state == 'failed' else 'was ' + run.state} ({reason})"
        print(f"{head}; its {kept} finished steps are kept in {run_dir}.", file=sys.stderr)
        return 3 if run.state == "diverged" else 1
    lines, payload = report(runner)
    payload.update({"steps": runner.path.step, "wall_seconds": round(wall, 3), "run_dir": run_dir})
    used = runner.path.backend_used
    if used is not None:  # what really computed G v: a fallback is said, not hidden
        payload["backend"] = used
        if used != runner.path.config.backend:
            lines.append(f"G·v computed by the {used} backend: the network is not one {runner.path.config.backend} can run")
    for line in lines:
        print(line)
    print(f"run folder: {run_dir}")
    if args.json:
        print(json.dumps(payload))
    return 0


def _walk(args, config, solver: SolverConfig, loaded: dict, progress: Progress):
    """What each command's start is: prepare the runner (the API's function), walk it here."""
    from geoviz.applications.api import walk

    return walk(_prepare(args, config, solver, loaded, progress.warn), args.command, config.steps, progress)


def _cmd_sparsify(args) -> int:
    config, solver = application_configs(args)
    _output_first(args)
    progress = Progress(args.steps, args.quiet, "sparsify")
    loaded = _load(args, config, progress.training)

    def report(runner):
        s = runner.summary
        lines = [
            f"dense accuracy           {s['dense_accuracy']:.4f}",
            f"geodesic ({solver.mode:7s})       {s['accuracy']:.4f}  at sparsity {s['sparsity']:.3f}",
            *([f"  pruned to the target    {s['pruned_accuracy']:.4f}  at sparsity {config.sparsity:.3f} (the path ended short of it)"]
              if s["sparsity"] < config.sparsity - 1e-6 else []),
            f"one-shot pruning         {s['baselines']['one_shot']:.4f}",
            f"prune + fine-tune        {s['baselines']['finetune']:.4f}  ({s['gradient_evaluations']} gradient evaluations, uses labels)"
            if s["baselines"].get("finetune") is not None else "prune + fine-tune        not run (--no-baselines)",
            f"prune + distil           {s['baselines']['distill']:.4f}  (as many, inputs only)"
            if s["baselines"].get("distill") is not None else "prune + distil           not run (--no-baselines)",
            f"steps {runner.path.step} ({s['end_reason']})",
        ]
        payload = {
            "dense_accuracy": s["dense_accuracy"],
            "accuracy": s["accuracy"],
            "sparsity": s["sparsity"],
            "pruned_accuracy": s["pruned_accuracy"],
            "baselines": {k: {"accuracy": v, "data_used": s["data_used"][k]} for k, v in s["baselines"].items()},
        }
        return lines, payload

    return walk_and_report(lambda: _walk(args, config, solver, loaded, progress), args, report)


def _cmd_continual(args) -> int:
    config, solver = application_configs(args)
    _output_first(args)
    progress = Progress(args.steps, args.quiet, "continual")
    loaded = _load(args, config, progress.training)
    sequence = loaded["sequence"]

    def report(runner):
        s = runner.summary
        keys = ("task1", "task2", "average")
        rows = [("start", s["start"]), (f"geodesic ({solver.mode})", s["geodesic"])]
        rows += [(name, s["baselines"][name]) for name in ("finetune", "ewc", "replay") if name in s["baselines"]]
        lines = [f"{sequence.name}, memory of {config.memory} task-1 examples", f"{'':22s} task1   task2   average"]
        for name, r in rows:
            lines.append(f"{name:22s} {r['task1']:.4f}  {r['task2']:.4f}  " + (f"{r['average']:.4f}" if "average" in r else ""))
        lines.append(f"baselines: {s['gradient_evaluations']} gradient evaluations each, as the path used; steps {s['steps']}")
        payload = {
            "scenario": s["scenario"],
            "memory_size": s["memory_size"],
            "start": {k: s["start"][k] for k in ("task1", "task2")},
            "geodesic": {k: s["geodesic"][k] for k in keys},
            "baselines": {name: {**{k: r[k] for k in keys}, "data_used": r["data_used"]} for name, r in s["baselines"].items()},
        }
        return lines, payload

    return walk_and_report(lambda: _walk(args, config, solver, loaded, progress), args, report)


def _cmd_connect(args) -> int:
    from geoviz.applications.connect import run_landscape

    config, solver = application_configs(args)
    if args.weights_b and not os.path.isfile(args.weights_b):  # before w_A is trained
        raise ConfigError(f"No weights file at {args.weights_b}.")
    _output_first(args)
    progress = Progress(args.steps, args.quiet, "connect")
    loaded = _load(args, config, progress.training)  # w_B trained from --seed-b unless a file is given
    problem = loaded["problem"]

    def report(runner):
        s = runner.summary
        a = args.weights or f"seed {problem.setup.seed}"
        b = args.weights_b or f"seed {runner.task.seed_b}"
        lines = [f"w_A ({a}) and w_B ({b})"
                 + (", w_B aligned by weight matching" if config.align else "")
                 + f"; |w_A - w_B| = {runner.task.distance:.3f}"]
        for end in ("a", "b"):
            e = s["endpoints"][end]
            lines.append(f"endpoint {end.upper()}: train loss {e['train_loss']:.4f}, test accuracy {e['test_accuracy']:.4f}")
        lines.append(f"{'':10s} barrier  min acc  length  functional")
        for name in ("geodesic", "line", "bezier", "bezier_inputs"):
            r = s[name]
            if r is None:
                lines.append(f"{name:10s} not run (--no-baselines)")
                continue
            lines.append(f"{name:10s} {r['barrier']:7.4f}  {r['min_accuracy']:.4f}  {r['length']:6.2f}  {r['functional_length']:8.2f}")
        if s.get("bezier") is not None:
            lines.append(f"Bezier curves trained for {s['gradient_evaluations']} gradient evaluations, as many as the geodesic used "
                         f"(bezier: labels; bezier_inputs: inputs only); steps {s['steps']} ({s['end_reason']})")
        else:
            lines.append(f"Bezier curves not trained (--no-baselines); steps {s['steps']} ({s['end_reason']})")
        if config.grid:
            cost = runner.task.grid_cost(config.grid)
            print(f"landscape: {cost['evaluations']} evaluations of {cost['rows_per_evaluation']} rows ({cost['method']})", file=sys.stderr)
            landscape, _ = run_landscape(runner, config.grid)
            lines.append(f"landscape {config.grid} x {config.grid} in {landscape.seconds:.2f} s (landscape.json)")
        figures = ("barrier", "min_accuracy", "length", "functional_length")
        payload = {
            "endpoints": {k: {"loss": e["train_loss"], "accuracy": e["test_accuracy"]} for k, e in s["endpoints"].items()},
            **{name: None if s[name] is None else {k: s[name][k] for k in figures} for name in ("geodesic", "line", "bezier")},
            "baselines": {name: {**{k: s[name][k] for k in figures}, "data_used": s["data_used"][name]}
                          for name in ("line", "bezier", "bezier_inputs") if s[name] is not None},
        }
        return lines, payload

    return walk_and_report(lambda: _walk(args, config, solver, loaded, progress), args, report)


def _cmd_runs(args) -> int:
    from geoviz.record.runs import list_runs

    root = check_runs_folder(args.out)
    for run in list_runs(root) if root is not None else []:
        print(f"{run.name}  {run.state:11s}  {len(run.table):5d} steps" + (f"  {run.message}" if run.state == "unreadable" else ""))
    return 0


_HANDLERS: dict[str, Callable] = {"sparsify": _cmd_sparsify, "continual": _cmd_continual, "connect": _cmd_connect, "runs": _cmd_runs}


def main(argv: Sequence[str] | None = None) -> int:
    # before any parallel op, so that the intra-op workers inherit it
    with denormals_flushed():
        return _main(argv)


class _StderrHandler(logging.StreamHandler):
    """A handler that writes to sys.stderr as it is at each note (a StreamHandler keeps
    the stream it was made with, which a later redirection, or a test's capture, closes)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _notes_on_stderr() -> None:
    """The library's notes (a damaged cache entry retrained, ...) as lines on stderr."""
    log = logging.getLogger("geoviz")
    if not any(getattr(h, "_geoviz_cli", False) for h in log.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("note: %(message)s"))
        handler._geoviz_cli = True
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def _main(argv: Sequence[str] | None) -> int:
    _notes_on_stderr()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sweep"]:  # its own parser: flags it does not know are the trials' settings
        from geoviz.cli_sweep import main as sweep_main

        return sweep_main(argv[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed its one-line usage error
        return int(exc.code or 0)
    def on_term(signum, frame):  # a kill keeps the finished steps and says so, in every phase
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term) if threading.current_thread() is threading.main_thread() else None
    try:
        if getattr(args, "threads", None) is not None:
            check_value("threads", args.threads)
            import torch

            torch.set_num_threads(args.threads)
        return _HANDLERS[args.command](args)
    except GeovizError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: stopped by a signal before the path started (loading data or training the start network); "
              "nothing was written.", file=sys.stderr)
        return 130
    except MemoryError:
        print("error: out of memory; try a smaller network, dataset or metric batch.", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk, a folder taken away: the system's own sentence
        where = f" ({err.filename})" if err.filename else ""
        print(f"error: {err.strerror or err}{where}.", file=sys.stderr)
        return 2
    except Exception as err:  # a bug: one sentence here, the traceback in a file
        return _internal_error(err)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _internal_error(err: Exception) -> int:
    import tempfile
    import traceback

    with tempfile.NamedTemporaryFile("w", prefix="geoviz-error-", suffix=".txt", delete=False) as fh:
        fh.write(traceback.format_exc())
    print(f"error: an internal error ({type(err).__name__}: {str(err)[:200]}); please report it with {fh.name}.", file=sys.stderr)
    return 1
