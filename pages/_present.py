"""Presentation mode (?present=1): a page for a projector at 1280x720.

No sidebar (the settings stay in the URL, so the run shown is the one they describe),
no header, less padding, bigger chart text (ticks 18 px, titles 24 px), so that the
key chart and its legend sit above the fold. A toggle on the page switches it.
"""

from __future__ import annotations

import streamlit as st

from geoviz.lessons import present_fonts

__all__ = ["CSS", "active", "apply", "toggle_ui", "header", "chart"]

HEIGHT = 360  # px of a chart in presentation mode
# a legend under the plot starts this far below it (a fraction of the plot's height): at
# the applications' -0.22 the 18 px ticks and 20 px axis title ran into it
LEGEND_Y = -0.4

CSS = """<style>
[data-testid="stSidebar"], [data-testid="stSidebarCollapsedControl"], header[data-testid="stHeader"] {display: none;}
[data-testid="stMainBlockContainer"] {padding-top: 1rem; padding-bottom: 1rem; max-width: 1200px;}
[data-testid="stMarkdownContainer"] p {font-size: 1.35rem;}
</style>"""
# on the application pages, what a projected run does not need above its charts: the
# page's long caption, the captions (cost estimate, notes), the figure tiles (the charts
# show them), the x-axis choice (step), and below them the sweep panel
APP_CSS = """<style>
[data-testid="stMainBlockContainer"] h1 {font-size: 2rem; padding-top: 0;}
[class*="st-key-present-hide"], .st-key-live-x {display: none;}
[data-testid="stMainBlockContainer"] [data-testid="stCaptionContainer"] {display: none;}
[data-testid="stHorizontalBlock"]:has([data-testid="stMetric"]) {display: none;}
</style>"""


def active() -> bool:
    return st.query_params.get("present") == "1"


def _switch() -> None:
    if st.session_state.get("present:toggle"):
        st.query_params["present"] = "1"
    else:
        st.query_params.pop("present", None)


def apply(app_page: bool = False) -> bool:
    """Style the page for a projector when the URL asks; True when it does."""
    if active():
        st.html(CSS + (APP_CSS if app_page else ""))
        return True
    return False


def toggle_ui() -> None:
    """The switch in and out of presentation mode (the URL keeps every other setting)."""
    st.session_state["present:toggle"] = active()
    st.toggle("Presentation mode", key="present:toggle", on_change=_switch, width="content",
              help="For a projector: no sidebar, bigger chart text, the main chart above the fold. Settings stay as the URL has them.")


def header(title: str, caption: str) -> None:
    """An application page's top: the projector's style when asked, the title with the
    presentation toggle on its right (one row, so the charts and their legends stay above
    the fold at 1280x720), and the page's caption (hidden on a projector)."""
    apply(app_page=True)
    with st.container(horizontal=True, vertical_alignment="center", horizontal_alignment="distribute"):
        st.title(title, width="content")
        toggle_ui()
    with st.container(key="present-hide-caption"):
        st.caption(caption)


def chart(container, figure, **options) -> None:
    """``container.plotly_chart``; in presentation mode with the chart text enlarged, at most HEIGHT px tall."""
    if active():  # shorter: the first row of charts fits under the run buttons and status at 1280x720
        figure = present_fonts(figure, True).update_layout(height=min(figure.layout.height or 450, HEIGHT))
        if figure.layout.legend.y is not None and figure.layout.legend.y < 0:  # below the bigger x-axis title
            figure.update_layout(legend_y=LEGEND_Y)
    container.plotly_chart(figure, **options)
