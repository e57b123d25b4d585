"""Continual: learn task 2 along a path that keeps task 1, live, beside fine-tuning, EWC and replay."""

from __future__ import annotations

from dataclasses import asdict

import streamlit as st

from geoviz.applications import api
from geoviz.applications.continual import DEFAULT_SOLVER, ContinualConfig, ContinualTask
from geoviz.core.engine import MODES, SolverConfig
from geoviz.core.metric import METRIC_KINDS
from geoviz.setups.models import MODEL_NAMES
from geoviz.setups.problem import SetupConfig
from geoviz.record.runs import default_runs_dir
from geoviz.setups.tasks import DEFAULT_SPLIT, SCENARIOS, load_task_sequence
from pages import _charts, _live, _present, _sweep
from pages._live import Control

_CONFIG = ContinualConfig()
CONTROLS = (
    Control("dataset", "Dataset", "digits", "Where both tasks come from. digits (8×8) ships with scikit-learn; the others need their files." + _live.dataset_help(), _live.dataset_options()),
    Control("model", "Model", "mlp", "The network whose weights the path moves.", MODEL_NAMES),
    Control("scenario", "Scenario", _CONFIG.scenario, "class-incremental: task 1 = classes 0-4, task 2 = 5-9, one shared 10-way head, no task label at test time (the hard case). task-incremental: the same split, each task read from its own 5 outputs, task label given. permuted: task 2 = task 1 with its pixels shuffled by one fixed permutation.", SCENARIOS),
    Control("memory", "Memory M (task-1 examples)", _CONFIG.memory, "How many task-1 training inputs the metric is measured on. The geodesic sees their inputs only; replay gets the same M examples with their labels.", step=10),
    Control("eps", "Step length ε", DEFAULT_SOLVER.eps, "Euclidean length |θ| of each step.", step=0.01, format="%.3f"),
    Control("damping", "Damping ρ", DEFAULT_SOLVER.damping, "μ = ρ·λmax(G). Small ρ: move only where the outputs on the memory barely change. Large ρ: plain gradient descent on task 2. The paper's equivalent β is shown in the status line.", step=1e-4, format="%.1e"),
    Control("metric", "Metric", "output", "How a change of function on the memory is measured: output (squared change of the logits) or fisher (KL divergence of the predictions).", METRIC_KINDS),
    Control("mode", "Mode", "exact", "exact: the constrained step of the paper (damped CG on G). penalty: Adam on output distance + λ·(task-2 loss), the authors' later practical variant.", MODES),
    Control("steps", "Steps", _CONFIG.steps, "The path's length in steps; the baselines then get as many gradient evaluations as it used.", step=25),
    Control("eval_every", "Evaluate every", _CONFIG.eval_every, "Test accuracy of both tasks is measured every this many steps (and at the first and last).", step=1),
    Control("ewc_lambda", "EWC λ", _CONFIG.ewc_lambda, "Strength of the EWC baseline's quadratic pull towards the start, weighted by task 1's Fisher.", step=10.0, format="%.1f"),
    Control("seed", "Seed", 0, "Seeds the start network, the memory and the minibatches: the same seed gives the same path.", step=1),
    Control("device", "Device", "auto", "auto uses CUDA when a GPU is present.", _live.device_options()),
    _live.snapshot_control(),
)


def configs(values: dict) -> tuple[SetupConfig, ContinualConfig, SolverConfig]:
    """Settings -> validated config objects (ConfigError names what is wrong)."""
    setup = SetupConfig(dataset=values["dataset"], model=values["model"], seed=int(values["seed"]), device=values["device"],
                        data_dir=_live.data_dir_for(values["dataset"]),
                        weights=values.get("weights"))
    config = ContinualConfig(
        scenario=values["scenario"], split=DEFAULT_SPLIT, memory=int(values["memory"]), steps=int(values["steps"]),
        eval_every=int(values["eval_every"]), ewc_lambda=float(values["ewc_lambda"]),
    )
    solver = SolverConfig(
        mode=values["mode"], eps=float(values["eps"]), damping=float(values["damping"]), metric=values["metric"],
        cg_iterations=DEFAULT_SOLVER.cg_iterations,
    )
    config.validate()
    solver.validate()
    _live.snapshot_mb(values)
    return setup, config, solver


def memory_ui(memory: int, scenario: str) -> None:
    """What the metric memory is, with its size."""
    # one line, the rest in its help: at 1280x720 the charts and their legends stay above the fold
    st.markdown(
        f":material/memory: **Metric memory: M = {memory} task-1 inputs, no labels** · scenario {scenario}",
        help=f"The path measures how much the network's outputs change on these {memory} inputs (no labels) and "
             "steps where they barely change, while the gradient of task 2's training loss pulls it. Task 1's test set "
             f"is never seen; it only shows whether keeping the outputs on {memory} inputs kept the whole task. Replay "
             f"gets the same {memory} examples with labels.",
    )


def draw(runner) -> None:
    """The live per-task curves of a continual-learning runner."""
    _charts.continual_curves(runner.rows(), ContinualTask.scores(runner.task.start), "live", moving=runner.alive)


def draw_pictures(runner) -> None:
    """The PCA of the trajectory (redrawn less often), then the summary once the baselines are trained."""
    steps, snapshots = runner.trajectory()
    _charts.continual_pictures(steps, snapshots, "live", moving=runner.alive, projected=runner.sketch is not None)
    _charts.continual_summary(runner.summary or runner.partial, "live")


def placeholder() -> None:
    """The charts, empty, before the first run."""
    _charts.continual_charts([], {}, [], None, "live")


def page() -> None:
    _present.header(
        "Continual learning along a geodesic",
        "Start from a network trained on task 1 and learn task 2 while moving only in directions that barely change "
        "its outputs on a small memory of task-1 inputs. Compare with fine-tuning (forgets), EWC and replay, each "
        "given as many gradient evaluations as the path used."
    )
    values = {**_live.controls_ui("continual", CONTROLS), "weights": _live.weights_ui("continual")}
    with st.container(key="present-hide-memory"):  # hidden on a projector
        memory_ui(int(values["memory"]), values["scenario"])
    built = _live.checked_configs("continual", configs, values)  # None: what is wrong is said on the page
    make_runner = None
    if built is not None:
        setup, config, solver = built

        def make_runner():
            sequence = load_task_sequence(setup.dataset, config.scenario, config.split, setup.seed, setup.data_dir)
            problem = _live.cached_problem(setup, sequence.start_classes)
            # the Python API's and the CLI's function: the same checks and record
            return api.prepare_continual(problem, sequence.first, sequence.second, solver=solver, setup=problem.setup,
                                         sequence_name=sequence.name, out=str(default_runs_dir()),
                                         snapshot_mb=_live.snapshot_mb(values), abandon_after=_live.ABANDON_AFTER,
                                         warn=_live.shown_on_page, **asdict(config))

    _live.run_panel("continual", make_runner, draw, int(values["steps"]), placeholder, draw_pictures)
    with st.container(key="present-hide-sweep"):
        _sweep.sweep_panel("continual", "continual", values, ("memory", "damping", "eps", "metric", "mode", "ewc_lambda"))


if __name__ == "__main__":
    page()
