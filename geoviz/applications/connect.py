"""Application 3: connect two optima, and compare the geodesic with a line and a curve.

Two networks w_A, w_B of one architecture, trained from different seeds. Three
paths between them:

- the geodesic: L2(w) = 1/2 |w - w_B|^2 with the metric on training data; it ends
  exactly at w_B once within ``tolerance`` of it;
- the straight line;
- a quadratic Bezier curve whose control point is trained as in Garipov et al.
  2018 (t ~ U(0, 1) each step), with as many gradient evaluations as the geodesic
  used G v products;
- the same curve trained without labels (``bezier_inputs``): at t it is distilled
  to the mixture (1 - t) p_A + t p_B of the endpoints' predictions on training
  inputs, the data the geodesic sees.

Each path is judged at evenly spaced points of its Euclidean length: train loss,
test accuracy, the barrier (max train loss minus the mean of the endpoints' train
losses), the minimum test accuracy, and its Euclidean and functional lengths.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
from torch.func import functional_call

from geoviz.applications.curves import BezierCurve, LineCurve, PolylineCurve, arc_length_parameters, weight_matching
from geoviz.core.engine import Path, SolverConfig
from geoviz.errors import ConfigError
from geoviz.validation import check_fields
from geoviz.figures.landscape import BatchedEvaluator, EvalData, Landscape, Plane, grid_axes, grid_cost
from geoviz.core.metric import functional_distance
from geoviz.applications.objectives import TowardPointObjective
from geoviz.setups.problem import Problem, start_network
from geoviz.setups.stream import held, subset

__all__ = ["DATA_USED", "THIRD_POINTS", "SOLVER_DEFAULTS", "ConnectConfig", "ConnectTask", "path_summary", "connect_runner", "run_landscape", "save_landscape", "load_landscape", "LandscapeJob"]

THIRD_POINTS = ("bezier", "midpoint")

# Connecting two optima wants longer steps than sparsifying. Chosen from bench/ablation.py
# (MLPs, three seed pairs each; train-loss barrier, functional length, gradient evaluations;
# digits' rows 2-4 from a run on other pairs, where the old default gave 0.028, 14.4, 2958):
#                                 digits                    Fashion-MNIST
#   eps 0.1, rho 1e-3 (until 12-03) 0.028 ± 0.002, 13.5, 2895   0.116 ± 0.014, 13.4, 3995
#   eps 0.1, rho 3.3e-4             0.014 ± 0.001, 16.2, 3568   0.090 ± 0.012, 16.3, 4969
#   eps 0.1, rho 1e-4               0.007 ± 0.000, 26.0, 6620   0.072 ± 0.012, 22.2, 8188
#   eps 0.2, rho 1e-4               0.008 ± 0.000, 31.4, 4494   0.075 ± 0.011, 26.9, 5419
#   eps 0.2, rho 3e-4 (the default) 0.012 ± 0.001, 17.0, 2111   0.088 ± 0.012, 17.9, 2899
# A smaller damping keeps the walk on the function-preserving directions for longer before it
# must head for w_B: a lower barrier, a longer path. Below about 3e-4 the path is no longer
# short in the metric (rho 1e-4, eps 0.2: 31.4 against the straight line's 29.2 in
# tests/test_connect.py's Fashion-MNIST claim), so 3e-4;
# eps 0.2 then costs less than the old default. Smaller steps or more CG iterations alone
# did not lower the barrier (digits: eps 0.05 0.029 at 6196 evaluations; cg 20 0.031 at 5485).
SOLVER_DEFAULTS = {"eps": 0.2, "damping": 3e-4}

# What each path learns from, beyond the two networks (the geodesic's metric batches
# are training inputs; it never reads a label).
DATA_USED = {
    "geodesic": "inputs only",
    "line": "none",
    "bezier": "inputs + labels",
    "bezier_inputs": "inputs only",
}


@dataclass(frozen=True)
class ConnectConfig:
    """The second network, the path's end, and how the paths are judged."""

    seed_b: int | None = None  # None: the first network's seed + 1
    # the second network's weights file and its sha256, when it came from one (recorded only)
    weights_b: str | None = None
    weights_b_sha256: str | None = None
    align: bool = False  # permute w_B's hidden units to match w_A first (MLP only)
    # the geodesic lands exactly on w_B once |w - w_B| <= tolerance; None: one step (eps)
    tolerance: float | None = None
    steps: int = 3000  # budget; digits MLP needs ~200 steps at the defaults (eps 0.2)
    eval_every: int = 5  # the geodesic's loss/accuracy every this many steps
    points: int = 41  # evenly spaced points of length at which line and Bezier are judged
    # train rows for the loss along paths and on the grid (a fixed seeded subset when
    # the training set is larger; 0: all of it). Test accuracy always uses every row.
    eval_subset: int = 10000
    # SGD with momentum 0.9 on the control point, as Garipov et al.; Adam drifts the
    # control point far along directions with tiny gradients (curves 3-5x longer)
    bezier_lr: float = 0.05
    bezier_batch: int = 128
    third: str = "bezier"  # the landscape plane's third point: bezier control point or geodesic midpoint
    grid: int = 0  # n of the n x n landscape grid (0: none)
    margin: float = 0.25  # grid margin, a fraction of the span of the points shown

    def validate(self) -> None:
        if self.tolerance is not None and not (self.tolerance > 0 and math.isfinite(self.tolerance)):
            raise ConfigError(f"tolerance must be a positive number, got {self.tolerance}.")
        if self.steps < 1 or self.eval_every < 1:
            raise ConfigError("steps and eval_every must be at least 1.")
        if self.points < 3:
            raise ConfigError(f"points must be at least 3, got {self.points}.")
        if self.eval_subset < 0:
            raise ConfigError(f"eval_subset must be 0 (all rows) or positive, got {self.eval_subset}.")
        if not self.bezier_lr > 0 or self.bezier_batch < 1:
            raise ConfigError("bezier_lr must be positive and bezier_batch at least 1.")
        if self.third not in THIRD_POINTS:
            raise ConfigError(f"Unknown third point '{self.third}'; choose bezier or midpoint.")
        if self.grid < 0 or self.grid == 1 or self.grid > 201:
            raise ConfigError(f"grid must be 0 (no landscape) or between 2 and 201, got {self.grid}.")
        if not 0.0 <= self.margin <= 2.0:
            raise ConfigError(f"margin must be between 0 and 2, got {self.margin}.")
        check_fields(self)  # and every number in its finite range (geoviz.validation)


