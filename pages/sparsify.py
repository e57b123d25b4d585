"""Sparsify: walk from a dense network to a sparse one while keeping its function, live."""

from __future__ import annotations

from dataclasses import asdict

import streamlit as st
import torch

from geoviz.figures import plots
from geoviz.core.engine import MODES, SolverConfig
from geoviz.core.metric import METRIC_KINDS
from geoviz.setups.models import MODEL_NAMES
from geoviz.setups.problem import SetupConfig
from geoviz.record.runs import default_runs_dir
from geoviz.applications import api
from geoviz.applications.sparsify import SparsifyConfig
from pages import _charts, _live, _present, _sweep
from pages._live import Control

_SOLVER, _SPARSIFY = SolverConfig(), SparsifyConfig()  # the engine's defaults are the page's
CONTROLS = (
    Control("dataset", "Dataset", "digits", "The task the start network was trained on. digits (8×8) ships with scikit-learn; the others need their files." + _live.dataset_help(), _live.dataset_options()),
    Control("model", "Model", "mlp", "The network whose weights the path moves.", MODEL_NAMES),
    Control("sparsity", "Target sparsity", _SPARSIFY.sparsity, "Fraction of the prunable weights the path drives to zero (a global magnitude mask). Higher: a longer path, and more for the rest of the network to absorb.", step=0.05, format="%.2f"),
    Control("eps", "Step length ε", _SOLVER.eps, "Euclidean length |θ| of each step. Smaller steps follow the curved path more closely but need more of them.", step=0.01, format="%.3f"),
    Control("damping", "Damping ρ", _SOLVER.damping, "μ = ρ·λmax(G). Small ρ: move only where the outputs barely change (closer to a geodesic). Large ρ: plain gradient descent on the masked weights. The paper's equivalent β is shown in the status line.", step=1e-4, format="%.1e"),
    Control("metric", "Metric", "output", "How a change of function is measured: output (squared change of the logits, the paper's choice) or fisher (KL divergence of the predictions).", METRIC_KINDS),
    Control("mask_every", "Revise the mask every", _SPARSIFY.mask_every, "Every this many steps the mask is chosen again: the smallest |w| at the current point, at the same sparsity, so a weight the path has shrunk can take the place of one it was pulling. 0: the start's mask, fixed. The baselines prune by the start's mask.", step=10),
    Control("mode", "Mode", "exact", "exact: the constrained step of the paper (damped CG on G). penalty: Adam on output distance + λ·L2, the authors' later practical variant.", MODES),
    Control("steps", "Step budget", _SPARSIFY.steps, "The most steps the path may take; it usually ends sooner, when the masked weights are near zero.", step=50),
    Control("eval_every", "Evaluate every", _SPARSIFY.eval_every, "Test accuracy is measured every this many steps (and at the first and last).", step=1),
    Control("seed", "Seed", 0, "Seeds the start network's training and the metric batches: the same seed gives the same path.", step=1),
    Control("device", "Device", "auto", "auto uses CUDA when a GPU is present.", _live.device_options()),
    _live.snapshot_control(),
)


def configs(values: dict) -> tuple[SetupConfig, SparsifyConfig, SolverConfig]:
    """Settings -> validated config objects (ConfigError names what is wrong)."""
    setup = SetupConfig(dataset=values["dataset"], model=values["model"], seed=int(values["seed"]), device=values["device"],
                        data_dir=_live.data_dir_for(values["dataset"]),
                        weights=values.get("weights"))
    config = SparsifyConfig(sparsity=float(values["sparsity"]), steps=int(values["steps"]), eval_every=int(values["eval_every"]),
                            mask_every=int(values.get("mask_every", _SPARSIFY.mask_every)))
    solver = SolverConfig(mode=values["mode"], eps=float(values["eps"]), damping=float(values["damping"]), metric=values["metric"])
    config.validate()
    solver.validate()
    _live.snapshot_mb(values)
    return setup, config, solver


def draw(runner) -> None:
    """The live figures along the path of a sparsification runner."""
    task, summary = runner.task, runner.summary or runner.partial  # each baseline drawn once ready
    reference = {"dense_accuracy": task.dense_accuracy, "one_shot_accuracy": task.one_shot_accuracy}
    _charts.sparsify_curves(runner.rows(), reference, summary.get("baselines"), task.config.sparsity, "live", moving=runner.alive)


def draw_pictures(runner) -> None:
    """Per-layer sparsity at the current point, the PCA of the trajectory (redrawn less often), the summary."""
    task = runner.task
    steps, snapshots = runner.trajectory()  # kept on a memory budget: maybe not the last step
    step, w = runner.path.step, runner.path.w.detach().float().cpu()  # the current point
    if steps[-1] != step:  # the current point, kept as the trajectory is (projected for a big network)
        steps, snapshots = [*steps, step], torch.cat([snapshots, (w if runner.sketch is None else runner.sketch(w))[None]])
    layers = plots.layer_sparsity(task.problem.params(w))
    _charts.sparsify_pictures(layers, task.config.sparsity, f"Per-layer sparsity at step {step}", steps, snapshots, "live",
                              moving=runner.alive, projected=runner.sketch is not None)
    summary = runner.summary or ({"reference": runner.partial.get("reference") or {
        "dense_accuracy": task.dense_accuracy, "one_shot_accuracy": task.one_shot_accuracy}} if runner.finished else {})
    _charts.sparsify_summary(summary, runner.rows(), task.config.sparsity)


def placeholder() -> None:
    """The charts, empty, before the first run."""
    _charts.sparsify_charts([], {}, None, None, {}, "Per-layer sparsity", [], None, "live")


def page() -> None:
    _present.header(
        "Sparsify along a geodesic",
        "The path pulls the smallest weights to zero while moving only in directions that barely change "
        "the network's outputs on training inputs (no labels). Compare with pruning at once, and with pruning "
        "plus fine-tuning, which uses labels."
    )
    values = {**_live.controls_ui("sparsify", CONTROLS), "weights": _live.weights_ui("sparsify")}
    built = _live.checked_configs("sparsify", configs, values)  # None: what is wrong is said on the page
    make_runner = None
    if built is not None:
        setup, config, solver = built

        def make_runner():  # the Python API's and the CLI's function: the same checks and record
            problem = _live.cached_problem(setup)
            return api.prepare_sparsify(problem, None, None, solver=solver, out=str(default_runs_dir()),
                                        snapshot_mb=_live.snapshot_mb(values), abandon_after=_live.ABANDON_AFTER,
                                        warn=_live.shown_on_page, **asdict(config))

    _live.run_panel("sparsify", make_runner, draw, int(values["steps"]), placeholder, draw_pictures)
    with st.container(key="present-hide-sweep"):
        _sweep.sweep_panel("sparsify", "sparsify", values, ("damping", "eps", "metric", "mode", "sparsity"))


if __name__ == "__main__":
    page()
