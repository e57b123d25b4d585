"""The step solver and the path iterator.

Each exact step solves (METHOD.md)

    theta* = argmin_theta  theta^T G theta - beta v^T theta   s.t. |theta| <= eps

whose solution is theta* = (beta/2) (G + mu I)^-1 v with mu > 0 the multiplier that
makes |theta*| = eps. We fix the damping mu = rho * lambda_max(G) instead of beta,
solve (G + mu I) u = v by conjugate gradients on G v products, step
theta = eps u / |u|, and report the beta this corresponds to: beta = 2 eps / |u|.

The ``penalty`` mode is the authors' later practical variant: plain Adam steps on
D(f(w), f(w0)) + lambda L2(w). It is labelled as such everywhere.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.func import functional_call

from geoviz.errors import ConfigError, DivergedError
from geoviz.validation import check_fields
from geoviz.core.linearize import RowSpace
from geoviz.core.metric import BACKENDS, METRIC_KINDS, FlatParams, functional_distance, make_step_product, top_eigenvalue
from geoviz.core.optim import Adam

__all__ = [
    "MODES",
    "EPS_SCHEDULES",
    "schedule_factor",
    "SolverConfig",
    "CGInfo",
    "conjugate_gradient",
    "solve_step",
    "StepRecord",
    "Path",
    "flush_denormals",
    "flushing_denormals",
    "denormals_flushed",
]

MODES = ("exact", "penalty")
EPS_SCHEDULES = ("constant", "linear", "cosine")
# a decaying schedule ends at this fraction of eps (never 0: a path that ends on a
# distance would otherwise take ever smaller steps toward it)
_SCHEDULE_FLOOR = 0.1


def schedule_factor(schedule: str, progress: float) -> float:
    """The step length's multiple of ``eps`` at ``progress`` in [0, 1] along the path.

    ``constant``: 1. ``linear`` and ``cosine`` decay from 1.9 to 0.1, the cosine flat at
    both ends: f = 0.1 + 1.8 s(p) with s = 1 - p or (1 + cos(pi p)) / 2. Both average 1
    over [0, 1], so a path that runs its whole budget walks as far as at constant eps:
    longer steps early, shorter near the end.
    """
    p = min(max(progress, 0.0), 1.0)
    if schedule == "constant":
        return 1.0
    shape = 1.0 - p if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * p))
    return _SCHEDULE_FLOOR + 2.0 * (1.0 - _SCHEDULE_FLOOR) * shape
_PENALTY_LENGTH_BATCH = 64


def flush_denormals() -> None:
    """Treat subnormal floats as zero on this CPU thread and the intra-op workers it starts.

    Under the sparsity pull the masked weights shrink geometrically. After about
    1,400 penalty steps on digits some are subnormal (below 1.2e-38 in float32),
    and every product that touches them is 10-100x slower: a digits step went from
    1.8 to 11 ms. The flag lives in each thread's floating-point state, and the
    intra-op worker threads copy it when they are created, so it is set first
    thing in the app's path thread (and, through :func:`denormals_flushed`, in the
    CLI); workers created earlier keep their own. TensorFlow sets the same mode in
    its compute threads.
    """
    torch.set_flush_denormal(True)


def flushing_denormals() -> bool:
    """Whether this thread treats subnormal floats as zero now."""
    return float(torch.full((1,), 1e-40, dtype=torch.float32) * 1.5) == 0.0


@contextlib.contextmanager
def denormals_flushed() -> Iterator[None]:
    """:func:`flush_denormals` for a block; the thread's mode is restored after it."""
    was = flushing_denormals()
    flush_denormals()
    try:
        yield
    finally:
        if not was:
            torch.set_flush_denormal(False)


# an evaluated cross-entropy beyond both of these has left the network's function behind:
# 100x its start, and 10 nats (the true class at probability e^-10; chance is ln K = 2.3)
_LOSS_FACTOR, _LOSS_FLOOR = 100.0, 10.0


