"""The teaching stories of /learn: data and text, no Streamlit.

A lesson is a few steps; each step is one or two sentences and one picture, drawn by
the lesson's ``figure(picture, present, **choices)`` from numbers the engine computed
(cached, and prepared ahead by :func:`prepare`, so that no step waits in a lecture).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Step", "Lesson", "lessons", "lesson", "prepare", "present_fonts"]


@dataclass(frozen=True)
class Step:
    title: str
    text: str  # one or two sentences; may name measured numbers by {placeholders}
    picture: str  # what the lesson's figure() draws for this step


@dataclass(frozen=True)
class Lesson:
    slug: str  # its URL: /learn?lesson=<slug>
    title: str
    summary: str
    steps: tuple[Step, ...]
    figure: Callable  # (picture, present=False, **choices) -> plotly Figure
    numbers: Callable[[], dict]  # the measured numbers the texts name
    prepare: Callable[[], None]  # computes and caches everything the steps need


def present_fonts(fig, present: bool):
    """Bigger chart text for a projector: ticks 18 px, axis titles 20 px, title 24 px."""
    if present:
        fig.update_layout(font={"size": 18}, title_font={"size": 24}, legend_font={"size": 18})
        fig.update_xaxes(tickfont={"size": 18}, title_font={"size": 20})
        fig.update_yaxes(tickfont={"size": 18}, title_font={"size": 20})
    return fig


@functools.cache
def lessons() -> tuple[Lesson, ...]:
    """Every lesson, in the order /learn lists them."""
    from geoviz.lessons import directions_story, tiny_story

    return (tiny_story.LESSON, directions_story.LESSON)


def lesson(slug: str) -> Lesson | None:
    return next((item for item in lessons() if item.slug == slug), None)


_PREPARING = threading.Lock()  # the server's warm-up and a first visitor never compute twice


def prepare(slug: str | None = None) -> None:
    """Compute a lesson's numbers, or every lesson's (a minute the first time on a new
    machine, then cached in memory and on disk)."""
    with _PREPARING:
        for item in lessons():
            if slug is None or item.slug == slug:
                item.prepare()
