"""Run files, saved runs, comparisons and gates, on synthetic records (no model): the library alone."""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from synthetic import make_record, study_records, word_units

from pytest_attnalign.alignment import pool_sums, score_k, task_sums
from pytest_attnalign.bootstrap import paired, resample_counts
from pytest_attnalign.cli import main
from pytest_attnalign.errors import AttnalignError
from pytest_attnalign.gates import judge, parse_compare_fails, parse_gates
from pytest_attnalign.jsonshape import ShapeError
from pytest_attnalign.labels import human_spans
from pytest_attnalign.record import Record
from pytest_attnalign.report import pooled, sort_records
from pytest_attnalign.runfile import Run, read_run, write_run
from pytest_attnalign.storage import find_run, save_path, save_run
from pytest_attnalign.tasks import get_task

KS = (5, 10, 20)


def run_of(records: list[Record]) -> Run:
    return Run(records, KS, {"complete": True, "lines": ["torch threads: 1 per process (--attn-threads)"]},
               {"pytest-attnalign": "0.1.0", "torch": "2.0"})


# ------------------------------------------------------------------------------- records and run files


def test_a_record_round_trips_through_json_and_a_wrong_field_is_named() -> None:
    (rec,) = study_records(1, {"shap": 2.0})
    back = Record.from_dict(json.loads(json.dumps(rec.to_dict())))
    assert back == rec and back.units[0] == tuple(rec.units[0])
    bad = {**rec.to_dict(), "units": [["a", 1, 0.5]]}
    with pytest.raises(ShapeError, match=r"record\.units\[0\]\[0\]: expected int"):
        Record.from_dict(bad)
    with pytest.raises(ShapeError, match="missing 'passed'"):
        Record.from_dict({k: v for k, v in rec.to_dict().items() if k != "passed"})


def test_the_run_file_round_trips_and_renders_the_same_summary(tmp_path: Path) -> None:
    run = run_of(study_records(6, {"shap": 2.0, "coding_last": 0.0}))
    path = tmp_path / "run.json"
    write_run(path, run)
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]  # the temp file was renamed, none left
    doc = json.loads(path.read_text())
    assert (doc["format"], doc["version"]) == ("pytest-attnalign-run", 1)
    back = read_run(path)
    assert back.records == sort_records(run.records) and back.ks == KS and back.info == run.info
    assert back.summary() == run.summary()
    assert "versions: pytest-attnalign 0.1.0, torch 2.0" in back.summary()  # the run's, not this process's
    # the tables are the report's pooled figures
    shap = [r for r in run.records if r.method == "shap"]
    row = next(t for t in doc["tables"]["alignment"]["10"] if t["method"] == "shap")
    assert row["f1"] == pooled(shap, [10])[10].f1 and row["tasks"] == 6
    assert doc["tables"]["pass1"] == [{"model": "m", "benchmark": "humaneval", "passed": 3, "tasks": 6, "pass1": 0.5}]


@pytest.mark.parametrize(("content", "message"), [
    ("{", r"is not JSON .*: give a file written by --attn-json"),
    ('{"records": []}', r'is not a pytest-attnalign run \(no "format": "pytest-attnalign-run"\)'),
    ('{"format": "pytest-attnalign-run", "version": 2}', r"has run format version 2; this pytest-attnalign reads version 1"),
    ('{"format": "pytest-attnalign-run", "version": true}', r"has run format version True; this pytest-attnalign reads"),
    ('{"format": "pytest-attnalign-run", "version": 1.0}', r"has run format version 1\.0; this pytest-attnalign reads"),
    ('{"format": "pytest-attnalign-run", "version": 1, "records": [{}], "ks": [5], "run": {}, "environment": {"versions": {}}}',
     r"is damaged: records\[0\]: missing 'model'"),
])
def test_a_foreign_or_damaged_run_file_is_one_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "x.json"
    path.write_text(content)
    with pytest.raises(AttnalignError, match=message) as info:
        read_run(path)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------- bootstrap


