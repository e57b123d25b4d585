"""Application 2: learn task 2 along a path that keeps the network's function on task 1.

The metric is measured on a small *memory* of M task-1 training inputs (no labels);
the second objective L2 is the training loss of task 2. Moving along the directions
that barely change the outputs on the memory, the path gains task 2 while keeping
task 1 (METHOD.md, application 2).

Baselines get the same number of gradient evaluations as the path used
(``Path.gradient_evaluations``: metric products, power iterations and the
task-2 gradient in exact mode, one per step in penalty mode), each one SGD step on a task-2 minibatch:

- ``finetune``: task-2 cross-entropy only (it forgets task 1);
- ``ewc``: plus (lambda / 2) sum_i F_i (w_i - w0_i)^2, F the diagonal Fisher of
  task 1 at the start (Kirkpatrick et al. 2017);
- ``replay``: plus the cross-entropy of the same M task-1 memory examples, with
  their labels (the geodesic sees their inputs only).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch.func import functional_call

from geoviz.core.engine import Path, SolverConfig
from geoviz.errors import ConfigError
from geoviz.validation import check_fields
from geoviz.core.metric import functional_distance
from geoviz.applications.objectives import TaskLossObjective
from geoviz.setups.problem import Problem, SetupConfig, load_problem
from geoviz.setups.tasks import DEFAULT_SPLIT, SCENARIOS, Task, TaskSequence, load_task_sequence
from geoviz.setups.stream import held

__all__ = [
    "BASELINES",
    "DEFAULT_SOLVER",
    "ContinualConfig",
    "ContinualTask",
    "load_continual",
    "continual_solver",
    "continual_runner",
]

BASELINES = ("finetune", "ewc", "replay")

# The solver settings a continual path starts from (calibrated on class-incremental
# digits, M = 100): rho = 1e-3 kept task 1 better on the *test* set than 1e-4,
# which holds the memory's outputs tighter but generalises worse (0.88 against
# 0.95), and better than 1e-2 (0.87). 10 warm CG iterations do what 20 cold did.
# eps 0.05 (bench/ablation.py, seeds 0-2, mean ± sd of the average accuracy): on
# digits, 150 steps, 0.955 ± 0.006 against 0.950 ± 0.007 at eps 0.1 (task 1 0.969
# against 0.935, task 2 0.941 against 0.965); on Fashion-MNIST, 100 steps, 0.798 ±
# 0.011 against 0.755 ± 0.014 (task 1 0.807 against 0.624). The Fisher metric, the
# linear and cosine step schedules did no better at either (bench/ablation.py).
DEFAULT_SOLVER = SolverConfig(eps=0.05, damping=1e-3, cg_iterations=10)


@dataclass(frozen=True)
class ContinualConfig:
    """The task sequence, the memory, the path budget and the baselines' settings."""

    scenario: str = "class-incremental"
    split: str = DEFAULT_SPLIT
    # task-1 training examples kept: their inputs are the metric batch of the path
    # (and, with labels, the replay buffer). 100 is the prototype's calibration.
    memory: int = 100
    # seed of the memory's draw from task 1 alone (None: the path seed, which also seeds
    # the task-2 minibatches): vary the memory while the start network and the minibatch
    # stream stay the same
    memory_seed: int | None = None
    # 150 exact steps of eps 0.05 take task 2 from 0 to ~0.94 on digits (see DEFAULT_SOLVER)
    steps: int = 150
    eval_every: int = 10
    batch_size: int = 128  # task-2 minibatch of L2 and of every baseline step
    # plain SGD: with Adam, EWC's stiff quadratic is rescaled per coordinate and
    # holds nothing (measured on permuted digits: Adam + EWC forgot more than Adam
    # alone, SGD + EWC kept 0.84); every baseline uses the same optimiser
    baseline_optimizer: str = "sgd"
    baseline_lr: float = 0.05
    # EWC strength: 100 holds task 1 on permuted digits (0.81 against fine-tuning's
    # 0.59); class-incremental EWC forgets at every lambda (a known result)
    ewc_lambda: float = 100.0
    # task-1 inputs the Fisher is averaged over; it costs K backward passes each
    # (~7 s for 200 on Fashion-MNIST with the 784-128-128-10 MLP, 2 busy cores)
    ewc_samples: int = 200

    def validate(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ConfigError(f"Unknown scenario '{self.scenario}'; choose one of {', '.join(SCENARIOS)}.")
        if self.memory < 1:
            raise ConfigError(f"The memory must hold at least 1 task-1 example, got {self.memory}.")
        if self.steps < 1 or self.eval_every < 1 or self.batch_size < 1:
            raise ConfigError("steps, eval_every and batch_size must be at least 1.")
        if self.baseline_optimizer not in ("sgd", "adam"):
            raise ConfigError(f"Unknown baseline optimizer '{self.baseline_optimizer}'; choose sgd or adam.")
        if not self.baseline_lr > 0:
            raise ConfigError(f"baseline_lr must be positive, got {self.baseline_lr}.")
        if self.ewc_lambda < 0 or self.ewc_samples < 1:
            raise ConfigError("ewc_lambda must be non-negative and ewc_samples at least 1.")
        check_fields(self)  # and every number in its finite range (geoviz.validation)


def continual_solver(solver: SolverConfig, config: ContinualConfig) -> SolverConfig:
    """The solver with its metric batch set to the whole memory."""
    return replace(solver, metric_batch=config.memory)


def load_continual(
    setup: SetupConfig, config: ContinualConfig, progress: Callable[[float], None] | None = None
) -> tuple[Problem, TaskSequence]:
    """The task sequence and a start network trained on task 1 (cached on disk)."""
    config.validate()
    sequence = load_task_sequence(setup.dataset, config.scenario, config.split, setup.seed, setup.data_dir)
    problem = load_problem(setup, classes=sequence.start_classes, progress=progress)
    return problem, sequence


class _TaskOnDevice:
    """A task's tensors on the problem's device, with its head index."""

    def __init__(self, task: Task, device: torch.device):
        self.task = task
        self.x_train = task.x_train.to(device)
        self.y_train = task.y_train.to(device)
        self.x_test = task.x_test.to(device)
        self.y_test = task.y_test.to(device)
        self.head = task.head_index(device)

    def restrict(self, logits: torch.Tensor) -> torch.Tensor:
        return logits if self.head is None else logits[:, self.head]


class ContinualTask:
    """A continual-learning problem: the memory, the path, its figures and its baselines."""

    def __init__(self, problem: Problem, sequence: TaskSequence, config: ContinualConfig, solver: SolverConfig):
        config.validate()
        solver.validate()
        self.problem, self.sequence, self.config = problem, sequence, config
        self.solver = continual_solver(solver, config)
        device = problem.device
        self.t1 = _TaskOnDevice(sequence.first, device)
        self.t2 = _TaskOnDevice(sequence.second, device)
        n1 = self.t1.x_train.shape[0]
        if config.memory > n1:
            raise ConfigError(f"The memory ({config.memory}) cannot exceed task 1's {n1} training examples.")
        gen = torch.Generator().manual_seed(problem.path_seed if config.memory_seed is None else config.memory_seed)
        index = torch.randperm(n1, generator=gen)[: config.memory].to(device)
        self.memory_x = self.t1.x_train[index]  # (M, C, H, W): the metric batch
        self.memory_y = self.t1.y_train[index]  # labels: replay only
        with torch.no_grad():
            self._memory_reference = self._logits(problem.w0, self.memory_x)  # (M, K)
        self.start = self.evaluate(problem.w0)

    # -- figures ------------------------------------------------------------------
    def _logits(self, w: torch.Tensor, x: torch.Tensor, buffers: dict | None = None) -> torch.Tensor:
        p = self.problem
        return functional_call(p.model, ({**p.params(w), **(p.buffers if buffers is None else buffers)},), (x,))

    @torch.no_grad()
    def task_figures(self, w: torch.Tensor, task: _TaskOnDevice, buffers: dict | None = None) -> tuple[float, float]:
        """(test loss, test accuracy) of one task at flat weights w, read from its head."""
        loss_sum = torch.zeros((), dtype=torch.float64, device=w.device)
        correct = torch.zeros((), dtype=torch.int64, device=w.device)
        start = 0
        for x in task.x_test.split(4096):  # a tensor's views, or a stream's chunks
            y = task.y_test[start : start + x.shape[0]]
            start += x.shape[0]
            logits = task.restrict(self._logits(w, x, buffers))  # (B, |head|)
            loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
            correct += (logits.argmax(1) == y).sum()
        n = task.y_test.shape[0]
        loss, acc = torch.stack([loss_sum / n, correct.double() / n]).tolist()  # one transfer
        return loss, acc

    def evaluate(self, w: torch.Tensor) -> dict[str, float]:
        """Per-task test loss and accuracy, their average, and the output change on the memory."""
        buffers = self.problem.buffers_at(w)  # BatchNorm statistics recomputed at w
        l1, a1 = self.task_figures(w, self.t1, buffers)
        l2, a2 = self.task_figures(w, self.t2, buffers)
        with torch.no_grad():
            change = float(functional_distance(self._logits(w, self.memory_x, buffers), self._memory_reference))
        return {
            "task1_accuracy": a1,
            "task2_accuracy": a2,
            "average_accuracy": 0.5 * (a1 + a2),
            "task1_loss": l1,
            "task2_loss": l2,
            "memory_output_change": change,
        }

    @staticmethod
    def scores(figures: dict[str, float]) -> dict[str, float]:
        """The three numbers every method is compared by."""
        return {
            "task1": figures["task1_accuracy"],
            "task2": figures["task2_accuracy"],
            "average": figures["average_accuracy"],
        }

    def objective(self) -> TaskLossObjective:
        """L2: task 2's cross-entropy on a fresh minibatch each step (a new, seeded stream)."""
        p = self.problem
        return TaskLossObjective(
            p.model, p.buffers, self.t2.x_train, self.t2.y_train,
            batch_size=self.config.batch_size, seed=p.path_seed, output_slice=self.t2.head,
        )

    def path(self) -> Path:
        """A new path from w0; two paths of one task are the same path."""
        p = self.problem
        return Path(
            p.model,
            p.buffers,
            p.w0,
            self.objective(),
            self.memory_x,
            self.solver,
            self.evaluate,
            max_steps=self.config.steps,
            eval_every=self.config.eval_every,
            seed=p.path_seed,
            resample=False,  # the memory is the metric batch, the same at every step
        )

    # -- baselines ------------------------------------------------------------------
    def fisher_diagonal(self) -> torch.Tensor:
        """Diagonal Fisher of task 1 at w0: E_x sum_k p_k (d log p_k / dw)^2, over its head.

        The expectation over classes is exact (one per-sample Jacobian of the
        log-probabilities, chunked), over inputs it is the mean of ``ewc_samples``
        task-1 training inputs.
        """
        p = self.problem
        n = min(self.config.ewc_samples, self.t1.x_train.shape[0])
        gen = torch.Generator().manual_seed(p.path_seed + 1)
        x = self.t1.x_train[torch.randperm(self.t1.x_train.shape[0], generator=gen)[:n].to(p.device)]

        def log_probs(w: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
            logits = functional_call(p.model, ({**p.params(w), **p.buffers},), (xi.unsqueeze(0),))
            return torch.log_softmax(self.t1.restrict(logits), -1)[0]  # (K,)

        per_sample = torch.func.vmap(torch.func.jacrev(log_probs), in_dims=(None, 0))
        k = len(self.sequence.first.head)
        chunk = max(1, int(2e8 // (4 * k * p.w0.numel())))  # ~200 MB of Jacobians at a time
        fisher = torch.zeros_like(p.w0)
        with torch.no_grad():
            for xb in torch.split(x, chunk):
                jac = per_sample(p.w0, xb)  # (B, K, P)
                probs = torch.exp(torch.func.vmap(log_probs, in_dims=(None, 0))(p.w0, xb))  # (B, K)
                fisher += torch.einsum("bk,bkp->p", probs, jac**2)
        return fisher / n

    def train_baseline(self, name: str, steps: int, progress=None) -> tuple[torch.Tensor, float]:
        """SGD (or Adam) on task 2 for ``steps`` steps from w0, plus the baseline's task-1 term.

        ``progress(done, total)``, when given, is called every few steps (it may raise to stop).

        Returns:
            (final flat weights, wall seconds including the Fisher for EWC).
        """
        if name not in BASELINES:
            raise ConfigError(f"Unknown baseline '{name}'; choose one of {', '.join(BASELINES)}.")
        t0 = time.perf_counter()
        p, cfg = self.problem, self.config
        fisher = self.fisher_diagonal() if name == "ewc" and cfg.ewc_lambda > 0 else None
        w0 = p.w0.detach()
        w = w0.clone().requires_grad_(True)
        # With SGD the EWC term takes a proximal step, w <- (w + c w0) / (1 + c) with
        # c = lr lambda F: stable for any lambda, where an explicit gradient step
        # diverges once lr lambda max F > 2 (it did on Fashion-MNIST at lambda 100).
        prox = fisher is not None and cfg.baseline_optimizer == "sgd"
        shrink = cfg.baseline_lr * cfg.ewc_lambda * fisher if prox else None
        if cfg.baseline_optimizer == "sgd":
            opt = torch.optim.SGD([w], lr=cfg.baseline_lr)
        else:
            opt = torch.optim.Adam([w], lr=cfg.baseline_lr)
        # the same task-2 minibatch stream as the path's objective
        gen = torch.Generator().manual_seed(p.path_seed)
        gen_memory = torch.Generator().manual_seed(p.path_seed + 2)
        n2, m = self.t2.x_train.shape[0], self.memory_x.shape[0]
        batch = min(cfg.batch_size, n2)
        for i in range(max(0, steps)):
            if progress is not None and i % 10 == 0:
                progress(i, steps)
            index = torch.randint(0, n2, (batch,), generator=gen).to(p.device)
            logits = self.t2.restrict(self._logits(w, self.t2.x_train[index]))
            loss = F.cross_entropy(logits, self.t2.y_train[index])
            if name == "replay":
                mi = torch.randint(0, m, (min(batch, m),), generator=gen_memory).to(p.device)
                loss = loss + F.cross_entropy(self.t1.restrict(self._logits(w, self.memory_x[mi])), self.memory_y[mi])
            elif fisher is not None and not prox:
                loss = loss + 0.5 * cfg.ewc_lambda * torch.dot(fisher, (w - w0) ** 2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if prox:
                with torch.no_grad():  # the EWC quadratic's exact (implicit) step
                    w.copy_((w + shrink * w0) / (1.0 + shrink))
        return w.detach(), time.perf_counter() - t0

    def data_used(self, name: str) -> str:
        """What a method learns from of task 1 (all of them use task 2's labels)."""
        return {
            "geodesic": f"{self.config.memory} inputs only",
            "finetune": "none",
            "ewc": f"{self.config.ewc_samples} inputs only (Fisher of the model's own predictions)",
            "replay": f"{self.config.memory} inputs + labels",
        }[name]

    def baselines(self, steps: int, names=BASELINES) -> tuple[dict[str, dict], dict[str, torch.Tensor]]:
        """Every baseline at ``steps`` gradient evaluations: ({name: figures}, {name: weights})."""
        results, weights = {}, {}
        for name in names:
            results[name], weights[name] = self.baseline(name, steps)
        return results, weights

    def baseline(self, name: str, steps: int, progress=None) -> tuple[dict, torch.Tensor]:
        """One baseline at ``steps`` gradient evaluations: (figures, weights)."""
        w, seconds = self.train_baseline(name, steps, progress)
        figures = self.evaluate(w)
        return {**self.scores(figures), **figures, "seconds": seconds, "gradient_evaluations": steps,
                "data_used": self.data_used(name)}, w


def continual_runner(
    problem: Problem,
    sequence: TaskSequence,
    config: ContinualConfig,
    solver: SolverConfig,
    runs_dir: str | None = None,
    abandon_after: float | None = None,
    snapshot_budget_mb: float = 64.0,
    baselines: tuple[str, ...] = BASELINES,
):
    """A :class:`~geoviz.record.runner.PathRunner` for a continual-learning path, with its run record.

    The summary written at the end holds the scenario, the memory size M, the start,
    the geodesic's and every baseline's per-task test accuracies (baselines trained
    with as many gradient evaluations as the path used); baseline end weights are
    saved beside the path's under ``weights/``.
    """
    from geoviz.record.runner import PathRunner
    from geoviz.record.runs import RunWriter, default_runs_dir

    task = ContinualTask(problem, sequence, config, solver)
    start = ContinualTask.scores(task.start)
    writer = RunWriter(
        runs_dir or default_runs_dir(),
        "continual",
        {
            "setup": asdict(problem.setup),
            "data": held(problem.x_train, problem.x_test, *(x for t in sequence.tasks for x in (t.x_train, t.x_test))),
            "continual": asdict(config),
            "solver": asdict(task.solver),
            "task_sequence": sequence.name,
            "memory_size": config.memory,
            "device": str(problem.device),
            "parameters": problem.layout.size,
        },
        snapshot_budget_mb=snapshot_budget_mb,
    )
    writer.write_summary({"scenario": sequence.scenario, "memory_size": config.memory, "start": start})

    def on_finish(runner: PathRunner) -> dict:
        path = runner.path
        final = runner.rows()[-1]
        summary = {
            "scenario": sequence.scenario,
            "task_sequence": sequence.name,
            "memory_size": config.memory,
            "mode": task.solver.mode,
            "start": start,
            "geodesic": {**ContinualTask.scores(final), "task1_loss": final["task1_loss"], "task2_loss": final["task2_loss"],
                         "data_used": task.data_used("geodesic")},
            "baselines": {},
            "steps": path.step,
            "gradient_evaluations": path.gradient_evaluations,
            "path_seconds": final.get("seconds"),
            "end_reason": path.end_reason,
        }
        runner.publish(**summary)
        results = summary["baselines"]
        for name in baselines:  # each drawn as soon as it is ready; Stop skips the rest
            done = runner.baseline(name, lambda report, name=name: task.baseline(name, path.gradient_evaluations, report))
            if done is not None:
                results[name], w = done
                runner.publish(baselines=dict(results))
                if runner.writer is not None:
                    runner.writer.save_weights(name, problem.layout.unflatten(w))
        return summary

    runner = PathRunner(
        task.path(), writer, on_finish, abandon_after=abandon_after, snapshot_budget_mb=snapshot_budget_mb / 2
    )
    runner.task = task
    return runner
