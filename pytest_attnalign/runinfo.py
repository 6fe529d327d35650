"""Facts about a run that are not in any item's record: whether it finished, how the CPU was
shared, what the cache could not give or keep. The controller gathers them from the items' reports
(so xdist and serial runs see the same), and the summary and the JSON state them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Missing items named in the terminal (the JSON lists all).
SHOW_MISSING = 10


@dataclass
class RunInfo:
    """Gathered item by item on the controller; :meth:`lines` and :meth:`as_dict` report them."""

    expected: list[str] = field(default_factory=list)  # study items selected to run
    finished: set[str] = field(default_factory=set)  # items whose teardown was reported
    errors: set[str] = field(default_factory=set)  # items that ran but gave no record (an error in set-up)
    shares: list[dict[str, Any]] = field(default_factory=list)  # threads.Share per item
    cache_invalid: int = 0
    cache_write_failures: int = 0
    shard: tuple[int, int] | None = None  # --attn-shard (index, count)
    study: list[str] = field(default_factory=list)  # a shard's: every item of the unsharded run, in order
    selected: list[str] = field(default_factory=list)  # a shard's: the study's items -k/-m kept, in all shards
    collected: int = 0  # study items before -k, -m, --lf or --deselect chose (0: not known)

    def add(self, item_facts: dict[str, Any]) -> None:
        """One item's facts (the plugin's per-item report property)."""
        self.shares.append(item_facts["share"])
        self.cache_invalid += item_facts["cache_invalid"]
        self.cache_write_failures += item_facts["cache_write_failures"]

    @property
    def missing(self) -> list[str]:
        return [i for i in self.expected if i not in self.finished]

    @property
    def errored(self) -> list[str]:
        """Items that ran but gave no record, in the study's order."""
        return [i for i in self.expected if i in self.errors]

    def partial_line(self) -> str | None:
        missing = self.missing
        if not missing:
            return None
        return f"partial: {len(self.expected) - len(missing)} of {len(self.expected)} items ran; missing: {_shown(missing)}"

    def errors_line(self) -> str | None:
        """Items that ran without a result: the tables lack them as they lack a missing item's."""
        failed = self.errored
        if not failed:
            return None
        return (f"incomplete: {len(failed)} of {len(self.expected)} items gave no result (an error); "
                f"the tables lack: {_shown(failed)}")

    def shard_line(self) -> str | None:
        """A shard's share of the selection, so that one left empty says why it ran nothing."""
        if self.shard is None or not self.selected:
            return None
        index, count = self.shard
        selected = len(self.selected)
        of = f"the study's {selected}" if selected == len(self.study) else \
            f"the {selected} that -k/-m selected of the study's {len(self.study)}"
        if not self.expected:
            return (f"shard {index}/{count}: none of {of} items; the other shards run {'it' if selected == 1 else 'them'} "
                    "(shards share out the whole study's model x task groups, whatever -k/-m select)")
        if len(self.expected) == selected:
            return f"shard {index}/{count}: all of {of} items"
        return f"shard {index}/{count}: {len(self.expected)} of {of} items; the other shards run the rest"

    def selection_line(self) -> str | None:
        """An unsharded run of part of the study says so: its tables cover the chosen items only
        (a shard says it in :meth:`shard_line`)."""
        if self.shard is not None or not self.expected or len(self.expected) >= self.collected:
            return None
        return (f"selection: {len(self.expected)} of the study's {self.collected} items (-k, -m, --lf or --deselect); "
                "the tables cover these only")

    def threads_line(self) -> str | None:
        if not self.shares:
            return None
        threads = sorted({s["threads"] for s in self.shares})
        span = str(threads[0]) if len(threads) == 1 else f"{threads[0]}-{threads[-1]}"
        # what fixed the number (files before 12-03: only the option did), then the share of the rest (a
        # merge of shards where some nodes set OMP_NUM_THREADS holds both)
        how = sorted({s.get("fixed_by") or "--attn-threads" for s in self.shares if s["fixed"]})
        shared = [s for s in self.shares if not s["fixed"]]
        if shared:
            procs = max(s["processes"] for s in shared)
            how.append(f"{shared[0]['cores']} cores shared by up to {procs} attnalign process{'es' if procs > 1 else ''}"
                       + ("" if len(how) else "; --attn-threads N to fix"))
        return f"torch threads: {span} per process ({'; '.join(how)})"

    def cache_line(self) -> str | None:
        parts = []
        if self.cache_invalid:
            parts.append(f"{self.cache_invalid} unusable entr{'ies' if self.cache_invalid > 1 else 'y'} recomputed")
        if self.cache_write_failures:
            parts.append(f"{self.cache_write_failures} write{'s' if self.cache_write_failures > 1 else ''} failed "
                         "(results kept for this run only)")
        return "cache: " + "; ".join(parts) if parts else None

    def lines(self) -> list[str]:
        """Header lines: partial and incomplete first, so a pasted summary cannot look complete."""
        return [line for line in (self.partial_line(), self.errors_line(), self.selection_line(), self.shard_line(),
                                  self.threads_line(), self.cache_line()) if line]

    def as_dict(self) -> dict[str, Any]:
        errors = self.errored
        return {"complete": not self.missing and not errors, "items": len(self.expected),
                "ran": len(self.expected) - len(self.missing), "missing": self.missing,
                **({"collected": self.collected} if self.collected else {}),
                "errors": errors, "cache_invalid": self.cache_invalid,
                "cache_write_failures": self.cache_write_failures,
                "threads": sorted({s["threads"] for s in self.shares}), "lines": self.lines(),
                **({"shard": self.shard_dict()} if self.shard else {})}

    def shard_dict(self) -> dict[str, Any]:
        """What ``attnalign merge`` needs to rebuild the unsharded run's facts (merge.py)."""
        assert self.shard is not None
        return {"index": self.shard[0], "count": self.shard[1], "study": self.study, "selected": self.selected,
                "expected": self.expected,
                "shares": self.shares}


def _shown(items: list[str]) -> str:
    """Item names (their ids without the file) for a header line: the first :data:`SHOW_MISSING`."""
    names = [m.rsplit("::", 1)[-1] for m in items]
    more = f" and {len(names) - SHOW_MISSING} more" if len(names) > SHOW_MISSING else ""
    return ", ".join(names[:SHOW_MISSING]) + more
