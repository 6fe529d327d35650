"""Which saved run ``--attn-compare`` with no value picks: the newest a comparison accepts as its baseline.

A run whose items errored is saved too (``--attn-save``, ``--attn-autosave``); picking it as "the
newest" refused the next comparison while an older whole run sat in the directory.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from openai_server import OpenAIStub
from synthetic import study_records

import pytest_attnalign.runfile as runfile
from pytest_attnalign.errors import AttnalignError
from pytest_attnalign.runfile import Run, read_run
from pytest_attnalign.runinfo import RunInfo
from pytest_attnalign.storage import find_run, save_run
from pytest_attnalign.tasks import get_task

REPO = Path(__file__).resolve().parent.parent
KS = (5, 10)
ITEMS = [f"test_alignment[m-shap-HumanEval/{i}]" for i in range(3)]


def run_info(errors: Iterable[str] = (), missing: int = 0, **more: Any) -> dict[str, Any]:
    """The JSON ``run`` object of a run of :data:`ITEMS`: ``errors`` gave no result, the last ``missing`` never ran."""
    ran = set(ITEMS[:len(ITEMS) - missing])
    return RunInfo(expected=list(ITEMS), finished=ran, errors=set(errors), **more).as_dict()


def whole() -> Run:
    return Run(study_records(3, {"shap": 1.0}), KS, run_info())


def with_errors() -> Run:
    return Run(study_records(2, {"shap": 1.0}), KS, run_info({ITEMS[2]}))


def all_errored() -> Run:
    return Run([], KS, run_info(set(ITEMS)))


def stopped_early() -> Run:
    return Run(study_records(2, {"shap": 1.0}), KS, run_info(missing=1))


def a_shard() -> Run:
    return Run(study_records(3, {"shap": 1.0}), KS, run_info(shard=(0, 2), study=ITEMS, selected=ITEMS))


def save(directory: Path, name: str, run: Run | str) -> Path:
    """A saved run, or the next saved file holding ``run`` as its text (a damaged or foreign one)."""
    path = save_run(directory, name, run if isinstance(run, Run) else whole())
    if isinstance(run, str):
        path.write_text(run)
    return path


UNUSABLE: dict[str, tuple[Run | str, str]] = {
    "an errored item": (with_errors(), r"is incomplete \(0 items missing, 1 without a result; see its header\)"),
    "every item errored": (all_errored(), r"is incomplete \(0 items missing, 3 without a result"),
    "stopped early": (stopped_early(), r"is incomplete \(1 items missing, 0 without a result"),
    "a shard": (a_shard(), r"is shard 0/2, part of a run: merge the shards"),
    "not JSON": ("{", r"run file '.*' is not JSON"),
    "not a run": ('{"records": []}', r"run file '.*' is not a pytest-attnalign run"),
}


@pytest.fixture(params=list(UNUSABLE))
def unusable(request: pytest.FixtureRequest) -> tuple[Run | str, str]:
    return UNUSABLE[request.param]


def test_the_newest_usable_run_is_the_baseline_and_newer_unusable_ones_are_skipped(
        tmp_path: Path, unusable: tuple[Run | str, str]) -> None:
    """Each kind of run a comparison refuses (or a file that is no run) is passed over, with no error."""
    older = save(tmp_path, "main", whole())
    save(tmp_path, "main", unusable[0])
    assert find_run(tmp_path, "") == older


def test_the_lookup_reads_newest_first_and_stops_at_the_first_usable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run files may be large: older runs than the baseline are not read at all."""
    save(tmp_path, "old", "{")  # damaged, but never reached
    base = save(tmp_path, "main", whole())
    newest = save(tmp_path, "main", all_errored())
    reads: list[str] = []
    real: Callable[[Path], Run] = runfile.read_run
    monkeypatch.setattr(runfile, "read_run", lambda path: reads.append(path.name) or real(path))
    assert find_run(tmp_path, "") == base
    assert reads == [newest.name, base.name]


def test_a_run_named_by_the_user_is_taken_even_if_incomplete(tmp_path: Path) -> None:
    """The user chose it, where no value passes it over: the comparison then refuses it (or
    --attn-compare-force compares with it)."""
    older = save(tmp_path, "main", whole())
    broken = save(tmp_path, "main", with_errors())
    outside = tmp_path / "elsewhere.json"
    shutil.copy(broken, outside)
    assert find_run(tmp_path, "") == older
    assert find_run(tmp_path, "main") == find_run(tmp_path, "2") == find_run(tmp_path, broken.name) == broken
    assert find_run(tmp_path, str(outside)) == outside


