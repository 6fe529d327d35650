"""Items done / total and an ETA for the controller's terminal: items take seconds to minutes each.

The ETA is the measured mean seconds per item of each method (all methods' mean for a method not
finished yet) times the items of that method still to run, divided by the processes running items.
Lines are plain (CI logs keep them): one every tenth of the items or every minute, whichever comes
first, and one final line.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Mapping

EVERY_SECONDS = 60.0
EVERY_SHARE = 0.1  # of the items


def duration(seconds: float) -> str:
    """``1h02m``, ``3m20s`` or ``12s``."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Progress:
    """Fed each finished item's method and seconds; says when a line is due and what it reads."""

    def __init__(self, items: Mapping[str, str], clock: Callable[[], float] = time.monotonic) -> None:
        self.method_of = dict(items)  # item id -> method
        self.clock = clock
        self.started = self.last_line = clock()
        self.done: set[str] = set()
        self.seconds: dict[str, list[float]] = defaultdict(list)  # method -> finished items' seconds
        self.lines_at = 0  # items done at the last line
        self.workers = 1

    def finish(self, item: str, seconds: float) -> bool:
        """Count a finished item; whether a progress line is due now."""
        if item not in self.method_of or item in self.done:
            return False
        self.done.add(item)
        self.seconds[self.method_of[item]].append(seconds)
        step = max(1, int(len(self.method_of) * EVERY_SHARE))
        due = len(self.done) - self.lines_at >= step or self.clock() - self.last_line >= EVERY_SECONDS
        if due and len(self.done) < len(self.method_of):
            self.lines_at, self.last_line = len(self.done), self.clock()
            return True
        return False

    def eta(self) -> float:
        every = [s for values in self.seconds.values() for s in values]
        if not every:
            return 0.0
        mean = {m: sum(v) / len(v) for m, v in self.seconds.items()}
        fallback = sum(every) / len(every)
        left = sum(mean.get(m, fallback) for i, m in self.method_of.items() if i not in self.done)
        return left / max(1, self.workers)

    def line(self) -> str:
        total, done = len(self.method_of), len(self.done)
        return (f"attnalign progress: {done}/{total} items ({done / total:.0%}) after "
                f"{duration(self.clock() - self.started)}, ETA {duration(self.eta())}")

    def final_line(self) -> str:
        return f"attnalign progress: {len(self.done)}/{len(self.method_of)} items in {duration(self.clock() - self.started)}"