class _TowardB(TowardPointObjective):
    """L2 = 1/2 |w - w_B|^2, remembering the length of the final landing on w_B."""

    landing = 0.0

    def finish(self, w: torch.Tensor) -> torch.Tensor:
        self.landing = float((w - self.target).norm())
        return super().finish(w)


def path_summary(profile: dict[str, list[float]], endpoint_losses: tuple[float, float]) -> dict[str, float]:
    """Barrier (max train loss - mean endpoint train loss) and minimum test accuracy."""
    return {
        "barrier": max(profile["train_loss"]) - 0.5 * (endpoint_losses[0] + endpoint_losses[1]),
        "max_loss": max(profile["train_loss"]),
        "min_accuracy": min(profile["test_accuracy"]),
    }


class ConnectTask:
    """Two optima, the three paths between them, their figures, and the landscape."""

    def __init__(self, problem: Problem, config: ConnectConfig, solver: SolverConfig, w_b: torch.Tensor | None = None):
        config.validate()
        solver.validate()
        self.problem, self.config, self.solver = problem, config, solver
        p = problem
        if w_b is not None:  # the user's own second network (flat, in the layout of w_A)
            self.seed_b = config.seed_b
            w_b = w_b.detach().to(p.w0.device, p.w0.dtype)
        else:
            self.seed_b = p.setup.seed + 1 if config.seed_b is None else config.seed_b
            if self.seed_b == p.setup.seed and not p.setup.weights:  # (w_A from a file has no seed to clash)
                raise ConfigError(f"the second network needs a different seed than the first ({p.setup.seed}).")
            _, _, w_b = start_network(p.setup, p.data, p.device, self.seed_b)
        self.w_a = p.w0
        self.distance_before_alignment = float((w_b - self.w_a).norm())
        self.permutations = None
        if config.align:
            w_b, self.permutations = weight_matching(p.model, self.w_a, w_b, seed=p.path_seed)
        self.w_b = w_b
        self.distance = float((self.w_b - self.w_a).norm())
        n = p.x_train.shape[0]
        if config.eval_subset and n > config.eval_subset:
            gen = torch.Generator().manual_seed(p.path_seed)
            index = torch.randperm(n, generator=gen)[: config.eval_subset].to(p.device)
            x_train, y_train = subset(p.x_train, index), p.y_train[index]  # a stream's: a view
        else:
            x_train, y_train = p.x_train, p.y_train
        self.data = EvalData(x_train, y_train, p.x_test, p.y_test)
        self.evaluator = BatchedEvaluator(p, self.data)
        ends = self.evaluator.stack(torch.stack([self.w_a, self.w_b]))
        self.endpoints = {
            name: {k: float(v[i]) for k, v in ends.items()} for i, name in enumerate(("a", "b"))
        }
        self.endpoint_losses = (self.endpoints["a"]["train_loss"], self.endpoints["b"]["train_loss"])

    # -- the geodesic --------------------------------------------------------------
    def evaluate(self, w: torch.Tensor) -> dict[str, float]:
        """Figures at one point of the geodesic (BatchNorm statistics recomputed there)."""
        out = self.evaluator.stack(w.unsqueeze(0))
        row = {k: float(v[0]) for k, v in out.items()}
        row["distance_to_b"] = float((w - self.w_b).norm())
        return row

    def path(self) -> Path:
        p = self.problem
        return Path(
            p.model,
            p.buffers,
            self.w_a,
            _TowardB(self.w_b, self.config.tolerance or self.solver.eps),
            p.x_train,
            self.solver,
            self.evaluate,
            max_steps=self.config.steps,
            eval_every=self.config.eval_every,
            seed=p.path_seed,
        )

    def geodesic_profile(self, rows: list[dict], landing: float = 0.0) -> dict[str, list[float]]:
        """The geodesic's evaluated steps (equal Euclidean steps: evenly spaced in length).

        ``landing``: the length of the final jump onto w_B, added to the last point.
        """
        evaluated = [dict(r) for r in rows if "train_loss" in r]
        start = {"path_length": 0.0, "functional_length": 0.0, **self.endpoints["a"]}
        evaluated = [start] + evaluated
        evaluated[-1]["path_length"] += landing
        total = max(evaluated[-1]["path_length"], 1e-30)
        return {
            "fraction": [r["path_length"] / total for r in evaluated],
            "length": [r["path_length"] for r in evaluated],
            **{k: [r[k] for r in evaluated] for k in ("train_loss", "train_accuracy", "test_loss", "test_accuracy")},
        }

    # -- the baselines -------------------------------------------------------------
    def line(self) -> LineCurve:
        return LineCurve(self.w_a, self.w_b)

    def train_bezier(self, steps: int, callback=None, callback_every: int = 0) -> BezierCurve:
        """Train the control point (Garipov et al. 2018): t ~ U(0, 1) each step.

        Args:
            steps: gradient evaluations (one minibatch forward/backward each).
            callback: called as ``callback(step, curve)`` every ``callback_every``
                steps (for the benchmark), returning True to stop early.
        """

        def loss(logits, index, t):
            return torch.nn.functional.cross_entropy(logits, self.problem.y_train[index])

        return self._train_control(steps, loss, callback, callback_every)

    def train_bezier_inputs(self, steps: int, callback=None, callback_every: int = 0) -> BezierCurve:
        """A Bezier curve trained without labels: at t, predict what the endpoints predict.

        :meth:`train_bezier` with the labels replaced by soft targets. Each step
        draws t ~ U(0, 1) and a minibatch of training *inputs* (the geodesic's
        metric batches come from the same rows) and minimises the cross-entropy
        of w(t)'s softmax against q_t = (1 - t) p_A + t p_B, the mixture of the
        endpoints' predictive distributions (KL(q_t || p) up to a constant). The
        target is each endpoint's own prediction at t = 0 and 1, their ensemble
        at t = 1/2, and moves smoothly between them; the loss is linear in q_t,
        so it is distillation to w_A with weight 1 - t and to w_B with weight t.
        (The alternative, the nearer endpoint's outputs, asks nothing of the
        middle, where the barrier lies: the curve could keep f_A to t = 1/2 and
        then jump.) Soft-target cross-entropy has the labelled loss's gradient
        scale (p - q on the logits), so Garipov et al.'s optimiser and learning
        rate carry over unchanged; the squared logit difference, with the same
        SGD, diverged on digits (a curve 300x longer than the line). Same
        optimiser, minibatches and budget as :meth:`train_bezier`; arguments as there.
        """
        ends = self._endpoint_probabilities()  # (2, N, K)

        def loss(logits, index, t):
            target = (1.0 - float(t)) * ends[0, index] + float(t) * ends[1, index]  # (B, K)
            return -(target * torch.log_softmax(logits.reshape(len(index), -1), -1)).sum(-1).mean()

        return self._train_control(steps, loss, callback, callback_every)

    def _endpoint_probabilities(self) -> torch.Tensor:
        """softmax f(x; w_A) and softmax f(x; w_B) on every training input, (2, N, K), computed once."""
        if getattr(self, "_ends", None) is None:
            p = self.problem
            outs = []
            with torch.no_grad():
                for w in (self.w_a, self.w_b):
                    state = {**p.params(w), **p.buffers_at(w)}  # BatchNorm statistics of that network
                    parts = [functional_call(p.model, (state,), (x,)) for x in p.x_train.split(4096)]
                    outs.append(torch.softmax(torch.cat(parts).reshape(p.x_train.shape[0], -1), -1))
            self._ends = torch.stack(outs)
        return self._ends

    def _train_control(self, steps: int, loss_of, callback, callback_every: int) -> BezierCurve:
        """SGD with momentum on the control point; ``loss_of(logits, index, t)`` is the step's loss."""
        p, cfg = self.problem, self.config
        theta = (0.5 * (self.w_a + self.w_b)).clone().requires_grad_(True)
        opt = torch.optim.SGD([theta], lr=cfg.bezier_lr, momentum=0.9)
        gen = torch.Generator().manual_seed(p.path_seed)
        n = p.x_train.shape[0]
        for step in range(1, steps + 1):
            t = torch.rand((), generator=gen, dtype=torch.float64)
            c = BezierCurve.basis(t)
            index = torch.randint(0, n, (cfg.bezier_batch,), generator=gen).to(p.device)
            w = float(c[0]) * self.w_a + float(c[1]) * theta + float(c[2]) * self.w_b
            buffers = {k: b.clone() for k, b in p.buffers.items()}  # train-mode BatchNorm updates them
            p.model.train(p.batchnorm)  # BatchNorm on batch statistics, as Garipov et al. train
            try:
                logits = functional_call(p.model, ({**p.params(w), **buffers},), (p.x_train[index],))
            finally:
                p.model.eval()
            loss = loss_of(logits, index, t)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if callback is not None and callback_every and step % callback_every == 0:
                if callback(step, BezierCurve(self.w_a, theta.detach().clone(), self.w_b)):
                    break
        return BezierCurve(self.w_a, theta.detach().clone(), self.w_b)

    def curve_profile(self, curve) -> dict[str, list[float]]:
        """Figures at ``points`` evenly spaced points of the curve's Euclidean length."""
        ts, length = arc_length_parameters(curve, self.config.points)
        out = self.evaluator.stack(curve.weights(ts.to(curve.bends.dtype)))
        fraction = torch.linspace(0.0, 1.0, self.config.points)
        return {
            "fraction": fraction.tolist(),
            "length": (fraction * length).tolist(),
            "t": ts.tolist(),
            **{k: v.tolist() for k, v in out.items()},
        }

    def functional_length(self, curve, segments: int | None = None) -> float:
        """sum_k sqrt(D(f(w_k+1), f(w_k))) on a fixed metric batch, D the path's metric.

        Segments are evenly spaced in Euclidean length, about one step (eps) long
        each, so the sum approximates the integral of sqrt(dw^T G dw) as the
        geodesic's own record does step by step.
        """
        p = self.problem
        ts, length = arc_length_parameters(curve, 2)
        if segments is None:
            segments = int(min(2000, max(self.config.points, math.ceil(length / self.solver.eps))))
        ts, _ = arc_length_parameters(curve, segments + 1)
        gen = torch.Generator().manual_seed(p.path_seed)
        n = p.x_train.shape[0]
        index = torch.randperm(n, generator=gen)[: self.solver.metric_batch].to(p.device)
        inputs = p.x_train[index]
        total, previous = 0.0, None
        with torch.no_grad():
            for part in torch.split(ts.to(curve.bends.dtype), 64):
                for w in curve.weights(part):
                    out = functional_call(p.model, ({**p.params(w), **p.buffers},), (inputs,))
                    out = out.reshape(out.shape[0], -1)
                    if previous is not None:
                        total += math.sqrt(max(float(functional_distance(out, previous, self.solver.metric)), 0.0))
                    previous = out
        return total

    def judge(self, curve, profile: dict | None = None) -> tuple[dict, dict]:
        """(summary, profile) of a line or Bezier curve (its profile reused when given)."""
        profile = profile or self.curve_profile(curve)
        summary = path_summary(profile, self.endpoint_losses)
        summary["length"] = profile["length"][-1]
        summary["functional_length"] = self.functional_length(curve)
        return summary, profile

    # -- the landscape ---------------------------------------------------------------
    def third_point(self, curves: dict) -> torch.Tensor:
        """The plane's third point as the config asks: Bezier control point or geodesic midpoint."""
        if self.config.third == "midpoint" or "bezier" not in curves:  # (no Bezier when Stop skipped it)
            if "geodesic" not in curves:
                raise ConfigError("The geodesic's midpoint is unknown: its snapshots were kept as random projections "
                                  "(a network too big for the snapshot budget); use the Bezier control point or a larger budget.")
            return curves["geodesic"].weights(torch.tensor([0.5]))[0]
        return curves["bezier"].control

    def projections(self, plane: Plane, curves: dict) -> dict[str, torch.Tensor]:
        """Each path projected on the plane, (T, 2); the geodesic through its snapshots."""
        out = {}
        for name, curve in curves.items():
            if isinstance(curve, PolylineCurve):
                out[name] = plane.project(curve.bends)
            else:
                ts, _ = arc_length_parameters(curve, self.config.points)
                out[name] = plane.project(curve.weights(ts.to(curve.bends.dtype)))
        return out

    def landscape(self, curves: dict, n: int) -> tuple[Landscape, dict[str, torch.Tensor]]:
        """An empty n x n grid on the plane of w_A, w_B and the third point, and the
        paths projected on it. The grid covers the three points and the projected
        paths, plus the margin; :meth:`Landscape.fill` fills it."""
        third = self.third_point(curves)
        plane = Plane.through(self.w_a, self.w_b, third)
        shown = self.projections(plane, curves)
        shown["points"] = plane.project(torch.stack([self.w_a, self.w_b, third]))  # (3, 2)
        xs, ys = grid_axes(torch.cat(list(shown.values())), n, self.config.margin)
        return Landscape.empty(plane, xs, ys), shown

    def grid_cost(self, n: int) -> dict:
        """The grid's cost before it runs (evaluations, rows, multiply-adds, method)."""
        return {**grid_cost(n, self.data, self.problem.layout.size), "method": self.evaluator.method}