def test_with_no_usable_run_the_error_names_the_newest_and_the_fix(tmp_path: Path) -> None:
    save(tmp_path, "a", all_errored())
    save(tmp_path, "b", with_errors())
    with pytest.raises(AttnalignError) as raised:
        find_run(tmp_path, "")
    message = str(raised.value)
    assert "\n" not in message
    assert message == (f"no saved run in {str(tmp_path)!r} is usable as a baseline: 0002_b.json is incomplete "
                       "(0 items missing, 1 without a result; see its header): rerun those items (the cache keeps the "
                       "others' results); 1 older run not usable either; pass --attn-compare=0002_b.json "
                       "--attn-compare-force to compare anyway, or save a complete run (--attn-save NAME)")


def test_a_newest_file_that_is_no_run_is_named_and_forcing_names_a_run_it_can_compare(tmp_path: Path) -> None:
    """Forcing cannot compare with a damaged file: the fix names the newest run that forcing can use."""
    save(tmp_path, "a", with_errors())
    save(tmp_path, "b", "{")
    with pytest.raises(AttnalignError, match=r"is usable as a baseline: run file '.*0002_b\.json' is not JSON .*; "
                                             r"1 older run not usable either; pass --attn-compare=0001_a\.json "
                                             r"--attn-compare-force to compare anyway, or save a complete run"):
        find_run(tmp_path, "")
    (tmp_path / "0001_a.json").unlink()
    with pytest.raises(AttnalignError, match=r"not JSON .*; save a complete run \(--attn-save NAME\)$"):
        find_run(tmp_path, "")


def test_each_unusable_kind_is_refused_with_its_reason(tmp_path: Path, unusable: tuple[Run | str, str]) -> None:
    save(tmp_path, "x", unusable[0])
    with pytest.raises(AttnalignError, match=r"is usable as a baseline: (0001_x\.json )?" + unusable[1]):
        find_run(tmp_path, "")


# ------------------------------------------------------------------------------- through pytest


def _reply(body: dict[str, Any]) -> str:
    """HumanEval/0's canonical solution, whatever the prompt."""
    task = get_task("HumanEval/0")
    return f"```python\n{task.prompt + task.canonical_solution}```\n"


