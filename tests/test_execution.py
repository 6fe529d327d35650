"""The sandbox: outcomes, recorded limits, and hostile programs that must harm nothing.

Every hostile program reports the pids it spawned and its work directory on stderr; the tests then
check that none of those processes (nor any process carrying the run's environment marker) is
alive, and that the directory is gone. Containment that depends on the platform (mount namespaces,
root) is asserted where ``ExecResult.sandbox`` says it held, and skipped with the reason otherwise.
The suite passes as root and as an ordinary user.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import errno
import json
import os
import re
import signal
import socket
import textwrap
import threading
import time
from pathlib import Path

import pytest

from pytest_attnalign import execution
from pytest_attnalign.errors import AttnalignError
from pytest_attnalign.execution import MARKER, ExecResult, Limits, run_completion, run_program
from pytest_attnalign.tasks import get_task

MARGIN_S = 3.0  # start-up, clean-up and a loaded 2-core machine
FIVE_SECONDS = Limits(timeout_s=5)


def _run(source: str, limits: Limits = FIVE_SECONDS, **kw: bool) -> tuple[ExecResult, float]:
    if source.startswith(_WORK):  # _WORK + an indented triple-quoted body
        source = _WORK + textwrap.dedent(source[len(_WORK):])
    start = time.monotonic()
    result = run_program(textwrap.dedent(source), limits, **kw)
    return result, time.monotonic() - start


def _reported(result: ExecResult, key: str) -> list[str]:
    """Values the program printed as ``KEY v1 v2 ...`` lines on stderr."""
    return [v for line in result.stderr_tail.splitlines() if line.startswith(key + " ") for v in line.split()[1:]]


def _environ(pid: int) -> bytes | None:
    """None when gone; a sandboxed process is always readable (our uid, or its own while we are root)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            return fh.read()
    except OSError:  # gone, a kernel thread, or another user's process (a reused pid)
        return None


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_bytes().rpartition(b")")[2].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _marked(work: str) -> list[int]:
    needle = f"{MARKER}={work}\0".encode()
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and needle in (_environ(int(p)) or b"")]


def assert_nothing_left(result: ExecResult, pids: list[str] | None = None) -> None:
    """No reported process alive (a reused pid lacks our marker), no marked process, no directory."""
    (work,) = _reported(result, "WORK")
    needle = f"{MARKER}={work}\0".encode()
    for pid in map(int, pids if pids is not None else _reported(result, "PID")):
        env = _environ(pid)
        assert env is None or needle not in env, f"process {pid} survived"
    assert _marked(work) == []
    assert not Path(work).exists() and not Path(work).parent.exists()
    assert result.sandbox["leftover_processes"] == 0


def assert_within(seconds: float, limit: float) -> None:
    assert seconds < limit + MARGIN_S, f"took {seconds:.1f} s, limit {limit} s"


# ---------------------------------------------------------------------------------------------
# Outcomes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task_id", ["HumanEval/0", "HumanEval/163", "Mbpp/2", "Mbpp/367", "Mbpp/927"])
def test_canonical_solutions_pass(task_id: str) -> None:
    task = get_task(task_id)
    result = run_completion(task, task.canonical_solution, Limits())
    assert result.outcome == "pass", result.stderr_tail
    assert result.returncode == 0


def test_wrong_completion_fails_with_the_assertion_in_the_tail() -> None:
    result = run_completion(get_task("HumanEval/0"), "    return False\n", Limits())
    assert result.outcome == "fail"
    assert result.stderr_tail.rstrip().splitlines()[-1].startswith("AssertionError")
    mbpp = get_task("Mbpp/2")
    assert run_completion(mbpp, f"def {mbpp.entry_point}(a, b):\n    return ()\n", Limits()).outcome == "fail"


@pytest.mark.parametrize(("source", "last_line"), [
    ("def f(:\n    pass\n", "SyntaxError"),
    ("undefined_name\n", "NameError"),
    ("import sys\nsys.exit(0)\nassert False\n", "SystemExit(0) before the end of the program"),
    ("import os\nos._exit(0)\n", "[sandbox] exited with status 0 before the end of the program"),
    ("x = input()\n", "EOFError"),  # stdin is /dev/null: nothing to read, never a hang
    ("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n", "[sandbox] killed by SIGSEGV"),
])
def test_errors(source: str, last_line: str) -> None:
    result, _ = _run(source)
    assert result.outcome == "error"
    assert result.stderr_tail.rstrip().splitlines()[-1].startswith(last_line)


