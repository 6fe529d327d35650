"""Saved runs (``--attn-save``, ``--attn-autosave``): numbered run files in a storage directory.

As pytest-benchmark does, each saved run is ``NNNN_NAME.json`` with a counter one above the highest
in the directory, so runs sort by age and ``--attn-compare`` with no value means the newest.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import AttnalignError
from .preflight import output_file

if TYPE_CHECKING:
    from .runfile import Run

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SAVED = re.compile(r"(?P<counter>\d{4,})_(?P<name>.+)\.json")


def check_name(name: str) -> str:
    """A run name usable in a file name."""
    if not _NAME.fullmatch(name):
        raise AttnalignError(f"{name!r} is not a run name: use letters, digits, '.', '_' and '-' (e.g. baseline)")
    return name


def autosave_name() -> str:
    """The name of an autosaved run: its start time, ``YYYYmmdd_HHMMSS`` (local time)."""
    return time.strftime("%Y%m%d_%H%M%S")


def usable_storage(directory: Path) -> Path:
    """The storage directory, created if missing, that accepts files (checked before the run)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AttnalignError(f"cannot create {str(directory)!r} ({exc.strerror or exc}): choose another directory") from None
    output_file(directory / "probe.json")
    return directory


def saved_runs(directory: Path) -> list[Path]:
    """Saved run files, oldest first."""
    found = [(int(m["counter"]), p) for p in directory.glob("*.json") if (m := _SAVED.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def save_path(directory: Path, name: str) -> Path:
    """Where the next saved run named ``name`` goes: ``NNNN_NAME.json``, NNNN one above the highest."""
    runs = saved_runs(directory)
    counter = int(_SAVED.fullmatch(runs[-1].name)["counter"]) + 1 if runs else 1  # type: ignore[index]
    return directory / f"{counter:04d}_{name}.json"


def save_run(directory: Path, name: str, run: Run) -> Path:
    """The run saved as the next ``NNNN_NAME.json`` no other run took (runs may finish together)."""
    from .atomic import write_new
    from .runfile import dump_run

    return write_new(lambda: save_path(directory, name), lambda fh: dump_run(run, fh))


def find_run(directory: Path, spec: str) -> Path:
    """The run ``spec`` names: empty for the newest saved run, a path to a run file, a saved run's file
    name, its counter (``3`` or ``0003``) or its name (the newest of that name)."""
    if spec and Path(spec).expanduser().is_file():
        return Path(spec).expanduser()
    runs = saved_runs(directory) if directory.is_dir() else []
    if not runs:
        raise AttnalignError(f"no saved run in {str(directory)!r}"
                             + (f" and no file {spec!r}" if spec else "")
                             + ": save one with --attn-save NAME or --attn-autosave, or give a run file's path")
    if not spec:
        return runs[-1]
    for path in reversed(runs):
        m = _SAVED.fullmatch(path.name)
        assert m is not None
        if spec in (path.name, path.stem, m["name"]) or (spec.isdigit() and int(spec) == int(m["counter"])):
            return path
    shown = ", ".join(p.stem for p in runs[-5:])
    raise AttnalignError(f"no saved run {spec!r} in {str(directory)!r} (latest: {shown}) and no such file: "
                         "give a saved run's name or counter, or a run file's path")
