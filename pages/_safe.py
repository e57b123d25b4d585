"""Text that came from a user, a URL or a run folder, shown as text: never as markdown.

``st.error``, ``st.info``, ``st.caption`` and ``st.markdown`` render markdown: a URL
value like ``[Log in](http://...)`` would become a link, ``![x](http://...)`` an image
the browser fetches. Every such text goes through :func:`md` (each ASCII punctuation
mark escaped, so links, images, emphasis, Streamlit's ``:color[...]`` and ``$maths$``
stay literal) and is cut to a length a browser draws at once.
"""

from __future__ import annotations

import ctypes
import gc
import os
import re
import threading
import time
import weakref
from collections.abc import Callable

import streamlit as st

from geoviz.errors import ConfigError
from geoviz.validation import cut

__all__ = ["md", "error", "admitted", "check_grid", "allow_new_network"]

# what makes markdown inside one line: links and images ([]()!), autolinks and HTML
# (<>), emphasis (*_~), code (`), maths ($), escapes (\\), entities (&), tables (|).
# Sentence punctuation (. , ; ' -) stays as it is, so the source still reads as the
# sentence. Bare URLs (http://..., www....), e-mail addresses and Streamlit's
# :color[...] / :icon: are found in the text after the escapes are read (remark-gfm's
# autolink literals; seen in Chromium), so a backslash cannot stop them: an invisible
# word joiner (U+2060) breaks each of their patterns instead.
_INLINE = re.compile(r"([\\`*_{}\[\]()<>!|~$&])")
_LINE_START = re.compile(r"^([#>+\-=]|\d+[.)])")  # a heading, quote or list at the start
_JOINER = "\u2060"
_BARE = re.compile(r"(?i)(https?|ftp|mailto|file|data|javascript)(?=:)|(www)(?=\.)|(@)|(:)(?=[a-z])")
LIMIT = 500  # characters of one message shown; a 5 MB status message hung a tab


def md(text, limit: int = LIMIT) -> str:
    """``text`` cut to ``limit`` characters, with every markdown character escaped."""
    flat = " ".join(cut(text, limit).split())  # no line breaks: no headings, lists or code blocks
    flat = _INLINE.sub(r"\\\1", flat)
    flat = _BARE.sub(lambda m: m.group(0) + _JOINER, flat)
    return _LINE_START.sub(lambda m: m.group(1)[:-1] + "\\" + m.group(1)[-1], flat)


def error(text, limit: int = LIMIT) -> None:
    """``st.error`` of a message that may hold user text (a URL value, a path, an exception)."""
    st.error(md(text, limit))


# -- a server shared by a class: caps on what one session may start -------------------
# Each can be raised by the person who starts the server (environment variables).
MAX_RUNS = int(os.environ.get("GEOVIZ_MAX_RUNS", "4"))  # live paths on the whole server
MAX_SESSION_RUNS = int(os.environ.get("GEOVIZ_MAX_SESSION_RUNS", "2"))  # live paths of one browser session
MAX_STEPS = int(os.environ.get("GEOVIZ_MAX_STEPS", "20000"))  # a page's step budget
MAX_GRID = int(os.environ.get("GEOVIZ_MAX_GRID", "101"))  # n of an n x n landscape
# start networks one session may have trained that were not cached yet (each new seed trains one)
MAX_NEW_NETWORKS = int(os.environ.get("GEOVIZ_MAX_NEW_NETWORKS", "6"))

_RUNNERS: weakref.WeakSet = weakref.WeakSet()  # every runner started from a page, all sessions
_REGISTRY_LOCK = threading.Lock()


def _alive(runners) -> list:
    return [r for r in runners if getattr(r, "alive", False)]


def admitted(page: str, total_steps: int, make_runner: Callable):
    """``make_runner()`` if this server and session may start one more path; ConfigError
    with one sentence otherwise. The page's own previous runner (being stopped) does not count."""
    if total_steps > MAX_STEPS:
        raise ConfigError(f"This server caps a page's step budget at {MAX_STEPS} (GEOVIZ_MAX_STEPS), got {total_steps}; "
                          "run longer paths with `python -m geoviz`.")
    own = st.session_state.get(f"{page}:runner")
    with _REGISTRY_LOCK:
        mine = [r for r in _alive(v for k, v in st.session_state.items() if str(k).endswith(":runner")) if r is not own]
        if len(mine) >= MAX_SESSION_RUNS:
            raise ConfigError(f"This session already runs {len(mine)} paths, the most one session may run at once here "
                              f"(GEOVIZ_MAX_SESSION_RUNS); stop one, or wait until it ends.")
        everyone = [r for r in _alive(list(_RUNNERS)) if r is not own]
        if len(everyone) >= MAX_RUNS:
            raise ConfigError(f"The server already runs {len(everyone)} paths, the most it runs at once "
                              "(GEOVIZ_MAX_RUNS); try again when one has ended.")
    runner = make_runner()
    with _REGISTRY_LOCK:
        _RUNNERS.add(runner)
    threading.Thread(target=_release_when_done, args=(weakref.ref(runner),), name="geoviz-release", daemon=True).start()
    return runner


