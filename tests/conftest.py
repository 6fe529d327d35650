"""The plugin's own tests: pytester for in-process pytest runs; tiny models importable."""

import functools
import os
import sys

import pytest
from _pytest.pytester import Pytester, SysModulesSnapshot

import pytest_attnalign

pytest_plugins = ["pytester"]


def _kept_across_runs(name: str) -> bool:
    """Whether an in-process pytest run's restore of ``sys.modules`` keeps module ``name``: pytester's own
    choice (zope, readline), or a module of the Python installation, the venv or this package.

    pytester drops every module first imported inside an in-process run, so that the run's test files
    do not linger. Dropping libraries broke the tests after them, depending on which tests an xdist
    worker got first: torch re-imported fails (a SystemError in its ``__init__``), and a transformers
    modeling module gone from ``sys.modules`` makes ``_can_set_attn_implementation`` (which reads
    the module's source through it) say no, so SDPA and the forced replay steps were refused.
    """
    if name.startswith(("zope", "readline")):
        return True
    path = getattr(sys.modules.get(name), "__file__", None)
    return not path or _in_library(path)


_LIBRARY_ROOTS = tuple(os.path.realpath(p) + os.sep for p in {sys.prefix, sys.base_prefix, sys.exec_prefix,
                                                                  os.path.dirname(pytest_attnalign.__file__)})


@functools.lru_cache(maxsize=None)
def _in_library(path: str) -> bool:
    """Whether a module file lies under :data:`_LIBRARY_ROOTS`; cached, since every restore asks it of
    every loaded module (~3,400 realpath calls, ~80 ms, per in-process run otherwise)."""
    return os.path.realpath(path).startswith(_LIBRARY_ROOTS)


def _library_keeping_snapshot(self: Pytester) -> SysModulesSnapshot:
    return SysModulesSnapshot(preserve=_kept_across_runs)


# pytester has no option for what its snapshot keeps: its private method is replaced, for every test.
Pytester._Pytester__take_sys_modules_snapshot = _library_keeping_snapshot  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def _output_independent_of_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """pytest prints untruncated short-summary lines when CI or BUILD_NUMBER is set (as CI does);
    the plugin's tests read pytester output, which must not depend on where they run."""
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("BUILD_NUMBER", raising=False)


@pytest.fixture(scope="module")
def one_thread():
    """The CI machine's cores are shared: one intra-op thread is faster than oversubscribing."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def offline(monkeypatch: pytest.MonkeyPatch):
    """No hub: BERT masking's default substitutes come from the embedded embeddings (nearest neighbours)."""
    from pytest_attnalign.methods import perturbation as pt

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pt._fill_mask_pipeline.cache_clear()
    pt.substitute_source.cache_clear()
    yield
    pt._fill_mask_pipeline.cache_clear()
    pt.substitute_source.cache_clear()
