"""One rule for torch's CPU threads in every mode: this machine's cores divided by the processes
running attnalign items at the moment, unless the user fixed the number (``--attn-threads``, else
``$OMP_NUM_THREADS``, which torch itself honours: a job script's ``OMP_NUM_THREADS=1`` was overridden).

Each process running items (a serial run, each xdist worker, ``attnalign attribute``) registers in
``CACHE_DIR/runs`` (:mod:`.registry`: a held lock file, counted per host). torch on N cores defaults
to N threads per process; two runs at once then fight over the cores and each ran ~7x slower than
with its share (measured, 2 cores). The share is re-read before every item, so a run that started
alone gives cores back when another one starts.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .registry import Registration, live


def cpu_cores() -> int:
    """Cores this process may run on (the affinity mask, e.g. under taskset or a container)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@dataclass(frozen=True)
class Share:
    """What was applied, for the report header."""

    threads: int
    cores: int
    processes: int
    fixed: bool  # not the share (run files before 2026-12-03: by --attn-threads, their only way)
    fixed_by: str = ""  # "--attn-threads", "OMP_NUM_THREADS" or "" (the share; those files lack it)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def omp_threads() -> int | None:
    """``$OMP_NUM_THREADS`` as torch reads it (the outermost level of a list like ``4,2``) when it is
    a positive integer; otherwise None (torch ignores such a value too, with a warning)."""
    first = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(first) if first.isdigit() and int(first) > 0 else None


class CoreShare:
    """This process's place in the registry of attnalign processes sharing the machine's cores."""

    def __init__(self, registry: Path, fixed: int | None = None) -> None:
        self.registry = registry
        omp = omp_threads()
        self.fixed, self.fixed_by = ((fixed, "--attn-threads") if fixed is not None
                                     else (omp, "OMP_NUM_THREADS") if omp is not None else (None, ""))
        self._registration = Registration(registry, "lock")

    def join(self) -> None:
        """Register for as long as this process runs items (idempotent)."""
        self._registration.join()

    def leave(self) -> None:
        self._registration.leave()

    def processes(self) -> int:
        """Live registered processes (at least this one); stale files are removed."""
        return max(live(self.registry, "lock"), 1)

    def apply(self) -> Share:
        """Set torch's intra-op threads to this process's share now; returns what was set."""
        import torch

        self.join()
        cores, processes = cpu_cores(), self.processes()
        threads = self.fixed or max(1, cores // processes)
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        return Share(threads, cores, processes, bool(self.fixed_by), self.fixed_by)
