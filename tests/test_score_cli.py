"""``attnalign score FILE``: exact numbers on a hand-made file, formatting, and validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_attnalign.cli import main

# The two tasks of tests/test_alignment.py, worked by hand there:
#   A (triples, 40 chars, H = [0,4) [10,20) [10,20) [30,30)); B (strings, one token dropped).
# K=4:  P = 9/16, R = 17/30, F1 = 153/271, alpha = 12/35, kappa = 1/3, coverage 5/6,
#       macro P = .5625, macro R = .675, macro F1 = 29/52.
# K=20: P = 5/12, R = 3/5, F1 = 30/61, alpha = -5/18, kappa = 0.
LINE_A = {
    "id": "A",
    "text": "x" * 40,
    "units": [[0, 2, 0.9], [2, 6, 0.5], [8, 12, 0.5], [12, 16, 0.7], [25, 30, 0.1], [30, 30, 0.8], [20, 25, 0.5]],
    "human": [[0, 4], [10, 20], [10, 20], [30, 30]],
}
LINE_B = {
    "id": "B",
    "text": "sort the list in place",
    "units": [["sort", 0.2], ["the", 0.1], ["lists", 0.9], ["list", 0.6], ["in", 0.3], ["place", 0.6]],
    "human": [[0, 4], [9, 13]],
}


def write(path: Path, *lines: object) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_json_exact_numbers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = write(tmp_path / "s.jsonl", LINE_A, "", LINE_B)  # a blank line is skipped
    rc, out, err = run(capsys, "score", str(f), "--k", "4", "20", "--json")
    assert (rc, err) == (0, "")
    assert out.count("\n") == 1  # exactly one JSON object
    doc = json.loads(out)
    assert doc["n_tasks"] == 2 and list(doc["k"]) == ["4", "20"]
    k4, k20 = doc["k"]["4"], doc["k"]["20"]
    assert k4["precision"] == pytest.approx(9 / 16, abs=1e-12)
    assert k4["recall"] == pytest.approx(17 / 30, abs=1e-12)
    assert k4["f1"] == pytest.approx(153 / 271, abs=1e-12)
    assert k4["alpha"] == pytest.approx(12 / 35, abs=1e-9)
    assert k4["dropped_units"] == 1
    assert k4["cohen_kappa"] == pytest.approx(1 / 3, abs=1e-12)
    assert k4["keyword_coverage"] == pytest.approx(5 / 6, abs=1e-12)
    assert k4["macro_recall"] == pytest.approx(0.675, abs=1e-12)
    assert k4["macro_f1"] == pytest.approx(29 / 52, abs=1e-12)
    assert k20["precision"] == pytest.approx(5 / 12, abs=1e-12)
    assert k20["recall"] == pytest.approx(3 / 5, abs=1e-12)
    assert k20["f1"] == pytest.approx(30 / 61, abs=1e-12)
    assert k20["alpha"] == pytest.approx(-5 / 18, abs=1e-9)


def test_table_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = write(tmp_path / "s.jsonl", LINE_A, LINE_B)
    rc, out, _ = run(capsys, "score", str(f), "--k", "4", "20")
    assert rc == 0
    lines = out.splitlines()
    assert lines[0] == "2 tasks"
    assert lines[1].split() == ["K", "P", "R", "F1", "alpha", "dropped", "units"]
    row4 = next(ln.split() for ln in lines if ln.split()[:1] == ["4"])
    row20 = next(ln.split() for ln in lines if ln.split()[:1] == ["20"])
    # 9/16 = .5625 -> "56.2%" (exact binary half, rounds to even); 17/30 -> 56.7%; 153/271 -> 56.5%
    assert row4 == ["4", "56.2%", "56.7%", "56.5%", "0.34", "1"]
    assert row20 == ["20", "41.7%", "60.0%", "49.2%", "-0.28", "1"]


def test_alpha_undefined_printed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Every unit selected and human -> alpha undefined: "undefined" in the table, null in JSON.
    line = {"text": "ab cd", "units": [["ab", 1], ["cd", 0.5]], "human": [[0, 5]]}
    f = write(tmp_path / "u.jsonl", line)
    rc, out, _ = run(capsys, "score", str(f), "--k", "5")
    assert rc == 0 and out.splitlines()[0] == "1 task"
    # P = (2/2 + 2/2)/2 = 1; R = (2 + 2)/5 = 0.8 (the space is not covered); F1 = 1.6/1.8 = 8/9.
    assert out.splitlines()[-1].split() == ["5", "100.0%", "80.0%", "88.9%", "undefined", "0"]
    rc, out, _ = run(capsys, "score", str(f), "--json")
    assert rc == 0 and list(json.loads(out)["k"]) == ["5", "10", "20"]
    assert json.loads(out)["k"]["5"]["alpha"] is None


BAD_LINES = [
    ("{not json", "not valid JSON"),
    ("[" * 100_000, "not valid JSON (maximum recursion depth exceeded"),  # deeper than the parser goes
    ('{"text": "abc", "units": [["a", 1%s]], "human": []}' % ("0" * 5000), "not valid JSON (Exceeds the limit"),
    ({"text": "abc", "units": [["a", 10**400]], "human": []}, "must be a finite number"),  # past float's range
    ({"task_id": "HumanEval/\u00b2", "units": []}, "malformed task id"),
    ("[1, 2]", "JSON object"),
    ({"text": "abc", "human": []}, 'missing key "units"'),
    ({"text": "abc", "units": []}, "'human'"),
    ({"text": 3, "units": [], "human": []}, '"text" must be a string'),
    ({"text": "abc", "units": {}, "human": []}, '"units" must be a list'),
    ({"text": "abc", "units": [], "human": [[2, 1]]}, "human span [2, 1]"),
    ({"text": "abc", "units": [], "human": [[-1, 2]]}, "human span [-1, 2]"),
    ({"text": "abc", "units": [], "human": [[0, 9]]}, "human span [0, 9]"),
    ({"text": "abc", "units": [], "human": [[0.0, 1]]}, "two integers"),
    ({"text": "abc", "units": [["a"]], "human": []}, "must be [token, score]"),
    ({"text": "abc", "units": [["a", "high"]], "human": []}, "finite number"),
    ('{"text": "abc", "units": [["a", NaN]], "human": []}', "finite number"),
    ('{"text": "abc", "units": [[0, 1, Infinity]], "human": []}', "finite number"),
    ({"text": "abc", "units": [[2, 1, 0.5]], "human": []}, "unit [2, 1]"),
    ({"text": "abc", "units": [["a", 1], [0, 1, 1]], "human": []}, "mix"),
    ({"text": "abc", "units": [], "human": [], "task_id": "HumanEval/0"}, "not both"),
    ({"task_id": "HumanEval/999", "units": []}, "no task"),
    ({"task_id": "Nope/1", "units": []}, "malformed task id"),
    ({"text": "abc", "units": [], "human": [], "humans": []}, "unknown key"),
    ({"id": 7, "text": "abc", "units": [], "human": []}, '"id" must be a string'),
    ({"id": "A", "text": "abc", "units": [], "human": []}, "duplicate id 'A'"),
]


@pytest.mark.parametrize(("bad", "message"), BAD_LINES)
def test_malformed_line_scores_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: object, message: str
) -> None:
    # The bad line is line 2, after a good one, and a good line follows: nothing may be printed.
    f = write(tmp_path / "bad.jsonl", LINE_A, bad, LINE_B)
    rc, out, err = run(capsys, "score", str(f), "--json")
    assert rc == 2
    assert out == ""
    assert f"{f}:2: " in err
    assert message in err
    assert err.count("\n") == 1


def test_empty_file_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for content in ("", "\n  \n"):
        f = tmp_path / "empty.jsonl"
        f.write_text(content)
        rc, out, err = run(capsys, "score", str(f))
        assert (rc, out) == (2, "")
        assert "empty" in err


def test_missing_file_and_bad_k(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(capsys, "score", str(tmp_path / "nope.jsonl"))
    assert (rc, out) == (2, "") and "cannot read" in err
    f = write(tmp_path / "s.jsonl", LINE_A)
    rc, out, err = run(capsys, "score", str(f), "--k", "0")
    assert (rc, out) == (2, "") and "positive" in err


def test_task_id_line_uses_shipped_labels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pytest_attnalign.labels import labels_for
    from pytest_attnalign.tasks import get_task

    task = get_task("HumanEval/0")
    labels = labels_for(task)
    # The study's labels for HumanEval/0 (attention-labels/humaneval.csv): nine words.
    words = [task.label_text[lab.start : lab.end] for lab in labels]
    assert words == [
        "List[float]",
        "float",
        "bool",
        "list",
        "numbers",
        "any two",
        "closer",
        "each other",
        "threshold",
    ]
    # Units: one triple on each labelled word (score 1) and one on "Check" (score 0, unlabelled).
    # K=9 selects exactly the nine labelled spans, which are pairwise disjoint: each unit overlaps
    # only its own span, fully -> P_num = 9 over 9, R_num = 9 over 9 -> P = R = F1 = 1.
    # alpha over 10 units: h = m = 1 for the nine, 0 for "Check" -> D = 0 -> alpha = 1.
    check = task.label_text.index("Check")
    units = [[lab.start, lab.end, 1.0] for lab in labels] + [[check, check + 5, 0.0]]
    by_id = {"task_id": "HumanEval/0", "units": units}
    by_text = {"id": "same", "text": task.label_text, "units": units, "human": [[x.start, x.end] for x in labels]}
    f = write(tmp_path / "t.jsonl", by_id)
    rc, out, err = run(capsys, "score", str(f), "--k", "9", "--json")
    assert (rc, err) == (0, ""), err
    k9 = json.loads(out)["k"]["9"]
    assert (k9["precision"], k9["recall"], k9["f1"]) == (pytest.approx(1.0), pytest.approx(1.0), pytest.approx(1.0))
    assert k9["alpha"] == pytest.approx(1.0)
    assert k9["n_units"] == 10 and k9["dropped_units"] == 0
    # The same task spelled out with text and human gives identical figures.
    g = write(tmp_path / "u.jsonl", by_text)
    rc, out2, _ = run(capsys, "score", str(g), "--k", "9", "--json")
    assert rc == 0 and json.loads(out2)["k"]["9"] == k9


def test_task_id_line_scores_only_the_scored_region(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """METRICS.md s6: HumanEval's import line and examples are not scored. "from" (score 9, the
    import) would be the top-1 unit of the whole prompt; in the region "bool" (labelled) is:
    P = 1/1, R = 1/9 (nine labelled spans, one covered), F1 = 2/10. A unit across the region's end
    is cut at it; one in the examples is left out; "List" inside the region is scored."""
    from pytest_attnalign.tasks import get_task

    text = get_task("HumanEval/0").label_text
    bool_at, list_at, example_at = text.index("bool"), text.index("List["), text.index(">>>")
    units = [[0, 4, 9.0], [bool_at, bool_at + 4, 1.0], [list_at, list_at + 4, 0.5],
             [example_at - 2, example_at + 3, 0.7], [example_at, example_at + 3, 8.0]]
    f = write(tmp_path / "r.jsonl", {"task_id": "HumanEval/0", "units": units})
    rc, out, err = run(capsys, "score", str(f), "--k", "1", "--json")
    assert (rc, err) == (0, ""), err
    k1 = json.loads(out)["k"]["1"]
    assert k1["n_units"] == 3  # "from" and the example left out; the unit across the end cut to whitespace
    assert (k1["precision"], k1["recall"], k1["f1"]) == (pytest.approx(1.0), pytest.approx(1 / 9), pytest.approx(0.2))


def test_study_labels_score_mbpp_as_published(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One unit on each corrected Mbpp/5 span: all precision with corrected labels; with the study's
    off-by-one spans each unit overlaps its shortened label by one character less."""
    from pytest_attnalign.labels import human_spans
    from pytest_attnalign.tasks import get_task

    task = get_task("Mbpp/5")
    off = task.description[0]
    units = [[a - off, b - off, 1.0] for a, b in human_spans(task)]
    f = write(tmp_path / "m.jsonl", {"task_id": "Mbpp/5", "units": units})
    k = str(len(units))
    rc, out, _ = run(capsys, "score", str(f), "--k", k, "--json")
    corrected = json.loads(out)["k"][k]
    rc2, out2, _ = run(capsys, "score", str(f), "--k", k, "--json", "--labels", "study")
    study = json.loads(out2)["k"][k]
    assert (rc, rc2) == (0, 0)
    assert corrected["recall"] == pytest.approx(1.0)
    assert study["precision"] < corrected["precision"] and study["recall"] < corrected["recall"]