def connect_runner(
    problem: Problem,
    config: ConnectConfig,
    solver: SolverConfig,
    runs_dir: str | None = None,
    abandon_after: float | None = None,
    snapshot_budget_mb: float = 64.0,
    w_b: torch.Tensor | None = None,
    baselines: bool = True,
):
    """A :class:`~geoviz.record.runner.PathRunner` for the geodesic from w_A to w_B, with its record.

    ``w_b``: the second network's flat weights (default: trained from ``config.seed_b``).
    ``baselines=False`` skips training the Bezier curves (the line is still judged).

    When the geodesic ends, ``on_finish`` judges it and its baselines (the line;
    Bezier curves trained with labels and without, each with as many gradient
    evaluations as the geodesic used) and returns the summary.
    The runner gets ``task`` and, after the end, ``curves`` (line, bezier, geodesic
    polyline) for the landscape.
    """
    from geoviz.record.runner import PathRunner
    from geoviz.record.runs import RunWriter, default_runs_dir

    task = ConnectTask(problem, config, solver, w_b)
    reference = {
        "endpoints": task.endpoints,
        "seed_a": problem.setup.seed,
        "seed_b": task.seed_b,
        "aligned": config.align,
        "distance": task.distance,
        "distance_before_alignment": task.distance_before_alignment,
    }
    writer = RunWriter(
        runs_dir or default_runs_dir(),
        "connect",
        {
            "setup": asdict(problem.setup),
            "data": held(problem.x_train, problem.x_test),
            "connect": asdict(config),
            "solver": asdict(solver),
            "device": str(problem.device),
            "parameters": problem.layout.size,
            "seed_b": task.seed_b,
        },
        snapshot_budget_mb=snapshot_budget_mb,
    )
    writer.write_summary({"reference": reference})
    writer.save_weights("target", problem.layout.unflatten(task.w_b))

    def on_finish(runner: PathRunner) -> dict:
        path = runner.path
        rows = runner.rows()
        landing = getattr(path.objective, "landing", 0.0)
        geo_profile = task.geodesic_profile(rows, landing)
        geodesic = path_summary(geo_profile, task.endpoint_losses)
        geodesic.update(
            {
                "length": path._path_length + landing,  # the steps, and the landing on w_B
                "functional_length": path._functional_length,
                "gradient_evaluations": path.gradient_evaluations,
                "seconds": rows[-1]["seconds"] if rows else 0.0,
                "reached": path.end_reason == "reached the target network",
            }
        )
        steps, snapshots = runner.trajectory()
        if runner.sketch is None:  # (projected snapshots are no points in weight space)
            runner.curves = {**runner.curves, "geodesic": PolylineCurve(snapshots.to(task.w_a.device, task.w_a.dtype))}
        profiles = {"geodesic": geo_profile, "line": line_profile}
        runner.publish(profiles=dict(profiles))
        line_summary, _ = task.judge(line, line_profile)

        def train_and_judge(train):
            def work(report):
                t0 = time.perf_counter()
                curve = train(path.gradient_evaluations, lambda step, _: report(step, path.gradient_evaluations), 10)
                seconds = time.perf_counter() - t0
                summary, profile = task.judge(curve)
                return curve, {**summary, "training_steps": path.gradient_evaluations, "seconds": seconds}, profile

            return work

        done = runner.baseline("bezier", train_and_judge(task.train_bezier)) if baselines else None
        points = {"w_a": task.w_a, "w_b": task.w_b}
        if done is not None:
            bezier, bezier_summary, profiles["bezier"] = done
            runner.curves["bezier"] = bezier
            writer.save_weights("bezier_control", problem.layout.unflatten(bezier.control))
            points["bezier_control"] = bezier.control
            runner.publish(profiles=dict(profiles))
        # the label-free curve: the endpoints' predictions on the same inputs
        done_inputs = runner.baseline("bezier_inputs", train_and_judge(task.train_bezier_inputs)) if baselines else None
        if done_inputs is not None:
            bezier_inputs, inputs_summary, profiles["bezier_inputs"] = done_inputs
            runner.curves["bezier_inputs"] = bezier_inputs
        # the points as flat vectors, in the order of the snapshots (for replays)
        writer.save_weights("connect_points", points)
        return {
            "reference": reference,
            "endpoints": task.endpoints,
            "geodesic": geodesic,
            "line": line_summary,
            "bezier": bezier_summary if done is not None else None,
            "bezier_inputs": inputs_summary if done_inputs is not None else None,
            "data_used": DATA_USED,
            "profiles": profiles,
            "steps": path.step,
            "gradient_evaluations": path.gradient_evaluations,
            "end_reason": path.end_reason,
        }

    runner = PathRunner(
        task.path(), writer, on_finish, abandon_after=abandon_after, snapshot_budget_mb=snapshot_budget_mb / 2
    )
    runner.task = task
    # the straight line needs no training: drawn while the geodesic runs
    line = task.line()
    line_profile = task.curve_profile(line)
    runner.curves = {"line": line}
    runner.publish(profiles={"line": line_profile})
    return runner