def test_pooling_task_sums_equals_the_scored_figures() -> None:
    records = study_records(12, {"shap": 1.0})
    tasks = [r.task_units() for r in records]
    for k in KS:
        pooled_sums = pool_sums(np.sum([task_sums(t, k) for t in tasks], axis=0))
        s = score_k(tasks, k)
        for name in ("precision", "recall", "f1", "alpha"):
            assert float(pooled_sums[name]) == pytest.approx(getattr(s, name), abs=1e-9), (k, name)


def test_the_paired_bootstrap_is_reproducible_and_brackets_the_difference() -> None:
    counts = resample_counts(7)
    assert counts.shape == (1000, 7) and (counts.sum(axis=1) == 7).all()
    assert (resample_counts(7) == counts).all()  # fixed seed
    records = study_records(20, {"good": 1.5, "weak": 0.2})
    a = np.array([task_sums(r.task_units(), 10) for r in records if r.method == "good"])
    b = np.array([task_sums(r.task_units(), 10) for r in records if r.method == "weak"])
    f1 = lambda s: pool_sums(s)["f1"]  # noqa: E731
    est = paired(f1, a, b)
    assert est == paired(f1, a, b)
    good = score_k([r.task_units() for r in records if r.method == "good"], 10).f1
    weak = score_k([r.task_units() for r in records if r.method == "weak"], 10).f1
    assert est.a == pytest.approx(good) and est.b == pytest.approx(weak) and est.diff == pytest.approx(good - weak)
    assert est.low < est.diff < est.high and est.low > 0  # a clear gap is significant
    # resampling every task once (weights all 1) is the measured value
    assert float(f1(np.ones(20) @ a) - f1(np.ones(20) @ b)) == pytest.approx(est.diff)
    # pairing: the same rows on both sides differ by exactly 0 in every resample
    same = paired(f1, a, a)
    assert (same.diff, same.low, same.high) == (0.0, 0.0, 0.0)


def test_the_bootstrap_of_164_tasks_and_two_methods_takes_seconds() -> None:
    """A gate over all of HumanEval: scoring the tasks once and 1000 resamples, every K."""
    records = study_records(164, {"mine": 1.0, "coding_last": 0.5})
    run = run_of(records)
    gates = parse_gates(["mine.f1@5>=coding_last.f1@5,mine.f1@10>=coding_last.f1@10,mine.alpha@20>=coding_last.alpha@20"])
    started = time.perf_counter()
    held, lines = judge(run, gates)
    assert time.perf_counter() - started < 10, lines
    assert held and len(lines) == 3


# ------------------------------------------------------------------------------- gates


def test_a_gate_holds_and_fails_with_a_doctored_threshold() -> None:
    run = run_of(study_records(20, {"mine": 1.5, "coding_last": 0.2}))
    f1 = pooled([r for r in run.records if r.method == "mine"], [10])[10].f1
    held, lines = judge(run, parse_gates(["mine.f1@10>=coding_last.f1@10!"]))
    assert held, lines
    (line,) = lines
    driven = run_of([dataclasses.replace(r, model="m\x1b[2J\r") for r in run.records])
    (escaped,) = judge(driven, parse_gates(["mine.f1@10>=coding_last.f1@10!"]))[1]  # a name from a run file
    assert escaped == line.replace("[m]", "[m\\x1b[2J\\r]")
    assert line.startswith(f"gate mine.f1@10>=coding_last.f1@10! [m]: held: {f1:.1%} vs ")
    assert "difference +" in line and "95% CI [+" in line and "paired bootstrap over 20 tasks, 1000 resamples" in line
    assert judge(run, parse_gates(["mine.f1@10>=coding_last.f1@10!"]))[1] == lines  # line for line

    above = f"{(f1 + 0.005) * 100:.2f}%"
    held, (line,) = judge(run, parse_gates([f"mine.f1@10>={above}"]))
    assert not held and f": FAILED: {f1:.1%} vs threshold" in line and "difference -0.50 points" in line
    below = f"{(f1 - 0.005) * 100:.2f}%"
    assert judge(run, parse_gates([f"mine.f1@10>={below}"]))[0]
    # "!" asks for the whole CI: just below the measured value is not significantly below it
    held, (line,) = judge(run, parse_gates([f"mine.f1@10>={below}!"]))
    assert not held and "! needs the whole CI >= 0" in line