def test_main_guard_is_not_run_like_the_reference_harness() -> None:
    result, _ = _run("""
        def f():
            return 1
        if __name__ == "__main__":
            import unittest
            unittest.main()
        assert f() == 1
    """)
    assert result.outcome == "pass", result.stderr_tail


@pytest.mark.parametrize(("tests", "outcome"), [("assert True", "pass"), ("assert False", "fail"),
                                                ("undefined_name", "error")])
def test_the_program_ends_once_its_tests_ran_though_a_thread_still_runs(tests: str, outcome: str) -> None:
    """Like the reference harness: the verdict is in when the tests have run, not a timeout."""
    limits = Limits(timeout_s=10)
    result, _ = _run(_WORK + f"""
        import threading, time
        threading.Thread(target=time.sleep, args=(1000,)).start()  # not a daemon
        sys.stderr.write("NO NEWLINE")  # still flushed
        {tests}
    """, limits)
    assert result.outcome == outcome, result.stderr_tail
    assert result.seconds < limits.timeout_s / 2 and "NO NEWLINE" in result.stderr_tail
    assert_nothing_left(result, [])


def test_limits_are_recorded() -> None:
    limits = Limits(timeout_s=4.5, memory_mb=512, file_size_mb=2, nproc=16)
    assert limits.cpu_s == 5  # derived from the wall clock
    result, _ = _run("print('ok')\n", limits)
    record = result.as_dict()
    assert record["limits"] == {"timeout_s": 4.5, "cpu_s": 5, "memory_mb": 512, "file_size_mb": 2, "nproc": 16}
    assert json.loads(json.dumps(record)) == record
    rl = record["sandbox"]["rlimits"]
    assert rl["RLIMIT_CORE"] == [0, 0]
    assert rl["RLIMIT_CPU"][0] <= 5 and rl["RLIMIT_AS"][0] <= 512 * 2**20 and rl["RLIMIT_FSIZE"][0] <= 2 * 2**20
    assert rl["RLIMIT_NOFILE"][0] <= 1024
    assert {"user", "readonly_fs", "nproc_binding"} <= set(record["sandbox"])


@pytest.mark.parametrize("bad", [{"timeout_s": 0}, {"timeout_s": float("nan")}, {"timeout_s": float("inf")},
                                 {"timeout_s": 1e30}, {"timeout_s": 86400.5}, {"memory_mb": 0}, {"nproc": -1}])
def test_invalid_limits(bad: dict) -> None:
    with pytest.raises(AttnalignError):
        Limits(**bad)


def test_the_longest_timeout_is_a_day() -> None:
    """Longer ones would overflow the OS's timers in the middle of a run (``OverflowError`` per program)."""
    assert Limits(timeout_s=86400).cpu_s == 86400
    with pytest.raises(AttnalignError, match=r"^timeout must be a number of seconds above 0 and at most 86400 "
                                             r"\(a day\), not 1e\+30$"):
        Limits(timeout_s=1e30)


@pytest.mark.parametrize("command", [["check", "HumanEval/0", "COMPLETION"], ["verify-benchmarks", "-j", "1"]])
@pytest.mark.parametrize("timeout", ["1e30", "inf", "0"])
def test_cli_timeout_out_of_range_is_one_line_before_anything_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: list[str], timeout: str
) -> None:
    from pytest_attnalign.cli import main

    monkeypatch.setattr(execution, "run_program", lambda *a: pytest.fail("a program ran"))
    (tmp_path / "c.py").write_text("    return True\n")
    argv = [str(tmp_path / "c.py") if a == "COMPLETION" else a for a in command]
    assert main([*argv, "--timeout", timeout]) == 2
    assert capsys.readouterr().err == (f"attnalign: error: --timeout: timeout must be a number of seconds above 0 "
                                       f"and at most 86400 (a day), not {float(timeout)!r}\n")


# ---------------------------------------------------------------------------------------------
# Hostile programs
# ---------------------------------------------------------------------------------------------

_WORK = "import os, sys\nprint('WORK', os.getcwd(), file=sys.stderr, flush=True)\n"


def test_infinite_loop_times_out_on_the_wall_clock() -> None:
    result, seconds = _run(_WORK + "while True:\n    pass\n", Limits(timeout_s=1.0, cpu_s=30))
    assert result.outcome == "timeout" and "wall-clock" in result.stderr_tail
    assert_within(seconds, 1.0)
    assert_nothing_left(result, [])


