"""Connect: walk from one trained network to another along a geodesic, live, and compare
it with the straight line and a trained Bezier curve; then draw the landscape between them."""

from __future__ import annotations

from dataclasses import asdict, replace

import pandas as pd
import streamlit as st
import torch

from geoviz.figures import plots_connect
from geoviz.applications import api
from geoviz.applications.connect import SOLVER_DEFAULTS, THIRD_POINTS, ConnectConfig, LandscapeJob
from geoviz.applications.curves import arc_length_parameters, curve_points
from geoviz.core.engine import SolverConfig
from geoviz.errors import ConfigError, GeovizError
from geoviz.setups.problem import SetupConfig, network_from_file
from geoviz.record.runs import default_runs_dir
from pages import _charts, _live, _present, _safe, _sweep
from pages._live import Control

CONTROLS = (
    Control("dataset", "Dataset", "digits", "The task both networks were trained on. digits (8×8) ships with scikit-learn; the others need their files." + _live.dataset_help(), _live.dataset_options()),
    Control("model", "Model", "mlp", "The architecture of both networks (no BatchNorm: mlp or lenet300).", ("mlp", "lenet300")),
    Control("seed", "Seed of w_A", 0, "Seeds the first network's training, and the metric batches.", step=1),
    Control("seed_b", "Seed of w_B", 1, "Seeds the second network's training; must differ from the first. Unused when w_B's weights are uploaded.", step=1),
    Control("align", "Align w_B first", "no", "yes: permute w_B's hidden units to match w_A (weight matching, Ainsworth et al. 2023). The function of w_B is unchanged; what is left of the barrier is not permutation symmetry.", ("no", "yes")),
    Control("eps", "Step length ε", SOLVER_DEFAULTS["eps"], "Euclidean length |θ| of each step; the path lands exactly on w_B once this close.", step=0.01, format="%.3f"),
    Control("damping", "Damping ρ", SOLVER_DEFAULTS["damping"], "μ = ρ·λmax(G). Small ρ: move only where the outputs barely change. Large ρ: head straight for w_B.", step=1e-4, format="%.1e"),
    Control("steps", "Step budget", 3000, "The most steps the geodesic may take; it ends sooner when it reaches w_B.", step=100),
    Control("eval_every", "Evaluate every", 5, "Train loss and test accuracy are measured every this many steps.", step=1),
    Control("third", "Plane's third point", "bezier", "The landscape is drawn on the plane through w_A, w_B and this point: the Bezier curve's control point, or the geodesic's midpoint.", THIRD_POINTS),
    Control("grid", "Landscape grid n", 25, "The landscape is an n × n grid: n² network evaluations on the training and test rows.", step=1),
    Control("device", "Device", "auto", "auto uses CUDA when a GPU is present.", _live.device_options()),
    _live.snapshot_control(),
)


def configs(values: dict) -> tuple[SetupConfig, ConnectConfig, SolverConfig]:
    """Settings -> validated config objects (ConfigError names what is wrong)."""
    setup = SetupConfig(dataset=values["dataset"], model=values["model"], seed=int(values["seed"]), device=values["device"],
                        data_dir=_live.data_dir_for(values["dataset"]),
                        weights=values.get("weights"))
    config = ConnectConfig(seed_b=int(values["seed_b"]), weights_b=values.get("weights_b"), align=values["align"] == "yes",
                           steps=int(values["steps"]), eval_every=int(values["eval_every"]), third=values["third"],
                           grid=int(values["grid"]))
    solver = SolverConfig(eps=float(values["eps"]), damping=float(values["damping"]))
    config.validate()
    solver.validate()
    _live.snapshot_mb(values)
    # both trained from one seed would be one network: caught before Run (the engine says it too,
    # but only once Run is pressed); a network from a file has no seed to clash
    if config.seed_b == setup.seed and not setup.weights and not config.weights_b:
        raise ConfigError(f"The two networks need different seeds; both are {setup.seed}.")
    return setup, config, solver


def _profiles(runner) -> dict:
    """The geodesic's profile so far, and the baselines' once the path has ended."""
    summary = runner.summary
    if summary.get("profiles"):
        return summary["profiles"]
    ready = runner.partial.get("profiles", {})  # the line at once; the baselines as they end
    if "geodesic" in ready:
        return ready
    task = runner.task
    rows = [r for r in runner.rows() if "train_loss" in r]
    start = {"path_length": 0.0, **task.endpoints["a"]}
    rows = [start] + rows
    return {**ready, "geodesic": {"length": [r["path_length"] for r in rows], "train_loss": [r["train_loss"] for r in rows],
                                  "test_accuracy": [r["test_accuracy"] for r in rows]}}