@pytest.mark.parametrize(("parse", "expr", "number"), [
    (parse_gates, "mine.f1@10>=nan%", "nan%"), (parse_gates, "mine.alpha@10>=-inf", "-inf"),
    (parse_gates, "mine.p@5<inf%", "inf%"), (parse_compare_fails, "f1@10:nan%", "nan%"),
    (parse_compare_fails, "alpha@10:inf", "inf"), (parse_compare_fails, "pass1:NaN%", "NaN%"),
])
def test_a_threshold_that_is_not_finite_is_a_grammar_error(parse: Callable[[list[str]], list], expr: str,
                                                           number: str) -> None:
    """float() takes nan and inf, against which every comparison says nothing."""
    with pytest.raises(AttnalignError, match=rf"^'{re.escape(expr)}': '{re.escape(number)}' is not a finite number; "
                                             "grammar: "):
        parse([expr])


def test_a_gate_on_an_incomplete_run_fails() -> None:
    """A gate that holds on the items that ran fails when some did not run or gave no result: the
    figures of part of the run are no verdict (a run file read by ``attnalign report`` too)."""
    run = run_of(study_records(20, {"mine": 1.5, "coding_last": 0.2}))
    assert judge(run, parse_gates(["mine.f1@10>=coding_last.f1@10"]))[0]
    run.info = {**run.info, "complete": False, "missing": ["a"], "errors": ["b", "c"]}
    held, lines = judge(run, parse_gates(["mine.f1@10>=coding_last.f1@10"]))
    assert not held and lines == ["gates not judged: the run is incomplete (1 items missing, 2 without a result; see "
                                  "its header): rerun those items (the cache keeps the others' results)"]
    assert judge(run, [])[0]  # no gate asked: nothing to fail


def test_a_shard_is_neither_judged_nor_a_baseline() -> None:
    """A shard's figures are a part of the run's: a gate on them passed or failed a job-array task on
    the wrong data. As a baseline, a shard or an incomplete run is refused as differing settings are."""
    run = run_of(study_records(20, {"mine": 1.5, "coding_last": 0.2}))
    shard = run_of(study_records(20, {"mine": 1.5, "coding_last": 0.2}))
    shard.info = {**shard.info, "shard": {"index": 1, "count": 3}}
    held, lines = judge(shard, parse_gates(["mine.f1@10>=99%"]))
    assert not held and lines == ["gates not judged: the run is shard 1/3, part of a run: merge the shards "
                                  "(attnalign merge) and judge the merged run"]
    fails = parse_compare_fails(["f1@10:2%"])
    held, lines = judge(run, [], shard, fails, base_name="b.json")
    assert not held and lines == ["comparison refused: b.json is shard 1/3, part of a run: merge the shards (attnalign "
                                  "merge) and judge the merged run; pass --compare-force to compare anyway"]
    held, lines = judge(run, [], shard, fails, force=True, base_name="b.json")
    assert held and lines[0].startswith("Compared with b.json (compared as forced: b.json is shard 1/3")
    held, lines = judge(shard, [], run, base_name="whole.json")  # no gate: the table, said to be a shard's
    assert held and lines[0] == ("Compared with whole.json (this run is shard 1/3, part of a run: merge the shards "
                                 "(attnalign merge) and judge the merged run):")


