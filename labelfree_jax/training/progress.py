"""What a run shows while it trains: the compile notice and an ETA that leaves the compile out.

The first step of a run compiles the network with XLA (about a minute for the paper's 3D net on
a CPU; seconds when JAX's compilation cache already holds it), so the time of that step says
nothing about the steps after it. :class:`StepClock` measures the speed from the steps after the
first only, and without the time spent validating and checkpointing; :func:`eta_seconds` and
:func:`format_eta` turn it into the remaining time the progress bar shows.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

__all__ = ["COMPILING_MESSAGE", "StepClock", "eta_seconds", "eta_text", "format_eta"]

#: Shown (progress bar and log) from the start of a run until its first step has been compiled.
COMPILING_MESSAGE = "compiling the network (first step only)..."


def eta_seconds(steps_measured: int, seconds_measured: float, steps_left: int) -> float | None:
    """Seconds the remaining ``steps_left`` steps take at ``steps_measured`` steps per ``seconds_measured`` s.

    None while nothing has been measured (no step, or no time, after the first step).
    """
    if steps_left <= 0:
        return 0.0
    if steps_measured <= 0 or not seconds_measured > 0:
        return None
    return steps_left * seconds_measured / steps_measured


def format_eta(seconds: float | None) -> str:
    """``"m:ss"`` or ``"h:mm:ss"``; ``"?"`` for None (not measured yet)."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = round(seconds)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def eta_text(eta: float | None, seconds_left_in_cap: float | None = None) -> str:
    """The ETA the progress bar shows: the steps' ETA, or the run's time cap when that ends it sooner.

    ``seconds_left_in_cap`` is what is left of ``max_seconds`` (None without a cap). A run that the
    cap will stop shows the cap's remaining time with ``" (time cap)"``, instead of the hour the
    remaining steps would take.
    """
    if seconds_left_in_cap is not None and (eta is None or seconds_left_in_cap < eta):
        return f"{format_eta(max(seconds_left_in_cap, 0.0))} (time cap)"
    return format_eta(eta)


class StepClock:
    """The training speed of the steps after the first (which compiles), pauses left out.

    Call :meth:`first_step_done` once the first step of the run has finished (its compile is
    over), :meth:`synced` whenever the host has waited for the device (the losses were fetched:
    every step up to ``step`` has really run, not just been queued), :meth:`pause` with the
    seconds spent on anything but training steps (validation, checkpoints), and :meth:`eta` for
    the remaining time: the rate between the first step and the last sync, times the steps left.

    Args:
        clock: the time function (seconds; ``time.perf_counter`` by default, replaceable in tests).
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self._clock = clock
        self.t_ready: float | None = None  # when the first step was done
        self.step_ready = 0
        self.paused = 0.0
        self._synced: tuple[int, float] | None = None  # (step, measured seconds) at the last sync

    @property
    def compiled(self) -> bool:
        """Whether the first step (the compile) is over."""
        return self.t_ready is not None

    def first_step_done(self, step: int) -> float:
        """Start measuring from now, after step ``step``; returns the time now."""
        self.t_ready = self._clock()
        self.step_ready = step
        self.paused = 0.0
        self._synced = None
        return self.t_ready

    def pause(self, seconds: float) -> None:
        """Leave ``seconds`` (validation, checkpointing) out of the measured training time."""
        if self.compiled:
            self.paused += seconds

    def synced(self, step: int) -> None:
        """Every step up to ``step`` has run (the host waited for its loss)."""
        if self.t_ready is not None and step > self.step_ready:
            self._synced = (step, self._clock() - self.t_ready - self.paused)

    def steps_per_second(self) -> float | None:
        """Steps per second between the first step and the last sync, or None before that is measured."""
        if self._synced is None:
            return None
        step, seconds = self._synced
        return (step - self.step_ready) / seconds if seconds > 0 else None

    def eta(self, step: int, total: int) -> float | None:
        """Seconds left to reach ``total`` steps from ``step`` (None until it can be measured)."""
        if step >= total:
            return 0.0
        if self._synced is None:
            return None
        done, seconds = self._synced
        return eta_seconds(done - self.step_ready, seconds, total - step)