@dataclass(frozen=True)
class SolverConfig:
    """Every knob of a step. Saved whole in each run record."""

    mode: str = "exact"
    # Euclidean length of one step. 0.05 is the paper's scale; larger steps bend less.
    eps: float = 0.05
    # how the step length changes along the path (schedule_factor): constant, or a
    # linear / cosine decay from 1.9 eps to 0.1 eps (the same mean). Progress is the
    # larger of step / budget and, for a path that ends on a distance (sparsify,
    # connect), the fraction of that distance covered. Penalty mode scales Adam's rate alike.
    eps_schedule: str = "constant"
    # rho: mu = rho * lambda_max(G). Small rho follows the null directions of G
    # closely; large rho tends to plain gradient descent on the objective.
    # 1e-4 kept 2-4 points more accuracy than 1e-3 when sparsifying digits.
    damping: float = 1e-4
    metric: str = "output"
    # how G v is computed (geoviz.core.metric): "linear" (a linearised forward over kept
    # activations; networks that are not chains of standard layers fall back to
    # "autograd"), "autograd" (double backward; an operation without a double
    # backward falls back to "func") or "func" (torch.func jvp + vjp). What really
    # ran is Path.backend_used, kept in the run's summary.
    # bench/step_cost.py: on VGG11 (H100) "linear" costs 1.05 SGD steps, "autograd" 1.97
    backend: str = "linear"
    # start CG from the previous step's solution, rescaled: successive steps solve
    # nearly the same system, so the slow (near-null) directions keep converging
    warm_start: bool = True
    # CG needs about sqrt(1/rho) iterations to converge fully; a partial solve
    # already removes the stiff directions, and with the warm start below the
    # solve keeps improving from step to step: 10 warm did better than 20 cold.
    cg_iterations: int = 10
    cg_tolerance: float = 1e-4  # on |r| / |v|
    power_iterations: int = 10  # for the first lambda_max estimate
    eigen_refresh: int = 20  # steps between lambda_max refreshes
    # a refresh starts from the last eigenvector, which moves little in 20 steps:
    # a few iterations suffice (mu is a scale knob, not a precise quantity)
    refresh_iterations: int = 3
    metric_batch: int = 256
    # penalty mode: Adam on D(f(w), f(w0)) + weight * L2(w)
    penalty_lr: float = 1e-3
    penalty_weight: float = 1.0
    # the weight grows linearly, by penalty_weight every penalty_ramp steps, so the
    # objective wins in the end (a fixed weight stalls at a compromise)
    penalty_ramp: int = 100
    # a step whose objective grows beyond this factor of the start is a divergence
    explode_factor: float = 1e6

    def validate(self) -> None:
        """Raise ConfigError with one sentence for the first bad setting."""
        if self.mode not in MODES:
            raise ConfigError(f"Unknown mode '{self.mode}'; choose exact or penalty.")
        if self.backend not in BACKENDS:
            raise ConfigError(f"Unknown backend '{self.backend}'; choose {', '.join(BACKENDS)}.")
        if self.metric not in METRIC_KINDS:
            raise ConfigError(f"Unknown metric '{self.metric}'; choose output or fisher.")
        if self.eps_schedule not in EPS_SCHEDULES:
            raise ConfigError(f"Unknown eps schedule '{self.eps_schedule}'; choose {', '.join(EPS_SCHEDULES)}.")
        if not (self.eps > 0 and math.isfinite(self.eps)):
            raise ConfigError(f"eps must be a positive number, got {self.eps}.")
        if not (self.damping > 0 and math.isfinite(self.damping)):
            raise ConfigError(f"damping must be a positive number (rho in mu = rho * lambda_max), got {self.damping}.")
        if self.cg_iterations < 1:
            raise ConfigError(f"cg_iterations must be at least 1, got {self.cg_iterations}.")
        if self.metric_batch < 1:
            raise ConfigError(f"metric_batch must be at least 1, got {self.metric_batch}.")
        if not self.penalty_lr > 0 or not self.penalty_weight > 0:
            raise ConfigError("penalty_lr and penalty_weight must be positive numbers.")
        if self.penalty_ramp < 1:
            raise ConfigError(f"penalty_ramp must be at least 1 step, got {self.penalty_ramp}.")
        check_fields(self)  # and every number in its finite range (geoviz.validation)


@dataclass(frozen=True)
class CGInfo:
    iterations: int
    relative_residual: torch.Tensor  # 0-d: |b - A x| / |b|