def test_a_gate_on_a_method_without_results_fails() -> None:
    run = run_of(study_records(3, {"mine": 1.0}))
    held, (line,) = judge(run, parse_gates(["mine.alpha@5>=other.alpha@5"]))
    assert not held and line == "gate mine.alpha@5>=other.alpha@5 [m]: FAILED: no result of other to judge"
    held, (line,) = judge(run_of([]), parse_gates(["mine.alpha@5>=0.1"]))
    assert not held and "no results" in line


def spans_first(task_id: str, spans: int, words: int, **changes: Any) -> Record:
    """A record whose top ``spans + words`` units are ``spans`` of the task's human spans themselves, then
    ``words`` words outside every span: P and R are then ratios of whole counts."""
    task = get_task(task_id)
    human = sorted(human_spans(task))
    a, b = task.description
    outside = [(a + m.start(), a + m.end()) for m in re.finditer(r"\w+", task.prompt[a:b])
               if not any(a + m.end() > x and a + m.start() < y for x, y in human)]
    units = [(s, e, 3.0 if i < spans else 0.1) for i, (s, e) in enumerate(human)]
    units += [(s, e, 2.0 if i < words else 0.0) for i, (s, e) in enumerate(outside)]
    return make_record(task_id, units, **changes)


@pytest.mark.parametrize(("op", "holds"), [(">=", True), (">", False), ("<=", True), ("<", False)])
def test_a_figure_exactly_at_a_threshold_meets_it_whatever_the_rounding(op: str, holds: bool) -> None:
    """P 3/4 and R 3/11 make F1 exactly 40%, computed as 0.39999999999999997: '>=40%' failed and '<40%' held."""
    run = run_of([spans_first("HumanEval/1", 3, 1)])  # 11 human spans; at K=4: 3 of them and a word
    f1 = pooled(run.records, [4])[4]
    assert (f1.precision, f1.recall, f1.f1) == (0.75, 3 / 11, 0.39999999999999997)
    held, (line,) = judge(run, parse_gates([f"shap.f1@4{op}40%"]))
    assert held is holds, line
    assert "40.0% vs threshold 40.0%, difference +0.00 points, 95% CI [+0.00, +0.00 points]" in line


# ------------------------------------------------------------------------------- compare


def doctored(records: list[Record], skill: float) -> list[Record]:
    """The same tasks with units scored by another skill (a baseline that was better or worse)."""
    return [make_record(r.task_id, word_units(r.task_id, skill, 1), method=r.method, passed=r.passed) for r in records]


def test_compare_fail_passes_an_honest_baseline_and_fails_a_doctored_one() -> None:
    now = run_of(study_records(20, {"shap": 0.5}))
    fails = parse_compare_fails(["f1@10:2%", "pass1:1%"])
    held, lines = judge(now, [], run_of(study_records(20, {"shap": 0.5})), fails)
    assert held, lines
    assert lines[0] == "Compared with the baseline:"
    assert "shap" in lines[1] and "(+0.0)" in lines[1]  # the table: no change
    assert [line.split(":")[0] for line in lines[2:]] == ["compare-fail f1@10", "compare-fail pass1"]
    assert "change +0.00 points" in lines[2] and "allowed drop 2.00 points" in lines[2]

    better = run_of(doctored(now.records, 3.0))
    held, lines = judge(now, [], better, fails)
    assert not held
    line = next(l for l in lines if l.startswith("compare-fail f1@10:2% [m shap]"))
    base_f1, now_f1 = pooled(better.records, [10])[10].f1, pooled(now.records, [10])[10].f1
    assert f"FAILED: F1@10 {base_f1:.1%} -> {now_f1:.1%}, change {(now_f1 - base_f1) * 100:+.2f} points" in line
    assert any(l.startswith("compare-fail pass1:1% [m]: held") for l in lines)


