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


def _action(command: str | None, option: str) -> argparse.Action:
    """The parser's action of ``option`` (of ``command``; None: the command's own)."""
    parser = cli._parser()
    if command is not None:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[command]
    return next(a for a in parser._actions if option in a.option_strings)


def _help(command: str | None, option: str) -> str:
    return _action(command, option).help or ""


def _plugin_help(option: str) -> str:
    from _pytest.config.argparsing import Parser

    from pytest_attnalign.options import add_options

    parser = Parser(_ispytest=True)  # pytest's own parser, as pytest builds it
    add_options(parser)
    return next(o.attrs()["help"] for o in parser.getgroup("attnalign").options if option in o.names())


def test_the_commands_help_describes_it_for_its_user(capsys: pytest.CaptureFixture[str]) -> None:
    """``attnalign --help`` showed the module's developer docstring ("thin argument parsing over the library")."""
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "thin argument parsing" not in out and "library" not in out
    assert "Attention alignment of code LLMs with human programmers (Kou et al., FSE 2024)" in out
    assert "130 when interrupted (Ctrl-C)" in out


def test_attribute_options_say_what_the_plugins_say() -> None:
    """--max-new-tokens said "canonical solution + 20", which chat format's budget is not (the reply restates
    the prompt); --shap-evaluations said "model evaluations", which are its coalitions plus two."""
    from pytest_attnalign.generation import token_budget_rule

    budget = _help("attribute", "--max-new-tokens")
    assert budget == _plugin_help("--attn-max-new-tokens")
    assert "in chat format" in budget and token_budget_rule("chat") == "prompt + canonical solution + 20"
    shap = _help("attribute", "--shap-evaluations")
    assert shap == _plugin_help("--attn-shap-evaluations") and "coalitions" in shap and "model evaluations" not in shap


@pytest.mark.parametrize("command", ["check", "verify-benchmarks"])
def test_timeouts_state_their_default_and_maximum(command: str) -> None:
    from pytest_attnalign.errors import AttnalignError
    from pytest_attnalign.execution import MAX_TIMEOUT_S, check_timeout

    text = _help(command, "--timeout")
    default = _action(command, "--timeout").default
    assert f"(default {default:g}, at most {MAX_TIMEOUT_S:g}: a day)" in text and default == 10
    check_timeout(MAX_TIMEOUT_S)  # the maximum stated is the one enforced
    with pytest.raises(AttnalignError):
        check_timeout(MAX_TIMEOUT_S + 1)


@pytest.mark.parametrize("command", ["score", "verify-benchmarks", "check", "attribute", "report", "merge"])
def test_every_option_has_help(command: str) -> None:
    """verify-benchmarks --benchmark and check --json had none."""
    sub = next(a for a in cli._parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    assert [a.dest for a in sub._actions if not a.help] == []