def conjugate_gradient(
    apply_a: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    max_iterations: int,
    tolerance: float,
    x0: torch.Tensor | None = None,
    overwrite_x0: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, CGInfo]:
    """Solve A x = b for symmetric positive definite A, from x = 0 or a warm start x0.

    With ``overwrite_x0`` the iterate is kept in x0's storage (one vector fewer; the
    caller gives x0 up). Four vectors live through the iterations: x, r, p and A p.

    A warm start costs one product (its residual). We tried rescaling x0 by the
    A-norm-optimal factor (x0 . b) / (x0 . A x0): it solves each system better but
    its paths kept less accuracy (digits, 90% sparsity: 0.950 vs 0.967), so the
    start is used as it is.

    Returns:
        (x, r, info) with r = b - A x the (recursively updated) residual.
    """
    if x0 is None:
        x = torch.zeros_like(b)
        r = b.clone()
    else:
        x = x0 if overwrite_x0 else x0.clone()
        r = torch.sub(b, ap := apply_a(x), out=ap)  # in place: a fresh vector costs twice a pass
    p = r.clone()
    rr = torch.dot(r, r)
    b_norm = b.norm().clamp_min(1e-30)
    # on a GPU, checking the residual is a host sync: do it every few iterations
    check_every = 1 if b.device.type == "cpu" else 5
    iterations = 0
    # in place, with 0-d tensor coefficients: no allocation and no host sync per
    # update. Writing into the vector being read is the cheapest form on the CPU:
    # p <- r + beta p into a spare vector took 111 us on LeNet's 266k weights, in
    # place 51 us (timed alone, one thread)
    for iterations in range(1, max_iterations + 1):
        ap = apply_a(p)
        alpha = rr / torch.dot(p, ap)
        x.addcmul_(p, alpha)
        r.addcmul_(ap, alpha, value=-1.0)
        rr_new = torch.dot(r, r)
        if iterations % check_every == 0 and rr_new.sqrt() <= tolerance * b_norm:
            break
        torch.addcmul(r, p, rr_new / rr, out=p)  # p <- r + (rr_new / rr) p
        rr = rr_new
        del ap  # before the next product makes its own: two would be alive at once
    return x, r, CGInfo(iterations, r.norm() / b_norm)


def solve_step(
    product: Callable[[torch.Tensor], torch.Tensor],
    v: torch.Tensor,
    mu: float | torch.Tensor,
    eps: float,
    max_iterations: int,
    tolerance: float,
    x0: torch.Tensor | None = None,
    space: RowSpace | None = None,
    overwrite_x0: bool = False,
) -> tuple[torch.Tensor, dict[str, float]]:
    """One constrained step: theta = eps * u / |u| with (G + mu I) u = v.

    ``overwrite_x0``: the solve may work in x0's storage (the caller gives it up).

    With a ``space`` (:class:`geoviz.core.linearize.RowSpace`), ``product`` acts on its
    coordinates, and conjugate gradients take the same iterates as on the full system
    (see :func:`_row_space_system`), with cheaper products. ``v``, ``x0``, theta and u
    are full vectors either way.

    Returns:
        theta (P,) and a record with the CG iterations, relative residual, the
        equivalent beta (2 eps / |u|), the step's functional length theta^T G theta,
        and ``u`` itself (to warm-start the next solve).
    """
    mu = torch.as_tensor(mu, dtype=v.dtype, device=v.device)
    if space is None:
        apply_a, b, start, to_full = (lambda p: product(p).addcmul_(p, mu)), v, x0, (lambda x: x)
    else:  # its start is a fresh vector: CG may always work in it
        apply_a, b, start, to_full = _row_space_system(product, space, v, mu, x0)
        overwrite_x0 = True
    x, r, info = conjugate_gradient(apply_a, b, max_iterations, tolerance, start, overwrite_x0)
    # theta^T G theta without another product: x^T G x = x^T (b - r) - mu |x|^2 (in the
    # row-space system too: G vanishes on the extra coordinate)
    ugu = torch.dot(x, b) - torch.dot(x, r) - mu * x.square().sum()
    u = to_full(x)
    u_norm = u.norm().clamp_min(1e-30)
    theta = (eps / u_norm) * u
    functional = (eps / u_norm) ** 2 * ugu.clamp_min(0.0)
    return theta, {  # 0-d tensors, fetched together by the caller
        "cg_iterations": info.iterations,
        "cg_residual": info.relative_residual,
        "beta": 2.0 * eps / u_norm,
        "functional_sq": functional,
        "u": u,
        "products": info.iterations + (x0 is not None),
    }