def test_cpu_limit_is_a_timeout() -> None:
    result, seconds = _run(_WORK + "while True:\n    pass\n", Limits(timeout_s=20.0, cpu_s=1))
    assert result.outcome == "timeout" and "CPU limit" in result.stderr_tail
    assert_within(seconds, 1.0)
    assert_nothing_left(result, [])


def test_sleeping_program_times_out() -> None:
    result, seconds = _run(_WORK + "import time\ntime.sleep(60)\n", Limits(timeout_s=1.0))
    assert result.outcome == "timeout"
    assert_within(seconds, 1.0)


def test_fork_bomb_is_bounded_and_fully_killed() -> None:
    """At most 300 forks (safe even if the limit failed); each child escapes the group with setsid."""
    limits = Limits(timeout_s=3.0, nproc=8)
    result, seconds = _run(_WORK + """
        import time
        pids = []
        for _ in range(300):
            try:
                pid = os.fork()
            except OSError:
                break
            if pid == 0:
                os.setsid()
                time.sleep(1000)
                os._exit(0)
            pids.append(pid)
        print("FORKED", len(pids), file=sys.stderr)
        print("PID", *pids[:40], file=sys.stderr, flush=True)
        time.sleep(1000)
    """, limits)
    assert result.outcome == "timeout", result.stderr_tail
    assert_within(seconds, limits.timeout_s)
    (forked,) = map(int, _reported(result, "FORKED"))
    if result.sandbox["nproc_binding"]:
        assert forked < result.sandbox["rlimits"]["RLIMIT_NPROC"][0]
    assert_nothing_left(result)


def test_memory_hog_gets_memory_error_fast() -> None:
    limits = Limits(timeout_s=20.0, memory_mb=256)
    result, seconds = _run(_WORK + "b = bytearray()\nwhile True:\n    b += bytes(10**7)\n", limits)
    assert result.outcome == "error"
    assert result.stderr_tail.rstrip().splitlines()[-1] == "MemoryError"
    assert seconds < 5.0
    assert_nothing_left(result, [])


def test_file_size_limit() -> None:
    result, _ = _run(_WORK + "open('big', 'wb').write(bytes(4 * 2**20))\n", Limits(file_size_mb=1))
    assert result.outcome == "error" and "File too large" in result.stderr_tail
    assert_nothing_left(result, [])


def test_stderr_beyond_the_file_size_limit_is_cut_not_an_error() -> None:
    """Only the tail of stderr is kept: writing more than a file may hold does not fail the program."""
    result, _ = _run("""
        import os, sys
        sys.stderr.write("x" * 3 * 2**20 + "\\n")
        os.write(2, b"y" * 3 * 2**20 + b"\\n")
        print("END", file=sys.stderr)
    """, Limits(file_size_mb=1))
    assert result.outcome == "pass", result.stderr_tail
    assert result.stderr_tail.endswith("y\nEND\n") and len(result.stderr_tail) == execution.TAIL_CHARS


def test_background_children_and_daemons_do_not_survive_a_passing_program() -> None:
    result, _ = _run(_WORK + """
        import subprocess, time
        bg = subprocess.Popen(["sleep", "1000"], start_new_session=True)
        r, w = os.pipe()
        if os.fork() == 0:  # classic daemon: fork, setsid, fork, parent exits
            os.setsid()
            pid = os.fork()
            if pid == 0:
                time.sleep(1000)
                os._exit(0)
            os.write(w, str(pid).encode())
            os._exit(0)
        daemon = int(os.read(r, 32))
        print("PID", bg.pid, daemon, file=sys.stderr, flush=True)
        assert os.getpgid(daemon) != os.getpgid(0) and os.getsid(bg.pid) == bg.pid
    """)
    assert result.outcome == "pass", result.stderr_tail
    assert len(_reported(result, "PID")) == 2
    assert_nothing_left(result)


