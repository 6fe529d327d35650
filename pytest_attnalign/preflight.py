"""Checks of user-given paths made before the first item runs, so a long run never dies at its end.

Each check raises :class:`AttnalignError` with what is wrong and the fix; callers add the flag's
name. Nothing is created here: a missing output directory is the user's typo, not ours to make.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .errors import AttnalignError


def _writable(directory: Path) -> bool:
    """A real write probe: permission bits lie for root, read-only mounts and full disks."""
    try:
        with tempfile.TemporaryFile(dir=directory):
            return True
    except OSError:
        return False


def output_file(path: Path, example: str = "run.json") -> Path:
    """A file to write at the end of the run: its directory must exist and accept files.

    ``example`` is a file name fitting the option (a run file, a page) for the message of a directory.
    """
    if path.is_dir():
        raise AttnalignError(f"{str(path)!r} is a directory: give a file path such as {str(path / example)!r}")
    if path.exists() and not path.is_file():  # the run removes and then replaces it: /dev/null, as root, would go
        raise AttnalignError(f"{str(path)!r} is not a regular file (a device, pipe or socket), which the run would "
                             f"replace: give a file path such as {str(path.parent / example)!r}, or leave the option out")
    parent = path.parent
    if not parent.is_dir():
        what = "is not a directory" if parent.exists() else "does not exist"
        raise AttnalignError(f"directory {str(parent)!r} {what}: create it first or choose another path")
    if not _writable(parent):
        raise AttnalignError(f"directory {str(parent)!r} is not writable: choose a directory you can write to")
    return path


#: Subdirectories the cache writes into; an existing read-only one fails the run as surely as the top.
CACHE_PARTS = ("models", "results", "runs")


def cache_directory(path: Path) -> Path:
    """A directory the run may create and write to (it and the parts of it that already exist)."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise AttnalignError(f"{str(existing)!r} is not a directory: point the cache at a directory")
    for d in [existing] + [path / p for p in CACHE_PARTS if (path / p).is_dir()]:
        if not _writable(d):
            raise AttnalignError(f"{str(d)!r} is not writable: point the cache at a writable directory")
    return path


def looks_like_path(name: str) -> bool:
    """Whether a model name is meant as a directory: hub ids are ``org/name``, never ``/x``, ``./x`` or ``a/b/c``."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name


def local_directory(name: str) -> None:
    """A name written as a path must be an existing directory (no hub lookup for a typo'd path)."""
    path = Path(name).expanduser()
    if looks_like_path(name) and not path.is_dir():
        what = f"{name!r} is a file, not a model directory" if path.exists() else f"no such directory {name!r}"
        raise AttnalignError(f"{what}: give an existing model directory or a hub id like org/name")


def not_an_input(output: Path, inputs: Sequence[tuple[str, Path]], written: str) -> Path:
    """``output``, unless it is one of the command's ``inputs`` (however spelled): ``written`` would
    replace that file, atomically, so the loss would not show. ``inputs``: (what it is, its path)."""
    for what, given in inputs:
        same = (os.path.samefile(output, given) if output.exists() and given.exists()
                else output.resolve() == given.resolve())
        if same:
            raise AttnalignError(f"{str(output)!r} is {what} {str(given)!r}, which {written} would overwrite: "
                                 f"give {written} another path")
    return output
