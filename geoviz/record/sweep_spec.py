"""What a sweep is: the application, its fixed settings, the search space and seeds.

Settings are the CLI's flags, named without the dashes (``damping``,
``cg-iterations``), and are checked by the CLI's own parser and configs
(``geoviz.cli.application_configs``) before any trial starts. ``SweepSpec.plan()``
lists every trial. ``geoviz.record.sweep`` runs a plan on Ray Tune.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from geoviz.errors import ConfigError

__all__ = [
    "APPLICATIONS",
    "FIGURES",
    "LIVE",
    "RUNNING_MIN",
    "BASELINE_FIGURES",
    "SweepSpec",
    "final_figures",
    "settings_of",
    "typed_settings",
    "parse_trial",
]

APPLICATIONS = ("sparsify", "continual", "connect")
SEARCHES = ("grid", "random", "optuna")
SCHEDULERS = ("none", "asha")
# the objective a sweep ranks by unless told: (figure, maximize)
DEFAULT_OBJECTIVE = {"sparsify": "pruned_accuracy", "continual": "average", "connect": "barrier"}
# final figures that have a counterpart along the path (figure -> step-table column):
# these are reported to Tune at every evaluated step, so ASHA can judge a trial early
LIVE = {
    # sparsify ranks by the accuracy hard-pruned to the target: a short budget's paths end
    # short of it, and their accuracy as is would favour the settings that move least
    "sparsify": {"pruned_accuracy": "pruned_accuracy", "accuracy": "test_accuracy", "reached_sparsity": "sparsity"},
    "continual": {"task1": "task1_accuracy", "task2": "task2_accuracy", "average": "average_accuracy"},
    # connect: the worst test accuracy met so far along the path (a running minimum; the
    # final figure adds the start point w_A), comparable between trials at equal steps
    "connect": {"min_accuracy": "test_accuracy"},
}
RUNNING_MIN = {"min_accuracy"}  # live figures kept as the minimum over the path so far
# what a summary shows beside the objective: the baselines, measured at the same budget
BASELINE_FIGURES = {
    "sparsify": ("finetune", "one_shot", "accuracy", "reached_sparsity"),
    "continual": ("replay_average", "ewc_average", "finetune_average"),
    "connect": ("line_barrier", "bezier_barrier", "min_accuracy"),
}
LOWER_IS_BETTER = {"barrier", "line_barrier", "bezier_barrier", "length", "functional_length"}
# flags that are not settings of a path
_NOT_SETTINGS = {"out", "json", "quiet", "seed", "help", "command"}


def _figure(summary: dict, *keys: str) -> float:
    """``summary[k1][k2]...`` as a float; NaN where a part is missing or None (baselines skipped)."""
    value = summary
    for key in keys:
        if not isinstance(value, dict) or value.get(key) is None:
            return float("nan")
        value = value[key]
    return float(value["accuracy"]) if isinstance(value, dict) and "accuracy" in value else float(value)


def final_figures(application: str, summary: dict) -> dict[str, float]:
    """The figures a sweep tabulates, flat, from a run's ``summary.json`` (NaN for a skipped baseline)."""
    if application == "sparsify":
        return {
            "pruned_accuracy": _figure(summary, "pruned_accuracy"),
            "accuracy": _figure(summary, "accuracy"),
            "reached_sparsity": _figure(summary, "sparsity"),
            "dense_accuracy": _figure(summary, "dense_accuracy"),
            "one_shot": _figure(summary, "baselines", "one_shot"),
            "finetune": _figure(summary, "baselines", "finetune"),
        }
    if application == "continual":
        figures = {k: _figure(summary, "geodesic", k) for k in ("task1", "task2", "average")}
        for name in (summary.get("baselines") or {}):
            figures.update({f"{name}_{k}": _figure(summary, "baselines", name, k) for k in ("task1", "task2", "average")})
        return figures
    figures = {k: _figure(summary, "geodesic", k) for k in ("barrier", "min_accuracy", "length", "functional_length")}
    for name in ("line", "bezier"):
        figures.update({f"{name}_{k}": _figure(summary, name, k) for k in ("barrier", "min_accuracy")})
    return figures


FIGURES = {
    "sparsify": ("pruned_accuracy", "accuracy", "reached_sparsity", "dense_accuracy", "one_shot", "finetune"),
    "continual": tuple(f"{p}{k}" for p in ("", "finetune_", "ewc_", "replay_") for k in ("task1", "task2", "average")),
    "connect": ("barrier", "min_accuracy", "length", "functional_length", "line_barrier", "line_min_accuracy",
                "bezier_barrier", "bezier_min_accuracy"),
}


# -- settings: the CLI's flags -----------------------------------------------------
def _application_parser(application: str) -> argparse.ArgumentParser:
    from geoviz.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[application]


