"""Resume: an interrupted run re-run with the same options recomputes nothing it had finished."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_plugin import NO_CACHE, _isolated_env, project, tiny_gpt2  # noqa: F401 (fixtures)

INTERRUPT_AFTER_FIRST_ITEM = """
def pytest_runtest_logfinish(nodeid, location):
    raise KeyboardInterrupt
"""


def interrupted(project: pytest.Pytester, tiny_gpt2: Path, tmp_path: Path) -> list[str]:
    """A run stopped by Ctrl-C after its first item (written to first.json); its options."""
    opts = [f"--attn-model={tiny_gpt2}", "--attn-method=reading_last,coding_all", "--attn-limit=2",
            "-k", "HumanEval/1 or Mbpp/2",  # tasks the tiny model writes code for
            "--attn-max-new-tokens=8", "--attn-device=cpu", "--attn-threads=1",
            f"--attn-cache-dir={tmp_path / 'cache'}", *NO_CACHE]
    conftest = project.makeconftest(INTERRUPT_AFTER_FIRST_ITEM)
    first = project.runpytest_subprocess(*opts, f"--attn-json={tmp_path / 'first.json'}", timeout=120)
    assert first.ret == pytest.ExitCode.INTERRUPTED
    conftest.unlink()
    return opts


def test_a_rerun_after_ctrl_c_computes_only_what_was_missing(
    project: pytest.Pytester, tiny_gpt2: Path, tmp_path: Path
) -> None:
    opts = interrupted(project, tiny_gpt2, tmp_path)
    again = project.runpytest_subprocess(*opts, f"--attn-json={tmp_path / 'again.json'}", "-q", timeout=120)
    assert again.ret in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED), again.stdout.str()
    progress = [line for line in again.outlines if "attnalign progress" in line]
    assert len(progress) == 1 and progress[0].startswith("attnalign progress: 4/4 items in ")  # -q: the final line

    done = {(r["method"], r["task_id"]) for r in json.loads((tmp_path / "first.json").read_text())["records"]}
    records = json.loads((tmp_path / "again.json").read_text())["records"]
    assert len(done) == 1 and len(records) == 4
    assert all("note" not in r["attribution"] for r in records)  # code everywhere: every item has an attribution
    # the re-run's computations, counted from its records: generations per task, attributions per item
    # (an item whose model wrote no code has no attribution to compute or cache)
    generated = {r["task_id"] for r in records if not r["generation_cached"]}
    attributed = {(r["method"], r["task_id"]) for r in records
                  if not r["attribution"]["cached"] and "note" not in r["attribution"]}
    assert generated == {r["task_id"] for r in records} - {task for _, task in done}
    assert attributed == {(r["method"], r["task_id"]) for r in records} - done
    assert generated and len(attributed) == 3  # the items the interrupted run never reached were computed


def test_a_resumed_run_in_a_terminal_redraws_its_progress_and_measures_only_computed_items(
    project: pytest.Pytester, tiny_gpt2: Path, tmp_path: Path
) -> None:
    """In a terminal the progress line is redrawn in place (carriage returns, no new lines); the item
    the cache served gives no ETA (it cost ~0 s), the computed ones do."""
    opts = interrupted(project, tiny_gpt2, tmp_path)
    main, sub = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "pytest", *opts], cwd=project.path, stdin=subprocess.DEVNULL,
                            stdout=sub, stderr=sub, env={**os.environ, "COLUMNS": "200"})
    os.close(sub)
    chunks = []
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert proc.wait(timeout=120) in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED)
    os.close(main)
    out = re.sub(r"\x1b\[[0-9;]*m", "", b"".join(chunks).decode())
    redrawn = re.findall(r"\rattnalign progress: (\d)/4 items \(\d+%\) after \w+, ETA ([^\r\n]*?) *(?=[\r\n.FsE])", out)
    assert [n for n, _ in redrawn] == ["1", "2", "3"], out
    assert redrawn[0][1] == "unknown (no item computed yet)"  # the cached first item
    assert not re.search(r"\nattnalign progress: \d/4 items \(", out)  # no plain progress lines in a terminal
    assert "\nattnalign progress: 4/4 items in " in out.replace("\r\n", "\n")
