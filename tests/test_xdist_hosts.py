"""xdist beyond one process: workers on another host over ssh (one with another checkout refused), and
a worker killed mid-item.

The ssh test starts Debian's ``sshd`` on 127.0.0.1 on a free port with a host key, a user key and
configuration generated in a temp dir (as root sshd needs its empty privilege-separation directory
/run/sshd, created when missing and removed again), and stops it at the end; it skips where
openssh-server is not installed (``apt-get install -y openssh-server``; ``.ci/run`` does).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_plugin import NO_CACHE, _isolated_env, project, records, summary, tiny_gpt2  # noqa: F401 (fixtures)

REPO = Path(__file__).resolve().parent.parent
SSHD = Path("/usr/sbin/sshd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ssh_host(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``(host alias, ssh_config)`` of an sshd of our own on 127.0.0.1, stopped at the end."""
    if not SSHD.exists() or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        pytest.skip("needs openssh-server and openssh-client (apt-get install -y openssh-server)")
    d = tmp_path / "sshd"
    d.mkdir()
    for name in ("host", "user"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    (d / "authorized_keys").write_text((d / "user.pub").read_text())
    port = free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host'}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
        f"StrictModes no\nUsePAM no\nPidFile {d / 'sshd.pid'}\n")
    (d / "ssh_config").write_text(
        f"Host attnalign-test\n  HostName 127.0.0.1\n  Port {port}\n  User {pwd.getpwuid(os.geteuid()).pw_name}\n"
        f"  IdentityFile {d / 'user'}\n  IdentitiesOnly yes\n  StrictHostKeyChecking no\n"
        "  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n")
    # sshd's privilege-separation directory, made where missing and never removed: another test's sshd
    # (xdist runs the ssh tests side by side) needs it for every connection it accepts
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    server = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(d / "sshd_config")], stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(100):
            probe = subprocess.run(["ssh", "-F", str(d / "ssh_config"), "attnalign-test", "true"], capture_output=True)
            if probe.returncode == 0 or server.poll() is not None:
                break
            time.sleep(0.1)
        if probe.returncode != 0:
            pytest.skip(f"sshd on 127.0.0.1 did not accept the generated key: {probe.stderr.decode()[-300:]}")
        yield "attnalign-test", d / "ssh_config"
    finally:
        server.terminate()
        server.wait(10)


def test_workers_over_ssh_give_the_local_summary_and_records(
    project: pytest.Pytester, tiny_gpt2: Path, tmp_path: Path, ssh_host: tuple[str, Path]
) -> None:
    """``-d --tx 2*ssh=...`` and ``-n 2``, each with a cold cache: same tables, records, grouping."""
    host, config = ssh_host
    remote = (f"2*ssh={host}//ssh_config={config}//python={sys.executable}//chdir={project.path}"
              f"//env:PYTHONPATH={REPO}//env:HF_HUB_OFFLINE=1")
    runs = {}
    for name, extra in (("local", ("-n", "2")), ("ssh", ("-d", "--tx", remote))):
        (tmp_path / name).mkdir()
        runs[name] = project.runpytest_subprocess(
            f"--attn-model={tiny_gpt2}", "--attn-method=reading_last,coding_all", "--attn-limit=1",
            "--attn-max-new-tokens=8", "--attn-device=cpu", "--attn-threads=1", "-v",
            f"--attn-cache-dir={tmp_path / name / 'cache'}", f"--attn-json={tmp_path / name / 'run.json'}",
            *extra, *NO_CACHE, timeout=180)
    for result in runs.values():
        assert result.ret in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED), result.stdout.str()
    out = runs["ssh"].stdout.str()
    assert "scheduling tests via ModelTaskScheduling" in out and "[gw1]" in out  # grouped, two remote workers
    sections = {name: summary(r).replace(str(tmp_path / name / "run.json"), "RUN.json") for name, r in runs.items()}
    assert sections["ssh"] == sections["local"]
    assert records(tmp_path / "ssh" / "run.json") == records(tmp_path / "local" / "run.json")
    assert len(json.loads((tmp_path / "ssh" / "run.json").read_text())["records"]) == 4


