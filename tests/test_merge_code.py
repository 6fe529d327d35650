"""A run file keeps a fingerprint of the pytest-attnalign code that computed it, and ``attnalign merge``
refuses shards of two checkouts: both say version 0.1.0 when a rule changed between a job array's tasks."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_shards import _two_shards

from pytest_attnalign.cli import main
from pytest_attnalign.errors import AttnalignError
from pytest_attnalign.runfile import read_run
from pytest_attnalign.versions import CODE, PACKAGE, code_fingerprint


def _set_code(path: Path, code: object) -> None:
    """The shard file as another checkout (a code) or a pytest-attnalign older than fingerprints (None) wrote it."""
    doc = json.loads(path.read_text())
    doc["environment"].pop("code", None)
    if code is not None:
        doc["environment"]["code"] = code
    path.write_text(json.dumps(doc))


def test_the_fingerprint_is_the_packages_bytes(tmp_path: Path) -> None:
    """Stable across calls, processes and where the package lies; any module's or data file's bytes or
    path change it, bytecode caches and files outside the modules and data do not. (Compared with the
    package as it is now, not with ``CODE``: a checkout edited since this process imported it differs.)"""
    copy = tmp_path / "pytest_attnalign"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    base = code_fingerprint(copy)
    other = subprocess.run([sys.executable, "-c", "from pytest_attnalign.versions import CODE; print(CODE)"],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert code_fingerprint() == code_fingerprint() == other == base and len(base) == 16

    (copy / "__pycache__").mkdir()
    (copy / "__pycache__" / "generation.cpython-311.pyc").write_bytes(b"\0")
    (copy / "notes.txt").write_text("not code")
    (copy / ".#plugin.py").symlink_to("user@host.1234:1700000000")  # Emacs's lock file: a dangling link
    (copy / "data" / ".mbpp.jsonl.gz.swp").write_bytes(b"\0")  # an editor's swap file
    assert code_fingerprint(copy) == base

    for changed in (copy / "generation.py", copy / "methods" / "__init__.py", copy / "data" / "labels" / "humaneval.jsonl"):
        before = changed.read_bytes()
        changed.write_bytes(before + b"\n")
        assert code_fingerprint(copy) != base, changed
        changed.write_bytes(before)
    assert code_fingerprint(copy) == base
    (copy / "generation.py").rename(copy / "generation2.py")  # the same bytes under another name
    assert code_fingerprint(copy) != base


def test_shards_of_one_checkout_merge_into_a_run_of_that_code(tmp_path: Path) -> None:
    shards = _two_shards(tmp_path)
    assert [json.loads(p.read_text())["environment"]["code"] for p in shards] == [CODE, CODE]
    assert main(["merge", *map(str, shards), "-o", str(tmp_path / "run.json")]) == 0
    assert json.loads((tmp_path / "run.json").read_text())["environment"]["code"] == CODE


def test_shards_of_two_checkouts_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shards = _two_shards(tmp_path)
    _set_code(shards[1], "0123456789abcdef")
    assert main(["merge", *map(str, shards), "-o", str(tmp_path / "run.json")]) == 2
    assert capsys.readouterr().err == (f"attnalign: error: {shards[1]} was computed by pytest-attnalign code "
                                       f"0123456789abcdef, {shards[0]} by code {CODE}: merge the shards of one run, "
                                       "rerunning the odd shard from the same checkout as the others\n")
    assert not (tmp_path / "run.json").exists()


@pytest.mark.parametrize("old", [0, 1])
def test_shards_from_before_fingerprints(tmp_path: Path, capsys: pytest.CaptureFixture[str], old: int) -> None:
    """Two such shards merge as they did, into a run that claims no code; one beside a shard with a
    fingerprint was written by older code than that shard, whichever of the two is given first."""
    shards = _two_shards(tmp_path)
    for path in shards:
        _set_code(path, None)
    assert main(["merge", *map(str, shards), "-o", str(tmp_path / "run.json")]) == 0
    assert "code" not in json.loads((tmp_path / "run.json").read_text())["environment"]
    assert read_run(tmp_path / "run.json").code is None

    _set_code(shards[1 - old], CODE)
    capsys.readouterr()
    assert main(["merge", *map(str, shards), "-o", str(tmp_path / "again.json")]) == 2
    assert capsys.readouterr().err == (f"attnalign: error: {shards[old]} was written by a pytest-attnalign older than "
                                       f"code fingerprints, {shards[1 - old]} by code {CODE}: two checkouts computed "
                                       f"them: merge the shards of one run, rerunning the shard of {shards[old]} from "
                                       "the same checkout as the others\n")


def test_a_fingerprint_that_is_no_string_is_damage(tmp_path: Path) -> None:
    shard = _two_shards(tmp_path)[0]
    _set_code(shard, 5)
    with pytest.raises(AttnalignError, match=r"is damaged: environment.code: 5 matches none of str \| None$"):
        read_run(shard)
