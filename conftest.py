"""Repository-level job: a run from this clone tests and runs this clone's code and data.

pytest loads the plugin through its ``pytest11`` entry point from wherever ``pytest_attnalign`` is
importable. From a clone that must be the clone itself (``scripts/setup.sh`` installs it editable;
``PYTHONPATH=.`` does too), or ``pytest tests`` and the study in ``benchmarks/`` would silently run
an installed wheel's or another checkout's code and data. Such a run stops at once with one usage
line naming the fix. Runs outside the clone (the installed plugin in any directory) never read this.
"""

from __future__ import annotations

from pathlib import Path

import pytest

CLONE = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    import pytest_attnalign

    package = Path(pytest_attnalign.__file__).resolve().parent
    if package != CLONE / "pytest_attnalign":
        raise pytest.UsageError(
            f"pytest_attnalign is imported from {package}, not from this clone ({CLONE}): "
            f"run `pip install -e {CLONE}` (scripts/setup.sh does) or set PYTHONPATH={CLONE}")
