"""Installed versions of distributions (what a run records and cached results are keyed by) and a
fingerprint of pytest-attnalign's own code (what a run records, so that ``attnalign merge`` can tell
shards computed by two checkouts of one version apart)."""

from __future__ import annotations

import hashlib
import importlib.metadata as md
from collections.abc import Iterable
from pathlib import Path

#: The installed package's directory, whose modules and data compute a run's numbers.
PACKAGE = Path(__file__).parent


def installed_versions(names: Iterable[str]) -> dict[str, str]:
    """Each distribution's installed version, "absent" where it is not installed."""
    out = {}
    for name in names:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "absent"
    return out


def code_fingerprint(root: Path = PACKAGE) -> str:
    """A digest of the package at ``root``: its ``.py`` modules and the files under ``data``, each path
    with its bytes, in path order. Two checkouts of one version (a rule changed between the array jobs
    of a sharded run) differ here where the version string is the same (~2 ms for the package). Hidden
    names are not the package's: an editor's lock file (Emacs's ``.#plugin.py``, a dangling link) broke
    every run."""
    found = {*root.rglob("*.py"), *(root / "data").rglob("*")}
    files = {p for p in found if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)}
    digest = hashlib.sha256()
    for rel, path in sorted((p.relative_to(root).as_posix(), p) for p in files):
        data = path.read_bytes()
        digest.update(f"{rel}\0{len(data)}\0".encode())  # framed: no two file sets hash the same stream
        digest.update(data)
    return digest.hexdigest()[:16]


#: This process's code, taken once, when the modules that compute load (study.py imports this one),
#: not when the run file is written hours later from a checkout that may have moved on.
CODE = code_fingerprint()