@pytest.fixture
def outside(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A sentinel next to the tests, and a fake caller HOME with its own sentinel."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "sentinel").write_text("home sentinel")
    (tmp_path / "sentinel").write_text("sentinel")
    monkeypatch.setenv("HOME", str(home))
    return {"sentinel": tmp_path / "sentinel", "home": home}


def _intact(outside: dict[str, Path]) -> None:
    assert outside["sentinel"].read_text() == "sentinel"
    assert sorted(p.name for p in outside["home"].iterdir()) == ["sentinel"]
    assert (outside["home"] / "sentinel").read_text() == "home sentinel"


def test_home_and_cwd_point_into_the_sandbox(outside: dict[str, Path]) -> None:
    result, _ = _run(_WORK + """
        home = os.path.expanduser("~")
        assert home == os.getcwd() == os.environ["TMPDIR"], (home, os.getcwd())
        for name in ("sentinel", "note"):
            open(os.path.join(home, name), "w").write("overwritten")
        os.remove(os.path.join(home, "sentinel"))
        open("relative.txt", "w").write("x")
        assert sorted(os.listdir(".")) == ["note", "program.py", "relative.txt"]
    """, readonly_fs=False)
    assert result.outcome == "pass", result.stderr_tail
    _intact(outside)
    assert_nothing_left(result, [])


_ESCAPE = _WORK + """
    import shutil
    tries = {{}}
    def attempt(name, action):
        try:
            action()
            tries[name] = "done"
        except OSError as exc:
            tries[name] = type(exc).__name__
    attempt("remove", lambda: os.remove({sentinel!r}))
    attempt("overwrite", lambda: open({sentinel!r}, "w").write("pwned"))
    attempt("home", lambda: open({home!r} + "/pwned", "w").write("pwned"))
    attempt("rmtree", lambda: shutil.rmtree({home!r}))
    attempt("parent", lambda: open("../../{escape}", "w").write("pwned"))
    print("TRIES", *(f"{{k}}={{v}}" for k, v in tries.items()), file=sys.stderr)
"""


@pytest.mark.parametrize("readonly_fs", [True, False], ids=["readonly-mounts", "writable-mounts"])
def test_absolute_and_parent_paths_cannot_escape(outside: dict[str, Path], readonly_fs: bool) -> None:
    escape = f"attnalign-escape-{os.getpid()}-{readonly_fs}"
    parent_file = Path(os.path.realpath(execution.tempfile.gettempdir()), escape)
    source = _ESCAPE.format(sentinel=str(outside["sentinel"]), home=str(outside["home"]), escape=escape)
    result, _ = _run(source, readonly_fs=readonly_fs)
    try:
        contained_by_fs = result.sandbox["readonly_fs"]
        contained_by_user = os.geteuid() == 0 and result.sandbox["user"] != "root"
        if not (contained_by_fs or contained_by_user):
            pytest.skip("not contained: writable mounts and not root (documented in execution.py)")
        _intact(outside)
        if contained_by_fs:  # /tmp is world-writable: only the read-only mounts keep the program out
            assert not parent_file.exists()
            assert all(t.split("=")[1] != "done" for t in _reported(result, "TRIES")), result.stderr_tail
        assert_nothing_left(result, [])
    finally:
        parent_file.unlink(missing_ok=True)


def test_dev_shm_is_a_small_tmpfs_of_the_programs_own() -> None:
    """``multiprocessing.Lock()`` needs a writable /dev/shm (POSIX semaphores): the program gets one of
    its own, no larger than the file-size limit; the caller's is left untouched."""
    name = f"attnalign-shm-{os.getpid()}"
    try:
        result, _ = _run(f"""
            import errno, multiprocessing, sys
            with multiprocessing.Lock():
                pass
            for part in (1, 2):  # 2 x 600 KiB in a 1 MiB tmpfs
                try:
                    with open(f"/dev/shm/{name}-{{part}}", "wb") as fh:
                        fh.write(bytes(600 * 1024))
                    print("WROTE", part, file=sys.stderr)
                except OSError as exc:
                    print("FULL", errno.errorcode[exc.errno], file=sys.stderr)
        """, Limits(file_size_mb=1))
        assert result.outcome == "pass", result.stderr_tail
        if not result.sandbox["private_shm"]:
            pytest.skip(f"/dev/shm not the program's own: {result.sandbox['private_note']} (documented)")
        assert _reported(result, "WROTE") == ["1"] and _reported(result, "FULL") == ["ENOSPC"]
        assert not any(p.name.startswith(name) for p in Path("/dev/shm").iterdir())
    finally:
        for path in Path("/dev/shm").glob(f"{name}-*"):
            path.unlink()


def test_no_process_survives_a_timeout_with_escaped_children() -> None:
    result, _ = _run(_WORK + """
        import subprocess, time
        kids = [subprocess.Popen(["sleep", "1000"], start_new_session=True) for _ in range(3)]
        print("PID", *(k.pid for k in kids), file=sys.stderr, flush=True)
        time.sleep(1000)
    """, Limits(timeout_s=1.5))
    assert result.outcome == "timeout"
    assert_nothing_left(result)


def test_the_program_has_no_network_and_abstract_socket_names_of_its_own() -> None:
    """Its own network namespace: the caller's loopback server and abstract unix socket are out of reach."""
    server = socket.create_server(("127.0.0.1", 0))
    name = f"\0attnalign-test-{os.getpid()}"
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    unix.bind(name)
    try:
        result, _ = _run(f"""
            import socket, sys
            def attempt(what, family, kind, address, action):
                s = socket.socket(family, kind)
                try:
                    getattr(s, action)(address)
                    print(what, "done", file=sys.stderr)
                except OSError as exc:
                    print(what, type(exc).__name__, file=sys.stderr)
            attempt("TCP", socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", {server.getsockname()[1]}), "connect")
            attempt("UNIX", socket.AF_UNIX, socket.SOCK_DGRAM, {name!r}, "connect")
            attempt("BIND", socket.AF_UNIX, socket.SOCK_DGRAM, {name!r}, "bind")
            print("IFACES", *(n for _, n in socket.if_nameindex()), file=sys.stderr)
        """)
    finally:
        server.close()
        unix.close()
    assert result.outcome == "pass", result.stderr_tail
    if not result.sandbox["private_net"]:
        pytest.skip(f"no network namespace: {result.sandbox['private_note']} (documented in execution.py)")
    assert _reported(result, "TCP") != ["done"] and _reported(result, "UNIX") != ["done"]
    assert _reported(result, "BIND") == ["done"] and _reported(result, "IFACES") == ["lo"]


def _sysv_ids(key: int) -> list[tuple[str, int]]:
    """The caller's SysV IPC objects (kind, id) with ``key``."""
    found = []
    for kind in ("shm", "msg", "sem"):
        for line in Path(f"/proc/sysvipc/{kind}").read_text().splitlines()[1:]:
            if int(line.split()[0]) == key:
                found.append((kind, int(line.split()[1])))
    return found


def test_ipc_objects_the_program_creates_do_not_outlive_it() -> None:
    """Its own IPC namespace: no SysV object or POSIX message queue is left for the uid's next program."""
    key, queue = 0x5A000000 + os.getpid() % 2**20, f"/attnalign-test-{os.getpid()}"
    libc = ctypes.CDLL(None, use_errno=True)
    rt = ctypes.CDLL(ctypes.util.find_library("rt"), use_errno=True)
    try:
        result, _ = _run(f"""
            import ctypes, ctypes.util, sys
            libc = ctypes.CDLL(None, use_errno=True)
            rt = ctypes.CDLL(ctypes.util.find_library("rt"), use_errno=True)
            made = [libc.shmget({key}, 4096, 0o1600), libc.msgget({key}, 0o1600), libc.semget({key}, 1, 0o1600),
                    rt.mq_open({queue.encode()!r}, 0o100 | 2, 0o600, None)]  # IPC_CREAT; O_CREAT | O_RDWR
            print("MADE", *made, file=sys.stderr)
            assert min(made) >= 0, ctypes.get_errno()
        """)
        assert result.outcome == "pass", result.stderr_tail
        if not result.sandbox["private_ipc"]:
            pytest.skip(f"no IPC namespace: {result.sandbox['private_note']} (documented in execution.py)")
        assert _sysv_ids(key) == []
        assert rt.mq_unlink(queue.encode()) == -1 and ctypes.get_errno() == errno.ENOENT
    finally:
        for kind, ident in _sysv_ids(key):  # IPC_RMID
            getattr(libc, f"{kind}ctl")(ident, *((0, 0) if kind == "sem" else (0,)), None)
        rt.mq_unlink(queue.encode())


def _live_with(argv0: str) -> list[int]:
    """Live processes whose argv[0] is ``argv0`` (a zombie's command line is empty)."""
    prefix = argv0.encode() + b"\0"
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and _cmdline(int(p)).startswith(prefix)]


