"""The summary's tables from item records: what is pooled and what is counted apart."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from synthetic import line_map, make_record, word_units

from pytest_attnalign.cli import main
from pytest_attnalign.labels import human_spans
from pytest_attnalign.record import Record
from pytest_attnalign.report import failure_message, pooled, render, render_attribution, with_code
from pytest_attnalign.runfile import Run, read_run, write_run
from pytest_attnalign.tasks import get_task


def test_a_no_code_item_is_counted_apart_and_left_out_of_the_pooled_scores() -> None:
    task = get_task("HumanEval/0")
    hit = [(a, b, 1.0) for a, b in human_spans(task)]
    scored = make_record("HumanEval/0", hit)
    empty = make_record("HumanEval/2", [], no_code=True)
    both = [scored, empty]
    assert with_code(both) == [scored]
    alone = pooled([scored], [5])[5]
    assert pooled(both, [5])[5].recall < alone.recall       # ...which is why it is left out
    text = render(both, [5])
    assert "no code: 1 tasks (m 1); left out of the alignment tables, in Pass@1 by their tests" in text
    assert "0/2" in text  # Pass@1 still counts it
    assert f"{alone.recall:.1%}" in text and f"{pooled(both, [5])[5].recall:.1%}" not in text
    assert "labels: corrected" in text


@pytest.mark.parametrize("mode", ["corrected", "study"])
def test_header_names_the_label_mode(mode: str) -> None:
    r = make_record("Mbpp/5", [(4, 9, 1.0)], labels=mode)
    assert f"labels: {mode} (" in render([r], [5])


def test_header_says_how_the_restated_copy_was_treated() -> None:
    def attn(method: str, mode: str) -> Record:
        return make_record("HumanEval/0", [(4, 9, 1.0)], method=method,
                           attribution={"seconds": 0.5, "settings": {"heads": "sum", "restated_copy": mode}, "cached": False})

    text = render([attn("coding_all", "ignore"), attn("saliency_coding", "ignore")], [5])
    assert "restated copy (a chat reply's copy of the description): ignore (2 methods)" in text
    assert "method settings" not in text  # one line for the ten methods, not one entry each
    mixed = render([attn("saliency_coding", "credit"), attn("coding_all", "ignore"), attn("reading_first", "credit")], [5])
    assert "copy of the description): credit: reading_first, saliency_coding; ignore: coding_all" in mixed


#: What a served model name, a model id, a setting or a program's stderr may hold: ESC sequences that
#: clear the screen, a CR back over the line, a fake pytest verdict, a bell, a C1 CSI.
DRIVER = "\x1b[2J\x1b[H\r=== 1 passed in 0.01s ===\x07\x9b"


def test_text_from_outside_cannot_drive_the_terminal() -> None:
    """The summary, the failure message and ``attnalign attribute`` spell control characters as escapes
    (\\x1b, \\r), keeping newlines and tabs: the raw ones could fake a "passed" line in a CI log."""
    r = make_record("HumanEval/0", [(4, 9, 1.0)], method="shap", usage={"served_model": "stub" + DRIVER},
                    model_identity={"model": "m", "source": "s" + DRIVER, "revision": "r", "dtype": "float32"},
                    attribution={"seconds": 0.5, "settings": {"evaluations": DRIVER}, "cached": False})
    r = dataclasses.replace(r, execution={**r.execution, "stderr_tail": "Traceback:\n\tboom" + DRIVER})
    escaped = DRIVER.encode("unicode_escape").decode()
    attribution = {"task_id": "HumanEval/0", "model": "m" + DRIVER, "prompt_format": "chat", "max_new_tokens": 9,
                   "completion": "    return 1" + DRIVER, "explained_steps": [0, 2], "explained_tokens": ["x"],
                   "methods": {}}
    summary, failure, attributed = render([r], [5]), failure_message(r), render_attribution(attribution, 5)
    for text in (summary, failure, attributed):
        assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", text)
    assert f"(served as stub{escaped})" in summary and f"s{escaped} revision r" in summary
    assert f"shap evaluations={escaped}" in summary
    assert f"    Traceback:\n    \tboom{escaped}" in failure
    assert f"under m{escaped} (chat format" in attributed and f"    return 1{escaped}" in attributed


# ------------------------------------------------------------------------------- damaged run files

CODE = "def f(numbers):\n    return sum(numbers)\n"


def _record_field(name: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda doc: doc["records"][0].__setitem__(name, value)


def _first_unit(unit: list[Any]) -> Callable[[dict[str, Any]], None]:
    return lambda doc: doc["records"][0]["units"].__setitem__(0, unit)


def _section(name: str, key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda doc: doc["records"][0][name].__setitem__(key, value)


def _map_unit(index: int) -> Callable[[dict[str, Any]], None]:
    return lambda doc: doc["records"][0]["line_units"][0][2].__setitem__(0, [index, 0.5])


@pytest.mark.parametrize(("damage", "message"), [
    (lambda doc: doc["run"].__setitem__("lines", 5), "run.lines: expected a list, got int"),
    (_record_field("task_id", "xx"), "records[0].task_id: malformed task id 'xx'"),
    (_record_field("top_k", {"5": "abc"}), "records[0].top_k.5: expected a list, got str"),
    (_record_field("top_k", {"five": []}), "records[0].top_k: key 'five' is not a K"),
    (_record_field("metrics", {"5": 3}), "records[0].metrics.5: expected an object, got int"),
    (_record_field("model_identity", {"model": "m"}), "records[0].model_identity: missing 'source'"),
    (_map_unit(99), "records[0].line_units[0][2][0]: unit 99 is not an index into the record's"),
    (_map_unit(-1), "records[0].line_units[0][2][0]: unit -1 is not an index"),
    (_first_unit([4, 99_999, 1.0]), "records[0].units[0]: unit [4, 99999] must satisfy 0 <= start <= end <="),
    (_record_field("human", [[4, 99_999]]), "records[0].human[0]: human span [4, 99999] must satisfy"),
    (_first_unit([4, 9, float("nan")]), "records[0].units[0]: score nan must be a finite number"),
    (_first_unit([4, 9, 10**400]), "records[0].units[0][2]: the number 1000"),  # past float's range
    (_record_field("task_id", "HumanEval/\u00b2"), "records[0].task_id: malformed task id 'HumanEval/\u00b2'"),
    (_record_field("top_k", {"9" * 5000: []}), "records[0].top_k: key '99999"),  # past int()'s digit limit
    (_record_field("top_k", {"\u00b2": []}), "records[0].top_k: key '\u00b2' is not a K"),  # isdigit(), not int()
    (_record_field("metrics", {"abc": {}}), "records[0].metrics: key 'abc' is not a K"),
    (_section("execution", "outcome", 5), "records[0].execution.outcome: expected str, got int"),  # blanked the page
    (_section("execution", "stderr_tail", ["x"]), "records[0].execution.stderr_tail: expected str, got list"),
    (_record_field("usage", {"served_model": 5}), "records[0].usage.served_model: expected str, got int"),
    (_section("attribution", "settings", {"restated_copy": ["ignore"]}),
     "records[0].attribution.settings.restated_copy: expected str, got list"),
    # JSON may escape half a UTF-16 pair; such text can be neither printed nor written to the page
    (_record_field("completion", "x\udc80"), "records[0].completion: '\\udc80': a lone surrogate (half a UTF-16"),
    (_section("execution", "stderr_tail", "\udc80"), "records[0].execution.stderr_tail: '\\udc80': a lone surrogate"),
    (_record_field("model", "m\ud800"), "records[0].model: '\\ud800': a lone surrogate"),
    # these read and counted wrong: an item twice in the tables, a K's table twice, an unnamed method
    (lambda doc: doc["records"].append(doc["records"][0]),
     "records[1]: a second record of m x coding_last x HumanEval/0 (the first is records[0])"),
    (lambda doc: doc.__setitem__("ks", [5, 5, 10]), "ks: [5, 5, 10] must be distinct positive integers"),
    (lambda doc: doc.__setitem__("ks", [0, 10]), "ks: [0, 10] must be distinct positive integers"),
    (_record_field("method", ""), "records[0].method: empty"),
])
def test_a_damaged_run_file_is_refused_on_reading_not_by_a_crash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: Callable[[dict[str, Any]], None], message: str
) -> None:
    """Valid shapes with values the summary or the page cannot use: one line naming the field, no page."""
    units = word_units("HumanEval/0", 1.0, 0)
    rec = make_record("HumanEval/0", units, method="coding_last", completion=CODE,
                      line_units=line_map(len(units), CODE, "m"))
    path = tmp_path / "run.json"
    write_run(path, Run([rec], (5, 10)))
    assert read_run(path).records == [rec]  # undamaged, it reads
    doc = json.loads(path.read_text(encoding="utf-8"))
    damage(doc)
    path.write_text(json.dumps(doc), encoding="utf-8")  # NaN is written as NaN, which json reads back
    assert main(["report", str(path), "--html", str(tmp_path / "run.html")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"attnalign: error: run file {str(path)!r} is damaged: {message}")
    assert err.count("\n") == 1 and not (tmp_path / "run.html").exists()


def test_a_run_file_nested_too_deeply_is_not_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "run.json"
    path.write_text("[" * 100_000, encoding="utf-8")
    assert main(["report", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"attnalign: error: run file {str(path)!r} is not JSON (maximum recursion")
    assert err.endswith("): give a file written by --attn-json\n") and err.count("\n") == 1


def test_the_header_renders_a_methods_provenance_as_the_run_kept_it(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A run file read where the method's package is absent (or at another version) says where the
    method came from when the run was made: it once said "not installed here" and lost its settings."""
    kept = {"category": "perturbation", "options": ["reverse"], "origin": "mymeth 0.1.0"}
    r = make_record("HumanEval/0", [(4, 9, 1.0)], method="mymethod",
                    attribution={"seconds": 0.5, "settings": {"reverse": False}, "cached": False, "method": kept})
    write_run(tmp_path / "run.json", Run([r], (5,), {}))
    assert main(["report", str(tmp_path / "run.json")]) == 0
    out = capsys.readouterr().out
    assert "methods: perturbation: mymethod (mymeth 0.1.0)" in out and "method settings: mymethod reverse=False" in out
    broken = json.loads((tmp_path / "run.json").read_text())
    broken["records"][0]["attribution"]["method"]["options"] = "reverse"
    (tmp_path / "bad.json").write_text(json.dumps(broken))
    assert main(["report", str(tmp_path / "bad.json")]) == 2
    assert "records[0].attribution.method.options" in capsys.readouterr().err