def draw(runner) -> None:
    """The live charts of a connect runner: profiles, PCA, and the summary table."""
    summary = runner.summary
    if runner.path.done and not summary and not runner.finished:
        st.info(f"The geodesic has ended ({_safe.md(runner.path.end_reason)}). Training the Bezier curves (with labels, and "
                f"without) for {runner.path.gradient_evaluations} SGD steps each (as many as the geodesic's G·v products); "
                "Stop skips them.")
    evaluated = [r for r in runner.rows() if "distance_to_b" in r]
    if evaluated:
        task = runner.task
        st.caption(f"Distance to w_B: {evaluated[-1]['distance_to_b']:.2f} of {task.distance:.2f} at the start"
                   + (" (w_B aligned to w_A by weight matching; before: {:.2f})".format(task.distance_before_alignment)
                      if task.config.align else "") + ".")
    left = right = _charts.row()  # wraps on a narrow window (two fixed columns cut the titles at 800 px)
    _present.chart(left, plots_connect.profiles_figure(_profiles(runner)), key="connect:profiles")
    _, snapshots = runner.trajectory()
    others = {}
    for name in ("line", "bezier"):
        curve = runner.curves.get(name) if runner.curves else None
        if curve is not None:
            ts, _ = arc_length_parameters(curve, 41)
            others[name] = curve_points(curve, ts.to(curve.bends.dtype), runner.sketch)  # as the snapshots were kept
    _present.chart(right, plots_connect.connect_pca_figure(snapshots, others, projected=runner.sketch is not None),
                   key="connect:pca")
    if summary.get("geodesic"):
        st.subheader("Summary")
        ends = summary["endpoints"]
        st.caption(f"Endpoints: w_A train loss {ends['a']['train_loss']:.4f}, test accuracy {ends['a']['test_accuracy']:.4f}; "
                   f"w_B train loss {ends['b']['train_loss']:.4f}, test accuracy {ends['b']['test_accuracy']:.4f}. "
                   "Barrier: the highest train loss along the path minus the mean of the endpoints'. " + _charts.NOISE)
        st.table(summary_table(summary))
        _charts.skipped_note(summary)


# the summary's number columns and their formats
SUMMARY_FORMATS = {"barrier (train loss)": "{:.4f}", "min test accuracy": "{:.4f}", "Euclidean length": "{:.2f}",
                   "functional length": "{:.2f}"}


def summary_table(summary: dict) -> pd.DataFrame:
    """One row per path, its figures as text: a table that wraps to the page's width (a grid of
    these seven columns was wider than the page at 1280 px and cut 'inputs + labels')."""
    table = pd.DataFrame(plots_connect.summary_rows(summary))
    for column, form in SUMMARY_FORMATS.items():
        if column in table:
            table[column] = ["—" if v is None or v != v else form.format(v) for v in table[column]]
    return table.set_index("path")


def placeholder() -> None:
    """The charts, empty, before the first run."""
    left = right = _charts.row()  # wraps on a narrow window (two fixed columns cut the titles at 800 px)
    _present.chart(left, plots_connect.profiles_figure({}), key="connect:profiles")
    _present.chart(right, plots_connect.connect_pca_figure(torch.empty(0, 0)), key="connect:pca")


def _cost_sentence(cost: dict, n: int) -> str:
    return (f"A {n} × {n} grid is {cost['evaluations']:,} network evaluations on {cost['rows_per_evaluation']:,} rows each "
            f"(≈ {cost['multiply_adds'] / 1e9:.1f} G multiply-adds; {cost['method']}).")


def landscape_ui(runner, n: int) -> None:
    """The landscape section of a finished run: its cost, a button, the grid filling in."""
    if runner is None or not runner.finished or not runner.summary.get("geodesic") or not runner.curves:
        return
    st.subheader("The landscape between them")
    cost = runner.task.grid_cost(n)
    st.caption(_cost_sentence(cost, n))
    key = "connect:landscape"
    job: LandscapeJob | None = st.session_state.get(key)
    if job is not None and (job.runner is not runner or job.n != n):
        job.stop()
        job = None
    if st.button("Draw the landscape", key="connect:draw", disabled=job is not None):
        try:
            _safe.check_grid(n)
            job = LandscapeJob(runner, n, abandon_after=_live.ABANDON_AFTER).start()
        except (GeovizError, ValueError) as err:
            _safe.error(err)
            return
        st.session_state[key] = job
    if job is None:
        return
    value = st.radio("Show", ["train_loss", "test_accuracy", "test_loss"], horizontal=True, key="connect:value",
                     format_func=lambda v: v.replace("_", " "))
    seen = job.alive

    @st.fragment(run_every=0.5 if seen else None)
    def view() -> None:
        job.touch()
        if job.alive != seen:
            st.rerun()
        if job.error:
            _safe.error(job.error)
        snap = job.snapshot()
        done = f"{snap['rows_done']} of {n} rows in {snap['seconds']:.1f} s"
        _present.chart(st, plots_connect.landscape_figure(snap, value, _cost_sentence(job.cost, n)), key="connect:contour")
        st.caption(f"{done}. Paths are projected on the plane; the geodesic leaves it, so its projection can cross high-loss regions it never visits.")

    view()