def _row_space_system(product, space: RowSpace, v: torch.Tensor, mu: torch.Tensor, x0: torch.Tensor | None):
    """(G + mu I) u = v in row-space coordinates plus one, for conjugate gradients.

    G + mu I is E (G_r + mu I) E^T on the span and mu on its complement, and the
    residual's part off the span, r0 = P_perp (v - mu x0), stays on its line through
    every CG iteration. So CG on the coordinates (x_r, s), with u = E x_r + P_perp x0 +
    s r0 / |r0|, the operator diag(G_r + mu I, mu) and the right-hand side
    (E^T v, |r0|), takes exactly the iterates of CG on the full system. (Solving the
    complement exactly instead, v_perp / mu, is right only at convergence: with 10
    iterations the under-solved span and the exact complement came out of
    proportion, cos(theta, exact) 0.93-0.99 against 0.97-0.998 for the plain solve
    along a digits path, rho = 1e-4.)

    Returns:
        (x -> A x, b, the warm start or None, x -> the full vector u).
    """
    b_span = space.restrict(v)
    off = v - space.extend(b_span)  # v's part off the span
    x0_off = None
    if x0 is not None:
        x0_span = space.restrict(x0)
        x0_off = x0 - space.extend(x0_span)
        off.addcmul_(x0_off, mu, value=-1.0)  # the residual's part off the span
    off_norm = off.norm()
    line = off / off_norm.clamp_min(1e-30)
    n = b_span.numel()
    b = torch.cat([b_span, off_norm.reshape(1)])
    start = None if x0 is None else torch.cat([x0_span, off_norm.new_zeros(1)])

    def apply_a(p: torch.Tensor) -> torch.Tensor:
        # the product writes into the result's head: no concatenation (a copy of the
        # whole vector per product)
        out = torch.empty_like(p)
        product(p[:n], out[:n]).addcmul_(p[:n], mu)
        torch.mul(p[n:], mu, out=out[n:])
        return out

    def to_full(x: torch.Tensor) -> torch.Tensor:
        u = space.extend(x[:n]).add_(line * x[n])
        return u if x0_off is None else u.add_(x0_off)

    return apply_a, b, start, to_full


@dataclass(frozen=True)
class StepRecord:
    """What one step of a path did. ``metrics`` is empty on steps not evaluated.

    ``objective`` is L2 at the point the step started from (it comes free with the
    gradient); lengths are cumulative up to and including this step.
    """

    step: int
    objective: float
    eps_length: float
    functional_sq: float
    path_length: float
    functional_length: float
    cg_iterations: int
    cg_residual: float
    damping_mu: float
    lambda_max: float
    beta: float
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)

    def row(self) -> dict[str, float]:
        """A flat table row (metrics merged in)."""
        out = asdict(self)
        out.update(out.pop("metrics"))
        return out