def test_a_drop_of_exactly_the_allowed_drop_holds_whatever_the_rounding() -> None:
    """P and Pass@1 from 90% to 70% is a drop of 0.7 - 0.9 = -0.20000000000000007: ':20%' failed from 90%
    (held from 50%), and with '!' too, every resample dropping exactly as much."""
    tasks = ["HumanEval/0", "HumanEval/1", "HumanEval/3", "HumanEval/4", "HumanEval/10", "HumanEval/11",
             "HumanEval/12", "HumanEval/19", "HumanEval/25", "HumanEval/29"]  # 9 or more human spans each

    def at(share: int) -> Run:  # at K=10, `share` of the units are human spans; `share` of the tasks pass
        return run_of([spans_first(t, share, 10 - share, passed=i < share) for i, t in enumerate(tasks)])

    now, base = at(7), at(9)
    assert [pooled(r.records, [10])[10].precision for r in (now, base)] == [0.7, 0.9]
    held, lines = judge(now, [], base, parse_compare_fails(["p@10:20%,p@10:20%!,pass1:20%,pass1:20%!"]))
    assert held, lines
    assert "P@10 90.0% -> 70.0%, change -20.00 points, 95% CI [-20.00, -20.00 points]" in lines[-4]
    assert "Pass@1 90.0% -> 70.0%, change -20.00 points" in lines[-2]
    held, lines = judge(now, [], base, parse_compare_fails(["p@10:19.99%!"]))  # a drop just past it fails
    assert not held and "FAILED" in lines[-1]


def test_a_compare_fail_judges_the_tasks_the_table_compares() -> None:
    """A task with no code in one run only is left out of the table; the verdict paired it as a zero row,
    so identical figures on the other tasks failed 'f1@10:0%' (F1@10 62.0% -> 61.8%, change -0.14 points)."""
    def records(no_code: set[int]) -> list[Record]:
        return [make_record(f"HumanEval/{i}", word_units(f"HumanEval/{i}", 0.5 + 0.2 * i, 0), no_code=i in no_code,
                            **({"completion": "", "error_patterns": []} if i in no_code else {})) for i in range(6)]

    now, base = run_of(records({5})), run_of(records(set()))
    fails = parse_compare_fails(["f1@10:0%!", "f1@10:0%"])
    held, lines = judge(now, [], base, fails)
    assert held, lines
    assert re.search(r"\nm +shap +10 +5 +\S+ \(\+0\.0\) +\S+ \(\+0\.0\) +\S+ \(\+0\.0\)", lines[1])  # 5 tasks
    assert all("change +0.00 points, 95% CI [+0.00, +0.00 points] (paired bootstrap over 5 tasks" in line
               for line in lines[2:])
    assert "Pass@1" in lines[1] and re.search(r"\nm +6 +", lines[1])  # Pass@1 runs the no-code task's tests
    gate = judge(now, parse_gates(["shap.f1@10>=0%"]))[1][0]
    assert "(bootstrap over 5 tasks" in gate  # as Table 2 pools: the tasks with code
    silent = run_of([dataclasses.replace(r, no_code=True) for r in now.records])  # no code at all: said, not skipped
    held, lines = judge(silent, [], base, fails[1:])
    assert not held and lines[-1] == "compare-fail f1@10:0% [m shap]: FAILED: no task scored in both runs to compare"