def test_dash_reads_standard_input(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(LINE_A) + "\n" + json.dumps(LINE_B) + "\n"))
    rc, out, err = run(capsys, "score", "-", "--k", "4", "--json")
    f = write(tmp_path / "s.jsonl", LINE_A, LINE_B)
    assert (rc, err) == (0, "") and out == run(capsys, "score", str(f), "--k", "4", "--json")[1]
    monkeypatch.setattr("sys.stdin", io.StringIO("[1]\n"))
    assert run(capsys, "score", "-") == (2, "", "attnalign: error: <stdin>:1: a line must be a JSON object, got list\n")


def test_a_directory_is_not_a_score_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys, "score", str(tmp_path))
    assert rc == 2 and err == f"attnalign: error: {tmp_path} is a directory: give a JSON Lines file (or - for standard input)\n"


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from pytest_attnalign import __version__

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out == f"attnalign {__version__}\n"


def test_a_tie_goes_to_the_earlier_unit_whatever_the_list_order(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """METRICS.md s2: units are in prompt order and a tie keeps it; triples listed backwards once let
    the later unit ("beta", unlabelled) win the top-1: P 0 instead of 1."""
    f = write(tmp_path / "r.jsonl", {"id": "a", "text": "alpha beta", "units": [[6, 10, 1.0], [0, 5, 1.0]],
                                     "human": [[0, 5]]})
    rc, out, err = run(capsys, "score", str(f), "--k", "1", "--json")
    assert (rc, err) == (0, ""), err
    assert json.loads(out)["k"]["1"]["precision"] == pytest.approx(1.0)
