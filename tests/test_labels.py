"""The committed attention labels match the counts the data README promises, and reproduce."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest

from pytest_attnalign import labels
from pytest_attnalign.errors import AttnalignError
from pytest_attnalign.labels import LABEL_TYPES, load_labels, labels_for, prompt_labels
from pytest_attnalign.tasks import get_task

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT.parent / "shared" / "data" / "attention-labels"
CONVERTER = ROOT / "scripts" / "convert_labels.py"
needs_source = pytest.mark.skipif(
    not (SOURCE / "humaneval.csv").exists() or not (SOURCE / "mbpp.csv").exists(),
    reason=f"attention-label CSVs not at {SOURCE}: only the shipped labels can be checked",
)
#: Spans of MBPP placed inside another word ("in" inside "find"), per ../shared/data/README.md.
MBPP_SNAPPED = 97


def _raw(benchmark: str) -> list[dict]:
    lines = (labels.LABELS_DIR / f"{benchmark}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def _converter() -> ModuleType:
    spec = importlib.util.spec_from_file_location("convert_labels", CONVERTER)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("benchmark", "spans", "tasks", "lines"),
    [("humaneval", 1092, 164, 164), ("mbpp", 6891, 973, 974)],
)
def test_counts_and_every_span_covers_its_word(benchmark: str, spans: int, tasks: int, lines: int) -> None:
    table = load_labels(benchmark)
    assert len(table) == lines
    assert sum(map(len, table.values())) == spans
    assert sum(bool(v) for v in table.values()) == tasks
    for tid in table:
        task = get_task(tid)
        assert [task.label_text[x.start : x.end] for x in labels_for(task)] == [x.word for x in table[tid]]
        assert [task.prompt[x.start : x.end] for x in prompt_labels(task)] == [x.word for x in table[tid]]
        assert all(x.type in LABEL_TYPES for x in table[tid])


def test_mbpp_274_is_labelled_with_none() -> None:
    assert load_labels("mbpp")["Mbpp/274"] == []
    assert labels_for(get_task("Mbpp/274")) == []


def test_types_and_type2_decision() -> None:
    types = Counter(x.type for t in load_labels("humaneval").values() for x in t)
    assert types == {"data_type": 518, "property": 397, "operator": 125, "conditional": 52}
    types = Counter(x.type for t in load_labels("mbpp").values() for x in t)
    # 3210 Property + the two Type2 rows (Mbpp/602 "the", "given"), kept and typed property
    assert types == {"property": 3212, "operator": 2045, "data_type": 1478, "conditional": 156}
    type2 = [(x["word"], x["type"]) for r in _raw("mbpp") for x in r["labels"] if x.get("source_type") == "Type2"]
    assert type2 == [("the", "property"), ("given", "property")]


def test_snapped_spans_are_whole_words() -> None:
    snapped = [(r["task_id"], x) for r in _raw("mbpp") for x in r["labels"] if "snapped_from" in x]
    assert len(snapped) == MBPP_SNAPPED
    for tid, x in snapped:
        text = get_task(tid).label_text
        s, e = x["snapped_from"]
        assert text[s:e] == x["word"] and x["start"] > s
        before, after = text[x["start"] - 1 : x["start"]], text[x["end"] : x["end"] + 1]
        assert not any(c.isalnum() or c == "_" for c in before + after), (tid, x)


def test_mbpp_labels_are_in_prompt_description() -> None:
    task = get_task("Mbpp/602")
    lo, hi = task.description
    assert all(lo <= x.start < x.end <= hi for x in prompt_labels(task))


@needs_source
def test_snapped_count_matches_converter() -> None:
    _, summaries = _converter().convert(SOURCE)
    assert summaries["mbpp"]["snapped"] == MBPP_SNAPPED
    assert summaries["humaneval"]["snapped"] == 0
    assert all(s["mismatched"] == 0 for s in summaries.values())


@needs_source
def test_converter_reproduces_committed_files_byte_for_byte() -> None:
    proc = subprocess.run(
        [sys.executable, str(CONVERTER), "--check"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "snapped from inside another word to a whole word: 97" in proc.stdout


@needs_source
def test_check_fails_on_stale_output(tmp_path: Path) -> None:
    (tmp_path / "mbpp.jsonl").write_text("stale\n", encoding="utf-8")
    assert _converter().main(["--check", "--out", str(tmp_path)]) == 1


@pytest.fixture
def labels_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(labels, "LABELS_DIR", tmp_path)
    labels._read.cache_clear()
    yield tmp_path
    labels._read.cache_clear()


def test_malformed_labels_line_is_a_user_error(labels_dir: Path) -> None:
    (labels_dir / "mbpp.jsonl").write_text('{"task_id": "Mbpp/1", "labels": [\n', encoding="utf-8")
    with pytest.raises(AttnalignError, match=r"line 1.*python scripts/convert_labels\.py"):
        load_labels("mbpp")


def test_a_labels_line_that_is_not_utf8_is_a_user_error(labels_dir: Path) -> None:
    """It was a UnicodeDecodeError traceback (an INTERNALERROR in a run)."""
    record = {"task_id": "Mbpp/1", "text_sha256": "0" * 64, "labels": []}
    (labels_dir / "mbpp.jsonl").write_bytes(json.dumps(record).encode() + b"\n\xff\xfe{}\n")
    with pytest.raises(AttnalignError, match=r"mbpp\.jsonl line 2: not UTF-8 text \(invalid start byte\).*"
                                             r"python scripts/convert_labels\.py"):
        load_labels("mbpp")


def test_sha_mismatch_is_a_user_error(labels_dir: Path) -> None:
    record = {"task_id": "Mbpp/1", "text_sha256": "0" * 64, "labels": []}
    (labels_dir / "mbpp.jsonl").write_text(json.dumps(record) + "\n", encoding="utf-8")
    with pytest.raises(AttnalignError, match=r"sha256 mismatch.*python scripts/convert_labels\.py"):
        labels_for(get_task("Mbpp/1"))


def test_humaneval_helper_function_labels_are_in_the_scored_region() -> None:
    """HumanEval/10 gives is_palindrome before the entry point: the study scored from the first def."""
    from pytest_attnalign.tasks import get_task

    task = get_task("HumanEval/10")
    a, b = task.description
    assert task.prompt[a:].startswith("def is_palindrome(") and a < task.prompt.index("def make_palindrome(") < b
    helper = [lab for lab in prompt_labels(task) if lab.end <= task.prompt.index("def make_palindrome(")]
    assert [lab.word for lab in helper][:2] == ["str", "bool"]
    assert all(a <= lab.start and lab.end <= b for lab in helper)


def test_study_label_mode_reproduces_the_off_by_one_spans() -> None:
    """Mbpp/5 in the study's scoring: every span loses its last character, '2' becomes empty, and the
    snapped 'n' is back inside 'function' where the study placed it."""
    from pytest_attnalign.labels import human_spans
    from pytest_attnalign.tasks import get_task

    task = get_task("Mbpp/5")
    off = task.description[0]
    corrected, study = human_spans(task), human_spans(task, "study")
    assert corrected[:4] == [(off + 0, off + 5), (off + 20, off + 24), (off + 29, off + 35), (off + 60, off + 61)]
    assert study[:4] == [(off + 0, off + 4), (off + 20, off + 23), (off + 29, off + 34), (off + 60, off + 60)]
    assert task.prompt[slice(*study[0])] == "Writ"
    snapped = [i for i, lab in enumerate(prompt_labels(task)) if lab.snapped_from]
    assert snapped and all(study[i] == (off + 10, off + 10) for i in snapped)  # 'n' of 'function', minus its char
    he = get_task("HumanEval/0")
    assert human_spans(he, "study") == human_spans(he)  # HumanEval's spans were exact
    with pytest.raises(AttnalignError, match="unknown label mode"):
        human_spans(task, "published")


def _line(task_id: object) -> str:
    return json.dumps({"task_id": task_id, "text_sha256": "0" * 64, "labels": []}) + "\n"


@pytest.mark.parametrize(
    ("task_id", "why"),
    [("Mbpp/9999", r"\(ids Mbpp/1\.\.974\)"), ("Mbpp/abc", r"\(ids Mbpp/1\.\.974\)"),
     ("Mbpp/0", r"\(ids Mbpp/1\.\.974\)"), ("HumanEval/1", r"\(ids Mbpp/1\.\.974\)"), (7, r"\(ids Mbpp/1\.\.974\)"),
     ("Mbpp/01", r"\(ids Mbpp/1\.\.974; write Mbpp/1\)"), ("MBPP/1", r"\(ids Mbpp/1\.\.974; write Mbpp/1\)")],
)
def test_a_line_for_no_task_of_the_benchmark_is_a_user_error(labels_dir: Path, task_id: object, why: str) -> None:
    """Its labels would be ignored, and a misspelt id would show up as its task having none."""
    (labels_dir / "mbpp.jsonl").write_text(_line("Mbpp/2") + _line(task_id), encoding="utf-8")
    with pytest.raises(AttnalignError) as info:
        load_labels("mbpp")
    message = str(info.value)
    assert "\n" not in message
    assert re.fullmatch(rf"malformed labels file {re.escape(str(labels_dir / 'mbpp.jsonl'))} line 2: "
                        rf"task_id {re.escape(repr(task_id))} is not a task of mbpp {why}; "
                        r"regenerate it with python scripts/convert_labels\.py", message), message


def test_a_task_listed_twice_is_a_user_error(labels_dir: Path) -> None:
    (labels_dir / "mbpp.jsonl").write_text(_line("Mbpp/2") + _line("Mbpp/2"), encoding="utf-8")
    with pytest.raises(AttnalignError, match=r"line 2: task_id 'Mbpp/2' appears twice; regenerate it with python"):
        load_labels("mbpp")


USER_TEST = '''
import json
import pytest
from pytest_attnalign import labels
from pytest_attnalign.attribution import Attribution
from pytest_attnalign.tasks import get_task


@pytest.fixture
def stale_labels(tmp_path, monkeypatch):
    line = {"task_id": "Mbpp/1", "text_sha256": "0" * 64, "labels": []}
    (tmp_path / "mbpp.jsonl").write_text(json.dumps(line) + "\\n", encoding="utf-8")
    monkeypatch.setattr(labels, "LABELS_DIR", tmp_path)
    labels._read.cache_clear()
    yield
    labels._read.cache_clear()


@pytest.mark.parametrize("view", ["covered_labels", "score"])
def test_user(stale_labels, view):
    attribution = Attribution("m", get_task("Mbpp/1"), ((4, 9, 1.0),), {}, False)
    getattr(attribution, view)(1)
'''


def test_a_labels_error_in_a_users_test_is_one_line(pytester: pytest.Pytester) -> None:
    """``Attribution.covered_labels``/``score`` in a user's test: the fix, as the attn_* fixtures show it."""
    pytester.makepyfile(test_user=USER_TEST)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=2)
    out = result.stdout.str()
    message = ("labels of Mbpp/1 were made for a different text (sha256 mismatch): "
               "regenerate it with python scripts/convert_labels.py")
    result.stdout.fnmatch_lines(["*_ test_user[[]covered_labels[]] _*", message, "*_ test_user[[]score[]] _*", message])
    assert "pytest_attnalign/" not in out and "\nE  " not in out and "Error:" not in out, out  # no traceback
