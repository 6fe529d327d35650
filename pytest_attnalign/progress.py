"""Items done / total and an ETA for the controller's terminal: items take seconds to minutes each.

The ETA is, per method, the mean seconds of its finished items that computed something (an item
served from the cache costs ~0 s and says nothing about the items still to compute: a resumed run
would otherwise promise "ETA 1s" before hours of work) times its items still to run, divided by the
processes running items. A method with items left and no computed item yet has no estimate: the ETA
is then a lower bound naming those methods ("over 4m10s (shap not measured yet)"), or "unknown".
Items still to run are assumed to compute (a resumed run finds its cached items first, in collection
order), so a partly cached remainder makes the ETA run high, never low.

In a terminal the line is redrawn in place as each item finishes; elsewhere (CI logs, ``-v``) plain
lines, one every tenth of the items or every minute, whichever comes first; always one final line.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping

EVERY_SECONDS = 60.0
EVERY_SHARE = 0.1  # of the items
NAMED = 3  # unmeasured methods named in the ETA; the rest are counted


def duration(seconds: float) -> str:
    """``1h02m``, ``3m20s`` or ``12s``."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Progress:
    """Fed each finished item's method, seconds and whether it computed; says when a plain line is due
    and what the line reads."""

    def __init__(self, items: Mapping[str, str], clock: Callable[[], float] = time.monotonic) -> None:
        self.method_of = dict(items)  # item id -> method
        self.clock = clock
        self.started = self.last_line = clock()
        self.done: set[str] = set()
        self.left: Counter[str] = Counter(self.method_of.values())  # method -> items still to run
        self.seconds: dict[str, float] = defaultdict(float)  # method -> computed items' seconds, summed
        self.computed: Counter[str] = Counter()  # method -> computed items
        self.lines_at = 0  # items done at the last line
        self.workers = 1

    def finish(self, item: str, seconds: float, computed: bool = True) -> bool:
        """Count a finished item (``computed``: not served from the cache); whether a plain line is due."""
        if item not in self.method_of or item in self.done:
            return False
        method = self.method_of[item]
        self.done.add(item)
        self.left[method] -= 1
        if computed:
            self.seconds[method] += seconds
            self.computed[method] += 1
        step = max(1, int(len(self.method_of) * EVERY_SHARE))
        due = len(self.done) - self.lines_at >= step or self.clock() - self.last_line >= EVERY_SECONDS
        if due and len(self.done) < len(self.method_of):
            self.lines_at, self.last_line = len(self.done), self.clock()
            return True
        return False

    def estimate(self) -> tuple[float, list[str]]:
        """Seconds left for the methods measured so far, and the methods left with no measurement."""
        left = +self.left  # methods with items still to run
        known = sum(n * self.seconds[m] / self.computed[m] for m, n in left.items() if self.computed[m])
        return known / max(1, self.workers), sorted(m for m in left if not self.computed[m])

    def eta(self) -> str:
        seconds, unmeasured = self.estimate()
        if not unmeasured:
            return duration(seconds)
        names = ", ".join(unmeasured[:NAMED]) + (f" and {len(unmeasured) - NAMED} more" if len(unmeasured) > NAMED else "")
        if not seconds:
            return "unknown (no item computed yet)" if not self.computed else f"unknown ({names} not measured yet)"
        return f"over {duration(seconds)} ({names} not measured yet)"

    def line(self) -> str:
        total, done = len(self.method_of), len(self.done)
        return (f"attnalign progress: {done}/{total} items ({done / total:.0%}) after "
                f"{duration(self.clock() - self.started)}, ETA {self.eta()}")

    def final_line(self) -> str:
        return f"attnalign progress: {len(self.done)}/{len(self.method_of)} items in {duration(self.clock() - self.started)}"
