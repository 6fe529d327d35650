"""Files that are either whole or absent: a temp file in the same directory, renamed over the target.

The run file, the web page and every cache entry are written this way, so an interrupted run or a
concurrent writer (xdist workers, shards, hosts on a shared filesystem) never leaves a partial file
that looks complete: each writer renames a complete file over the target, the last one wins whole.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO


def write_atomic(path: Path, write: Callable[[TextIO], Any], prefix: str | None = None) -> None:
    """``write(fh)`` to a uniquely named temp file (``prefix``, default ``.NAME.``) renamed to ``path``;
    no temp file is left, whatever stopped the write. The directory must exist."""
    fd, tmp = _new_file(path.parent, prefix or f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_new(next_path: Callable[[], Path], write: Callable[[TextIO], Any]) -> Path:
    """``write(fh)`` to a temp file, then linked to ``next_path()`` only where no file has that name (else
    to the next name it gives), and returned: two writers never take one name. A saved run's counter
    was claimed twice by two runs finishing together, and the later rename silently replaced the
    first run. The directory must exist and allow hard links (every local and network filesystem does)."""
    fd, tmp = _new_file(next_path().parent, ".new.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            write(fh)
        while True:
            target = next_path()
            try:
                os.link(tmp, target)  # fails, rather than replaces, where the name is taken
                return target
            except FileExistsError:
                continue
    finally:
        tmp.unlink(missing_ok=True)


def _new_file(directory: Path, prefix: str) -> tuple[int, Path]:
    """A new, uniquely named file open for writing, with the mode ``open()`` would give (0666 less the
    umask). ``tempfile.mkstemp`` creates 0600, and the rename kept it: a run file or web page that
    the rest of a group (or a web server) could not read."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = directory / f"{prefix}{secrets.token_hex(6)}"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
