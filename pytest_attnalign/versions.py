"""Installed versions of distributions: what a run records and what cached results are keyed by."""

from __future__ import annotations

import importlib.metadata as md
from collections.abc import Iterable


def installed_versions(names: Iterable[str]) -> dict[str, str]:
    """Each distribution's installed version, "absent" where it is not installed."""
    out = {}
    for name in names:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "absent"
    return out