def test_differing_settings_refuse_the_comparison_unless_forced() -> None:
    now = run_of(study_records(4, {"shap": 0.5}))
    other = [make_record(r.task_id, list(r.units), method="shap", labels="study",
                         model_identity={**r.model_identity, "revision": "r2"},
                         attribution={**r.attribution, "settings": {"evaluations": 10}}) for r in now.records]
    base = Run(other, (5, 10), now.info, now.versions)
    fails = parse_compare_fails(["f1@10:2%"])
    held, (line,) = judge(now, [], base, fails, base_name="0001_base.json")
    assert not held
    assert line == ("comparison refused: settings differ from 0001_base.json: ks: [5, 10] -> [5, 10, 20]; "
                    "labels: 'study' -> 'corrected'; method shap evaluations: 10 -> 50; "
                    "model m revision: 'r2' -> 'r'; pass --compare-force to compare anyway")
    held, lines = judge(now, [], base, fails, force=True)
    assert lines[0].startswith("Compared with the baseline (settings differ, compared as forced: ks:")
    assert any(l.startswith("compare-fail f1@10:2% [m shap]") for l in lines)
    # no compare-fail: the refusal is reported, the session is not failed for it
    assert judge(now, [], base)[0]


# ------------------------------------------------------------------------------- storage and the CLI


def test_saved_runs_are_numbered_and_found_by_name_counter_or_path(tmp_path: Path) -> None:
    with pytest.raises(AttnalignError, match="no saved run in .*: save one with --attn-save NAME or --attn-autosave"):
        find_run(tmp_path, "")
    first = save_path(tmp_path, "base")
    assert first.name == "0001_base.json"
    write_run(first, run_of(study_records(1, {"shap": 1.0})))  # no value takes the newest usable baseline:
    second = save_path(tmp_path, "base")                          # a run file (tests/test_storage.py)
    assert second.name == "0002_base.json"
    write_run(second, run_of(study_records(1, {"shap": 1.0})))
    (tmp_path / "notes.json").write_text("{}")
    assert find_run(tmp_path, "") == second  # the newest
    assert find_run(tmp_path, "1") == find_run(tmp_path, "0001") == first
    assert find_run(tmp_path, "base") == second and find_run(tmp_path, "0001_base.json") == first
    assert find_run(tmp_path, str(tmp_path / "notes.json")) == tmp_path / "notes.json"
    with pytest.raises(AttnalignError, match=r"no saved run 'nope' in .* \(latest: 0001_base, 0002_base\)"):
        find_run(tmp_path, "nope")