def replay_record(record, key: str = "replay", at: int | None = None) -> None:
    """A finished connect run read back from its folder (for the Runs page): the
    profiles, the PCA with the line and the Bezier curve, the table, the landscape.
    ``at``: the step the replay slider is on, marked on the whole run's charts."""
    from geoviz.applications.connect import load_landscape
    from geoviz.applications.curves import BezierCurve, LineCurve

    summary = record.summary
    if not summary.get("profiles"):
        st.info("This connect run has no summary yet (it ended before w_B, or is still running).")
        return
    steps, snapshots = record.snapshots()
    length, current = None, None
    table = record.table
    if at is not None and "path_length" in table and len(table):
        length = float(table.loc[(table["step"] - at).abs().idxmin(), "path_length"])
        current = min(range(len(steps)), key=lambda i: abs(steps[i] - at)) if steps else None
    left = right = _charts.row()  # wraps on a narrow window (two fixed columns cut the titles at 800 px)
    _present.chart(left, plots_connect.profiles_figure(summary["profiles"], marker=length), key=f"{key}:profiles")
    others, sketch = {}, record.sketch()  # the other paths are projected as the snapshots were kept
    if (record.path / "weights" / "connect_points.safetensors").is_file():
        points = record.weights("connect_points")  # flat, in the snapshots' order
        ts = torch.linspace(0, 1, 41)
        others["line"] = curve_points(LineCurve(points["w_a"], points["w_b"]), ts, sketch)
        if "bezier_control" in points:  # (not when Stop skipped the Bezier curve)
            others["bezier"] = curve_points(BezierCurve(points["w_a"], points["bezier_control"], points["w_b"]), ts, sketch)
    _present.chart(right, plots_connect.connect_pca_figure(snapshots, others, current=current, projected=sketch is not None),
                   key=f"{key}:pca")
    st.table(summary_table(summary))
    landscape = load_landscape(record.path)
    if landscape is not None:
        _present.chart(st, plots_connect.landscape_figure(landscape, "train_loss"), key=f"{key}:contour")


def page() -> None:
    _present.header(
        "Connect two networks",
        "Two networks trained from different seeds. The geodesic walks from w_A to w_B moving only where the "
        "outputs on training inputs barely change (no labels); compare with the straight line, and with a "
        "quadratic Bezier curve whose bend is trained with labels for as many gradient evaluations."
    )
    values = {**_live.controls_ui("connect", CONTROLS), "weights": _live.weights_ui("connect", what="weights of w_A"),
              "weights_b": _live.weights_ui("connect", "weights_b", "weights of w_B")}
    built = _live.checked_configs("connect", configs, values)  # None: what is wrong is said on the page
    make_runner = None
    if built is not None:
        setup, config, solver = built

        def make_runner():  # the Python API's and the CLI's function: the same checks and record
            problem = _live.cached_problem(setup)
            model_b, chosen = None, config
            if config.weights_b:  # the user's own w_B: the same loader and checks as w_A's file
                model_b, _, _, sha = network_from_file(setup, problem.data, problem.device, config.weights_b)
                chosen = replace(config, seed_b=None, weights_b_sha256=sha)
            else:
                _live.admit_network(replace(setup, seed=config.seed_b), problem.data)  # w_B is a start network too
            return api.prepare_connect(problem, model_b, None, None, solver, out=str(default_runs_dir()),
                                       snapshot_mb=_live.snapshot_mb(values), abandon_after=_live.ABANDON_AFTER,
                                       warn=_live.shown_on_page, **asdict(chosen))

    runner = _live.run_panel("connect", make_runner, draw, int(values["steps"]), placeholder)
    with st.container(key="present-hide-sweep"):
        _sweep.sweep_panel("connect", "connect", values, ("damping", "eps", "align", "seed_b"))
    landscape_ui(runner, max(2, int(values["grid"])))


if __name__ == "__main__":
    page()
