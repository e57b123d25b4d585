"""The lesson "Learning without forgetting": its steps and pictures."""

from __future__ import annotations

import plotly.graph_objects as go

from geoviz.lessons import Lesson, Step, present_fonts
from geoviz.lessons.continual import continual_experiment

LEGEND = {"orientation": "h", "y": -0.2, "x": 0}
MARGIN = {"l": 70, "r": 20, "t": 60, "b": 60}
TASK_COLORS = {"task1": "#1f77b4", "task2": "#ff7f0e"}
# what of task 1 each method learns from, in two short lines (the whole sentence is r.data_used)
LABELS = {"start": "before", "finetune": "fine-tune", "ewc": "EWC", "replay": "replay<br>(memory + labels)",
          "geodesic": "geodesic<br>(memory inputs)"}


def _digits(digits: list[int]) -> str:
    return f"{digits[0]}-{digits[-1]}"


def numbers() -> dict:
    r = continual_experiment()
    a = r.accuracy
    return {
        "task1": _digits(r.tasks["task1"]),
        "task2": _digits(r.tasks["task2"]),
        "memory": r.memory,
        "start1": a["start"]["task1"],
        "finetune1": a["finetune"]["task1"],
        "finetune2": a["finetune"]["task2"],
        "geodesic1": a["geodesic"]["task1"],
        "geodesic2": a["geodesic"]["task2"],
        "ewc1": a["ewc"]["task1"],
        "replay1": a["replay"]["task1"],
        "replay2": a["replay"]["task2"],
        "steps": r.steps,
        "evaluations": r.gradient_evaluations,
    }


def _bars(r, methods: tuple[str, ...]) -> go.Figure:
    names = {t: f"task {t[-1]} (digits {_digits(r.tasks[t])})" for t in ("task1", "task2")}
    labels = [LABELS[m] for m in methods]
    fig = go.Figure([{"type": "bar", "name": names[t], "x": labels, "y": [r.accuracy[m][t] for m in methods],
                      "marker": {"color": TASK_COLORS[t]}, "text": [f"{r.accuracy[m][t]:.0%}" for m in methods],
                      "textposition": "outside"} for t in ("task1", "task2")])
    fig.update_layout(title={"text": "Test accuracy on each task"}, height=480, margin=MARGIN, legend={**LEGEND, "y": -0.25}, barmode="group",
                      xaxis={"tickangle": 0}, yaxis={"title": {"text": "test accuracy"}, "range": [0, 1.15], "tickformat": ".0%"})
    return fig


def _along(r) -> go.Figure:
    a, last = r.along, r.along["step"][-1]
    data = [{"type": "scatter", "x": a["step"], "y": a[t], "mode": "lines+markers", "name": f"task {t[-1]}, geodesic",
             "line": {"color": TASK_COLORS[t], "width": 4}} for t in ("task1", "task2")]
    data += [{"type": "scatter", "x": [last], "y": [r.accuracy["finetune"][t]], "mode": "markers", "name": f"task {t[-1]}, fine-tune",
              "marker": {"color": TASK_COLORS[t], "size": 18, "symbol": "x"}} for t in ("task1", "task2")]
    fig = go.Figure(data)
    fig.update_layout(title={"text": "Learning task 2 along the geodesic"}, height=480, margin=MARGIN, legend=LEGEND,
                      xaxis={"title": {"text": "step"}}, yaxis={"title": {"text": "test accuracy"}, "tickformat": ".0%"})
    return fig


def figure(picture: str, present: bool = False) -> go.Figure:
    r = continual_experiment()
    if picture == "along":
        fig = _along(r)
    else:
        fig = _bars(r, {"start": ("start",), "finetune": ("start", "finetune"),
                        "all": ("finetune", "ewc", "replay", "geodesic")}[picture])
    return present_fonts(fig, present)


def prepare() -> None:
    continual_experiment()


LESSON = Lesson(
    slug="continual",
    title="Learning without forgetting",
    summary="A digits network that knows digits 0-4 learns 5-9: by fine-tuning, or along a geodesic that keeps its old outputs.",
    steps=(
        Step("One task learned", "A digits network trained on task 1, digits {task1}: {start1:.1%} test accuracy there. It "
             "has never seen digits {task2}, task 2.", "start"),
        Step("Fine-tuning forgets", "Trained on task 2 alone, it learns it ({finetune2:.1%}) and forgets task 1: "
             "{finetune1:.1%} left.", "finetune"),
        Step("The geodesic remembers", "The engine's geodesic learns task 2 while keeping the outputs on {memory} task-1 "
             "inputs, no task-1 label: after {steps} steps task 2 is at {geodesic2:.1%} and task 1 still at {geodesic1:.1%}. "
             "The crosses are fine-tuning's end.", "along"),
        Step("Side by side", "With the same {evaluations:,} gradient evaluations each, task 1 ends at {ewc1:.1%} after EWC, {replay1:.1%} after "
             "replay of the same {memory} examples with their labels, and {geodesic1:.1%} after the geodesic (inputs only).", "all"),
    ),
    figure=figure,
    numbers=numbers,
    prepare=prepare,
)