def run_landscape(runner, n: int, progress=None) -> tuple[Landscape, dict[str, torch.Tensor]]:
    """Fill the n x n landscape of a finished connect run; saved as landscape.json.

    Args:
        runner: a finished runner from :func:`connect_runner`.
        n: grid points per side.
        progress: called with the landscape after each filled row.
    """
    task: ConnectTask = runner.task
    landscape, shown = task.landscape(runner.curves, n)
    for filled in landscape.fill(task.evaluator):
        if progress is not None:
            progress(filled)
    if runner.writer is not None:
        save_landscape(runner.writer.dir, landscape, shown, task.config.third)
    return landscape, shown


def save_landscape(folder, landscape: Landscape, shown: dict[str, torch.Tensor], third: str) -> None:
    """landscape.json in a run folder: axes, values, projected paths, the third point's kind."""
    import json
    import os
    from pathlib import Path as FsPath

    def clean(values: torch.Tensor) -> list:
        return [[None if math.isnan(x) else x for x in row] for row in values.tolist()]

    payload = {
        "third": third,
        "xs": landscape.xs.tolist(),
        "ys": landscape.ys.tolist(),
        "rows_done": landscape.rows_done,
        "seconds": landscape.seconds,
        "values": {k: clean(v) for k, v in landscape.values.items()},
        "paths": {k: v.tolist() for k, v in shown.items()},
    }
    path = FsPath(folder) / "landscape.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, path)