def test_report_command_compares_and_gates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records = study_records(10, {"mine": 1.5, "coding_last": 0.2})
    write_run(tmp_path / "now.json", run_of(records))
    write_run(tmp_path / "base.json", run_of(doctored(records, 3.0)))
    now = str(tmp_path / "now.json")
    assert main(["report", now, "--gate", "mine.f1@10>=coding_last.f1@10"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(run_of(records).summary()) and "gate mine.f1@10>=coding_last.f1@10 [m]: held" in out
    assert main(["report", now, "--compare", str(tmp_path / "base.json"), "--compare-fail", "coding_last.f1@10:1%"]) == 1
    assert "compare-fail coding_last.f1@10:1% [m coding_last]: FAILED" in capsys.readouterr().out
    for argv, message in (
        (["--gate", "mine.f1@10>=40"], "--gate: 'mine.f1@10>=40': F1 thresholds are written as percent"),
        (["--gate", "nope.f1@10>=40%"], "--gate: 'nope.f1@10>=40%': method 'nope' is not in this run"),
        (["--gate", "mine.f1@7>=40%"], "--gate: 'mine.f1@7>=40%': K=7 is not in this run (K: 5, 10, 20)"),
        (["--compare-fail", "f1@10:2%"], "--compare-fail: no baseline: add --compare OTHER.json"),
        (["--gate", ","], "--gate: ',' holds no expression; grammar: METHOD"),  # was no gate: exit 0
        (["--compare-fail", ""], "--compare-fail: '' holds no expression; grammar: [METHOD.]METRIC@K:DROP"),
    ):
        assert main(["report", now, *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"attnalign: error: {message}") and err.count("\n") == 1, err
    write_run(tmp_path / "k5.json", dataclasses.replace(run_of(doctored(records, 3.0)), ks=(5, 10)))
    argv = ["--compare", str(tmp_path / "k5.json"), "--compare-fail", "f1@20:2%", "--compare-force"]
    assert main(["report", now, *argv]) == 2  # was judged "held" on a figure the baseline lacks; pytest refused it
    assert capsys.readouterr().err == f"attnalign: error: --compare-fail: K=20 is not in the baseline {tmp_path / 'k5.json'} (K: 5, 10)\n"
    for argv in (["--html", ""], ["--compare", ""]):  # an unset variable: was no page / no comparison, exit 0
        with pytest.raises(SystemExit) as stop:
            main(["report", now, *argv])
        assert stop.value.code == 2
        assert f"argument {argv[0]}: empty value: give one, or leave the option out" in capsys.readouterr().err


def test_a_compare_fail_with_no_task_in_common_says_so() -> None:
    """Two runs of other tasks (a forced comparison) once gave 'F1@10 undefined -> undefined, change undefined'."""
    records = study_records(4, {"shap": 1.0})
    run, base = run_of(records[:2]), run_of(records[2:])
    held, lines = judge(run, [], base, parse_compare_fails(["f1@10:2%"]), base_name="b.json")
    assert not held and lines[-1] == "compare-fail f1@10:2% [m shap]: FAILED: no task scored in both runs to compare"


def test_a_reader_that_leaves_early_costs_no_traceback_nor_the_page(tmp_path: Path) -> None:
    """``attnalign report run.json --html page.html | head -1`` ended in a BrokenPipeError traceback,
    and the page, written after the summary, was never written."""
    import subprocess
    import sys

    write_run(tmp_path / "run.json", run_of(study_records(3, {"mine": 1.0})))
    page = tmp_path / "page.html"
    proc = subprocess.Popen([sys.executable, "-m", "pytest_attnalign.cli", "report", str(tmp_path / "run.json"),
                             "--html", str(page)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first line
    err = proc.stderr.read().decode()
    assert proc.wait() == 141 and err == "" and page.stat().st_size > 0


def _save_after(barrier: Any, directory: Path) -> str:
    barrier.wait()
    return save_run(directory, "main", run_of(study_records(1, {"mine": 1.0}))).name


def test_runs_saved_at_once_each_get_their_own_file(tmp_path: Path) -> None:
    """Two runs finishing together both reported 'run saved as 0005_main.json': the second replaced the first."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    with ctx.Manager() as manager, ctx.Pool(6) as pool:
        barrier = manager.Barrier(6)
        names = pool.starmap(_save_after, [(barrier, tmp_path)] * 6)
    assert sorted(names) == [f"{i:04d}_main.json" for i in range(1, 7)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)  # no temp file left
    assert all(read_run(tmp_path / n).records for n in names)


def test_a_baseline_that_errored_everywhere_is_refused_as_incomplete_not_for_blank_settings() -> None:
    """Every item of the baseline errored: the refusal listed every setting as differing from blank
    (labels '' -> 'corrected', ...) and never said why; the first reason is that it is incomplete."""
    run = run_of(study_records(20, {"mine": 1.5, "coding_last": 0.2}))
    empty = Run([], KS, {"complete": False, "errors": ["HumanEval/0 mine"], "missing": []}, run.versions)
    held, lines = judge(run, [], empty, parse_compare_fails(["f1@10:2%"]), base_name="e.json")
    assert not held and lines == ["comparison refused: e.json is incomplete (0 items missing, 1 without a result; "
                                  "see its header): rerun those items (the cache keeps the others' results); "
                                  "pass --compare-force to compare anyway"]
    partial = run_of(study_records(20, {"mine": 1.5, "coding_last": 0.2}))
    partial.info = {**partial.info, "complete": False, "missing": ["x"], "errors": []}
    partial.ks = (5,)
    _, lines = judge(run, [], partial, parse_compare_fails(["f1@10:2%"]), base_name="p.json")
    assert lines[0].startswith("comparison refused: p.json is incomplete (1 items missing") and "; settings differ" in lines[0]