@functools.lru_cache(maxsize=None)
def settings_of(application: str) -> dict[str, argparse.Action]:
    """{setting name (the flag without dashes): its argparse action} of an application."""
    actions = {}
    for action in _application_parser(application)._actions:
        if action.dest in _NOT_SETTINGS or not action.option_strings:
            continue
        actions[action.option_strings[0].lstrip("-")] = action
    return actions


def _setting(application: str, name: str) -> tuple[str, argparse.Action]:
    actions = settings_of(application)
    key = name.strip().replace("_", "-")
    if key not in actions:
        raise ConfigError(f"Unknown setting '{name}' for {application}; settings are {', '.join(sorted(actions))}.")
    return key, actions[key]


def _is_flag(action: argparse.Action) -> bool:
    return action.nargs == 0  # store_true: the value is whether the flag is there


def _argv(application: str, settings: dict[str, str], seed: int) -> list[str]:
    argv = []
    for name, value in settings.items():
        if _is_flag(settings_of(application)[name]):
            if str(value).lower() in ("1", "true", "yes"):
                argv.append(f"--{name}")
        else:
            argv += [f"--{name}", str(value)]
    return argv + ["--seed", str(seed)]


def parse_trial(application: str, argv: list[str]) -> argparse.Namespace:
    """The CLI's parsed arguments for one trial; its one-sentence error as a ConfigError."""
    from geoviz.cli import build_parser

    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            return build_parser().parse_args([application, *argv])
    except SystemExit:
        sentence = said.getvalue().strip().removeprefix("error: ").split(" (see ")[0]
        raise ConfigError(f"{sentence[:1].upper()}{sentence[1:]}.") from None


def typed_settings(application: str, settings: dict) -> dict:
    """Settings as the table keeps them: numbers as numbers, flags as booleans, the rest as text."""
    actions, out = settings_of(application), {}
    for name, value in settings.items():
        action = actions[name]
        if _is_flag(action):
            out[name] = str(value).lower() in ("1", "true", "yes")
        elif action.type in (int, float):
            out[name] = action.type(value)
        else:
            out[name] = str(value)
    return out


