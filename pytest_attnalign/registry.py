"""Lock files that count this host's live attnalign processes, per purpose (cores, a GPU).

A process registers by holding an exclusive ``flock`` on its own file ``HOST-PID-RANDOM.KIND`` in a
registry directory (``CACHE_DIR/runs``); counting the files of a kind whose lock is held counts the
live processes. A killed process's lock dies with it, so stale files never count and are removed.
Only this host's files are counted: a cache on a shared filesystem (a job array's, hosts under
``-d --tx``) holds other machines' processes, whose cores and GPUs are their own.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

try:
    import fcntl
except ImportError:  # Windows: no registry; every process counts itself alone
    fcntl = None  # type: ignore[assignment]


#: This machine's name as a file name's part (registry files are counted per host).
HOST = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"


def registry_of(cache_dir: Path) -> Path:
    """The registry directory of runs sharing ``cache_dir`` (runs with another cache do not see them)."""
    return cache_dir / "runs"


class Registration:
    """This process's held file of one kind in a registry directory."""

    def __init__(self, registry: Path, kind: str) -> None:
        self.registry, self.kind = registry, kind
        self._lock: IO[str] | None = None
        self._path: Path | None = None

    def join(self) -> None:
        """Hold a lock on a fresh file until :meth:`leave` or the process ends (idempotent)."""
        if self._lock is not None or fcntl is None:
            return
        try:
            self.registry.mkdir(parents=True, exist_ok=True)
            name = f"{HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            fh = open(self.registry / f".{name}.new", "w")
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            path = self.registry / f"{name}.{self.kind}"
            os.replace(fh.name, path)  # visible to counters only once locked
        except OSError:
            return  # no registry (read-only, odd filesystem): this process counts itself alone
        self._lock, self._path = fh, path

    def leave(self) -> None:
        if self._lock is not None and self._path is not None:
            self._path.unlink(missing_ok=True)
            self._lock.close()
            self._lock = self._path = None


def live(registry: Path, kind: str) -> int:
    """This host's registered processes of ``kind`` alive now (this one included if registered);
    stale files are removed."""
    if fcntl is None:
        return 0
    count = 0
    for path in registry.glob(f"{HOST}-*.{kind}"):
        try:
            with open(path) as fh:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    count += 1  # held: a running process
                    continue
                path.unlink(missing_ok=True)  # nobody holds it: its process is gone
        except OSError:
            continue
    return count


@contextlib.contextmanager
def exclusive(registry: Path | None) -> Iterator[None]:
    """Hold the registry's own lock, so that a count of :func:`live` and the registration it decides are
    one step (two processes starting together counted the same free GPU and both took it)."""
    fh = None
    if registry is not None and fcntl is not None:
        try:
            registry.mkdir(parents=True, exist_ok=True)
            fh = open(registry / ".claims", "a")
            fcntl.flock(fh, fcntl.LOCK_EX)
        except OSError:  # no registry: as in Registration.join, this process counts alone
            if fh is not None:
                fh.close()
            fh = None
    try:
        yield
    finally:
        if fh is not None:
            fh.close()  # releases the lock
