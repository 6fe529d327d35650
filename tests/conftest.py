"""The plugin's own tests: pytester for in-process pytest runs; tiny models importable."""

import pytest

pytest_plugins = ["pytester"]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Import torch before a pytester test snapshots ``sys.modules``.

    pytester restores ``sys.modules`` after each test, so torch first imported inside an in-process
    run is dropped, and the next import of it in that process fails (a SystemError in torch's
    ``__init__`` or a crashed xdist worker), depending on which tests a worker got first.
    """
    if "pytester" in getattr(item, "fixturenames", ()):
        import torch  # noqa: F401


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
