"""Saved runs (``--attn-save``, ``--attn-autosave``): numbered run files in a storage directory.

As pytest-benchmark does, each saved run is ``NNNN_NAME.json`` with a counter one above the highest
in the directory, so runs sort by age and ``--attn-compare`` with no value means the newest that a
comparison accepts as its baseline (a run with errored items is saved too, and would be refused):
the newest whole run when the run begins (:func:`find_run`), and at its end, once the run's settings
are known, the newest whole run with those settings from there back (:func:`same_settings`).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

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
    """The run ``spec`` names: empty for the newest usable saved run (:func:`_newest_usable`), a path to a
    run file, a saved run's file name, its counter (``3`` or ``0003``) or its name (the newest of that
    name; one the user named is taken as it is, and refused or forced when compared)."""
    if spec and Path(spec).expanduser().is_file():
        return Path(spec).expanduser()
    runs = saved_runs(directory) if directory.is_dir() else []
    if not runs:
        raise AttnalignError(f"no saved run in {str(directory)!r}"
                             + (f" and no file {spec!r}" if spec else "")
                             + ": save one with --attn-save NAME or --attn-autosave, or give a run file's path")
    if not spec:
        return _newest_usable(directory, runs)
    for path in reversed(runs):
        m = _SAVED.fullmatch(path.name)
        assert m is not None
        if spec in (path.name, path.stem, m["name"]) or (spec.isdigit() and int(spec) == int(m["counter"])):
            return path
    shown = ", ".join(p.stem for p in runs[-5:])
    raise AttnalignError(f"no saved run {spec!r} in {str(directory)!r} (latest: {shown}) and no such file: "
                         "give a saved run's name or counter, or a run file's path")


def passed_over(path: Path, spec: str) -> tuple[str, ...]:
    """With no value given, the newer saved runs :func:`_newest_usable` passed over (part of a run, or no
    run file), so that a comparison with an older run than the newest says so. Taken when the baseline
    is (a run another job saves meanwhile was not passed over)."""
    runs = saved_runs(path.parent) if not spec else []
    return tuple(p.name for p in runs[runs.index(path) + 1:]) if path in runs else ()


def baseline_name(path: Path, unusable: Sequence[str] = (), differ: Sequence[str] = ()) -> str:
    """How the summary names the baseline, with the newer saved runs passed over and why."""
    why = ([f"not usable as a baseline: {', '.join(unusable)}"] if unusable else []) + (
        [f"settings differ from this run's: {', '.join(differ)}"] if differ else [])
    return f"{path} (newer saved runs passed over, {'; '.join(why)})" if why else str(path)


def same_settings(path: Path, base: Run, settings: dict[str, Any], skip: Sequence[Path] = ()) -> tuple[Path, Run, list[str]]:
    """``--attn-compare`` with no value, once this run's ``settings`` are known (at its end): the baseline
    ``path`` (the newest usable saved run when the run began) where the comparison takes its settings,
    else the newest older saved run that is usable and has them, read newest first; with none, ``path``
    (the comparison then refuses it, naming the settings that differ). Also the names of the runs passed
    over for their settings, newest first. ``skip``: files this run writes (never a baseline)."""
    from .compare import settings_diff

    def differs(run: Run) -> bool:  # judge's rule: a baseline without a record has no settings to differ
        return bool(run.records) and bool(settings_diff(settings, run.settings()))

    if not differs(base):
        return path, base, []
    runs, own = saved_runs(path.parent), {p.resolve() for p in skip}
    older_runs = [p for p in (runs[: runs.index(path)] if path in runs else []) if p.resolve() not in own]
    passed = [path.name]
    for older, run, why in _newest_first(older_runs):
        if why is not None:  # not a whole run, or no run at all: never a baseline
            continue
        if not differs(run):
            return older, run, passed
        passed.append(older.name)
    return path, base, []


def _newest_first(runs: list[Path]) -> Iterator[tuple[Path, Run | None, str | None]]:
    """``runs`` (oldest first) read newest first, lazily: each path, its run (``None``: not a run file,
    damaged, foreign or unreadable) and why it is not a whole run (``None``: it is; the comparison's rule,
    :func:`gates._part_of_a_run`; for no run, its read error)."""
    from .gates import _part_of_a_run
    from .runfile import read_run

    for path in reversed(runs):
        try:
            run = read_run(path)
        except AttnalignError as exc:
            yield path, None, str(exc)
            continue
        yield path, run, _part_of_a_run(run)


def _newest_usable(directory: Path, runs: list[Path]) -> Path:
    """The newest of ``runs`` (oldest first) that a comparison accepts as its baseline (a whole run:
    :func:`gates._part_of_a_run`, the rule the comparison applies), read newest first up to it; an
    incomplete run is saved too, and picking it refused the comparison while an older whole run was there."""
    refused: list[str] = []  # why each newer run is not the baseline, newest first
    forceable: Path | None = None  # the newest that --attn-compare-force would compare with
    for path, run, why in _newest_first(runs):
        if why is None:
            return path
        if run is None:  # not a run file (damaged, foreign, unreadable): its error says which
            refused.append(why)
            continue
        refused.append(f"{path.name} {why}")
        forceable = forceable or path
    more = len(refused) - 1
    older = f"; {more} older run{'s' if more > 1 else ''} not usable either" if more else ""
    force = f"pass --attn-compare={forceable.name} --attn-compare-force to compare anyway, or " if forceable else ""
    raise AttnalignError(f"no saved run in {str(directory)!r} is usable as a baseline: {refused[0]}{older}; "
                         f"{force}save a complete run (--attn-save NAME)")
