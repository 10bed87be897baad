"""When a running quantum's worker is to be killed: over its memory, over its time, or hung.

The pool looks at every busy worker each time it waits for events (every 50 ms) when it
has a memory budget, and at least every `SLOW_CHECK_SECONDS` for time and hangs:

1. **Memory**: the RSS of the worker's process tree over the worker's budget
   (``--memory-per-worker``) fails the quantum as ``pilot.MemoryLimitExceeded``.
2. **Time limit**: a quantum running longer than ``quantum_timeout_seconds`` (wall time
   since it was dispatched) fails as ``pilot.QuantumTimeout``.
3. **Hang**: a worker whose process tree gains no CPU time for ``hang_seconds`` while it
   is *stopped* (SIGSTOP, a tracer) or in *uninterruptible sleep* (stuck in the kernel,
   e.g. on a dead file system) fails as ``pilot.QuantumTimeout`` too.  A worker asleep on
   purpose (``time.sleep``, waiting on a socket or a lock) is not hung: a deadlock looks
   the same from outside, so only the time limit (2) ends it.
4. The worker is then killed (SIGKILL ends a stopped process too) and replaced; the
   quantum's descendants are blocked and everything else runs, as for any worker death.

No I/O here but reading the process table; the pool does the killing.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import psutil

MiB = 1024 * 1024
TIMEOUT = "pilot.QuantumTimeout"
SLOW_CHECK_SECONDS = 0.5
STUCK_STATES = frozenset({psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP, psutil.STATUS_DISK_SLEEP})


@dataclasses.dataclass(frozen=True)
class QuantumLimits:
    """Limits of one quantum's run (from the bundle's ``execution``, or the command line)."""

    memory_bytes: int | None = None
    time_seconds: float | None = None
    hang_seconds: float | None = None


@dataclasses.dataclass(frozen=True)
class Verdict:
    """Why a worker must be killed."""

    reason: str
    kind: Literal["memory", "timeout", "hang"]


@dataclasses.dataclass
class QuantumWatch:
    """What the pool knows of one running quantum: when it started, when its CPU time last grew."""

    limits: QuantumLimits
    started: float
    cpu: float = -1.0
    progressed: float = 0.0
    next_slow: float = 0.0

    def due(self, now: float) -> bool:
        """Whether `look` has anything to check now (memory always; time and hangs every so often)."""
        return self.limits.memory_bytes is not None or (
            now >= self.next_slow and (self.limits.time_seconds or self.limits.hang_seconds) is not None
        )

    def look(self, process: psutil.Process, now: float) -> Verdict | None:
        """Read the worker's process tree once; return a verdict if it must be killed (rules 1–3)."""
        tree = [process, *process.children(recursive=True)]
        limits = self.limits
        if limits.memory_bytes is not None:
            rss = sum(p.memory_info().rss for p in tree)
            if rss > limits.memory_bytes:
                return Verdict(
                    f"memory: worker RSS {rss / MiB:.0f} MiB exceeded its budget of "
                    f"{limits.memory_bytes / MiB:.0f} MiB; the worker was killed",
                    "memory",
                )
        if now < self.next_slow:
            return None
        self.next_slow = now + SLOW_CHECK_SECONDS
        ran = now - self.started
        if limits.time_seconds is not None and ran > limits.time_seconds:
            return Verdict(
                f"timeout: the quantum ran {ran:.0f} s, over its limit of {limits.time_seconds:g} s; "
                "the worker was killed",
                "timeout",
            )
        if limits.hang_seconds is None:
            return None
        cpu = sum(t.user + t.system for t in (p.cpu_times() for p in tree))
        if cpu > self.cpu:
            self.cpu, self.progressed = cpu, now
            return None
        idle = now - self.progressed
        status = process.status()
        if idle > limits.hang_seconds and status in STUCK_STATES:
            return Verdict(
                f"hung: no CPU progress for {idle:.0f} s while the worker was {status} "
                f"(limit {limits.hang_seconds:g} s); the worker was killed",
                "hang",
            )
        return None
