"""The suite's own in-process pytest runs (pytester) leave the libraries they imported in place.

Which tests an xdist worker runs after an in-process run is chance; a library dropped from
``sys.modules`` by the run's restore broke them (see ``conftest._kept_across_runs``).
"""

from __future__ import annotations

import sys

import pytest

#: A transformers module no other test imports, so that the run below imports it first.
LIBRARY_MODULE = "transformers.models.bloom.modeling_bloom"


def test_an_in_process_run_keeps_the_libraries_it_imported_and_drops_its_test_files(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, LIBRARY_MODULE, raising=False)
    pytester.makepyfile(test_imports_a_library=f"import {LIBRARY_MODULE}\n\ndef test_it():\n    pass\n")
    pytester.inline_run("-p", "no:cacheprovider").assertoutcome(passed=1)
    assert LIBRARY_MODULE in sys.modules
    assert "test_imports_a_library" not in sys.modules
