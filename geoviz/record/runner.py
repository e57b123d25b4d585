"""Drive a path step by step, with Pause / Step / Resume / Stop, writing its run record.

The same runner serves the CLI (``run()`` in the calling thread) and the app
(``start()`` in a background thread; the page polls ``rows()`` and the state).
No Streamlit here.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable

import torch

from geoviz.core.engine import Path, flush_denormals
from geoviz.errors import DivergedError, GeovizError
from geoviz.record.sketch import sketch_for_budget
from geoviz.record.runs import RunWriter, SnapshotBudget

__all__ = ["PathRunner", "BaselineStopped"]


class BaselineStopped(Exception):
    """Raised inside a baseline's progress callback when Stop was pressed."""


class PathRunner:
    """Runs a :class:`~geoviz.core.engine.Path` and records it.

    Args:
        path: the path to walk.
        writer: the run record to write (None: keep in memory only).
        on_finish: called once when the path has ended (finished or out of steps),
            with this runner; returns the summary dict (baselines, final figures).
        snapshot_budget_mb: memory budget of the in-memory trajectory (for live PCA).
        abandon_after: seconds without a ``touch()`` after which a background run
            stops itself (a browser tab that went away); None never.
    """

    def __init__(
        self,
        path: Path,
        writer: RunWriter | None = None,
        on_finish: Callable[[PathRunner], dict] | None = None,
        snapshot_budget_mb: float = 32.0,
        abandon_after: float | None = None,
    ):
        self.path = path
        self.writer = writer
        self.on_finish = on_finish
        self.abandon_after = abandon_after
        self.state = "ready"
        self.message = ""
        self.summary: dict = {}
        self._rows: list[dict] = []
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._paused = False
        self._stop = False
        self._step_tokens = 0
        self._thread: threading.Thread | None = None
        self._last_touch = time.time()
        # a big network's snapshots are kept as fixed random projections (geoviz.record.sketch),
        # so the trajectory's PCA gets every kept step within the budget
        self.sketch = sketch_for_budget(path.w.numel(), int(snapshot_budget_mb * 2**20))
        self.snapshot_bytes = 4 * (self.sketch.dim if self.sketch is not None else path.w.numel())
        self._budget = SnapshotBudget(self.snapshot_bytes, int(snapshot_budget_mb * 2**20))
        self._trajectory: dict[int, torch.Tensor] = {}
        self._released = False
        self.started_at: float | None = None
        # the after-path phase: each baseline's progress (0..1), the ones Stop skipped,
        # and what is ready of the summary before on_finish returns it whole
        self.progress: dict[str, float] = {}
        self.skipped: list[str] = []
        self.partial: dict = {}
        self.first_step_at: float | None = None
        # the cost estimate (geoviz.applications.cost.Cost) once the first steps are measured
        self.cost = None
        # sentences said before the path started (a big network on a CPU), for a page to show
        self.warnings: list[str] = []
        self._keep(0, path.w)

    # -- reading (any thread) ---------------------------------------------------
    def rows(self) -> list[dict]:
        with self._lock:
            return list(self._rows)

    def trajectory(self) -> tuple[list[int], torch.Tensor]:
        """(steps, stacked flat weights (S, P) on the CPU) kept so far; (S, k) projections
        of them when ``sketch`` is set (project other points with ``sketch`` too).

        Once the run has ended with its record on disk, read back from the run folder's
        snapshots (the same steps: the same budget rule kept them; projected alike), so an
        ended runner a page or the server's registry still holds keeps no copy of them in memory."""
        with self._lock:
            if not self._released:
                steps = sorted(self._trajectory)
                return steps, torch.stack([self._trajectory[s] for s in steps])
        return self._trajectory_on_disk()

    def _trajectory_on_disk(self) -> tuple[list[int], torch.Tensor]:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        steps, ws = [], []
        kept = list(self.writer._budget.kept) if self.writer._budget is not None else []
        if len(kept) > self.snapshot_capacity:  # a larger disk budget: as many as memory would keep
            pick = torch.linspace(0, len(kept) - 1, self.snapshot_capacity).round().long().unique().tolist()
            kept = [kept[i] for i in pick]
        for step in kept:
            try:
                ws.append(load_file(str(self.writer.dir / "snapshots" / f"{step:07d}.safetensors"))["w"])
            except (OSError, SafetensorError, KeyError):  # thinned by the disk budget, or the run deleted
                continue
            steps.append(step)
        if not steps:  # nothing left on disk: the final point alone
            w = self.sketch(self.path.w) if self.sketch is not None else self.path.w.detach().float().cpu()
            return [self.path.step], w[None]
        return steps, torch.stack(ws)

    def _release_trajectory(self) -> None:
        """Drop the in-memory trajectory of the ended run, its snapshots being on disk
        (the largest thing a finished runner holds: up to ``snapshot_budget_mb``)."""
        with self._lock:
            self._released = True
            self._trajectory = {}

    @property
    def snapshot_capacity(self) -> int:
        """The most weight snapshots the in-memory trajectory keeps."""
        return self._budget.capacity

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def stepping(self) -> bool:
        """A Step was asked for and its step has not started yet."""
        return self._step_tokens > 0

    @property
    def finished(self) -> bool:
        return self.state in ("finished", "stopped", "diverged", "failed", "interrupted")

    # -- control (any thread) ---------------------------------------------------
    def touch(self) -> None:
        """Say that someone is still watching (the page calls this when it polls)."""
        self._last_touch = time.time()

    def pause(self) -> None:
        with self._wake:
            self._paused = True
            self._step_tokens = 0

    def resume(self) -> None:
        with self._wake:
            self._paused = False
            self._wake.notify_all()

    def step(self, n: int = 1) -> None:
        """While paused, walk ``n`` more steps and pause again."""
        with self._wake:
            self._paused = True
            self._step_tokens += n
            self._wake.notify_all()

    def stop(self) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify_all()

    def start(self) -> None:
        """Run in a background (daemon) thread."""
        self._thread = threading.Thread(target=self._run_thread, name="geoviz-path", daemon=True)
        self._thread.start()

    def _run_thread(self) -> None:
        flush_denormals()  # before the thread's first parallel op, so its workers inherit it
        self.run()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    # -- the after-path phase (called by on_finish, in the runner's thread) ----------
    def baseline(self, name: str, work: Callable[[Callable[[int, int], None]], object]):
        """Run one baseline with its progress shown and Stop heard; None when skipped.

        ``work(report)`` computes the baseline, calling ``report(done, total)`` now and
        then: that records the progress and raises :class:`BaselineStopped` once Stop
        was pressed (or nobody watches any more).
        """
        def report(done: int, total: int) -> None:
            self.progress[name] = min(1.0, done / max(1, total))
            if self._stop or self._abandoned():
                raise BaselineStopped(name)

        try:
            report(0, 1)
            out = work(report)
        except BaselineStopped:
            self.progress.pop(name, None)
            self.skipped.append(name)
            return None
        self.progress[name] = 1.0
        return out

    def publish(self, **parts) -> None:
        """Make part of the summary visible to the page before the whole is ready."""
        with self._lock:
            self.partial = {**self.partial, **parts}

    # -- the loop -----------------------------------------------------------------
    def _keep(self, step: int, w: torch.Tensor) -> None:
        written = self.writer is not None and self.writer.wants_snapshot(step, self.snapshot_bytes // 4)
        if not (written or self._budget.wants(step)):
            return
        kept = self.sketch(w) if self.sketch is not None else w.detach().float().cpu()  # projected once for both
        if self._budget.wants(step):
            with self._lock:
                self._trajectory[step] = kept
                for old in self._budget.add(step):
                    self._trajectory.pop(old, None)
        if written:
            self.writer.snapshot(step, kept, self.sketch)

    def _set_state(self, state: str, message: str = "") -> None:
        self.state, self.message = state, message
        if self.writer is not None:
            if state in ("running", "paused"):
                self.writer.write_status(state, message)

    def _wait_turn(self) -> bool:
        """Block while paused; False when the run should stop."""
        with self._wake:
            while self._paused and self._step_tokens == 0 and not self._stop:
                if self.state != "paused":
                    self._set_state("paused")
                if self._abandoned():
                    self._stop = True
                    break
                self._wake.wait(timeout=1.0)
            if self._stop:
                return False
            if self.state != "running":  # before the token is taken: see `stepping`
                self._set_state("running")
            if self._paused:
                self._step_tokens -= 1
            return True

    def _abandoned(self) -> bool:
        return self.abandon_after is not None and time.time() - self._last_touch > self.abandon_after

    def run(self, progress: Callable[[dict], None] | None = None) -> str:
        """Walk the path to its end (or until stopped); returns the final state."""
        self.started_at = time.time()
        if self.writer is not None and self.path.step == 0:
            self.writer.save_weights("start", self.path.layout.unflatten(self.path.w0))
        self._set_state("running")
        final, message = "finished", ""
        try:
            while not self.path.done:
                if not self._wait_turn():
                    final = "stopped"
                    message = "stopped: nobody watched it" if self._abandoned() else "stopped by the user"
                    break
                if self._abandoned():
                    final, message = "stopped", "stopped: nobody watched it"
                    break
                record = next(self.path)
                row = {**record.row(), "time": time.time()}  # wall clock: when each step ended
                with self._lock:
                    self._rows.append(row)
                if self.first_step_at is None:
                    self.first_step_at = time.time()
                if self.writer is not None:
                    self.writer.append(row)
                self._keep(record.step, self.path.w)
                if progress is not None:
                    progress(row)
            if final == "finished":
                message = self.path.end_reason
        except DivergedError as err:
            final, message = "diverged", str(err)
        except KeyboardInterrupt:
            final, message = "interrupted", "interrupted by a signal"
        except GeovizError as err:
            final, message = "failed", str(err)
        except Exception as err:  # keep what was computed, say what broke
            final, message = "failed", f"{type(err).__name__}: {err}"
            if self.writer is not None:
                try:
                    (self.writer.dir / "error.txt").write_text(traceback.format_exc())
                except OSError:  # a full disk: the status still says what broke
                    pass
        if final == "finished" and self.on_finish is not None:
            try:
                self.summary = self.on_finish(self) or {}
            except KeyboardInterrupt:  # a signal while the baselines run: the path is kept
                final, message = "stopped", "stopped by a signal while the baselines were computed; the path's steps are kept"
            except Exception as err:  # the path is kept even if a baseline fails
                message += f"; summary failed: {type(err).__name__}: {err}"
            if self.skipped:
                final = "stopped"
                message = f"{message}; stopped during the baselines, skipped: {', '.join(self.skipped)}"
                self.summary["skipped"] = list(self.skipped)
        if self.path.backend_used is not None:  # what really computed G v (a fallback shows here)
            self.summary = {**self.summary, "backend": self.path.backend_used}
        if self.writer is not None:
            try:
                self.writer.save_weights("final", self.path.layout.unflatten(self.path.w))
                if self.summary:
                    self.writer.write_summary(self.summary)
            except OSError as err:  # a full disk: say so in the status, which close() still writes
                final = "failed" if final == "finished" else final
                message += f"; the run record could not be completed: {err.strerror or err}"
            self.writer.close(final, message)
        self.state, self.message = final, message
        if self.writer is not None and self.writer.snapshots_complete:
            self._release_trajectory()  # the record is on disk: the trajectory is read back from it when drawn
        return final
