"""``--attn-shard I/N`` and ``attnalign merge``: shards of a real run merge into the unsharded run."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from openai_server import OpenAIStub
from synthetic import make_record, word_units
from test_plugin import NO_CACHE, _isolated_env, _script, project, records, tiny_gpt2  # noqa: F401 (fixtures)

from pytest_attnalign.cli import main
from pytest_attnalign.errors import AttnalignError
from pytest_attnalign.runfile import Run, write_run
from pytest_attnalign.runinfo import RunInfo
from pytest_attnalign.sharding import assign, parse_shard

ITEM = re.compile(r"test_alignment\[(?P<model>\S+)-(?P<method>[^-\]]+)-(?P<task>\w+/\d+)\]")


@pytest.mark.parametrize(("text", "expected"), [
    ("1/4", r"^$"), ("4/4", r"shard '4/4' does not exist: I/N needs N >= 1 and I from 0 to N-1"),
    ("0/0", r"shard '0/0' does not exist"), ("a/4", r"'a/4' is not I/N \(e.g. 0/16"), ("-1/4", r"is not I/N"),
])
def test_shard_text_is_checked(text: str, expected: str) -> None:
    if expected == r"^$":
        assert parse_shard(text) == (1, 4)
        return
    with pytest.raises(AttnalignError, match=expected):
        parse_shard(text)


def test_bad_shard_is_a_usage_error(project: pytest.Pytester) -> None:
    result = project.runpytest("--attn-model=openai:stub", "--attn-shard=3/3", *NO_CACHE)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --attn-shard: shard '3/3' does not exist: *"])


def test_groups_are_balanced_longest_first_and_deterministically() -> None:
    costs = [("a", 1), ("b", 9), ("c", 4), ("d", 5), ("e", 3), ("f", 3)]
    shard_of = assign(costs, 2)
    loads = [sum(c for g, c in costs if shard_of[g] == i) for i in range(2)]
    assert loads == [13, 12]  # 9+3+1 vs 5+4+3: no shard gets both long groups
    assert assign(costs, 1) == dict.fromkeys("abcdef", 0)
    assert set(assign(costs, 10).values()) == set(range(6))  # more shards than groups: some stay empty


def test_shards_merge_into_the_unsharded_run(
    project: pytest.Pytester, tiny_gpt2: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two shards (one under -n 2) and one unsharded run of the same selection, each with a cold cache
    of its own; one torch thread everywhere, as float sums differ between thread counts."""
    def run(name: str, *extra: str) -> pytest.RunResult:
        (tmp_path / name).mkdir()
        return project.runpytest_subprocess(
            f"--attn-model={tiny_gpt2}", "--attn-method=reading_last,coding_all", "--attn-limit=2",
            "--attn-max-new-tokens=8", "--attn-device=cpu", f"--attn-cache-dir={tmp_path / name / 'cache'}",
            f"--attn-json={tmp_path / name / 'run.json'}", "--attn-threads=1", "-v", *extra, *NO_CACHE, timeout=120)

    whole = run("whole")
    shards = [run("shard0", "--attn-shard=0/2"), run("shard1", "--attn-shard=1/2", "-n", "2")]  # xdist too
    for result in (whole, *shards):
        assert result.ret in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED), result.stdout.str()
    # progress: a line per finished item (a tenth of 8 rounds up to one), then the final line
    lines = re.findall(r"attnalign progress: (\d)/8 items \(\d+%\) after [\dhms]+, ETA [^\n]+\n", whole.stdout.str())
    assert lines == [str(n) for n in range(1, 8)] and "attnalign progress: 8/8 items in " in whole.stdout.str()
    ran = [set(json.loads((tmp_path / f"shard{i}" / "run.json").read_text())["run"]["shard"]["expected"])
           for i in range(2)]
    for i, result in enumerate(shards):  # what pytest ran is the shard's items
        assert {m.group(0) for m in ITEM.finditer(result.stdout.str())} == {ITEM.search(x).group(0) for x in ran[i]}
    groups = [{(m["model"], m["task"]) for m in map(ITEM.search, items)} for items in ran]
    assert groups[0] and groups[1] and not groups[0] & groups[1]  # a model x task lives in one shard
    assert len(groups[0] | groups[1]) == 4 and len(ran[0] | ran[1]) == 8

    capsys.readouterr()
    merged = tmp_path / "merged.json"
    assert main(["merge", str(tmp_path / "shard1" / "run.json"), str(tmp_path / "shard0" / "run.json"),
                 "-o", str(merged)]) == 0
    printed = capsys.readouterr().out
    assert records(merged) == records(tmp_path / "whole" / "run.json")  # records sorted, tables, run facts
    assert main(["report", str(tmp_path / "whole" / "run.json")]) == 0
    assert printed == capsys.readouterr().out + f"merged 2 shard files into {merged}\n"

    # refusals: a shard twice, a missing shard, another run's shard
    one = str(tmp_path / "shard0" / "run.json")
    for argv, error in (
        ([one, one], "shard 0/2 given twice .*: give each shard's file once"),
        ([one], r"shard 1/2 missing: give every shard's run file, or --allow-missing"),
        ([one, str(tmp_path / "whole" / "run.json")], "is not a shard's run file"),
    ):
        assert main(["merge", *argv, "-o", str(tmp_path / "x.json")]) == 2
        assert re.search(error, capsys.readouterr().err), error
    other = json.loads(Path(one).read_text())
    for record in other["records"]:
        record["labels"] = "study"
    (tmp_path / "other.json").write_text(json.dumps(other))
    assert main(["merge", str(tmp_path / "other.json"), str(tmp_path / "shard1" / "run.json"), "-o",
                 str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err  # the two shards' values and the option, not a union that holds both
    assert re.search(r"run.json has labels 'corrected', \S*other.json 'study': merge the shards of one run, "
                     r"each with the same --attn-labels", err), err

    # a shard that stopped early (interrupted, -x) is refused as an absent one is
    stopped = json.loads(Path(one).read_text())
    stopped["run"]["missing"] = stopped["run"]["shard"]["expected"][:1]
    stopped["run"]["complete"] = False
    (tmp_path / "stopped.json").write_text(json.dumps(stopped))
    assert main(["merge", str(tmp_path / "stopped.json"), str(tmp_path / "shard1" / "run.json"), "-o",
                 str(tmp_path / "x.json")]) == 2
    assert capsys.readouterr().err == (f"attnalign: error: shard 0/2 ({tmp_path / 'stopped.json'}) stopped before 1 of "
                                       "its items ran: rerun it (the cache keeps what it computed), or --allow-missing "
                                       "to merge without them\n")

    # --allow-missing: a partial run naming the absent shard's items
    assert main(["merge", one, "-o", str(tmp_path / "part.json"), "--allow-missing"]) == 0
    out = capsys.readouterr().out
    doc = json.loads((tmp_path / "part.json").read_text())
    assert sorted(doc["run"]["missing"]) == sorted(ran[1])
    assert doc["run"]["complete"] is False and f"partial: 4 of 8 items ran; missing: " in out


def _two_shards(tmp_path: Path) -> list[Path]:
    """Run files of shards 0/2 and 1/2 of a two-task study, one synthetic record each."""
    study = [f"test_alignment[m-shap-HumanEval/{i}]" for i in range(2)]
    shards = [tmp_path / f"shard{i}.json" for i in range(2)]
    for i, path in enumerate(shards):
        info = RunInfo(expected=[study[i]], finished={study[i]}, shard=(i, 2), study=study, selected=study).as_dict()
        write_run(path, Run([make_record(f"HumanEval/{i}", word_units(f"HumanEval/{i}", 1.0, 0))], (5, 10), info))
    return shards


def test_merge_refuses_to_write_over_a_shard(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``-o`` naming one of the shards would replace it with the merged run: refused before anything is read."""
    shards = _two_shards(tmp_path)
    before = [path.read_bytes() for path in shards]
    assert main(["merge", *map(str, shards), "-o", str(shards[0])]) == 2
    out, err = capsys.readouterr()
    shard0 = repr(str(shards[0]))
    assert out == "" and err == (f"attnalign: error: --output: {shard0} is the shard file {shard0}, which the merged "
                                 "run would overwrite: give the merged run another path\n")
    assert [path.read_bytes() for path in shards] == before
    assert main(["merge", *map(str, shards), "-o", str(tmp_path / "run.json")]) == 0  # the shards do merge


def test_a_shards_errored_items_leave_the_merged_run_incomplete(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """An item that gave no result in its shard is an error of the merged run too; a shard file whose
    run section lost the facts merge adds up is refused in one line."""
    study = [f"test_alignment[m-shap-HumanEval/{i}]" for i in range(2)]
    shards = [tmp_path / f"shard{i}.json" for i in range(2)]
    for i, path in enumerate(shards):  # shard 1's item errored: finished, no record
        info = RunInfo(expected=[study[i]], finished={study[i]}, errors={study[1]} & {study[i]}, shard=(i, 2),
                       study=study, selected=study).as_dict()
        write_run(path, Run([make_record(f"HumanEval/{i}", word_units(f"HumanEval/{i}", 1.0, 0))][: 1 - i], (5, 10), info))
    assert main(["merge", *map(str, shards), "-o", str(tmp_path / "run.json")]) == 0
    doc = json.loads((tmp_path / "run.json").read_text())
    assert (doc["run"]["complete"], doc["run"]["missing"], doc["run"]["errors"]) == (False, [], [study[1]])
    assert "incomplete: 1 of 2 items gave no result (an error)" in capsys.readouterr().out
    damaged = json.loads(shards[1].read_text())
    del damaged["run"]["missing"]
    shards[1].write_text(json.dumps(damaged))
    assert main(["merge", *map(str, shards), "-o", str(tmp_path / "again.json")]) == 2
    assert capsys.readouterr().err == (f"attnalign: error: {shards[1]} is damaged: its run section lacks 'missing': "
                                       "merge the --attn-json files the shards' runs wrote\n")


def _shard_field(key: str, value: object) -> Callable[[dict[str, Any]], None]:
    return lambda doc: doc["run"]["shard"].__setitem__(key, value)


@pytest.mark.parametrize(("damage", "message"), [
    (_shard_field("expected", 5), "run.shard.expected: expected a list, got int"),
    (_shard_field("expected", [5, [1]]), "run.shard.expected[0]: expected str, got int"),
    (_shard_field("index", [0]), "run.shard.index: expected int, got list"),
    (_shard_field("index", 2), "run.shard: shard 2/2 does not exist (0 <= index < count)"),
    (_shard_field("count", "2"), "run.shard.count: expected int, got str"),
    (_shard_field("selected", 5), "run.shard.selected: expected a list, got int"),
    (_shard_field("shares", 5), "run.shard.shares: expected a list, got int"),
    (_shard_field("shares", [{"x": 1}]), "run.shard.shares[0]: missing 'threads'"),
    (_shard_field("shares", ["a"]), "run.shard.shares[0]: expected an object for Share, got str"),
    (lambda doc: doc["records"][0]["top_k"].__setitem__("9" * 5000, []), "records[0].top_k: key '99999"),
])
def test_merge_refuses_a_damaged_shard_section_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: Callable[[dict[str, Any]], None], message: str
) -> None:
    """Wrong types inside ``run.shard`` (what merge rebuilds the run's facts from) crashed merge with a TypeError."""
    study = [f"test_alignment[m-shap-HumanEval/{i}]" for i in range(2)]
    shards = [tmp_path / f"shard{i}.json" for i in range(2)]
    for i, path in enumerate(shards):
        info = RunInfo(expected=[study[i]], finished={study[i]}, shard=(i, 2), study=study, selected=study,
                       shares=[{"threads": 1, "cores": 2, "processes": 1, "fixed": True}]).as_dict()
        write_run(path, Run([make_record(f"HumanEval/{i}", word_units(f"HumanEval/{i}", 1.0, 0))], (5, 10), info))
    doc = json.loads(shards[1].read_text())
    damage(doc)
    shards[1].write_text(json.dumps(doc))
    assert main(["merge", *map(str, shards), "-o", str(tmp_path / "run.json")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"attnalign: error: run file {str(shards[1])!r} is damaged: {message}")
    assert err.count("\n") == 1 and not (tmp_path / "run.json").exists()


def test_an_empty_shard_writes_its_run_file_and_succeeds(project: pytest.Pytester, tmp_path: Path) -> None:
    """More shards than models x tasks: a job array's extra task must not fail or leave no file to merge."""
    out = tmp_path / "run.json"
    result = project.runpytest("--attn-model=openai:stub", "--attn-method=shap", "--attn-limit=1",
                               "--attn-shard=5/6", f"--attn-cache-dir={tmp_path}", f"--attn-json={out}", *NO_CACHE)
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    shard = json.loads(out.read_text())["run"]["shard"]
    assert shard["expected"] == [] and len(shard["study"]) == 2 and (shard["index"], shard["count"]) == (5, 6)


def test_a_model_path_pytest_escapes_in_ids_is_shared_out(project: pytest.Pytester, tmp_path: Path) -> None:
    """pytest writes a model directory ``modèle`` as ``mod\\xe8le`` in an item's id: the study's ids were
    built unescaped, no item matched them, and every shard ran nothing."""
    model = tmp_path / "modèle"
    model.mkdir()
    (model / "config.json").write_text("{}")  # --collect-only loads no model
    kept = []
    for shard in ("0/2", "1/2"):
        result = project.runpytest(f"--attn-model={model}", "--attn-method=shap", "--attn-limit=2",
                                   "--attn-benchmark=humaneval", f"--attn-shard={shard}", "--collect-only", "-q",
                                   f"--attn-cache-dir={tmp_path / 'cache'}", *NO_CACHE)
        kept += [line for line in result.outlines if "::test_alignment[" in line]
    assert len(kept) == 2 and len(set(kept)) == 2 and all("mod\\xe8le" in line for line in kept), kept


def test_k_selects_within_the_shards_of_the_whole_study(
    project: pytest.Pytester, tiny_gpt2: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Shards share out the whole study, then -k selects in each: the shard without the selected task
    says so and succeeds, and the merged run is the unsharded -k run (complete, and saying it is a
    selection), not a partial study.
    Each run has a cold cache of its own (a record says whether its results came from the cache)."""
    def run(name: str, *extra: str) -> pytest.RunResult:
        return project.runpytest_subprocess(
            f"--attn-model={tiny_gpt2}", "--attn-method=reading_last,coding_all", "--attn-limit=2",
            "--attn-max-new-tokens=8", "--attn-device=cpu", f"--attn-cache-dir={tmp_path / name}.cache",
            f"--attn-json={tmp_path / name}", "--attn-threads=1", "-k", "HumanEval/1]", *extra, *NO_CACHE,
            timeout=120)

    whole = run("whole.json")
    shards = [run(f"shard{i}.json", f"--attn-shard={i}/2") for i in range(2)]
    assert all(r.ret in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED) for r in (whole, *shards))
    docs = [json.loads((tmp_path / f"shard{i}.json").read_text())["run"] for i in range(2)]
    empty = next(i for i in range(2) if not docs[i]["shard"]["expected"])
    assert shards[empty].ret == pytest.ExitCode.OK and len(docs[1 - empty]["shard"]["expected"]) == 2
    assert len(docs[empty]["shard"]["study"]) == 8 and len(docs[empty]["shard"]["selected"]) == 2
    shards[empty].stdout.fnmatch_lines([f"shard {empty}/2: none of the 2 that -k/-m selected of the study's 8 items; "
                                        "the other shards run them (shards share out the whole study's model x "
                                        "task groups, whatever -k/-m select)"])
    shards[1 - empty].stdout.fnmatch_lines([f"shard {1 - empty}/2: all of the 2 that -k/-m selected of the study's 8 items"])
    whole.stdout.fnmatch_lines(["selection: 2 of the study's 8 items (-k, -m, --lf or --deselect); the tables cover these only"])
    assert main(["merge", *(str(tmp_path / f"shard{i}.json") for i in range(2)), "-o", str(tmp_path / "m.json")]) == 0
    assert "partial:" not in capsys.readouterr().out
    assert records(tmp_path / "m.json") == records(tmp_path / "whole.json")


ERROR_IN_MBPP_2 = """
import pytest


def pytest_runtest_setup(item):
    if "Mbpp/2]" in item.nodeid:
        raise AssertionError("made to fail")
    pytest.skip("no model needed")
"""


def test_an_lf_rerun_of_a_shard_keeps_the_shards_groups(project: pytest.Pytester, tmp_path: Path) -> None:
    """Shards were shared out over the items --lf kept: Mbpp/2 (shard 1's) alone, so shard 0 reran it
    and recorded it as the whole study, which attnalign merge then refused as another run's."""
    project.makeconftest(ERROR_IN_MBPP_2)  # items end in set-up: no model loads
    opts = ["--attn-model=openai:stub", "--attn-method=reading_last,coding_all", "--attn-limit=2", "--attn-max-new-tokens=8",
            f"--attn-cache-dir={tmp_path / 'cache'}", "-p", "no:randomly"]
    project.runpytest(*opts).assert_outcomes(errors=2, skipped=6)

    def shard(i: int, *extra: str) -> dict[str, Any]:
        out = tmp_path / f"shard{i}{''.join(extra)}.json"
        project.runpytest(*opts, f"--attn-shard={i}/2", f"--attn-json={out}", *extra)
        return json.loads(out.read_text())["run"]["shard"]

    for i in range(2):
        whole, rerun = shard(i, *NO_CACHE), shard(i, "--lf")  # NO_CACHE: the first run's failures stay last
        assert rerun["study"] == whole["study"] and len(whole["study"]) == 8
        assert rerun["expected"] == [x for x in whole["expected"] if "Mbpp/2]" in x]  # its failures in its shard
        assert len(rerun["expected"]) == 2 * i  # shard 1's: 4 groups of equal cost, dealt out in the study's order


def test_a_selection_of_nothing_fails_every_shard(project: pytest.Pytester, tmp_path: Path) -> None:
    """A -k that matches no item of the study is no empty shard of a job array: pytest's "no tests" status
    (each word matches items, so it is no usage error)."""
    result = project.runpytest("--attn-model=openai:stub", "--attn-method=shap", "--attn-limit=1", "-k",
                               "humaneval and mbpp", "--attn-shard=0/2", f"--attn-cache-dir={tmp_path}", *NO_CACHE)
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED, result.stdout.str()


@pytest.mark.parametrize("flag", ["--attn-gate=shap.f1@10>=40%", "--attn-compare", "--attn-compare-fail=f1@10:2%"])
def test_a_shard_is_not_gated_or_compared(project: pytest.Pytester, tmp_path: Path, flag: str) -> None:
    """A gate judged one shard's third of the tasks: a job-array task failed (or passed) on the wrong data."""
    result = project.runpytest("--attn-model=openai:stub", "--attn-method=shap", "--attn-shard=0/2", flag,
                               f"--attn-cache-dir={tmp_path}", *NO_CACHE)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert result.errlines[0].startswith(f"ERROR: {flag.partition('=')[0]}: a shard's figures are part of the run's: "
                                         "merge the shards' --attn-json files (attnalign merge)")


def test_merge_refuses_shards_of_two_versions_of_a_method(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each record keeps its method's provenance; shards run with two versions of a package are two runs."""
    study = [f"test_alignment[m-mine-HumanEval/{i}]" for i in range(2)]
    shards = [tmp_path / f"shard{i}.json" for i in range(2)]
    for i, path in enumerate(shards):
        kept = {"category": "perturbation", "options": [], "origin": f"mymeth 0.{i + 1}.0"}
        record = make_record(f"HumanEval/{i}", word_units(f"HumanEval/{i}", 1.0, 0), method="mine",
                             attribution={"seconds": 0.5, "settings": {}, "cached": False, "method": kept})
        info = RunInfo(expected=[study[i]], finished={study[i]}, shard=(i, 2), study=study, selected=study).as_dict()
        write_run(path, Run([record], (5, 10), info))
    assert main(["merge", *map(str, shards), "-o", str(tmp_path / "run.json")]) == 2
    assert capsys.readouterr().err == (f"attnalign: error: {shards[1]} ran method mine from mymeth 0.2.0, {shards[0]} "
                                       "from mymeth 0.1.0: merge the shards of one run\n")


def test_merge_refuses_shards_of_two_error_pattern_ks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Shards run with --attn-error-k 10 and 5 merged into one run whose summary said 'error-pattern K: 5'."""
    study = [f"test_alignment[m-shap-HumanEval/{i}]" for i in range(3)]
    shards = [tmp_path / f"shard{i}.json" for i in range(3)]
    for i, path in enumerate(shards):  # shard 1 ran nothing: it has no K to differ
        info = RunInfo(expected=[study[i]], finished={study[i]}, shard=(i, 3), study=study, selected=study).as_dict()
        record = make_record(f"HumanEval/{i}", word_units(f"HumanEval/{i}", 1.0, 0), error_k=5 if i == 2 else 10)
        write_run(path, Run([record] if i != 1 else [], (5, 10), info))
    assert main(["merge", *map(str, shards), "-o", str(tmp_path / "run.json")]) == 2
    assert capsys.readouterr().err == (f"attnalign: error: {shards[2]} ran with --attn-error-k 5, {shards[0]} with 10: "
                                       "merge the shards of one run, each run with the same options\n")
    assert not (tmp_path / "run.json").exists()
    assert main(["merge", *map(str, shards[:2]), "-o", str(tmp_path / "run.json"), "--allow-missing"]) == 0


def test_the_merged_run_is_of_the_shards_python(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The merged file recorded the Python that ran merge; shards of two Pythons are two runs, as with libraries."""
    shards = _two_shards(tmp_path)

    def ran_under(path: Path, python: str) -> None:
        doc = json.loads(path.read_text())
        doc["environment"]["python"] = python
        path.write_text(json.dumps(doc))

    for path in shards:
        ran_under(path, "3.9.0")
    assert main(["merge", *map(str, shards), "-o", str(tmp_path / "run.json")]) == 0
    assert json.loads((tmp_path / "run.json").read_text())["environment"]["python"] == "3.9.0"
    ran_under(shards[1], "3.12.1")
    capsys.readouterr()
    assert main(["merge", *map(str, shards), "-o", str(tmp_path / "again.json")]) == 2
    assert capsys.readouterr().err == (f"attnalign: error: {shards[1]} and {shards[0]} are shards of different runs "
                                       "(Python versions differ): merge the shards of one run, each run with the same "
                                       "options\n")


def test_shards_whose_items_a_plugin_reorders_still_merge(project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    """A plugin that reorders items (pytest-randomly, another order in every process) leaves each shard's
    selection in the study's order, so the shards of one run merge."""
    def shard(i: int) -> None:
        project.runpytest_subprocess(
            "--attn-model=openai:stub", "--attn-method=shap", "--attn-shap-evaluations=4", "--attn-limit=2",
            "--attn-benchmark=humaneval", f"--attn-cache-dir={tmp_path / 'cache'}", f"--attn-json={tmp_path / f's{i}.json'}",
            f"--attn-shard={i}/2", "-k", "shap", *NO_CACHE, timeout=120)

    with OpenAIStub(_script) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        shard(0)
        project.makeconftest("def pytest_collection_modifyitems(items):\n    items.reverse()\n")
        shard(1)
    docs = [json.loads((tmp_path / f"s{i}.json").read_text())["run"]["shard"] for i in range(2)]
    assert docs[0]["selected"] == docs[1]["selected"] == docs[0]["study"]
    assert main(["merge", str(tmp_path / "s0.json"), str(tmp_path / "s1.json"), "-o", str(tmp_path / "m.json")]) == 0


def test_merge_names_both_shards_settings_and_the_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The refusal compared a shard with the union of all shards (itself included: 'fixed 6' vs
    'fixed 6, fixed 8') and named no option to align."""
    study = [f"test_alignment[m-mine-HumanEval/{i}]" for i in range(2)]
    shards = [tmp_path / f"shard{i}.json" for i in range(2)]
    for i, path in enumerate(shards):
        record = make_record(f"HumanEval/{i}", word_units(f"HumanEval/{i}", 1.0, 0), method="mine",
                             attribution={"seconds": 0.5, "settings": {"samples": 6 + 2 * i}, "cached": False})
        info = RunInfo(expected=[study[i]], finished={study[i]}, shard=(i, 2), study=study, selected=study).as_dict()
        write_run(path, Run([record], (5, 10), info))
    assert main(["merge", *map(str, shards), "-o", str(tmp_path / "run.json")]) == 2
    assert capsys.readouterr().err == (f"attnalign: error: {shards[1]} ran method mine with {{'samples': 8}}, {shards[0]} "
                                       "with {'samples': 6}: merge the shards of one run, each with the same "
                                       "--attn-method-option\n")