def test_an_earlier_wording_of_the_stop_rule_reads_as_its_rule(tmp_path: Path) -> None:
    """A rule's text made precise (2026-12-03) reads as that rule's last wording, so its runs compare as
    one rule; the line-based rule it named is not today's (which reads code as Python does), so those
    runs do not claim it."""
    from pytest_attnalign.generation import STOP_RULE

    old = "eos | end of the first top-level function (next top-level statement) | closing ``` fence (chat)"
    write_run(tmp_path / "old.json", Run([make_record("HumanEval/0", [(4, 9, 1.0)], stop_rule=old)], (5,), {}))
    read = read_run(tmp_path / "old.json").records[0].stop_rule
    assert read.startswith("eos | end of the generated function (its first later top-level line;") and read != STOP_RULE


def test_gates_on_a_run_whose_every_item_errored_are_not_judged(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """No record names the method the run selected: --gate called it absent (exit 2, "methods: ") where
    the plugin says the gates of an incomplete run are not judged (exit 1)."""
    info = {"complete": False, "errors": ["test_x.py::test[HumanEval/0-reading_last]"], "missing": [], "lines": []}
    write_run(tmp_path / "none.json", Run([], (5, 10), info))
    assert main(["report", str(tmp_path / "none.json"), "--gate", "reading_last.f1@10>=1%"]) == 1
    out, err = capsys.readouterr()
    assert err == "" and out.splitlines()[-1] == (
        "gates not judged: the run is incomplete (0 items missing, 1 without a result; see its header): rerun "
        "those items (the cache keeps the others' results)")
    assert main(["report", str(tmp_path / "none.json"), "--gate", "reading_last.f1@7>=1%"]) == 2  # K is the run's
    assert "K=7 is not in this run (K: 5, 10)" in capsys.readouterr().err
    write_run(tmp_path / "whole.json", Run([make_record("HumanEval/0", [(4, 9, 1.0)], method="shap")], (5, 10), {}))
    assert main(["report", str(tmp_path / "whole.json"), "--gate", "reading_last.f1@10>=1%"]) == 2  # a whole run's
    assert "method 'reading_last' is not in this run (methods: shap)" in capsys.readouterr().err  # names are checked


def test_runs_with_nothing_in_common_say_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No method and no task in both runs: the comparison was two empty tables and "m 0 n/a", exit 0.
    It says what each run has; exit 0 unless a --compare-fail needed the comparison (as a refused one)."""
    now = [make_record(f"HumanEval/{i}", [(4, 9, 1.0)], method="shap") for i in range(5)]
    write_run(tmp_path / "now.json", Run(now, (5, 10), {}))
    write_run(tmp_path / "base.json",
              Run([make_record("Mbpp/2", [(4, 9, 1.0)], method="coding_last", model="other")], (5, 10), {}))
    assert main(["report", str(tmp_path / "now.json"), "--compare", str(tmp_path / "base.json")]) == 0
    tail = capsys.readouterr().out.split(f"Compared with {tmp_path / 'base.json'}")[1]
    assert tail == (":\nnothing to compare: no model x method scored a task in both runs (this run: model m, method "
                    "shap, 5 tasks (HumanEval/0, HumanEval/1, HumanEval/2 and 2 more); the baseline: model other, "
                    "method coding_last, 1 task (Mbpp/2))\n")
    assert main(["report", str(tmp_path / "now.json"), "--compare", str(tmp_path / "base.json"),
                 "--compare-fail", "f1@10:2%"]) == 1
    assert "compare-fail f1@10:2%: FAILED: no model x method in both runs to compare" in capsys.readouterr().out
    # the same model and tasks, other methods: Pass@1 compares, the alignment table says why it is empty
    write_run(tmp_path / "other.json",
              Run([dataclasses.replace(r, method="coding_last") for r in now], (5, 10), {}))
    assert main(["report", str(tmp_path / "now.json"), "--compare", str(tmp_path / "other.json")]) == 0
    out = capsys.readouterr().out
    assert ":\nAlignment: no model x method in both runs (this run: method shap; the baseline: method " \
           "coding_last)\n\nPass@1" in out and "\nm        5        0.0% (+0.0)" in out
