"""Fixtures for users' own tests: the study's model, task, generation, attributions and regeneration.

They serve a study item (``test_alignment[...]``: its model and task) and any test of a user's
(``@pytest.mark.attn_task(...)`` chooses the tasks; the model is the first ``--attn-model``). In a
run that asked for the study they use its :class:`study.Study`; in any other run a Study made from
the options' defaults on first use, so a test that uses none of them loads nothing. Either way the
generation and attribution caches are the study's: a built-in method gives the study's result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import pytest

from .errors import AttnalignError


@dataclass
class _Defaults:
    """What a run that did not ask for the study uses, made on the first fixture that needs it."""

    models: list[str]
    study: Any


_DEFAULTS = pytest.StashKey[_Defaults]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "attn_task(*task_ids): run the test once per task (HumanEval/N, Mbpp/N) "
                                       "with the attn_* fixtures of pytest-attnalign")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``@pytest.mark.attn_task("HumanEval/12", ...)``: one test per task, id = the task id."""
    marker = metafunc.definition.get_closest_marker("attn_task")
    if marker is None or "attn_task" not in metafunc.fixturenames:
        return
    ids = [i for arg in marker.args for i in (arg if isinstance(arg, (list, tuple)) else [arg])]
    bad = [i for i in ids if not isinstance(i, str)]
    if not ids or bad:  # a collection error of this file, in one line (no pluggy traceback)
        what = "needs task ids" if not ids else f"takes task ids as strings, not {bad[0]!r}"
        pytest.fail(f"{metafunc.definition.nodeid}: @pytest.mark.attn_task {what}, "
                    "e.g. @pytest.mark.attn_task('HumanEval/12')", pytrace=False)
    metafunc.parametrize("attn_task", ids, indirect=True, ids=ids)


def _state(config: pytest.Config) -> tuple[list[str], Any]:
    """The models and Study of the run: the study's when it runs, else the lazily made defaults."""
    from .options import parse_options, study_config
    from .plugin import _session

    session = _session(config)
    if session is not None:
        return session.options.models, session.study
    if _DEFAULTS not in config.stash:
        from .study import Study

        options = parse_options(config)
        config.stash[_DEFAULTS] = _Defaults(options.models, Study(study_config(options)))
    defaults = config.stash[_DEFAULTS]
    return defaults.models, defaults.study


def _one_line(compute: Callable[..., Any], *args: Any) -> Any:
    """A known failure (model not loadable, unknown task) fails the set-up in one line, no traceback."""
    error = ""
    try:
        return compute(*args)
    except AttnalignError as exc:
        error = str(exc)
    pytest.fail(error, pytrace=False)  # outside the except block: no chained exception shown


def _model_name(request: pytest.FixtureRequest) -> str:
    if "attn_case" in request.fixturenames:
        return request.getfixturevalue("attn_case")[0]
    return _state(request.config)[0][0]


@pytest.fixture
def attn_model(request: pytest.FixtureRequest) -> Any:
    """The loaded model (``lm.LanguageModel``) of the study item, else of the first ``--attn-model``
    (default smollm2), on this process's device; loaded once per process (xdist worker)."""
    return _one_line(_state(request.config)[1].model, _model_name(request))


@pytest.fixture
def attn_task(request: pytest.FixtureRequest) -> Any:
    """The task (``tasks.Task``) of the study item, or of ``@pytest.mark.attn_task`` (one test per id)."""
    from .tasks import get_task

    if hasattr(request, "param"):
        task_id = request.param
    elif "attn_case" in request.fixturenames:
        task_id = request.getfixturevalue("attn_case")[2]
    else:
        pytest.fail("attn_task: choose the task with @pytest.mark.attn_task('HumanEval/12') (several ids: one test each)",
                    pytrace=False)
    return _one_line(get_task, task_id)


@pytest.fixture
def attn_context(request: pytest.FixtureRequest, attn_model: Any, attn_task: Any) -> Any:
    """The ``methods.AttributionContext`` a method's ``attribute`` receives: model, task, prompt and
    the cached greedy generation (shared with the study's items of this model x task)."""
    return _one_line(_state(request.config)[1].context, _model_name(request), attn_task)


@pytest.fixture
def attn_generation(attn_context: Any) -> Any:
    """The cached greedy generation (``generation.Generation``) of the model x task."""
    return attn_context.generation


@pytest.fixture
def attn_attribute(request: pytest.FixtureRequest, attn_context: Any) -> Callable[[Any], Any]:
    """``attn_attribute(method)`` -> ``attribution.Attribution`` for the task: ``method`` is a name
    (``"bert_masking"``, an entry-point method; the run's settings apply) or a ``Method`` instance."""
    from .attribution import attribute

    study = _state(request.config)[1]
    return lambda method: _one_line(attribute, study, attn_context, method)  # a misspelt method: its one line


@pytest.fixture
def attn_perturbation_engine(attn_context: Any) -> Any:
    """A ``perturbation_engine.PerturbationEngine`` for the task: regenerates code from perturbed
    prompts through the built-in perturbation methods' verified, batched path."""
    from .perturbation_engine import PerturbationEngine

    return PerturbationEngine(attn_context)
