"""A progress line for long steps: rows processed, rate and ETA, at most every couple of seconds."""

from __future__ import annotations

import sys
import time


def format_duration(seconds: float) -> str:
    """H:MM:SS."""
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """``update(done, total=None)``; prints "label: done rows (rate/s, ETA)" to stderr now and then."""

    def __init__(self, label: str, unit: str = "rows", every_s: float = 2.0, stream=None, enabled: bool = True):
        self.label = label
        self.unit = unit
        self.every_s = every_s
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.started = time.perf_counter()
        self._last = self.started

    def update(self, done: int, fraction: float | None = None, force: bool = False) -> None:
        now = time.perf_counter()
        if not self.enabled or (not force and now - self._last < self.every_s):
            return
        self._last = now
        elapsed = now - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        # A few large parts finish well under one a second: "0/s" would say nothing.
        shown = f"{rate:,.0f}" if rate >= 10 else f"{rate:.2g}"
        text = f"{self.label}: {done:,} {self.unit} ({shown}/s"
        if fraction is not None and 0 < fraction <= 1:
            text += f", {fraction:.0%}, ETA {format_duration(elapsed / fraction - elapsed)}"
        print(text + ")", file=self.stream, flush=True)

    def done(self, count: int) -> float:
        elapsed = time.perf_counter() - self.started
        if self.enabled:
            rate = count / elapsed if elapsed > 0 else 0.0
            print(f"{self.label}: {count:,} {self.unit} in {elapsed:.1f}s ({rate:,.0f}/s)", file=self.stream, flush=True)
        return elapsed