def test_attn_compare_compares_with_the_newest_complete_run_past_an_incomplete_one(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A run saved, then one whose item errored saved after it: the next --attn-compare was refused
    ("is incomplete") and its compare-fail failed the session. So was it with a whole run of other
    settings saved after it ("settings differ"): this run's settings pick the baseline at its end."""
    (pytester.path / "benchmarks" / "humaneval").mkdir(parents=True)
    shutil.copy(REPO / "benchmarks" / "humaneval" / "test_humaneval.py", pytester.path / "benchmarks" / "humaneval")
    storage = tmp_path / "runs"
    opts = ["benchmarks", "--attn-model=openai:stub", "--attn-method=shap", "--attn-shap-evaluations=2",
            "--attn-limit=1", "--attn-benchmark=humaneval", f"--attn-cache-dir={tmp_path / 'cache'}",
            f"--attn-storage={storage}", "-p", "no:cacheprovider"]
    for var in ("OPENAI_API_KEY", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    with OpenAIStub(_reply) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        first = pytester.runpytest_subprocess(*opts, "--attn-save=main", timeout=120)
        assert first.ret == pytest.ExitCode.OK, first.stdout.str()
        (base,) = storage.iterdir()
        doc = json.loads(base.read_text())
        other = json.loads(base.read_text())  # a whole run with other settings: passed over at the end
        for rec in other["records"]:
            rec["attribution"]["settings"]["evaluations"] = 3
        differ = save(storage, "main", json.dumps(other))
        item = "benchmarks/humaneval/test_humaneval.py::test_alignment[openai:stub-shap-HumanEval/0]"
        doc["run"] |= {"complete": False, "errors": [item]}
        doc["records"] = []  # as saved when its one item errored
        broken = save(storage, "main", json.dumps(doc))
        assert read_run(broken).info["complete"] is False
        late = storage / "0099_late.json"  # saved by another job while this run runs: not passed over by it
        pytester.makeconftest(f"def pytest_sessionstart(session):\n    open({str(late)!r}, 'w').write('{{}}')\n")
        second = pytester.runpytest_subprocess(*opts, "--attn-compare", "--attn-compare-fail=f1@10:0%", timeout=120)
        late.unlink()
        (pytester.path / "conftest.py").unlink()
    out = second.stdout.str()
    assert second.ret == pytest.ExitCode.OK, out
    assert (f"Compared with {base} (newer saved runs passed over, not usable as a baseline: {broken.name}; "
            f"settings differ from this run's: {differ.name}):") in out
    assert "comparison refused" not in out
    assert re.search(r"compare-fail f1@10:0% \[openai:stub shap\]: held", out), out
    base.unlink()
    differ.unlink()  # the incomplete run alone: one usage error before any item runs
    alone = pytester.runpytest(*opts, "--attn-compare")
    assert alone.ret == pytest.ExitCode.USAGE_ERROR
    assert [line for line in alone.errlines if line.strip()] == [
        f"ERROR: --attn-compare: no saved run in {str(storage)!r} is usable as a baseline: {broken.name} is incomplete "
        "(0 items missing, 1 without a result; see its header): rerun those items (the cache keeps the others' "
        f"results); pass --attn-compare={broken.name} --attn-compare-force to compare anyway, or save a complete run "
        "(--attn-save NAME)"]


def test_the_baseline_is_named_with_the_newer_runs_passed_over(tmp_path: Path) -> None:
    """Compared with an older run than the newest, the summary said only the older run's path."""
    from pytest_attnalign.storage import baseline_name, passed_over

    old, new, newest = (tmp_path / name for name in ("0001_a.json", "0002_b.json", "0003_a.json"))
    for path in (old, new, newest):
        path.write_text("{}")
    assert passed_over(old, "") == ("0002_b.json", "0003_a.json")
    assert baseline_name(old, passed_over(old, "")) == (
        f"{old} (newer saved runs passed over, not usable as a baseline: 0002_b.json, 0003_a.json)")
    assert baseline_name(old, ("0003_a.json",), ["0002_b.json"]) == (
        f"{old} (newer saved runs passed over, not usable as a baseline: 0003_a.json; settings differ from "
        "this run's: 0002_b.json)")
    assert passed_over(newest, "") == () and baseline_name(newest) == str(newest)
    assert passed_over(old, "a") == passed_over(old, "1") == ()  # named by the user: taken as it is
    elsewhere = tmp_path / "other" / "run.json"
    assert passed_over(elsewhere, "") == ()


def test_at_the_end_the_baseline_is_the_newest_whole_run_with_this_runs_settings(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--attn-compare with no value took the newest whole run even when its settings differed from
    this run's, and the comparison was then refused while an older run with the same settings sat there."""
    from pytest_attnalign.storage import same_settings

    mine = whole().settings()
    same = save(tmp_path, "main", whole())
    save(tmp_path, "damaged", "{")  # never a baseline
    other = save(tmp_path, "k20", Run(study_records(3, {"shap": 1.0}), (5, 20), run_info()))
    save(tmp_path, "shard", a_shard())  # passed over when the run began
    newest = save(tmp_path, "k20", Run(study_records(3, {"shap": 1.0}), (5, 20), run_info()))
    assert find_run(tmp_path, "") == newest
    reads: list[str] = []
    real: Callable[[Path], Run] = runfile.read_run
    monkeypatch.setattr(runfile, "read_run", lambda path: reads.append(path.name) or real(path))
    path, run, differ = same_settings(newest, real(newest), mine)
    assert (path, differ) == (same, [newest.name, other.name])
    assert run.settings() == mine
    assert reads == ["0004_shard.json", other.name, "0002_damaged.json", same.name]  # newest first, to the first match
    assert same_settings(same, real(same), mine)[::2] == (same, [])  # the settings agree: kept, nothing read again
    assert same_settings(newest, real(newest), mine, skip=[same])[::2] == (newest, [])  # none: the comparison refuses
    k20 = real(newest).settings()
    assert same_settings(newest, real(newest), k20)[::2] == (newest, [])