def load_landscape(folder) -> dict | None:
    """landscape.json of a run folder, or None."""
    import json
    from pathlib import Path as FsPath

    path = FsPath(folder) / "landscape.json"
    return json.loads(path.read_text()) if path.is_file() else None


class LandscapeJob:
    """Fills a run's landscape in a background thread; a page polls ``snapshot()``.

    Args:
        runner: a finished connect runner.
        n: grid points per side.
        abandon_after: seconds without a ``touch()`` after which the job stops itself
            (its browser tab went away), as a path does; None never.
    """

    def __init__(self, runner, n: int, abandon_after: float | None = None):
        import threading
        import time

        self.runner, self.n = runner, n
        self.abandon_after, self._clock = abandon_after, time.time
        self._last_touch = time.time()
        self.task: ConnectTask = runner.task
        self.cost = self.task.grid_cost(n)
        self.landscape, self.shown = self.task.landscape(runner.curves, n)
        self.error = ""
        self._stop = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="geoviz-landscape", daemon=True)

    def start(self) -> LandscapeJob:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop = True

    def touch(self) -> None:
        """Say that someone still watches (the page calls this when it polls)."""
        self._last_touch = self._clock()

    def _abandoned(self) -> bool:
        return self.abandon_after is not None and self._clock() - self._last_touch > self.abandon_after

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        try:
            for _ in self.landscape.fill(self.task.evaluator):
                if self._stop or self._abandoned():
                    break
            if self.runner.writer is not None and self.landscape.complete:
                save_landscape(self.runner.writer.dir, self.landscape, self.shown, self.task.config.third)
        except Exception as err:  # said on the page, never a traceback
            self.error = f"The landscape failed: {type(err).__name__}: {err}"

    def snapshot(self) -> dict:
        """The grid so far in the landscape.json shape (None where not yet computed)."""
        ls = self.landscape
        values = {}
        for k, v in ls.values.items():
            arr = v.clone().numpy()
            values[k] = [[None if math.isnan(x) else float(x) for x in row] for row in arr.tolist()]
        return {
            "third": self.task.config.third,
            "xs": ls.xs.tolist(),
            "ys": ls.ys.tolist(),
            "rows_done": ls.rows_done,
            "seconds": ls.seconds,
            "values": values,
            "paths": {k: v.tolist() for k, v in self.shown.items()},
        }
