"""Live progress of a bundle: its phase and its quanta per task, as one line.

``pilot run`` redraws it on stderr while on a terminal (`LiveLine`); ``pilot start``
logs it at each heartbeat.
"""

from __future__ import annotations

import collections
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

from ..report import QuantumResult


class Tracker:
    """Phase and finished quanta of one bundle (fed by ``run_bundle``'s callbacks; thread-safe)."""

    def __init__(self, bundle: str, running: Callable[[], int] = lambda: 0) -> None:
        self.bundle = bundle
        self.phase = "load"
        self._running = running
        self._lock = threading.Lock()
        self._done: collections.Counter[str] = collections.Counter()
        self._failed: collections.Counter[str] = collections.Counter()
        self._started = time.monotonic()

    def set_phase(self, phase: str) -> None:
        self.phase = phase

    def add(self, result: QuantumResult) -> None:
        with self._lock:
            counter = self._done if result.status == "succeeded" else self._failed
            counter[result.task_label] += 1

    def line(self) -> str:
        """``<bundle> [<phase> 12s] 7 done, 1 failed, 2 running | isr 4, calibrate 3/1``."""
        with self._lock:
            labels = list(dict.fromkeys([*self._done, *self._failed]))
            tasks = ", ".join(
                f"{label} {self._done[label]}"
                + (f"/{self._failed[label]} failed" if self._failed[label] else "")
                for label in labels
            )
            done, failed = sum(self._done.values()), sum(self._failed.values())
        elapsed = time.monotonic() - self._started
        running = self._running()
        head = f"{self.bundle} [{self.phase} {elapsed:.0f}s] {done} done, {failed} failed, {running} running"
        return f"{head} | {tasks}" if tasks else head


class LiveLine:
    """Redraws a tracker's line in place on ``stream`` (twice a second, and on each event) if a TTY."""

    def __init__(self, tracker: Tracker, stream: TextIO | None = None) -> None:
        self.tracker = tracker
        self._stream = stream if stream is not None else sys.stderr
        self.enabled = self._stream.isatty()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, name="progress", daemon=True)
        if self.enabled:
            self._thread.start()

    def on_phase(self, phase: str) -> None:
        self.tracker.set_phase(phase)
        self.draw()

    def on_quantum(self, result: QuantumResult) -> None:
        self.tracker.add(result)
        self.draw()

    def draw(self) -> None:
        if self.enabled:
            self._stream.write("\r\x1b[K" + self.tracker.line())
            self._stream.flush()

    def close(self) -> None:
        """Stop redrawing and clear the line (what follows is printed in its place)."""
        if self.enabled:
            self._stop.set()
            self._thread.join()
            self._stream.write("\r\x1b[K")
            self._stream.flush()

    def _tick(self) -> None:
        while not self._stop.wait(0.5):
            self.draw()