def _kill_live_with(argv0: str) -> None:
    """Clean-up when a test failed: what it left must not outlive it."""
    for pid in _live_with(argv0):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def test_a_tracer_of_the_program_neither_holds_its_verdict_nor_outlives_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A child leaves the session, ptraces the program and execs without the environment marker.

    The program's zombie can be reaped only once its tracer is gone: a supervisor that waited for
    it first hung until the caller killed it (an error for a passing program), and the tracer, out
    of reach of the marker, went on running as a uid then handed to another program.
    """
    monkeypatch.setattr(execution, "SUPERVISOR_GRACE_S", 3.0)  # without the fix: a hang of seconds, not 30
    token = f"attnalign-tracer-{os.getpid()}"
    try:
        result, seconds = _run(_WORK + f"""
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            libc.ptrace.argtypes = [ctypes.c_long] * 2 + [ctypes.c_void_p] * 2
            libc.prctl(0x59616D61, ctypes.c_ulong(-1), 0, 0, 0)  # PR_SET_PTRACER_ANY (Yama's ptrace_scope 1)
            r, w = os.pipe()
            if os.fork() == 0:
                os.setsid()
                parent = os.getppid()
                attached = libc.ptrace(16, parent, None, None) == 0  # PTRACE_ATTACH
                if attached:
                    os.waitpid(parent, 0)
                    libc.ptrace(7, parent, None, None)  # PTRACE_CONT
                os.write(w, b"y" if attached else b"n")
                os.execve(sys.executable, [{token!r}, "-c", "import time; time.sleep(60)"], {{}})
            print("TRACED", os.read(r, 1).decode(), file=sys.stderr)
            assert sum([1, 2]) == 3
        """, Limits(timeout_s=3))
        if _reported(result, "TRACED") == ["n"]:
            pytest.skip("ptrace not permitted here")
        assert result.outcome == "pass", result.stderr_tail
        assert seconds < 3.0
        assert _live_with(token) == []
        assert_nothing_left(result, [])
    finally:
        _kill_live_with(token)


@pytest.mark.skipif(os.geteuid() != 0, reason="only a uid of the program's own (root) tells its processes apart")
def test_nothing_runs_as_the_programs_uid_once_its_supervisor_was_killed() -> None:
    """A killed supervisor (a signal, the OOM killer) reaps nothing: before another program may have the
    uid, the caller kills whatever still runs as it, with the environment marker or without."""
    token = f"attnalign-orphan-{os.getpid()}"
    source = textwrap.dedent(f"""
        import os, sys, time
        if os.fork() == 0:
            os.setsid()
            os.execve(sys.executable, [{token!r}, "-c", "import time; time.sleep(60)"], {{}})
        time.sleep(60)
    """)
    results: list[ExecResult] = []
    runner = threading.Thread(target=lambda: results.append(run_program(source, Limits(timeout_s=20))))
    runner.start()
    try:
        deadline = time.monotonic() + 20
        while not _live_with(token) and time.monotonic() < deadline:
            time.sleep(0.02)
        (supervisor,) = [int(p) for p in os.listdir("/proc") if p.isdigit() and _ppid(int(p)) == os.getpid()
                         and b"import execution" in _cmdline(int(p))]
        os.kill(supervisor, signal.SIGKILL)
        runner.join()
        assert results[0].outcome == "error" and "supervisor failed" in results[0].stderr_tail
        assert _live_with(token) == []
    finally:
        _kill_live_with(token)
        runner.join()


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------


def test_check_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.py"
    good.write_text(get_task("Mbpp/927").canonical_solution)
    assert execution.check_command("mbpp/927", str(good), 10.0, False) == 0
    assert re.fullmatch(r"Mbpp/927: pass \(\d+\.\d\d s\)\n", capsys.readouterr().out)

    bad = tmp_path / "bad.py"
    bad.write_text("    return True\n")
    assert execution.check_command("HumanEval/0", str(bad), 10.0, True) == 1
    record = json.loads(capsys.readouterr().out)
    assert list(record) == ["task_id", "outcome", "seconds", "stderr_tail"]
    assert record["task_id"] == "HumanEval/0" and record["outcome"] == "fail"
    assert "AssertionError" in record["stderr_tail"]


def test_check_command_input_errors(tmp_path: Path) -> None:
    with pytest.raises(AttnalignError, match="not found"):
        execution.check_command("HumanEval/0", str(tmp_path / "missing.py"), 10.0, False)
    (tmp_path / "c.py").write_text("    return True\n")
    with pytest.raises(AttnalignError, match="no task"):
        execution.check_command("HumanEval/999", str(tmp_path / "c.py"), 10.0, False)
    with pytest.raises(AttnalignError, match="timeout"):
        execution.check_command("HumanEval/0", str(tmp_path / "c.py"), -1.0, False)


def test_check_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pytest_attnalign.cli import main

    good = tmp_path / "good.py"
    good.write_text(get_task("HumanEval/0").canonical_solution)
    assert main(["check", "HumanEval/0", str(good), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["outcome"] == "pass"
    assert main(["check", "HumanEval/0", str(tmp_path / "nope.py")]) == 2
    assert capsys.readouterr().err.startswith("attnalign: error: completion file")
    assert main(["check", "HumanEval/0", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (f"attnalign: error: completion file {str(tmp_path)!r} is a directory: "
                                       "give the file holding the completion\n")


def test_verify_benchmarks_command_reports_each_failure(monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    broken = dataclasses.replace(get_task("Mbpp/3"), canonical_solution="def is_not_prime(n):\n    return None\n")
    tasks = [get_task("HumanEval/0"), get_task("Mbpp/2"), broken]
    monkeypatch.setattr(execution, "load_tasks", lambda benchmark: tasks)
    assert execution.verify_benchmarks_command("all", 2, 10.0) == 1
    lines = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"2/3 passed \(humaneval 1/1, mbpp 1/2\) in \d+\.\d s", lines[0])
    assert lines[1:] == ["Mbpp/3: fail: AssertionError"]

    monkeypatch.setattr(execution, "load_tasks", lambda benchmark: tasks[:2])
    assert execution.verify_benchmarks_command("all", 0, 10.0) == 0
    assert capsys.readouterr().out.startswith("2/2 passed (humaneval 1/1, mbpp 1/1) in ")


def test_caller_temp_dir_below_a_private_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pytest's own temp root is mode 700: as root, the program's uid still reaches its work directory."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    monkeypatch.setattr(execution.tempfile, "tempdir", str(private))
    result, _ = _run(_WORK + "open('x', 'w').write('ok')\n")
    assert result.outcome == "pass", result.stderr_tail
    assert _reported(result, "WORK")[0].startswith(str(private))
    assert list(private.iterdir()) == []


def test_a_failing_supervisor_is_an_error_not_a_crash(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(execution, "__file__", str(tmp_path / "nowhere" / "execution.py"))
    result, _ = _run("print('never runs')\n")
    assert result.outcome == "error"
    assert "[sandbox] supervisor failed" in result.stderr_tail and "execution" in result.stderr_tail
    assert result.as_dict()["sandbox"]["readonly_fs"] is False


# ---------------------------------------------------------------------------------------------
# Programs running at the same time
# ---------------------------------------------------------------------------------------------

_COMM = """
    import ctypes, os, sys, threading, time
    def set_comm(name):  # prctl(PR_SET_NAME): how the other program and the test see this one
        ctypes.CDLL(None).prctl(15, name.encode(), 0, 0, 0)
    def count(name):
        n = 0
        for pid in os.listdir("/proc"):
            try:
                with open(f"/proc/{pid}/comm") as fh:
                    n += fh.read().strip() == name
            except OSError:
                pass
        return n
    print("UID", os.getuid(), file=sys.stderr)
    def wait_for(ready, what):
        deadline = time.monotonic() + 20
        while not ready():
            assert time.monotonic() < deadline, what
            time.sleep(0.02)
