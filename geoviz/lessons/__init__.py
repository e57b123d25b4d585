"""The teaching stories of /learn: data and text, no Streamlit.

A lesson is a few steps; each step is one or two sentences and one picture, drawn by
the lesson's ``figure(picture, present, **choices)`` from numbers the engine computed
(cached, and prepared ahead by :func:`prepare`, so that no step waits in a lecture).
"""

from __future__ import annotations

import functools
import json
import os
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TypeVar

__all__ = ["Step", "Lesson", "lessons", "lesson", "prepare", "present_fonts", "stored"]

T = TypeVar("T")


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


def settings_digest(*settings) -> str:
    """A short digest of the settings a lesson's numbers are made with (their reprs), for
    its file name: a changed default makes a new file rather than reusing stale numbers."""
    import hashlib

    return hashlib.sha256(repr(settings).encode()).hexdigest()[:10]


def stored(name: str, make: Callable[[], T], kind: type[T], use_disk: bool = True) -> T:
    """A lesson's measured numbers (a dataclass of plain values): read back from the
    disk cache beside the cached networks, or made by ``make()`` and written there.

    ``name`` names the file, so it must hold every setting the numbers depend on."""
    from geoviz.setups.training import network_cache_dir

    file = network_cache_dir().parent / "lessons" / f"{name}.json"
    if use_disk and file.is_file():
        return kind(**json.loads(file.read_text()))
    result = make()
    if use_disk:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(asdict(result)))
        os.replace(tmp, file)
    return result


@functools.cache
def lessons() -> tuple[Lesson, ...]:
    """Every lesson, in the order /learn lists them."""
    from geoviz.lessons import connect_story, continual_story, directions_story, sparsify_story, tiny_story

    return (tiny_story.LESSON, directions_story.LESSON, connect_story.LESSON, sparsify_story.LESSON, continual_story.LESSON)


def lesson(slug: str) -> Lesson | None:
    return next((item for item in lessons() if item.slug == slug), None)


_PREPARING: dict[str, threading.Lock] = {}  # per lesson: the server's warm-up and a first visitor never compute twice
_LOCKS = threading.Lock()


def prepare(slug: str | None = None) -> None:
    """Compute a lesson's numbers, or every lesson's (a minute or two the first time on
    a new machine, then cached in memory and on disk). A visitor to one lesson waits
    for that lesson only, not for the warm-up of the others."""
    for item in lessons():
        if slug is None or item.slug == slug:
            with _LOCKS:
                lock = _PREPARING.setdefault(item.slug, threading.Lock())
            with lock:
                item.prepare()
