"""geoviz in the browser: `streamlit run app.py`. A router over pages/, and the home page."""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from geoviz.figures.plots import geodesic_sketch
from pages import _live, _safe

PAGES_DIR = Path(__file__).parent / "pages"


def home() -> None:
    if st.session_state.get("geoviz:home-left"):  # Back from a page: its settings do not belong on Home
        st.query_params.clear()
    st.title("geoviz: walk through a network's weight space")
    st.markdown(
        "A trained network is one point in a space with one axis per weight. Most directions in that "
        "space leave what the network computes almost unchanged. A **weight-space geodesic** moves "
        "along such directions, measured by how much the network's outputs change, while a second "
        "objective pulls it somewhere useful: towards sparse weights, a new task, or another network "
        "(Raghavan & Thomson, [arXiv 2106.02793](https://arxiv.org/abs/2106.02793)). "
        "Here you can watch such a path grow, and steer it."
    )
    st.plotly_chart(geodesic_sketch(), key="sketch")
    st.caption("A sketch, not a measurement: in a curved valley of good networks the straight line climbs out; the geodesic follows the valley.")
    cards = (
        ("pages/sparsify.py", "Sparsify", "Drive 90% of the weights to zero while keeping accuracy; compare with one-shot pruning and fine-tuning."),
        ("pages/continual.py", "Continual", "Learn a second task without forgetting the first; compare with fine-tuning, EWC and replay."),
        ("pages/connect.py", "Connect", "Find a low-loss path between two networks trained from different seeds; compare with the straight line and a Bezier curve."),
        ("pages/runs.py", "Runs", "Every path this server has walked: replay its charts, download its record."),
        ("pages/learn.py", "Learn", "Short lessons, a step at a time: why most directions in weight space do not matter."),
    )
    # (the cards wrap onto a second row on a narrow window: five columns at 800 px broke words mid-letter)
    for column, (path, title, text) in zip(st.container(key="home-cards").columns(len(cards)), cards):
        with column.container(border=True, height="stretch"):
            st.markdown(f"**{title}**")
            st.caption(text)
            st.page_link(path, label=f"Try it: {title}", icon=":material/arrow_forward:")


def navigation():
    """The app's pages, by URL path, with their links at the top of the sidebar.

    The links are drawn here rather than by Streamlit (see .streamlit/config.toml), so
    a direct link to a page never shows Streamlit's list of the files in pages/.
    """
    pages = [
        st.Page(home, title="Home", icon=":material/home:", default=True),
        st.Page(PAGES_DIR / "sparsify.py", title="Sparsify", icon=":material/content_cut:", url_path="sparsify"),
        st.Page(PAGES_DIR / "continual.py", title="Continual", icon=":material/school:", url_path="continual"),
        st.Page(PAGES_DIR / "connect.py", title="Connect", icon=":material/timeline:", url_path="connect"),
        st.Page(PAGES_DIR / "runs.py", title="Runs", icon=":material/folder_open:", url_path="runs"),
        st.Page(PAGES_DIR / "compare.py", title="Compare", icon=":material/compare_arrows:", url_path="compare"),
        st.Page(PAGES_DIR / "learn.py", title="Learn", icon=":material/menu_book:", url_path="learn"),
    ]
    current = st.navigation(pages, position="hidden")
    for page in pages:
        st.sidebar.page_link(page, width="stretch")
    st.sidebar.divider()
    return current


# A compact page: at 1280x720 (a projector) the first row of charts and their legends
# fit above the fold. Streamlit's defaults spend 6rem above the title and 2.75rem on it.
# A chart in a wrapping row (pages/_charts.row) is at least 16rem wide: three still fit
# side by side at 1280 px, while at 800 px each takes the width (at 226 px titles and
# legends were cut). The upload box's line of file types wraps rather than ending "PT…".
COMPACT_CSS = """<style>
[data-testid="stMainBlockContainer"] {padding-top: 0.25rem; padding-bottom: 2rem;}
[data-testid="stMainBlockContainer"] h1 {font-size: 2rem; padding: 0.25rem 0 0.25rem 0;}
[data-testid="stMainBlockContainer"] [data-testid="stVerticalBlock"] {gap: 0.4rem;}
[data-testid="stMetricValue"] {font-size: 1.75rem;}
.st-key-home-cards [data-testid="stHorizontalBlock"] {flex-wrap: wrap;}
.st-key-home-cards [data-testid="stColumn"] {min-width: 8.5rem;}
.st-key-home-cards [data-testid="stPageLink"] * {white-space: normal; overflow: visible; text-overflow: clip;}
[data-testid="stHorizontalBlock"] > [data-testid="stElementContainer"]:has(.js-plotly-plot) {flex-basis: 16rem;}
[data-testid="stFileUploaderDropzoneInstructions"] span {white-space: normal; overflow: visible;}
</style>"""


def _threads() -> None:
    """One torch thread unless $GEOVIZ_THREADS says otherwise: the networks here are
    small, and two threads on a busy 2-core machine spin against each other (the
    path ran 20x slower in the page than in the CLI)."""
    import torch

    torch.set_num_threads(int(os.environ.get("GEOVIZ_THREADS", "1")))


@st.cache_resource(show_spinner=False)
def _prepare_lessons() -> object:
    """Once per server, in the background: every lesson's numbers, so no step waits."""
    import threading

    from geoviz.lessons import prepare

    thread = threading.Thread(target=prepare, name="geoviz-lessons", daemon=True)
    thread.start()
    return thread


if __name__ == "__main__":
    _safe.tune_allocator()  # before the first run: a server's memory comes back after its sessions
    _threads()
    if os.environ.get("GEOVIZ_PREPARE_LESSONS", "1") != "0":
        _prepare_lessons()
    st.set_page_config(page_title="geoviz", page_icon="🧭", layout="wide")  # an emoji: no font server needed offline
    page = navigation()
    st.html(COMPACT_CSS)
    _live.keep_alive()
    st.session_state["geoviz:routed"] = True  # see _live.through_app
    page.run()
    st.session_state["geoviz:home-left"] = page.url_path != ""  # (Home's own url_path is "")