"""


def _comm_count(name: str) -> int:
    n = 0
    for pid in os.listdir("/proc"):
        try:
            n += Path(f"/proc/{pid}/comm").read_text().strip() == name
        except OSError:
            continue
    return n


def test_programs_running_at_once_each_have_their_own_process_allowance() -> None:
    """A starts first; B then forks up to its allowance; A can still start threads up to its own.

    RLIMIT_NPROC counts every task of a uid: were both programs the same user, B's children would
    use up the allowance A's limit was computed for, and A could not start a single thread.
    """
    nproc, token = 8, f"an{os.getpid() % 10**6}"
    limits = Limits(timeout_s=30, nproc=nproc)
    first = _COMM + f"""
    set_comm("{token}A")
    wait_for(lambda: count("{token}B") == {nproc - 1}, "B never forked its {nproc - 1} children")
    stop, started = threading.Event(), 0
    try:
        for _ in range({nproc - 1}):
            threading.Thread(target=stop.wait).start()
            started += 1
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
    stop.set()
    print("THREADS", started, file=sys.stderr)
    """
    second = _COMM + f"""
    kids = 0
    for _ in range({nproc + 8}):
        try:
            pid = os.fork()
        except OSError:
            break
        if pid == 0:
            set_comm("{token}B")
            time.sleep(1000)
            os._exit(0)
        kids += 1
    print("FORKED", kids, file=sys.stderr)
    wait_for(lambda: count("{token}A") == 0, "A never finished")
    """
    results: dict[str, ExecResult] = {}
    a = threading.Thread(target=lambda: results.setdefault("A", run_program(textwrap.dedent(first), limits)))
    a.start()
    try:
        deadline = time.monotonic() + 20
        while _comm_count(f"{token}A") == 0 and a.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        results["B"] = run_program(textwrap.dedent(second), limits)
    finally:
        a.join()
    first_result, second_result = results["A"], results["B"]
    if not all(r.sandbox["nproc_binding"] and r.sandbox["nproc_own"] for r in results.values()):
        pytest.skip("RLIMIT_NPROC shared with other processes (not root, no user namespace; documented)")
    assert second_result.outcome == "pass", second_result.stderr_tail
    assert _reported(second_result, "FORKED") == [str(nproc - 1)]
    assert first_result.outcome == "pass", first_result.stderr_tail
    assert _reported(first_result, "THREADS") == [str(nproc - 1)]
    assert _reported(first_result, "UID") != _reported(second_result, "UID") or os.geteuid() != 0


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs programs as another user")
def test_as_root_each_program_runs_as_a_reserved_uid_and_nobody_where_none_is_mapped(
        monkeypatch: pytest.MonkeyPatch) -> None:
    source = _WORK + ("print('UID', os.getuid(), file=sys.stderr)\n"
                      "assert os.getuid() == os.getgid() and not os.getgroups()\n")
    result, _ = _run(source)
    assert result.outcome == "pass", result.stderr_tail
    assert int(_reported(result, "UID")[0]) in execution.SANDBOX_UIDS
    assert (result.sandbox["user"], result.sandbox["uid"], result.sandbox["nproc_own"]) == ("reserved", None, True)
    assert_nothing_left(result, [])
    again, _ = _run(source)  # likely another uid, the same record: run files compare
    assert {k: v for k, v in again.sandbox.items() if k != "rlimits"} == {
        k: v for k, v in result.sandbox.items() if k != "rlimits"}

    monkeypatch.setattr(execution, "SANDBOX_UIDS", range(2**32 - 16, 2**32))  # beyond any uid_map
    result, _ = _run(_WORK + "print('ok')\n")
    assert result.outcome == "pass", result.stderr_tail
    assert (result.sandbox["user"], result.sandbox["nproc_own"]) == ("nobody", False)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root reserves uids")
def test_a_program_cannot_take_the_uids_other_programs_need(monkeypatch: pytest.MonkeyPatch) -> None:
    """A binds every uid's reservation name; B, started meanwhile, still gets a uid and runs.

    In the caller's network namespace A's names would be the reservations themselves: every
    ``run_program`` started while A ran raised (all uids in use).
    """
    uids = range(execution.SANDBOX_UIDS.start + 4 * (os.getpid() % 16000), execution.SANDBOX_UIDS.start
                 + 4 * (os.getpid() % 16000) + 4)
    monkeypatch.setattr(execution, "SANDBOX_UIDS", uids)
    token = f"an{os.getpid() % 10**6}"
    hog = _COMM + f"""
    import socket
    held = []
    for uid in {list(uids)!r}:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            s.bind("\\0{execution._RESERVATION}%d" % uid)
            held.append(s)
        except OSError:
            s.close()
    print("HELD", len(held), file=sys.stderr)
    set_comm("{token}A")
    deadline = time.monotonic() + 10
    while count("{token}B") == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    """
    second = _COMM + f"""
    set_comm("{token}B")
    time.sleep(0.3)
    """
    results: dict[str, ExecResult] = {}
    a = threading.Thread(target=lambda: results.setdefault("A", run_program(textwrap.dedent(hog), Limits(timeout_s=20))))
    a.start()
    try:
        deadline = time.monotonic() + 20
        while _comm_count(f"{token}A") == 0 and a.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        results["B"] = run_program(textwrap.dedent(second), Limits(timeout_s=20))
    finally:
        a.join()
    assert results["A"].outcome == "pass", results["A"].stderr_tail
    assert _reported(results["A"], "HELD") == ["4"] and results["A"].seconds < 5  # it saw B run
    assert results["B"].outcome == "pass", results["B"].stderr_tail


@pytest.mark.skipif(os.geteuid() != 0, reason="only root reserves uids")
def test_no_uid_left_to_reserve_is_one_line_naming_the_cause(monkeypatch: pytest.MonkeyPatch) -> None:
    uids = range(execution.SANDBOX_UIDS.start + 65534, execution.SANDBOX_UIDS.start + 65536)
    monkeypatch.setattr(execution, "SANDBOX_UIDS", uids)
    held = [socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) for _ in uids]
    try:
        for sock, uid in zip(held, uids):
            sock.bind(f"\0{execution._RESERVATION}{uid}")
        with pytest.raises(AttnalignError) as info:
            run_program("print('never runs')\n")
    finally:
        for sock in held:
            sock.close()
    assert str(info.value) == (
        "all 2 sandbox uids (1900065534-1900065535) are in use: every abstract unix socket name "
        "@attnalign-sandbox-uid-N in this network namespace is bound, by as many programs running at once "
        "or by another process holding the names")