class Path:
    """A path through weight space, one step per ``next()``.

    Args:
        model: the module (used through ``functional_call`` in eval mode).
        buffers: its buffers (BatchNorm statistics), fixed along the path.
        w0: start weights, flat (P,).
        objective: the second goal L2 (see ``geoviz.applications.objectives``).
        metric_pool: inputs the metric batches are drawn from, (N, ...); for
            continual learning this is the memory of task-1 inputs. A tensor, or
            anything indexed like one (a :class:`~geoviz.setups.stream.Stream`:
            ``pool[index]`` fetches the batch onto the device, ``pool.split(n)``
            walks it in chunks); a fixed batch (``resample`` off) is fetched once.
        config: the solver settings.
        evaluate: flat weights -> application figures (loss/accuracy per task, ...).
        max_steps: the path stops here at the latest.
        eval_every: evaluate every this many steps (and at the first and last).
        seed: for the metric batches and the power iteration's start vector.
        resample: draw a fresh metric batch from the pool each step (else the
            first ``metric_batch`` rows are the batch throughout).
    """

    def __init__(
        self,
        model: nn.Module,
        buffers: dict[str, torch.Tensor],
        w0: torch.Tensor,
        objective,
        metric_pool: torch.Tensor,
        config: SolverConfig,
        evaluate: Callable[[torch.Tensor], dict[str, float]],
        max_steps: int,
        eval_every: int = 1,
        seed: int = 0,
        resample: bool = True,
    ) -> None:
        config.validate()
        if max_steps < 1:
            raise ConfigError(f"steps must be at least 1, got {max_steps}.")
        self.model = model.eval()
        self.layout = FlatParams.of(model)
        self.buffers = buffers
        # one copy: the path never writes into self.w (each step makes a new vector)
        self.w0 = w0.detach().clone()
        self.w = self.w0
        self.objective = objective
        self.metric_pool = metric_pool
        self.resample = resample and metric_pool.shape[0] > config.metric_batch
        if not self.resample and not isinstance(metric_pool, torch.Tensor):  # a stream: the fixed batch, once
            self.metric_pool = metric_pool[torch.arange(min(metric_pool.shape[0], config.metric_batch))]
        self._batch_gen = torch.Generator(device="cpu").manual_seed(seed)
        self._reference: torch.Tensor | None = None
        self.config = config
        self.evaluate = evaluate
        self.max_steps = max_steps
        self.eval_every = max(1, eval_every)
        self.seed = seed
        self.step = 0
        # G v products (exact) or gradient steps (penalty): what the baselines get too
        self.gradient_evaluations = 0
        # how G v was really computed (``config.backend`` may have fallen back: see
        # geoviz.core.metric); None until the first exact step, and in penalty mode
        self.backend_used: str | None = None
        self.done = False
        self.end_reason = ""
        self._path_length = 0.0
        self._functional_length = 0.0
        self._lambda = torch.full((), float("nan"))
        self._eigvec: torch.Tensor | None = None
        self._u: torch.Tensor | None = None
        self._nan_tensor: torch.Tensor | None = None
        self._adam: Adam | None = None
        self._params: list[nn.Parameter] = []
        self._w_flat: torch.Tensor | None = None
        self._net: nn.Module | None = None
        self._start_value: float | None = None
        self._start_losses: dict[str, float] | None = None
        self._divergence: DivergedError | None = None
        self._t0 = time.perf_counter()
        self._elapsed = 0.0
        # the step-length schedule: the objective's distance at the start and now
        self._distance_start: float | None = None
        self._distance_now: float | None = None
        self.step_factor = 1.0  # this step's multiple of eps (or of penalty_lr)

    # -- the two kinds of step -------------------------------------------------
    def _exact_step(self, inputs: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, dict]:
        cfg = self.config
        # about k + 1 products per step, and a few more for lambda_max now and then
        product, space = make_step_product(
            self.model, self.layout, self.buffers, inputs, self.w, cfg.metric, cfg.backend, cfg.cg_iterations + 1
        )
        if self._eigvec is None or (self.step - 1) % cfg.eigen_refresh == 0:
            start = self._eigvec
            if start is None:
                gen = torch.Generator(device="cpu").manual_seed(self.seed)
                start = torch.randn(self.w.shape, generator=gen, dtype=self.w.dtype).to(self.w.device)
            iterations = cfg.power_iterations if self._eigvec is None else cfg.refresh_iterations
            # G lives on the span: its top eigenpair is the reduced operator's
            lam, vec = top_eigenvalue(product, start if space is None else space.restrict(start), iterations)
            self._eigvec = vec if space is None else space.extend(vec)
            self.gradient_evaluations += iterations
            self._lambda = lam.clamp_min(1e-12)
        mu = cfg.damping * self._lambda
        # the solve works in the warm start's storage (one vector fewer), and on the
        # gradient itself rather than a negated copy: (G + mu I) u = grad gives exactly
        # the negated iterates (negation is exact in floating point), so u is kept for
        # the next warm start as it is and the step is w - theta, bit for bit w + theta
        # of the system in -grad
        x0, self._u = (self._u if cfg.warm_start else None), None
        eps = cfg.eps * self.step_factor
        theta, info = solve_step(product, grad, mu, eps, cfg.cg_iterations, cfg.cg_tolerance, x0, space, overwrite_x0=True)
        u = info.pop("u")
        self._u = u if cfg.warm_start else None
        self.backend_used = product.backend
        info["damping_mu"] = mu
        self.gradient_evaluations += info.pop("products")
        step_norm = theta.norm()
        return theta.neg_().add_(self.w), step_norm, info  # w - theta, in theta's storage

    def _penalty_step(self, inputs: torch.Tensor, reference: torch.Tensor, grad_fn) -> tuple[torch.Tensor, torch.Tensor, dict]:
        cfg = self.config
        if self._adam is None:
            # Adam works on a private copy of the module whose parameters are views of
            # one flat vector, updated in place. Through functional_call and a flat
            # leaf, autograd would concatenate every gradient (13-22% of an SGD step
            # on the CPU) and each call would re-bind the parameters
            self._net = copy.deepcopy(self.model).eval()
            self._net.load_state_dict(self.buffers, strict=False)
            self._w_flat = self.w.clone()
            self._params = list(self._net.parameters())
            for param, view in zip(self._params, self.layout.views(self._w_flat)):
                param.data = view
            self._adam = Adam([p.detach() for p in self._params], lr=cfg.penalty_lr)
        self._adam.set_lr(cfg.penalty_lr * self.step_factor)
        weight = cfg.penalty_weight * (1.0 + self.step / cfg.penalty_ramp)
        out = self._net(inputs)
        out = out.reshape(out.shape[0], -1)
        distance = functional_distance(out, reference, cfg.metric)
        # autograd hands over the distance's gradients as it makes them (no .grad to
        # add into), and the objective's part is added to them in one call
        grads = list(torch.autograd.grad(distance, self._params, materialize_grads=True))
        torch._foreach_add_(grads, self.layout.views(grad_fn), alpha=weight)
        self.gradient_evaluations += 1
        self._adam.step(grads)
        # the next point is Adam's vector, copied so that self.w and the optimiser's
        # tensor never alias. (A zero-started theta vector for Adam to update, giving
        # w + theta and |theta| without a subtraction, timed the same: 1.00x.)
        w_next = self._w_flat.clone()
        nan = self._nan(w_next.device)
        return w_next, torch.dist(w_next, self.w), {
            "cg_iterations": 0,
            "cg_residual": nan,
            "beta": nan,
            "functional_sq": nan,
            "damping_mu": nan,
            "outputs": out.detach(),
        }

    # -- iteration -------------------------------------------------------------
    def __iter__(self) -> Iterator[StepRecord]:
        return self

    def __next__(self) -> StepRecord:
        if self._divergence is not None:  # seen in the last step's evaluation, which is kept
            raise self._divergence
        if self.done:
            raise StopIteration
        t_start = time.perf_counter()
        self.step += 1
        begin = getattr(self.objective, "begin_step", None)
        if begin is not None:  # e.g. a sparsity mask revised every K steps
            begin(self.step, self.w)
        self.step_factor = self._schedule()
        value, grad = self.objective.value_and_grad(self.w)
        if self.config.mode == "exact":
            # a task's loss costs a backward pass, an analytic objective nothing; a
            # penalty step counts as one evaluation in all (distance and L2 together,
            # as one replay step of the continual baselines)
            self.gradient_evaluations += getattr(self.objective, "gradient_cost", 0)
        index = self._metric_index()
        inputs = self.metric_pool[index]
        if self.config.mode == "exact":
            w_next, step_norm, info = self._exact_step(inputs, grad)
        else:
            w_next, step_norm, info = self._penalty_step(inputs, self._reference_outputs()[index], grad)
        if self.config.mode == "penalty":
            # the functional length of a free step: the finite distance on the first
            # 64 examples of the batch, which agrees with theta^T G theta to leading
            # order (a quarter of a forward)
            with torch.no_grad():
                head = inputs[:_PENALTY_LENGTH_BATCH]
                moved = self._net(head)  # its weights are w_next
                info["functional_sq"] = functional_distance(
                    moved.reshape(moved.shape[0], -1), info.pop("outputs")[: head.shape[0]], self.config.metric
                )
        distance = self.objective.distance(w_next)
        figures = [value, step_norm, info["functional_sq"], info["beta"], info["cg_residual"], info["damping_mu"], self._lambda]
        if distance is not None:
            figures.append(distance)
        if w_next.device.type == "cpu":
            figures = [float(f) for f in figures]
        else:  # the step's one host transfer
            figures = torch.stack([torch.as_tensor(f, dtype=torch.float64, device=w_next.device) for f in figures]).tolist()
        value, eps_length, functional_sq, beta, cg_residual, mu, lam = figures[:7]
        if self._start_value is None:
            self._start_value = value
        if not math.isfinite(value):
            raise DivergedError(f"The path diverged at step {self.step}: the objective is not finite.")
        if not math.isfinite(eps_length):  # NaN or inf anywhere in the step shows here
            raise DivergedError(f"The path diverged at step {self.step}: the step contains NaN or inf ({self._hint()}).")
        if value > self.config.explode_factor * max(self._start_value, 1e-12):
            raise DivergedError(f"The path diverged at step {self.step}: the objective exploded to {value:.3g}.")
        self.w = w_next
        self._path_length += eps_length
        self._functional_length += math.sqrt(max(functional_sq, 0.0))
        if distance is not None:
            self._distance_now = figures[7]
        finished = distance is not None and figures[7] <= self.objective.tolerance
        if finished or self.step >= self.max_steps:
            self.done = True
            self.end_reason = self.objective.end_reason if finished else "step budget reached"
            if finished:
                self.w = self.objective.finish(self.w)
        metrics = {}
        if self.done or self.step == 1 or self.step % self.eval_every == 0:
            metrics = self.evaluate(self.w)
            self._watch_losses(metrics)
            if self._divergence is not None:
                self.done = False  # the walker asks once more, and hears the divergence
        self._elapsed += time.perf_counter() - t_start
        return StepRecord(
            step=self.step,
            objective=value,
            eps_length=eps_length,
            functional_sq=functional_sq,
            path_length=self._path_length,
            functional_length=self._functional_length,
            cg_iterations=info["cg_iterations"],
            cg_residual=cg_residual,
            damping_mu=mu,
            lambda_max=lam,
            beta=beta,
            seconds=self._elapsed,
            metrics=metrics,
        )

    def _schedule(self) -> float:
        """This step's multiple of eps: :func:`schedule_factor` at the path's progress,
        the larger of (step - 1) / budget and the fraction of the objective's distance
        covered (for an objective with an end)."""
        kind = self.config.eps_schedule
        if kind == "constant":
            return 1.0
        progress = (self.step - 1) / self.max_steps
        if self._distance_start is None:
            start = self.objective.distance(self.w)
            self._distance_start = float("nan") if start is None else float(start)
            self._distance_now = self._distance_start
        if self._distance_start > 0:  # NaN (no end) is not
            progress = max(progress, 1.0 - self._distance_now / self._distance_start)
        return schedule_factor(kind, progress)

    def _hint(self) -> str:
        return "try a smaller penalty_lr" if self.config.mode == "penalty" else "try a smaller eps"

    def _watch_losses(self, metrics: dict) -> None:
        """An evaluated loss that explodes is a divergence even when the objective is fine
        (``--metric fisher --eps 50`` fell from 0.975 to chance accuracy, reported finished).
        The step is returned (its figures show the collapse); the next call raises.

        Each ``*_loss`` figure is compared with its value at w0 (one extra evaluation,
        at the first one, not counted in the path's time).
        """
        if not any(name.endswith("_loss") for name in metrics):
            return
        if self._start_losses is None:
            started = time.perf_counter()
            self._start_losses = {k: v for k, v in self.evaluate(self.w0).items() if k.endswith("_loss")}
            self._elapsed -= time.perf_counter() - started
        for name, value in metrics.items():
            if not name.endswith("_loss") or not isinstance(value, float):
                continue
            start = self._start_losses.get(name, float("nan"))
            limit = max(_LOSS_FACTOR * start, _LOSS_FLOOR) if math.isfinite(start) else _LOSS_FLOOR
            if not value <= limit:  # NaN too
                self._divergence = DivergedError(
                    f"The path diverged at step {self.step}: the {name.replace('_', ' ')} rose to {value:.3g} "
                    f"(from {start:.3g} at the start; {self._hint()})."
                )
                return

    def _nan(self, device: torch.device) -> torch.Tensor:
        if self._nan_tensor is None:
            self._nan_tensor = torch.full((), float("nan"), device=device)
        return self._nan_tensor

    def _metric_index(self) -> torch.Tensor | slice:
        n = self.metric_pool.shape[0]
        if self.resample:
            # with replacement: a randperm of a 60,000-row pool each step costs more
            # than the step itself; repeats in a batch of 256 are rare and harmless
            index = torch.randint(0, n, (self.config.metric_batch,), generator=self._batch_gen)
            return index.to(self.metric_pool.device)
        return slice(0, min(n, self.config.metric_batch))  # a view, no copy

    def _outputs(self, w: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        out = functional_call(self.model, ({**self.layout.unflatten(w), **self.buffers},), (inputs,))
        return out.reshape(out.shape[0], -1)

    def _reference_outputs(self) -> torch.Tensor:
        """f(pool; w0) for the whole metric pool, computed once (penalty mode)."""
        if self._reference is None:
            with torch.no_grad():
                self._reference = torch.cat(
                    [self._outputs(self.w0, chunk) for chunk in self.metric_pool.split(2048)]
                )
        return self._reference
