"""On-disk cache of generations and attributions, keyed by everything that determines them.

A key is a JSON object (model identity and revision, prompt format, budget, task text, method and
its settings, the tool's rule version); its SHA-256 names the file. Files are written to a temporary
name and renamed, so a killed run never leaves a half-written entry that a later run would trust,
and several xdist workers can share one directory.

Reading back is defensive: an entry that is not JSON, belongs to another key or does not decode
into its record type is a miss (recomputed and overwritten) and is counted in :attr:`ResultCache.invalid`;
a failed write is one warning per process and the item keeps its result.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from .atomic import write_atomic

T = TypeVar("T")

#: Bump when a change to generation or attribution rules makes old entries wrong.
RULES_VERSION = 3


class CacheWriteWarning(UserWarning):
    """A result could not be stored; the run goes on, a later run recomputes it."""


class ResultCache:
    """A directory of JSON entries; ``None`` directory disables caching."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self.invalid = 0  # entries found unusable and recomputed
        self.write_failures = 0

    @staticmethod
    def key_digest(kind: str, key: dict[str, Any]) -> str:
        blob = json.dumps({"kind": kind, "rules": RULES_VERSION, **key}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def _path(self, kind: str, key: dict[str, Any]) -> Path | None:
        if self.directory is None:
            return None
        digest = self.key_digest(kind, key)
        return self.directory / kind / digest[:2] / f"{digest}.json"

    def get(self, kind: str, key: dict[str, Any], decode: Callable[[Any], T]) -> T | None:
        """The entry decoded by ``decode`` (which raises ValueError, TypeError or KeyError on a
        wrong shape), or ``None`` for a miss; JSON nested too deeply to parse (RecursionError) is
        unusable like a truncated entry."""
        path = self._path(kind, key)
        if path is None or not path.exists():
            return None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(entry, dict) or entry.get("key") != key or "value" not in entry:
                raise ValueError("not an entry for this key")
            return decode(entry["value"])
        except (OSError, ValueError, TypeError, KeyError, RecursionError):
            self.invalid += 1  # recomputed, then overwritten by put()
            return None

    def put(self, kind: str, key: dict[str, Any], value: Any) -> None:
        path = self._path(kind, key)
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # concurrent writers (workers, shards, hosts on a shared filesystem): the last one wins whole
            write_atomic(path, lambda fh: json.dump({"key": key, "value": value}, fh, ensure_ascii=False), prefix=".tmp-")
        except OSError as exc:
            self.write_failures += 1
            if self.write_failures == 1:
                warnings.warn(CacheWriteWarning(f"cannot write the cache under {self.directory} ({exc.strerror or exc}): "
                                                "results are kept for this run only"), stacklevel=2)
