"""Learn: short guided lessons, one step at a time, each at its own URL
(/learn?lesson=<slug>&step=<n>); ?present=1 for a projector."""

from __future__ import annotations

import streamlit as st

from geoviz.lessons import lesson, lessons, prepare
from pages import _live, _present

PRESENT_CSS = _present.CSS  # a projector: no sidebar, no header, less padding


@st.cache_resource(show_spinner="Preparing the lesson (once per server)…")
def _prepared(slug: str) -> bool:
    prepare(slug)
    return True


def _index(present: bool) -> None:
    st.title("Learn")
    st.caption("Short stories, a step at a time; every number in them is computed by geoviz's engine.")
    for item in lessons():
        with st.container(border=True):
            st.markdown(f"**[{item.title}](/learn?lesson={item.slug}{'&present=1' if present else ''})**")
            st.caption(item.summary)


def _go(step: int) -> None:
    st.query_params["step"] = str(step)


def _clicked_points(event) -> list[tuple[float, float]]:
    try:
        return [(float(p["x"]), float(p["y"])) for p in event.selection.points]
    except (AttributeError, KeyError, TypeError):
        return []


def page() -> None:
    _live.through_app()
    params = st.query_params
    present = params.get("present") == "1"
    if present:
        st.html(PRESENT_CSS)
    item = lesson(params.get("lesson", ""))
    if item is None:
        if params.get("lesson"):
            st.warning("The link names a lesson that does not exist; here are the lessons.")
        _index(present)
        return
    _prepared(item.slug)
    count = len(item.steps)
    try:
        index = min(max(int(params.get("step", "1")), 1), count) - 1
    except ValueError:
        index = 0
    step = item.steps[index]
    # on a projector the words sit beside the picture, so the picture fits above the fold
    words, picture = st.columns([2, 3], vertical_alignment="center") if present else (st.container(), st.container())
    with words:
        st.subheader(f"{item.title} · {index + 1}/{count}: {step.title}")
        choices = st.session_state.setdefault(f"learn:{item.slug}:choices", {})
        st.markdown(step.text.format(**item.numbers(**choices)))
        back, forward, toggle = st.columns([1, 1, 4]) if not present else (*st.columns(2), None)
    back.button("Back", disabled=index == 0, on_click=_go, args=(index,), key="learn:back", width="stretch")
    forward.button("Next", disabled=index == count - 1, on_click=_go, args=(index + 2,), key="learn:next", width="stretch")
    if toggle is not None:
        toggle.markdown(f"[Presentation mode](/learn?lesson={item.slug}&step={index + 1}&present=1)")
    figure = item.figure(step.picture, present, **choices)
    clicks = st.session_state.setdefault(f"learn:{item.slug}:clicks", 0)
    if present:
        figure.update_layout(height=600, margin={"t": 50})
    event = picture.plotly_chart(figure, key=f"learn:{item.slug}:{index}:{clicks}", on_select="rerun", selection_mode="points",
                            config={"displayModeBar": False})
    picked = _clicked_points(event)
    if picked and step.picture == "walk":  # a click: the next start, then the goal
        # to the nearest tenth: a click near a curve may pick one of its points; each walk is cached per point
        choices["goal" if clicks % 2 else "start"] = tuple(round(v, 1) for v in picked[-1])
        st.session_state[f"learn:{item.slug}:clicks"] = clicks + 1  # a fresh chart: its selection is spent
        st.rerun()
    if step.picture == "walk":
        words.caption(f"Next click sets the {'goal' if clicks % 2 else 'start'}. Each walk is computed by the engine on the click "
                   "and kept, so the same points come back at once.")


if __name__ == "__main__":
    page()
