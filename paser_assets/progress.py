"""Progress reporting with rate and ETA for long loops (embedding, scoring, training)."""

from __future__ import annotations

import time
from collections.abc import Callable


def format_duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Progress:
    """Calls ``log`` with 'what done/total (rate/s, ETA ...)' at most every ``every_s`` seconds."""

    def __init__(self, what: str, total: int, log: Callable[[str], None], unit: str = "rows", every_s: float = 10.0):
        self.what = what
        self.total = total
        self.log = log
        self.unit = unit
        self.every_s = every_s
        self.done = 0
        self.start = time.monotonic()
        self._last = self.start

    def advance(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if now - self._last >= self.every_s or self.done >= self.total:
            self._last = now
            self.log(self.message(now))

    def message(self, now: float | None = None) -> str:
        elapsed = (now or time.monotonic()) - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        remaining = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta = format_duration(remaining) if rate > 0 else "?"
        return f"{self.what}: {self.done}/{self.total} {self.unit} ({rate:.1f} {self.unit}/s, ETA {eta})"