def test_an_ssh_host_with_another_checkout_refuses_the_run(
    project: pytest.Pytester, tiny_gpt2: Path, tmp_path: Path, ssh_host: tuple[str, Path]
) -> None:
    """A host whose pytest-attnalign differs from the controller's (here: its python's path starts with a
    changed copy of the package) put its figures into the controller's run file. An ssh worker runs
    under xdist's main_thread_only model, where the controller cannot ask it anything mid-run."""
    import re

    from pytest_attnalign.versions import CODE

    host, config = ssh_host
    other = tmp_path / "host"
    shutil.copytree(REPO / "pytest_attnalign", other / "pytest_attnalign", ignore=shutil.ignore_patterns("__pycache__"))
    with open(other / "pytest_attnalign" / "generation.py", "a") as fh:
        fh.write("# a later commit\n")
    python = other / "python"
    python.write_text(f'#!/bin/sh\nPYTHONPATH={other} exec {sys.executable} "$@"\n')
    python.chmod(0o755)
    out = tmp_path / "run.json"
    result = project.runpytest_subprocess(
        f"--attn-model={tiny_gpt2}", "--attn-method=reading_last", "--attn-limit=1", "--attn-max-new-tokens=4",
        "--attn-device=cpu", f"--attn-cache-dir={tmp_path / 'cache'}", f"--attn-json={out}", "-d", "--tx",
        f"ssh={host}//ssh_config={config}//python={python}//chdir={project.path}", *NO_CACHE, timeout=180)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    (line,) = [line for line in result.errlines if line.strip()]
    assert re.fullmatch(rf"ERROR: xdist worker gw0 \(host .+, {re.escape(str(other / 'pytest_attnalign'))}\) runs "
                        rf"pytest-attnalign code (?!{CODE})[0-9a-f]{{16}}, the controller {CODE}: give every --tx host "
                        r"the controller's checkout", line), line
    assert not out.exists()


KILL_ONE_WORKER = """
import os, signal

def pytest_runtest_setup(item):
    if "reading_last-Mbpp/1" in item.nodeid and os.environ.get("PYTEST_XDIST_WORKER"):
        os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's OOM killer or a native crash would
"""


def test_a_killed_worker_loses_only_its_item(project: pytest.Pytester, tiny_gpt2: Path, tmp_path: Path) -> None:
    project.makeconftest(KILL_ONE_WORKER)
    out = tmp_path / "run.json"
    result = project.runpytest_subprocess(
        f"--attn-model={tiny_gpt2}", "--attn-method=reading_last,coding_all", "--attn-limit=1",
        "--attn-max-new-tokens=8", "--attn-device=cpu", "--attn-threads=1", f"--attn-cache-dir={tmp_path / 'cache'}",
        f"--attn-json={out}", "-n", "2", *NO_CACHE, timeout=180)
    text = result.stdout.str()
    assert "worker 'gw" in text and "crashed while running" in text and "reading_last-Mbpp/1" in text, text
    outcomes = result.parseoutcomes()
    assert sum(outcomes.get(k, 0) for k in ("passed", "failed", "error", "errors")) == 4, outcomes  # the rest ran
    doc = json.loads(out.read_text())
    assert sorted((r["method"], r["task_id"]) for r in doc["records"]) == [
        ("coding_all", "HumanEval/0"), ("coding_all", "Mbpp/1"), ("reading_last", "HumanEval/0")]
    assert [m.rsplit("[", 1)[1] for m in doc["run"]["missing"]] == [f"{tiny_gpt2}-reading_last-Mbpp/1]"]
    assert "partial: 3 of 4 items ran; missing: " in summary(result)