# glibc's malloc, tuned for a long-lived server whose threads come and go (Streamlit runs
# every rerun of a page in a new thread; each path and its baselines run in another).
# Left as it is, (1) each such thread may get an arena of its own, up to 8 per core, and
# what is freed in an arena's heaps stays with the process; (2) the threshold above which
# a block is mmapped (and so given back when freed) rises after the first large free, up
# to 32 MB, so the multi-MB buffers of every redraw (a trajectory stacked for its PCA,
# plotly's JSON) then come from those heaps and leave them fragmented. Measured with 4
# sessions x 300 digits steps (bench/server_memory.py): after the runs the server held
# 551 MB free inside its arenas (mallinfo2) and stayed at 1.52x its warm RSS; malloc_trim
# gave back almost none of it. With two arenas and a fixed 128 kB threshold (there as
# MALLOC_ARENA_MAX=2 MALLOC_MMAP_THRESHOLD_=131072, 4 x 150 steps) 13 MB stayed free.
# Set here with mallopt, so it holds however the server is started (arenas made before the
# call stay; past two no new one is made); tests/test_browser_memory.py: 1.01-1.04x warm.
MALLOC_TUNE = os.environ.get("GEOVIZ_MALLOC_TUNE", "1") != "0"
_M_MMAP_THRESHOLD, _M_ARENA_MAX = -3, -8  # glibc's malloc.h
_tuned = False


def tune_allocator() -> None:
    """Set glibc's malloc for a server (see above), once per process; nothing elsewhere."""
    global _tuned
    if _tuned or not MALLOC_TUNE:
        return
    _tuned = True
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_ARENA_MAX, 2)
        libc.mallopt(_M_MMAP_THRESHOLD, 128 * 1024)  # fixed: no longer rises
    except (OSError, AttributeError):  # not glibc
        pass


def release_memory() -> None:
    """Give back what ended runs held, once no path runs on the server: objects the
    page's gc.freeze hid from the collector (a tab closed mid-run never unfroze them),
    reference cycles, and the C heap's free pages (glibc's malloc_trim)."""
    with _REGISTRY_LOCK:
        if _alive(list(_RUNNERS)):
            return
        if gc.get_freeze_count():
            gc.unfreeze()
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _release_when_done(ref: weakref.ref) -> None:
    """Wait (without keeping the runner alive) until its path has ended, then release."""
    while True:
        time.sleep(1.0)
        runner = ref()
        if runner is None or (runner.finished and not runner.alive):
            break
        del runner
    release_memory()
    # a closed tab's session, with its runner, is dropped only after Streamlit's
    # disconnectedSessionTTL (a reconnect may still come): release once more after it
    try:
        ttl = float(st.get_option("server.disconnectedSessionTTL"))
    except Exception:  # an option Streamlit may rename
        ttl = 120.0
    timer = threading.Timer(ttl + 15.0, release_memory)
    timer.daemon = True
    timer.start()


def check_grid(n: int) -> None:
    """ConfigError when a landscape grid is larger than this server allows."""
    if n > MAX_GRID:
        raise ConfigError(f"This server draws landscapes of at most {MAX_GRID} x {MAX_GRID} points (GEOVIZ_MAX_GRID), got {n}.")


def allow_new_network(key: str) -> None:
    """Count a start network this session is about to train (not yet cached); ConfigError past the cap."""
    trained = st.session_state.setdefault("geoviz:new_networks", set())
    if key in trained:
        return
    if len(trained) >= MAX_NEW_NETWORKS:
        raise ConfigError(f"This session has trained {len(trained)} new start networks, the most one session may here "
                          "(GEOVIZ_MAX_NEW_NETWORKS); use a seed and setup trained before.")
    trained.add(key)
