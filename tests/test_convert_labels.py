"""scripts/convert_labels.py on a malformed source CSV: one line naming the file (and the record), no traceback.

The sources here are tiny copies written by the test (one labelled word per benchmark), so these run
without the study's CSVs.
"""

from __future__ import annotations

import csv
from pathlib import Path
from types import ModuleType

import pytest
from test_labels import _converter

from pytest_attnalign.errors import AttnalignError
from pytest_attnalign.tasks import get_task

HE_HEADER = ["prompt_id", "prompt", "word", "label type", "index range"]
MBPP_HEADER = ["", "prompt_id", "Prompt", "Word", "Label Type", "index"]


@pytest.fixture(scope="module")
def conv() -> ModuleType:
    return _converter()


def _he_row(prompt_id: str = "0") -> list[str]:
    prompt = get_task("HumanEval/0").prompt
    s = prompt.index("numbers")
    return [prompt_id, prompt, "numbers", "Datatype", f"({s}, {s + 7})"]


def _mbpp_row(prompt_id: str = "1") -> list[str]:
    text = get_task("Mbpp/1").label_text
    word = text.split()[0]
    return ["0", prompt_id, text, word, "Operator", f"(0, {len(word) - 1})"]  # end-inclusive, as the study's


def _write(path: Path, header: list[str], *rows: list[str]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A valid source folder: one label on HumanEval/0, one on Mbpp/1."""
    _write(tmp_path / "humaneval.csv", HE_HEADER, _he_row())
    _write(tmp_path / "mbpp.csv", MBPP_HEADER, _mbpp_row())
    return tmp_path


def test_the_tiny_sources_convert(conv: ModuleType, source: Path) -> None:
    """So each failure below is the one malformed field's."""
    for convert in (conv.convert_humaneval, conv.convert_mbpp):
        records, summary = convert(source)
        assert (summary["spans"], summary["tasks"], summary["mismatched"]) == (1, 1, 0)


@pytest.mark.parametrize("prompt_id", ["abc", "9999", "0", "", "-1", "\u00b2", "1.0"])
def test_a_prompt_id_of_no_mbpp_task_names_the_record(conv: ModuleType, source: Path, prompt_id: str) -> None:
    _write(source / "mbpp.csv", MBPP_HEADER, _mbpp_row(), _mbpp_row(prompt_id))
    with pytest.raises(AttnalignError) as info:
        conv.convert_mbpp(source)
    assert str(info.value) == f"mbpp.csv record 2: prompt_id {prompt_id!r} is not a task of mbpp (ids Mbpp/1..974)"


@pytest.mark.parametrize("prompt_id", ["x", "164"])
def test_a_prompt_id_of_no_humaneval_task_names_the_record(conv: ModuleType, source: Path, prompt_id: str) -> None:
    _write(source / "humaneval.csv", HE_HEADER, _he_row(prompt_id))
    with pytest.raises(AttnalignError) as info:
        conv.convert_humaneval(source)
    assert str(info.value) == (f"humaneval.csv record 1: prompt_id {prompt_id!r} is not a task of humaneval "
                               "(ids HumanEval/0..163)")


def test_a_missing_column_is_named_once_with_the_file(conv: ModuleType, source: Path) -> None:
    _write(source / "mbpp.csv", [*MBPP_HEADER[:-1], "Index"], _mbpp_row(), _mbpp_row())
    with pytest.raises(AttnalignError) as info:
        conv.convert_mbpp(source)
    assert str(info.value) == (f"{source / 'mbpp.csv'} lacks the column 'index' (its header: '', 'prompt_id', "
                               "'Prompt', 'Word', 'Label Type', 'Index'): restore the header, or pass --source DIR "
                               "holding the study's CSVs")
    _write(source / "humaneval.csv", ["prompt_id", "prompt", "word"], _he_row()[:3])
    with pytest.raises(AttnalignError, match=r"humaneval\.csv lacks the columns 'label type', 'index range' \("):
        conv.convert_humaneval(source)
    (source / "humaneval.csv").write_text("", encoding="utf-8")
    with pytest.raises(AttnalignError, match=r"humaneval\.csv lacks the columns 'prompt_id', .* \(its header: none\)"):
        conv.convert_humaneval(source)


@pytest.mark.parametrize("cells", [slice(0, 5), slice(0, 7)])
def test_a_record_with_too_few_or_too_many_cells_is_named(conv: ModuleType, source: Path, cells: slice) -> None:
    _write(source / "mbpp.csv", MBPP_HEADER, _mbpp_row(), [*_mbpp_row(), "extra"][cells])
    with pytest.raises(AttnalignError, match=r"^mbpp\.csv record 2: its cells do not match the header's 6 columns$"):
        conv.convert_mbpp(source)


@pytest.mark.parametrize("bad", ["abc", "9999", "column"])
def test_main_prints_one_error_line(conv: ModuleType, source: Path, tmp_path: Path, bad: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """The audit's repros (prompt_id 'abc' and 9999, a renamed column): exit 2 and one line on stderr."""
    if bad == "column":
        _write(source / "mbpp.csv", [*MBPP_HEADER[:-1], "Index"], _mbpp_row())
    else:
        _write(source / "mbpp.csv", MBPP_HEADER, _mbpp_row(bad))
    assert conv.main(["--source", str(source), "--out", str(tmp_path / "out"), "--check"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "mbpp.csv" in err, err
