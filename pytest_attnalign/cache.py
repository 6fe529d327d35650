"""On-disk cache of generations and attributions, keyed by everything that determines them.

A key is a JSON object (model identity and revision, prompt format, budget, task text, method and
its settings, the tool's rule version); its SHA-256 names the file. Files are written to a temporary
name and renamed, so a killed run never leaves a half-written entry that a later run would trust,
and several xdist workers can share one directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

#: Bump when a change to generation or attribution rules makes old entries wrong.
RULES_VERSION = 3


class ResultCache:
    """A directory of JSON entries; ``None`` directory disables caching."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory

    @staticmethod
    def key_digest(kind: str, key: dict[str, Any]) -> str:
        blob = json.dumps({"kind": kind, "rules": RULES_VERSION, **key}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def _path(self, kind: str, key: dict[str, Any]) -> Path | None:
        if self.directory is None:
            return None
        digest = self.key_digest(kind, key)
        return self.directory / kind / digest[:2] / f"{digest}.json"

    def get(self, kind: str, key: dict[str, Any]) -> Any | None:
        path = self._path(kind, key)
        if path is None or not path.exists():
            return None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # unreadable entry: recompute and overwrite
        return entry["value"] if entry.get("key") == key else None

    def put(self, kind: str, key: dict[str, Any], value: Any) -> None:
        path = self._path(kind, key)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"key": key, "value": value}, fh, ensure_ascii=False)
        os.replace(tmp, path)
