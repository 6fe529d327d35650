"""``attnalign`` itself: its help texts and how it ends when interrupted."""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_attnalign import cli
from pytest_attnalign.cli import main


def test_an_interrupt_is_one_line_and_status_130(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Ctrl-C printed the traceback of wherever it landed (some 40 lines into a model or the sandbox)."""
    def interrupted(args: argparse.Namespace) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_attribute", interrupted)
    try:
        status = main(["attribute", "HumanEval/0"])
    except KeyboardInterrupt:  # not to end this pytest session too
        pytest.fail("the interrupt went through main()")
    assert status == 130
    out, err = capsys.readouterr()
    assert out == "" and err == "attnalign: interrupted\n"


def _children(pid: int) -> list[str]:
    """The child processes of ``pid`` (of any of its threads)."""
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += (task / "children").read_text().split()
        except OSError:
            pass
    return out


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs /proc to see the sandbox start")
def test_ctrl_c_while_a_program_runs_is_one_line(tmp_path: Path) -> None:
    """SIGINT to the command while ``check`` waits on the sandboxed program: one line, status 130, at once."""
    completion = tmp_path / "completion.py"
    completion.write_text("    import time\n    time.sleep(60)\n", encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "-m", "pytest_attnalign.cli", "check", "HumanEval/0", str(completion)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as a terminal's
    try:
        deadline = time.monotonic() + 60
        while not _children(proc.pid) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None and _children(proc.pid), "the program never started"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert (proc.returncode, out, err) == (130, "", "attnalign: interrupted\n")