# -- the specification ---------------------------------------------------------------
@dataclass(frozen=True)
class SweepSpec:
    """What to sweep. Settings are CLI flags without dashes; values as typed on the CLI.

    Args:
        application: sparsify, continual or connect.
        fixed: CLI flags every trial gets, e.g. ``("--steps", "100")``.
        grid: {setting: [values]} (grid search; in random and Optuna search, a
            choice among the values).
        ranges: {setting: (low, high, log)} for random and Optuna search.
        seeds: every setting is repeated over seeds base, base+1, ... (base: --seed).
        search: grid, random or optuna.
        samples: settings drawn by random or Optuna search.
        objective: the final figure ranked by (default: the application's).
        maximize: rank high first (default: the objective's natural direction).
        scheduler: none or asha (stops settings whose live figure trails early).
        grace: ASHA's first rung, in steps (default a tenth of the step budget).
        workers: trials at once (default: the CPUs Ray sees).
        address: a Ray cluster (else $RAY_ADDRESS, else a local Ray started here).
        threads: torch threads per trial.
    """

    application: str
    fixed: tuple[str, ...] = ()
    grid: dict[str, list[str]] = field(default_factory=dict)
    ranges: dict[str, tuple[float, float, bool]] = field(default_factory=dict)
    seeds: int = 1
    search: str = "grid"
    samples: int = 1
    objective: str | None = None
    maximize: bool | None = None
    scheduler: str = "none"
    grace: int | None = None
    workers: int | None = None
    address: str | None = None
    sample_seed: int = 0

    @property
    def objective_figure(self) -> str:
        return self.objective or DEFAULT_OBJECTIVE[self.application]

    @property
    def mode(self) -> str:
        if self.maximize is not None:
            return "max" if self.maximize else "min"
        return "min" if self.objective_figure in LOWER_IS_BETTER else "max"

    @property
    def setting_names(self) -> list[str]:
        return [*self.grid, *self.ranges]

    def plan(self) -> dict:
        """Check everything and list the trials: one sentence (ConfigError) for the first problem."""
        if self.application not in APPLICATIONS:
            raise ConfigError(f"Unknown application '{self.application}'; choose {', '.join(APPLICATIONS)}.")
        if self.search not in SEARCHES:
            raise ConfigError(f"Unknown search '{self.search}'; choose {', '.join(SEARCHES)}.")
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"Unknown scheduler '{self.scheduler}'; choose {', '.join(SCHEDULERS)}.")
        if self.seeds < 1:
            raise ConfigError(f"--seeds must be at least 1, got {self.seeds}.")
        if self.samples < 1:
            raise ConfigError(f"--samples must be at least 1, got {self.samples}.")
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {self.workers}.")
        if self.objective_figure not in FIGURES[self.application]:
            raise ConfigError(f"Unknown objective '{self.objective_figure}' for {self.application}; "
                              f"figures are {', '.join(FIGURES[self.application])}.")
        if self.scheduler == "asha" and self.objective_figure not in LIVE[self.application]:
            live = ", ".join(LIVE[self.application]) or "none"
            raise ConfigError(f"ASHA needs an objective measured along the path; for {self.application} that is: {live}.")
        if self.search == "grid" and self.ranges:
            raise ConfigError("--range needs --search random or optuna; a grid search takes --grid lists.")
        if self.search != "grid" and not self.setting_names:
            raise ConfigError(f"A {self.search} search needs at least one --range or --grid.")
        base = parse_trial(self.application, list(self.fixed))  # fixed flags alone
        for name in ("out", "json", "quiet"):
            if any(f == f"--{name}" or f.startswith(f"--{name}=") for f in self.fixed):
                raise ConfigError(f"--{name} is set by the sweep itself, not per trial.")
        grid = {}
        for name, values in self.grid.items():
            key, action = _setting(self.application, name)
            values = [str(v).strip() for v in values if str(v).strip()]
            if not values:
                raise ConfigError(f"--grid {name} has no values; give them as {name}=V1,V2.")
            grid[key] = values
        ranges = {}
        for name, (low, high, log) in self.ranges.items():
            key, action = _setting(self.application, name)
            if action.type not in (int, float):
                raise ConfigError(f"--range {name}: only numeric settings take a range; give {name} as a --grid list.")
            if not low < high:
                raise ConfigError(f"--range {name}: the low end must be below the high end, got {low}:{high}.")
            if log and low <= 0:
                raise ConfigError(f"--range {name}: a log range needs a positive low end, got {low}.")
            ranges[key] = (low, high, bool(log))
        points = self._points(grid, ranges)
        for point in points if self.search != "optuna" else self._corners(grid, ranges):
            self._check(point)
        seeds = [base.seed + k for k in range(self.seeds)]
        trials = [] if self.search == "optuna" else [
            {"trial": i * self.seeds + k, "point": i, "settings": point, "seed": seed,
             "values": typed_settings(self.application, point)}
            for i, point in enumerate(points) for k, seed in enumerate(seeds)
        ]
        return {
            "spec": {**asdict(self), "fixed": list(self.fixed), "objective": self.objective_figure, "mode": self.mode},
            "grid": grid,
            "ranges": ranges,
            "setting_names": list(grid) + list(ranges),
            "seeds": seeds,
            "steps": base.steps,
            "eval_every": base.eval_every,
            "threads": base.threads,
            "trials": trials,
            "planned": len(trials) or self.samples * self.seeds,
        }

    def _points(self, grid: dict, ranges: dict) -> list[dict[str, str]]:
        if self.search == "grid":
            points = [{}]
            for name, values in grid.items():
                points = [{**p, name: v} for p in points for v in values]
            return points
        if self.search == "optuna":
            return []
        rng = np.random.default_rng(self.sample_seed)
        points = []
        for _ in range(self.samples):
            point = {name: values[rng.integers(len(values))] for name, values in grid.items()}
            for name, (low, high, log) in ranges.items():
                x = math.exp(rng.uniform(math.log(low), math.log(high))) if log else rng.uniform(low, high)
                point[name] = _format(name, x, self.application)
            points.append(point)
        return points

    def _corners(self, grid: dict, ranges: dict) -> list[dict[str, str]]:
        """For Optuna (values drawn later): every grid value and both ends of every range."""
        checks = [{name: v} for name, values in grid.items() for v in values]
        return checks + [{name: _format(name, x, self.application)} for name, r in ranges.items() for x in r[:2]]

    def _check(self, point: dict[str, str]) -> None:
        from geoviz.cli import application_configs

        try:
            application_configs(parse_trial(self.application, [*self.fixed, *_argv(self.application, point, 0)]))
        except ConfigError as err:
            shown = ", ".join(f"{k}={v}" for k, v in point.items())
            raise ConfigError(f"{str(err).rstrip('.')} (in the trial with {shown}).") from None


def _format(name: str, x: float, application: str) -> str:
    return str(int(round(x))) if settings_of(application)[name].type is int else f"{x:.6g}"


def _drawn_settings(plan: dict, config: dict) -> dict[str, str]:
    """The settings Optuna drew for a trial, as the CLI is given them (ranges rounded to 6 digits)."""
    application = plan["spec"]["application"]
    return {name: _format(name, config[name], application) if name in plan["ranges"] else config[name]
            for name in plan["setting_names"]}
