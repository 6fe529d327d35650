"""Files that are either whole or absent: a temp file in the same directory, renamed over the target.

The run file, the web page and every cache entry are written this way, so an interrupted run or a
concurrent writer (xdist workers, shards, hosts on a shared filesystem) never leaves a partial file
that looks complete: each writer renames a complete file over the target, the last one wins whole.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO


def write_atomic(path: Path, write: Callable[[TextIO], Any], prefix: str | None = None) -> None:
    """``write(fh)`` to a uniquely named temp file (``prefix``, default ``.NAME.``) renamed to ``path``;
    no temp file is left, whatever stopped the write. The directory must exist."""
    fd, tmp = tempfile.mkstemp(prefix=prefix or f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
