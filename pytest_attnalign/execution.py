"""Run benchmark test programs (prompt + completion + tests) outside the calling process, contained.

Nothing generated ever runs in the calling process. :func:`run_program` starts a *supervisor*: a
fresh ``python -I -S`` that imports this very file as a top-level module and stops at the
``__package__`` check below, before the library half. The supervisor makes itself a child
subreaper, isolates the filesystem where it can, forks the program's interpreter (``python -I
-B``: own session and process group, rlimits, minimal environment, stdin on ``/dev/null``, cwd,
HOME and TMPDIR in a fresh temp directory, stderr on a pipe), waits for it under the wall-clock
limit while keeping the tail of its stderr, kills and reaps every process the program left behind,
writes the tail to a file and prints a one-line JSON report. The caller then reads the tail and
deletes the temp directory.

What is contained:
- Time, CPU, memory, file size, processes: the wall clock, ``RLIMIT_CPU`` (SIGXCPU, SIGKILL one
  second later), ``RLIMIT_AS``, ``RLIMIT_FSIZE``, ``RLIMIT_NPROC``, ``RLIMIT_CORE`` = 0, each capped
  at the hard limit the supervisor inherited (the program cannot raise them back). Its stderr is
  a pipe, not a file: any amount may be written, the last :data:`_STDERR_KEPT` bytes are kept.
- Processes: at the end the program's process group is killed. Because the supervisor is a
  ``PR_SET_CHILD_SUBREAPER``, every descendant that left the group (``setsid``, double-fork
  daemons) is re-parented to it rather than to init, so "kill the subtree until no child is left"
  reaps everything, however deep. With a uid of its own (below) every process running as that uid
  is killed too, before the program is reaped (a process it ptraces could not be reaped while its
  tracer lives) and again by the caller before the uid is released, even if the supervisor died;
  set-uid bits are ignored (``PR_SET_NO_NEW_PRIVS``), so no process of the program leaves its uid.
  Kills go through pidfds, never to a pid reused by a stranger.
- Files: cwd, ``HOME`` and ``TMPDIR`` are the temp directory. As root the program runs as a uid
  of its own, reserved for it from :data:`SANDBOX_UIDS` (no other program running at the same
  time in this network namespace has it; ``nobody``, shared, where the range is not mapped): it
  cannot write files outside, signal its root supervisor or another program, read another
  program's work directory, or exceed ``RLIMIT_NPROC`` (which does not bind root). Where a mount
  namespace is available (root, or an unprivileged user namespace otherwise) every mount except
  the temp directory is remounted read-only in a private namespace: no path outside it (absolute,
  ``..``, ``/tmp``) is writable, whoever the caller, but ``/dev/shm``, which in that namespace is
  a tmpfs of the program's own (POSIX semaphores: ``multiprocessing.Lock()``), no larger than the
  file-size limit, that vanishes with it (``sandbox["private_shm"]``). :attr:`ExecResult.sandbox`
  records which protections held.
- Network: where a network namespace can be made (root, or the user namespace above) the program
  runs in one of its own, with no interface but a loopback that is down: no network at all, and
  abstract unix socket names of its own (``sandbox["private_net"]``); otherwise the caller's network.
  Each of its processes may have :data:`_NOFILE` files open at once (``RLIMIT_NOFILE``).
- IPC: likewise an IPC namespace of its own (``sandbox["private_ipc"]``): the SysV shared memory,
  message queues and semaphores and the POSIX message queues it creates vanish with it, rather
  than outlive the run, owned by a uid a later program gets.
- Processes at once: ``RLIMIT_NPROC`` counts every task of the program's real uid (since Linux
  5.14, of the uid in the program's user namespace). A reserved uid (root) or the program's own
  user namespace (a non-root caller with read-only mounts, Linux 5.14 or later) gives each program
  its own allowance (``sandbox["nproc_own"]``); otherwise its count includes the caller's other
  processes and the other programs running at the same time, which can use up its allowance.

What is not contained:
- Reading: the program reads what its user can read (a reserved uid: world-readable files).
- Without a mount namespace and as a non-root user, the program runs as the caller and can write or
  delete the caller's files by absolute path; a deliberately hostile program can also kill its
  supervisor (same user) and then daemonize (the caller kills what still carries the run's
  environment marker). Such runs report ``readonly_fs: false``.
- Total disk use in the temp directory (``RLIMIT_FSIZE`` bounds each file, not their number).
- The verdict itself: ``pass`` means the program reached its end and exited 0, as the bootstrap
  reports on a private pipe; deliberately hostile code could forge that. The sandbox protects the
  machine, not the metric.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import resource
import select
import signal
import sys
import time

TYPE_CHECKING = False  # typing stays unimported in the supervisor; mypy treats this name as True
if TYPE_CHECKING:
    from typing import Any

#: Bytes written on the supervisor's private pipe (fd 3 of the program) by the bootstrap.
_PASS, _FAIL = b"P", b"F"
_TOKEN_FD = 3
#: Bytes of the program's stderr kept (its tail), whatever it writes.
_STDERR_KEPT = 1 << 16
#: Files each process of the program may have open (``RLIMIT_NOFILE``): the usual soft limit.
_NOFILE = 1024
#: Environment marker of every sandboxed process (value: its work directory).
MARKER = "ATTNALIGN_SANDBOX"

# Linux constants (sched.h, sys/mount.h, sys/prctl.h).
_CLONE_NEWNS, _CLONE_NEWUSER, _CLONE_NEWNET, _CLONE_NEWIPC = 0x00020000, 0x10000000, 0x40000000, 0x08000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_REMOUNT, _MS_NOATIME, _MS_NODIRATIME, _MS_BIND = 32, 1024, 2048, 4096
_MS_REC, _MS_PRIVATE, _MS_RELATIME, _MS_STRICTATIME = 16384, 1 << 18, 1 << 21, 1 << 24
_PR_SET_PDEATHSIG, _PR_SET_CHILD_SUBREAPER, _PR_SET_NO_NEW_PRIVS = 1, 36, 38

#: Program bootstrap: like the reference HumanEval harness the program does not run as ``__main__``
#: (a completion's ``if __name__ == "__main__":`` demo block or ``unittest.main()`` is skipped), and
#: ``sys.exit`` before the end counts as an error. It reports pass/fail on the private fd so that an
#: early ``os._exit(0)`` is not mistaken for a pass. Once the tests have run the process ends (streams
#: flushed, ``os._exit``), as the reference harness takes its verdict then: a thread the program left
#: running does not turn a verdict into a timeout.
_BOOT = r"""
import os, sys, traceback, types
def _boot():
    fd = int(sys.argv[1]); os.set_inheritable(fd, False); sys.argv[:] = ["program.py"]
    module = types.ModuleType("__program__"); module.__file__ = os.path.abspath("program.py")
    sys.modules["__program__"] = module
    try:
        with open("program.py", encoding="utf-8") as fh:
            code = compile(fh.read(), "program.py", "exec")
        exec(code, module.__dict__)
    except AssertionError:
        traceback.print_exc(); os.write(fd, b"F"); return 1
    except SystemExit as exc:
        print(f"SystemExit({exc.code!r}) before the end of the program", file=sys.stderr); return 1
    except BaseException:
        traceback.print_exc(); return 1
    os.write(fd, b"P"); return 0
status = _boot()
for stream in (sys.stdout, sys.stderr):
    try:
        stream.flush()
    except BaseException:
        pass
os._exit(status)
"""


# --------------------------------------------------------------------------------------------------
# Supervisor half: stdlib only, runs in ``python -I -S -c "...; import execution" DIR CONFIG_JSON``.
# --------------------------------------------------------------------------------------------------


class _Interrupted(Exception):
    """The caller died or was interrupted (SIGTERM via PDEATHSIG, SIGINT, SIGHUP) while we waited."""


_waiting = False
_signalled: list[str] = []


def _on_signal(signum: int, frame: object) -> None:
    _signalled.append(signal.Signals(signum).name)
    if _waiting:
        raise _Interrupted(_signalled[0])


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    libc.unshare.argtypes = [ctypes.c_int]
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    return libc


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(libc: ctypes.CDLL, src: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
    def enc(s: str | None) -> bytes | None:
        return None if s is None else os.fsencode(s)

    _check(libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def _mountpoints() -> list[str]:
    """Mount points from /proc/self/mountinfo (field 5, octal escapes such as ``\\040`` decoded)."""
    with open("/proc/self/mountinfo", "rb") as fh:
        fields = [line.split(b" ")[4] for line in fh if line.strip()]
    out = []
    for f in fields:
        parts = f.split(b"\\")
        raw = parts[0] + b"".join(bytes([int(p[:3], 8)]) + p[3:] for p in parts[1:])
        out.append(os.fsdecode(raw))
    return out


def _keep_flags(f_flag: int) -> int:
    """Flags a bind remount must repeat: in a user namespace they are locked and must not change."""
    out = 0
    for st, ms in ((os.ST_NOSUID, _MS_NOSUID), (os.ST_NODEV, _MS_NODEV), (os.ST_NOEXEC, _MS_NOEXEC),
                   (os.ST_NOATIME, _MS_NOATIME), (os.ST_NODIRATIME, _MS_NODIRATIME),
                   (os.ST_RELATIME, _MS_RELATIME)):
        if f_flag & st:
            out |= ms
    return out if f_flag & (os.ST_NOATIME | os.ST_RELATIME) else out | _MS_STRICTATIME


def _can_search(path: str, uid: int, gid: int) -> bool:
    st = os.stat(path)
    bit = 0o100 if st.st_uid == uid else 0o010 if st.st_gid == gid else 0o001
    return bool(st.st_mode & bit)


def _expose(libc: ctypes.CDLL, paths: list[str], uid: int, gid: int) -> None:
    """Let ``uid`` reach ``paths`` (the interpreter, the work dir) below private directories.

    E.g. a pyenv interpreter in /root (mode 700), or pytest's 700 temp root. In our private mount
    namespace only: an O_PATH descriptor keeps each needed directory reachable, a tmpfs replaces
    the first ancestor ``uid`` cannot search (hiding everything else in it) and the needed
    directories are bound back at their own paths, so hard-coded prefixes keep working.
    """
    blocked: dict[str, list[str]] = {}
    for path in paths:
        parts = path.strip("/").split("/")
        for i in range(len(parts)):
            anc = "/" + "/".join(parts[:i])
            if not _can_search(anc, uid, gid):
                blocked.setdefault(anc, []).append(path)
                break
    for anc, needed in sorted(blocked.items()):
        fds = [(os.open(path, os.O_PATH | os.O_DIRECTORY), path) for path in needed]
        _mount(libc, "tmpfs", anc, "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=755,size=64k")
        for fd, path in fds:
            os.makedirs(path, 0o755, exist_ok=True)
            _mount(libc, f"/proc/self/fd/{fd}", path, None, _MS_BIND | _MS_REC)
            os.close(fd)


def _isolate_fs(libc: ctypes.CDLL, cfg: dict[str, Any], drop: tuple[int, int] | None) -> tuple[str, str]:
    """Enter a private mount namespace; make every mount but the work dir read-only; mount /dev/shm.

    Returns ('' or why the mounts are not read-only, '' or why /dev/shm is not the program's own).
    A non-root caller needs an unprivileged user namespace for this (mapping its own uid, so
    capabilities vanish at the program's exec and the mounts, copied into a less privileged
    namespace, stay locked read-only); root only needs a mount namespace, and drops to the
    program's uid afterwards, which cannot remount. As root the namespace also serves
    :func:`_expose` and :func:`_private_shm`, even when read-only mounts are not requested.
    """
    if not cfg["readonly"] and drop is None:
        return "disabled", "no mount namespace"
    uid, gid, work = os.getuid(), os.getgid(), cfg["work"]
    try:
        _check(libc.unshare(_CLONE_NEWNS | (0 if uid == 0 else _CLONE_NEWUSER)), "unshare")
        if uid != 0:
            for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
                with open(f"/proc/self/{name}", "w") as fh:
                    fh.write(text)
        _mount(libc, None, "/", None, _MS_REC | _MS_PRIVATE)  # nothing below propagates to the host
        if drop is not None:
            _expose(libc, cfg["expose"], drop[0], drop[1])
        if cfg["readonly"]:
            _mount(libc, work, work, None, _MS_BIND | _MS_REC)  # its own mount: stays writable
    except OSError as exc:
        return str(exc), "no mount namespace"
    failed = []
    for mp in _mountpoints() if cfg["readonly"] else []:
        if mp == work or mp.startswith(work + "/"):
            continue
        try:
            f_flag = os.statvfs(mp).f_flag
            if not f_flag & os.ST_RDONLY:
                _mount(libc, None, mp, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _keep_flags(f_flag))
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.ENOENT, errno.ENOTDIR):  # unreachable: harmless
                failed.append(mp)
    note = "disabled" if not cfg["readonly"] else f"could not remount read-only: {', '.join(failed)}" if failed else ""
    return note, _private_shm(libc, cfg["limits"]["file_size_mb"])


def _private_shm(libc: ctypes.CDLL, size_mb: int) -> str:
    """Mount a tmpfs of ``size_mb`` MB of its own at /dev/shm, after the read-only remounts; '' or why not.

    POSIX semaphores and shared memory live there (``multiprocessing.Lock()``): the program gets a
    writable one, bounded (the file-size limit in all, :data:`_NOFILE` files), that vanishes
    with the namespace, rather than the caller's (read-only like every mount, or shared).
    """
    try:
        _mount(libc, "tmpfs", "/dev/shm", "tmpfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC,
               f"mode=1777,size={size_mb}m,nr_inodes={_NOFILE}")
    except OSError as exc:
        return str(exc)
    return ""


def _proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status", encoding="utf-8") as fh:
        return dict(line.split(":", 1) for line in fh if ":" in line)


def _unshare(libc: ctypes.CDLL, flag: int) -> str:
    """Enter a new namespace of kind ``flag``, which the program inherits; '' or why not.

    Root may; a non-root caller only inside the user namespace :func:`_isolate_fs` made.
    """
    try:
        _check(libc.unshare(flag), "unshare")
    except OSError as exc:
        return str(exc)
    return ""


def _count_tasks(uid: int) -> int:
    """Tasks (threads included) whose real uid is ``uid``: what RLIMIT_NPROC counts."""
    total = 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                status = _proc_status(int(name))
                if int(status["Uid"].split()[0]) == uid:
                    total += int(status["Threads"])
            except (OSError, KeyError, ValueError):
                continue
    return total


def _nproc_rlimit(nproc: int, uid: int, own_userns: bool, own_uid: bool) -> tuple[int, bool]:
    """RLIMIT_NPROC so that the program may have ``nproc`` tasks, and whether the count is its own.

    The kernel counts all tasks of the real uid; since 5.14 it counts per user namespace, so in our
    own namespace the count is the supervisor plus the program's tasks. Otherwise it is the tasks
    the uid has now plus the program's: only a uid reserved for this program (``own_uid``) keeps
    processes started later (another program's) from using up the program's allowance.
    """
    major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    if own_userns and (major, minor) >= (5, 14):
        return nproc + 1, True
    return nproc + _count_tasks(uid), own_uid


def _rlimits(limits: dict[str, Any], nproc_limit: int) -> dict[str, tuple[int, int]]:
    """The (soft, hard) pairs to set, never above the hard limit we inherited."""
    mb = 1024 * 1024
    wanted = {
        "RLIMIT_AS": (limits["memory_mb"] * mb,) * 2,
        "RLIMIT_CPU": (limits["cpu_s"], limits["cpu_s"] + 1),  # SIGXCPU, then SIGKILL a second later
        "RLIMIT_FSIZE": (limits["file_size_mb"] * mb,) * 2,
        "RLIMIT_NPROC": (nproc_limit,) * 2,
        "RLIMIT_CORE": (0, 0),
        "RLIMIT_NOFILE": (_NOFILE, _NOFILE),
    }
    out = {}
    for name, (soft, hard) in wanted.items():
        cur_hard = resource.getrlimit(getattr(resource, name))[1]
        if cur_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, cur_hard), min(hard, cur_hard)
        out[name] = (soft, hard)
    return out


def _exec_program(libc: ctypes.CDLL, cfg: dict[str, Any], stderr_fd: int, token_w: int,
                  rlimits: dict[str, tuple[int, int]], supervisor: int) -> None:
    """In the forked child: become the program. Never returns."""
    try:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.dup2(stderr_fd, 2)
        os.dup2(token_w, _TOKEN_FD)
        os.closerange(_TOKEN_FD + 1, max(65536, os.sysconf("SC_OPEN_MAX")))
        if cfg["drop"] is not None:
            os.setgroups([])
            os.setgid(cfg["drop"][1])
            os.setuid(cfg["drop"][0])
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # after setuid, which clears it
        # Set-uid bits are ignored: every process of the program keeps its uid (see _kill_uid).
        _check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS")
        if os.getppid() != supervisor:
            os._exit(125)
        for name, pair in rlimits.items():
            resource.setrlimit(getattr(resource, name), pair)
        os.umask(0o077)
        os.chdir(cfg["work"])
        python = cfg["python"]
        os.execve(python, [python, "-I", "-B", "-c", _BOOT, str(_TOKEN_FD)], cfg["env"])
    except BaseException as exc:  # noqa: BLE001 - report anything, then leave without cleanup
        try:
            os.write(2, f"sandbox: cannot start the program: {exc!r}\n".encode())
        finally:
            os._exit(127)


def _read_into(fd: int, kept: bytearray) -> bool:
    """Append what ``fd`` holds to ``kept``, keeping its last :data:`_STDERR_KEPT` bytes; False at EOF."""
    data = os.read(fd, 1 << 16)
    kept += data
    del kept[:-_STDERR_KEPT]
    return bool(data)


def _wait_exit(pid: int, timeout: float, err: int, kept: bytearray) -> bool:
    """Wait for ``pid`` to exit, without reaping it (its pid must stay valid for killpg).

    Meanwhile drain the program's stderr pipe ``err`` into ``kept``, so that writing never blocks.
    """
    global _waiting
    _waiting = True
    try:
        if _signalled:
            raise _Interrupted(_signalled[0])
        try:
            fd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            fd = -1
        deadline = time.monotonic() + timeout
        try:
            while (left := deadline - time.monotonic()) > 0:
                watched = [f for f in (fd, err) if f >= 0]  # without a pidfd: poll every 5 ms
                ready = select.select(watched, [], [], left if fd >= 0 else min(left, 0.005))[0]
                if err in ready and not _read_into(err, kept):
                    err = -1  # EOF: no process holds the pipe any more
                if fd in ready if fd >= 0 else os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
                    return True
            return False
        finally:
            if fd >= 0:
                os.close(fd)
    finally:
        _waiting = False


def _proc_tree(root: int) -> dict[int, int]:
    """pid -> ppid of every live descendant of ``root``, from /proc."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as fh:
                    ppid = int(fh.read().rpartition(b")")[2].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(name))
    tree: dict[int, int] = {}
    todo = [root]
    while todo:
        parent = todo.pop()
        for kid in children.get(parent, []):
            if kid not in tree:
                tree[kid] = parent
                todo.append(kid)
    return tree


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as fh:
        return int(fh.read().rpartition(b")")[2].split()[1])


def _kill_subtree(me: int) -> None:
    """SIGKILL every descendant, never a stranger that reused a pid.

    A pidfd pins the process before we re-check that it is still ours. Without pidfds only direct
    children are signalled: they are unreaped, so their pids cannot be reused; their own children
    are then re-parented to us (we are a subreaper) and killed on the next round.
    """
    tree = _proc_tree(me)
    for pid, parent in tree.items():
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        except (AttributeError, OSError):
            if parent == me:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            continue
        try:
            if _ppid(pid) in tree or _ppid(pid) == me:
                signal.pidfd_send_signal(fd, signal.SIGKILL)
        except OSError:
            pass
        finally:
            os.close(fd)


def _kill_uid(uid: int, grace: float) -> int:
    """SIGKILL every process running as ``uid`` until none is left; 0, or how many outlived ``grace`` s.

    A reserved uid is the program's alone, so whatever runs as it is the program's, wherever it
    went: out of our subtree once the supervisor died, or a tracer that keeps the program's zombie
    from us. The uid may go to another program only once nothing runs as it. A process counts if
    any of its uids is ``uid``; a zombie does not (it runs nothing; its parent reaps it). Each live
    one seen means another round, so a child forked meanwhile is found. A pidfd pins the process
    while we check that it is the uid's.
    """
    deadline = time.monotonic() + grace
    while True:
        live = 0
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            pid = int(name)
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:
                continue
            except OSError:  # a kernel without pidfds (before 5.3)
                fd = -1
            try:
                status = _proc_status(pid)
                if uid not in map(int, status["Uid"].split()):
                    continue
                live += status["State"].split()[0] not in ("Z", "X") or int(status["Threads"]) > 1
                if fd >= 0:
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
                else:
                    os.kill(pid, signal.SIGKILL)
            except (OSError, KeyError, ValueError, IndexError):
                continue
            finally:
                if fd >= 0:
                    os.close(fd)
        if not live or time.monotonic() > deadline:
            return live
        time.sleep(0.002)


def _reap_everything(program: int, uid: int | None, grace: float) -> tuple[int | None, Any, int]:
    """Kill and reap until no child is left and, with a uid of the program's own, nothing runs as it.

    Returns the program's wait status and resource usage (None: never reaped) and 0, or how many
    processes survived ``grace`` seconds. Never blocks on one process: a program that another of
    its processes ptraces can be reaped only once that tracer is gone, so everything is killed
    first and reaped as it goes.
    """
    me, deadline = os.getpid(), time.monotonic() + grace
    status = usage = None
    while True:
        left = 0 if uid is None else _kill_uid(uid, 0)
        try:
            while (reaped := os.wait4(-1, os.WNOHANG))[0] != 0:
                if reaped[0] == program:
                    status, usage = reaped[1], reaped[2]
        except ChildProcessError:  # a subreaper without children has no live descendants at all
            if not left:
                return status, usage, 0
        if time.monotonic() > deadline:
            return status, usage, max(left, len(_proc_tree(me)))
        _kill_subtree(me)
        time.sleep(0.002)


def _classify(timed_out: bool, interrupted: str, status: int | None, cpu: float, token: bytes,
              cfg: dict[str, Any]) -> tuple[str, int | None, str]:
    """(outcome, returncode, note) from how the program ended (``status`` None: it was never reaped)."""
    limits = cfg["limits"]
    if interrupted:
        return "error", None, f"interrupted ({interrupted}); process group killed"
    if timed_out:
        return "timeout", None, f"wall-clock limit of {limits['timeout_s']} s reached; process group killed"
    if status is None:
        return "error", None, "the program's process could not be reaped"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= limits["cpu_s"] - 0.05):
            return "timeout", -sig, f"CPU limit of {limits['cpu_s']} s reached ({signal.Signals(sig).name})"
        return "error", -sig, f"killed by {signal.Signals(sig).name}"
    rc = os.waitstatus_to_exitcode(status)
    if token.endswith(_PASS) and rc == 0:
        return "pass", rc, ""
    if token.endswith(_FAIL):
        return "fail", rc, ""
    if rc == 0:
        return "error", rc, "exited with status 0 before the end of the program"
    return "error", rc, "" if rc == 1 else f"exit status {rc}"


def _supervise(config: str) -> int:
    """Run one program as described in ``config`` (see :func:`run_program`); print a JSON report."""
    cfg = json.loads(config)
    me = os.getpid()
    libc = _libc()
    os.umask(0o022)
    # Orphaned descendants (daemons, setsid) are re-parented to us, not to init: see _reap_everything.
    _check(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "PR_SET_CHILD_SUBREAPER")
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)  # the caller dies -> we clean up
    if os.getppid() != cfg["parent"]:
        return 1
    stderr_fd = os.open(cfg["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)  # while writable
    err_r, err_w = os.pipe()
    drop = tuple(cfg["drop"]) if cfg["drop"] is not None else None
    fs_note, shm_note = _isolate_fs(libc, cfg, drop)
    # No network, and abstract unix socket names of its own: it cannot bind the uid reservations.
    net_note = _unshare(libc, _CLONE_NEWNET)
    # SysV shared memory, message queues, semaphores and POSIX message queues of its own: they go
    # with the namespace, once the program and the supervisor are gone, not to the uid's next program.
    ipc_note = _unshare(libc, _CLONE_NEWIPC)
    private_note = "; ".join(f"{kind}: {why}" for kind, why in (("net", net_note), ("ipc", ipc_note),
                                                                 ("shm", shm_note)) if why)
    run_uid = drop[0] if drop is not None else os.getuid()
    own_userns = not fs_note and os.getuid() != 0
    binding = run_uid != 0
    nproc_limit, nproc_own = _nproc_rlimit(cfg["limits"]["nproc"], run_uid, own_userns, cfg["own_uid"])
    rlimits = _rlimits(cfg["limits"], nproc_limit)
    if _signalled:  # the caller went away while we set up
        return 1
    token_r, token_w = os.pipe()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        _exec_program(libc, cfg, err_w, token_w, rlimits, me)
    os.close(token_w)
    os.close(err_w)
    interrupted, kept = "", bytearray()
    try:
        timed_out = not _wait_exit(pid, cfg["limits"]["timeout_s"], err_r, kept)
    except _Interrupted as exc:
        timed_out, interrupted = True, str(exc)
    seconds = time.monotonic() - start
    try:
        os.killpg(pid, signal.SIGKILL)  # pid is not reaped yet, so the group id is still ours
    except OSError:
        pass
    status, usage, left = _reap_everything(pid, run_uid if cfg["own_uid"] else None, 5.0)
    os.set_blocking(err_r, False)
    try:
        while _read_into(err_r, kept):
            pass
    except BlockingIOError:  # a descendant that could not be killed still holds the pipe
        pass
    os.write(stderr_fd, kept)
    os.set_blocking(token_r, False)
    try:
        token = os.read(token_r, 64)
    except BlockingIOError:
        token = b""
    cpu = 0.0 if usage is None else usage.ru_utime + usage.ru_stime
    outcome, rc, note = _classify(timed_out, interrupted, status, cpu, token, cfg)
    if left:
        note = (note + "; " if note else "") + f"{left} descendant process(es) could not be killed"
    report = {
        "outcome": outcome, "seconds": round(seconds, 4), "returncode": rc, "note": note,
        "sandbox": {"uid": run_uid, "readonly_fs": not fs_note, "readonly_note": fs_note,
                    "private_net": not net_note, "private_ipc": not ipc_note, "private_shm": not shm_note,
                    "private_note": private_note,
                    "nproc_binding": binding, "nproc_own": binding and nproc_own,
                    "rlimits": {k: list(v) for k, v in rlimits.items()}, "leftover_processes": left},
    }
    sys.stdout.write(json.dumps(report) + "\n")
    return 0


if __name__ == "execution" and not __package__ and sys.argv[0] == "-c":
    # We are the supervisor (see run_program): stop before the library half and its imports.
    sys.exit(_supervise(sys.argv[-1]))


# --------------------------------------------------------------------------------------------------
# Library half.
# --------------------------------------------------------------------------------------------------

import math
import pwd
import random
import shutil
import socket
import subprocess
import sysconfig
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import AttnalignError
from .benchmarks import BENCHMARKS
from .tasks import Task, get_task, load_tasks

OUTCOMES = ("pass", "fail", "timeout", "error")
TAIL_CHARS = 2000
#: Seconds the caller waits for the supervisor beyond the program's wall-clock limit.
SUPERVISOR_GRACE_S = 30.0
#: The longest wall-clock limit a program may get: a day. Far above any test program's need, and
#: far below what the OS's timers take (a larger one would overflow them in the middle of a run).
MAX_TIMEOUT_S = 86400.0
#: The uids a root caller's programs run as, one each: a range systemd leaves unused (between the
#: container and the "foreign" uid ranges), below 2**31 for tools that read uids as signed.
SANDBOX_UIDS = range(1_900_000_000, 1_900_000_000 + 65536)
#: Abstract unix socket name (then the uid) that reserves a uid of :data:`SANDBOX_UIDS`.
_RESERVATION = "attnalign-sandbox-uid-"


def check_timeout(seconds: object) -> float:
    """A program's wall-clock limit: finite, above 0 and at most :data:`MAX_TIMEOUT_S`.

    The one rule for ``Limits`` and the options that set it (``--attn-timeout``, ``--timeout``),
    so a bad value stops the run at start-up rather than erroring every item.
    """
    if not (isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and math.isfinite(seconds)
            and 0 < seconds <= MAX_TIMEOUT_S):
        raise AttnalignError(f"timeout must be a number of seconds above 0 and at most {MAX_TIMEOUT_S:g} (a day), "
                             f"not {seconds!r}")
    return float(seconds)


@dataclass(frozen=True)
class Limits:
    """Per-program resource limits; recorded with every result so runs are comparable."""

    timeout_s: float = 10.0  # wall clock, whole process group killed after it
    cpu_s: int | None = None  # RLIMIT_CPU; None: the wall-clock limit rounded up
    memory_mb: int = 1024  # RLIMIT_AS (address space)
    file_size_mb: int = 16  # RLIMIT_FSIZE (each file written)
    nproc: int = 32  # tasks the program may run at once (RLIMIT_NPROC, relative; binds unless root)

    def __post_init__(self) -> None:
        check_timeout(self.timeout_s)
        if self.cpu_s is None:
            object.__setattr__(self, "cpu_s", max(1, math.ceil(self.timeout_s)))
        for name in ("cpu_s", "memory_mb", "file_size_mb", "nproc"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise AttnalignError(f"limit {name} must be a positive integer, not {value!r}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ExecResult:
    """How one program ended: ``outcome`` is one of :data:`OUTCOMES`.

    pass: ran to its end, exit status 0. fail: an ``AssertionError`` escaped (the tests failed).
    timeout: wall-clock or CPU limit reached. error: anything else (SyntaxError, NameError,
    MemoryError, ``sys.exit``, a signal, a sandbox failure). ``sandbox`` records the isolation
    that held (user, read-only filesystem, the rlimits actually set). A reserved uid is recorded
    as user ``reserved``, uid None: which one differs from run to run, and records must compare.
    """

    outcome: str
    seconds: float
    stderr_tail: str
    returncode: int | None
    limits: Limits = field(default_factory=Limits)
    sandbox: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "seconds": self.seconds, "stderr_tail": self.stderr_tail,
                "returncode": self.returncode, "limits": self.limits.as_dict(), "sandbox": dict(self.sandbox)}


@dataclass(frozen=True)
class _User:
    """Whom the program runs as when we are root; ``reservation`` keeps ``uid`` its own while it runs."""

    uid: int
    gid: int
    reservation: socket.socket | None  # None: ``nobody``, shared with other programs


def _recorded_user(user: _User | None, uid: int | None) -> dict[str, Any]:
    """``user`` and ``uid`` for :attr:`ExecResult.sandbox` (see there); ``uid``: whom the program ran as."""
    if user is not None and user.reservation is not None:
        return {"user": "reserved", "uid": None}
    uid = os.getuid() if uid is None else uid
    try:
        return {"user": pwd.getpwuid(uid).pw_name, "uid": uid}
    except KeyError:  # an arbitrary container uid
        return {"user": str(uid), "uid": uid}


def _mapped(ids: str) -> bool:
    """Whether :data:`SANDBOX_UIDS` are valid ids in our user namespace (``ids``: uid_map, gid_map)."""
    try:
        with open(f"/proc/self/{ids}", encoding="ascii") as fh:
            extents = [tuple(map(int, line.split())) for line in fh]
    except OSError:  # a kernel without user namespaces: every id is valid
        return True
    return any(first <= SANDBOX_UIDS.start and SANDBOX_UIDS.stop <= first + count for first, _, count in extents)


def _reserve_uid() -> tuple[int, socket.socket] | None:
    """A uid of :data:`SANDBOX_UIDS` that no other live program runs as, and its reservation.

    The reservation is an abstract unix socket bound to a name of the uid: one socket at a time
    holds a name (across processes: xdist workers, callers in other shells), and the kernel frees
    it with the last descriptor of the socket (ours, then the supervisor's), even when killed.
    Names are per network namespace: callers in other ones (containers sharing this kernel) are not
    coordinated, and the random start of the search only makes a clash unlikely. Programs run in a
    network namespace of their own and cannot bind these names; where none could be made, a
    program's ``RLIMIT_NOFILE`` and ``RLIMIT_NPROC`` bound how many it holds. None when the range
    is not mapped in our user namespace (a rootless container maps 65536 ids).
    """
    if not (_mapped("uid_map") and _mapped("gid_map")):
        return None
    start = random.randrange(len(SANDBOX_UIDS))
    for i in range(len(SANDBOX_UIDS)):
        uid = SANDBOX_UIDS[(start + i) % len(SANDBOX_UIDS)]
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        except OSError as exc:
            raise AttnalignError(f"cannot reserve a sandbox uid: {exc}") from None
        try:
            sock.bind(f"\0{_RESERVATION}{uid}")
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:  # another program holds it
                continue
            raise AttnalignError(f"cannot reserve a sandbox uid: {exc}") from None
        return uid, sock
    raise AttnalignError(f"all {len(SANDBOX_UIDS)} sandbox uids ({SANDBOX_UIDS[0]}-{SANDBOX_UIDS[-1]}) are in use: "
                         f"every abstract unix socket name @{_RESERVATION}N in this network namespace is bound, "
                         f"by as many programs running at once or by another process holding the names")


def _sandbox_user() -> _User | None:
    """When we are root: a reserved uid (its own RLIMIT_NPROC count), else ``nobody`` (shared)."""
    if os.geteuid() != 0:
        return None
    reserved = _reserve_uid()
    if reserved is not None:
        return _User(reserved[0], reserved[0], reserved[1])
    try:
        pw = pwd.getpwnam("nobody")
    except KeyError:
        return None
    return _User(pw.pw_uid, pw.pw_gid, None)


def _interpreter_dirs() -> list[str]:
    """Directories the program's interpreter needs (for :func:`_expose`), outermost only."""
    paths = {sys.base_prefix, sys.base_exec_prefix, sys.prefix, sys.exec_prefix,
             os.path.dirname(os.path.realpath(sys.executable)), *sysconfig.get_paths().values()}
    real = sorted({os.path.realpath(p) for p in paths if p and os.path.isdir(p)})
    return [p for p in real if not any(p.startswith(q.rstrip("/") + "/") for q in real if q != p)]


def _tail(path: Path, chars: int = TAIL_CHARS) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 4 * chars))
            data = fh.read()
    except OSError:
        return ""
    return data.decode("utf-8", errors="replace")[-chars:]


def _kill_marked(work: str) -> None:
    """Fallback when the supervisor died: SIGKILL processes carrying this run's environment marker."""
    needle = f"{MARKER}={work}\0".encode()
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/environ", "rb") as fh:
                    if needle in fh.read():
                        os.kill(int(name), signal.SIGKILL)
            except OSError:
                continue


#: Reservations of uids that something still ran as after :data:`KILL_GRACE_S`: never released.
_stuck: list[socket.socket] = []
#: Seconds the caller keeps killing what runs as a program's uid; should anything outlive them, the
#: uid stays reserved for as long as the caller lives.
KILL_GRACE_S = 10.0


def _release(uid: int, reservation: socket.socket) -> None:
    """Release ``uid`` for later programs once nothing runs as it (the supervisor may have died first)."""
    if _kill_uid(uid, KILL_GRACE_S):
        _stuck.append(reservation)
    else:
        reservation.close()


def _remove_tree(path: str) -> None:
    """Delete the temp directory, even if the program left unreadable directories behind."""
    try:
        shutil.rmtree(path)  # fd-based on Linux: never follows the program's symlinks
    except OSError:
        for dirpath, dirnames, _ in os.walk(path, onerror=lambda exc: None):
            for d in dirnames:
                p = os.path.join(dirpath, d)
                if not os.path.islink(p):
                    try:
                        os.chmod(p, 0o700)
                    except OSError:
                        pass
        shutil.rmtree(path, ignore_errors=True)


def run_program(source: str, limits: Limits = Limits(), *, readonly_fs: bool = True) -> ExecResult:
    """Run ``source`` as a fresh program in the sandbox described in the module docstring.

    ``readonly_fs=False`` leaves the mounts writable (the other protections stay).
    """
    top = tempfile.mkdtemp(prefix="attnalign-")
    work = os.path.join(top, "work")
    start = time.monotonic()
    proc: subprocess.Popen[bytes] | None = None
    user: _User | None = None
    try:
        user = _sandbox_user()
        os.mkdir(work, 0o700)
        program = os.path.join(work, "program.py")
        with open(program, "w", encoding="utf-8") as fh:
            fh.write(source)
        if user is not None:  # the program's user must reach work/ but nothing else of ours
            os.chmod(top, 0o711)
            os.chown(work, user.uid, user.gid)
            os.chown(program, user.uid, user.gid)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8",
               "LC_ALL": "C.UTF-8", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
               "MKL_NUM_THREADS": "1", MARKER: work}
        cfg = {"parent": os.getpid(), "python": sys.executable, "work": work, "stderr": os.path.join(top, "stderr"),
               "drop": None if user is None else [user.uid, user.gid],
               "own_uid": user is not None and user.reservation is not None,
               "readonly": readonly_fs, "expose": _interpreter_dirs() + [work] if user is not None else [],
               "limits": limits.as_dict(), "env": env}
        # Imported, not run as a script, so that the cached bytecode spares a compile per program.
        code = "import sys; sys.path.append(sys.argv[1]); import execution"
        here = os.path.dirname(os.path.abspath(__file__))
        cmd = [sys.executable, "-I", "-S", "-B", "-c", code, here, json.dumps(cfg)]
        # The supervisor inherits the uid's reservation: it stays held until the program is gone.
        keep = () if user is None or user.reservation is None else (user.reservation.fileno(),)
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                cwd=top, env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"}, pass_fds=keep)
        try:
            out, err = proc.communicate(timeout=limits.timeout_s + SUPERVISOR_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        try:
            report = json.loads(out.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            _kill_marked(work)
            why = err.decode(errors="replace").strip()[-TAIL_CHARS:] or f"supervisor exit status {proc.returncode}"
            tail = _tail(Path(top, "stderr"))
            sandbox: dict[str, Any] = {**_recorded_user(user, None if user is None else user.uid),
                                       "readonly_fs": False, "readonly_note": "", "private_net": False,
                                       "private_ipc": False, "private_shm": False, "private_note": "",
                                       "nproc_binding": False,
                                       "nproc_own": False, "rlimits": {}, "leftover_processes": None}
            return ExecResult("error", round(time.monotonic() - start, 4),
                              (tail + "\n" if tail else "") + f"[sandbox] supervisor failed: {why}",
                              None, limits, sandbox)
        tail = _tail(Path(top, "stderr"))
        if report["note"]:
            tail = (tail if not tail or tail.endswith("\n") else tail + "\n") + f"[sandbox] {report['note']}\n"
        sandbox = {**report["sandbox"], **_recorded_user(user, report["sandbox"]["uid"])}
        return ExecResult(report["outcome"], report["seconds"], tail[-TAIL_CHARS:], report["returncode"],
                          limits, sandbox)
    finally:
        if proc is not None and proc.poll() is None:  # interrupted (e.g. KeyboardInterrupt)
            proc.terminate()  # the supervisor kills and reaps the program's processes
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                _kill_marked(work)
        if user is not None and user.reservation is not None:
            _release(user.uid, user.reservation)
        _remove_tree(top)


def run_completion(task: Task, completion: str, limits: Limits = Limits()) -> ExecResult:
    """Run the task's tests on ``completion`` (the text continuing ``task.prompt``)."""
    return run_program(task.program(completion), limits)


def verify_benchmarks(benchmark: str = "all", jobs: int = 0,
                      limits: Limits = Limits()) -> list[tuple[str, ExecResult]]:
    """Run every canonical solution; results in task order.

    Threads only wait on supervisors: the processes are the isolation.
    """
    from concurrent.futures import ThreadPoolExecutor

    if jobs < 0:
        raise AttnalignError(f"--jobs must be 0 (CPU count) or positive, not {jobs}")
    tasks = load_tasks(benchmark)
    pool = ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 1)
    try:
        futures = [pool.submit(run_completion, t, t.canonical_solution, limits) for t in tasks]
        results = [(t.task_id, f.result()) for t, f in zip(tasks, futures)]
    except BaseException:  # Ctrl-C: start no further program; running ones are cleaned up
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()
    return results


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(no stderr)"


def verify_benchmarks_command(benchmark: str, jobs: int, timeout: float) -> int:
    """``attnalign verify-benchmarks``: a summary line, then one line per task that did not pass."""
    limits = Limits(timeout_s=timeout)
    start = time.monotonic()
    results = verify_benchmarks(benchmark, jobs, limits)
    elapsed = time.monotonic() - start
    parts = []
    for bench in BENCHMARKS:
        mine = [r for tid, r in results if bench.owns(tid)]
        if mine:
            parts.append(f"{bench.name} {sum(r.outcome == 'pass' for r in mine)}/{len(mine)}")
    passed = sum(r.outcome == "pass" for _, r in results)
    print(f"{passed}/{len(results)} passed ({', '.join(parts)}) in {elapsed:.1f} s")
    for tid, r in results:
        if r.outcome != "pass":
            print(f"{tid}: {r.outcome}: {_last_line(r.stderr_tail)}")
    return 0 if passed == len(results) else 1


def check_command(task_id: str, completion_file: str, timeout: float, as_json: bool) -> int:
    """``attnalign check``: exit status 0 when the completion passes, 1 when it does not."""
    task = get_task(task_id)
    path = Path(completion_file)
    if path.is_dir():
        raise AttnalignError(f"completion file {completion_file!r} is a directory: give the file holding the completion")
    if not path.is_file():
        raise AttnalignError(f"completion file {completion_file!r} not found")
    try:
        completion = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AttnalignError(f"cannot read completion file {completion_file!r}: {exc}") from None
    r = run_completion(task, completion, Limits(timeout_s=timeout))
    if as_json:
        print(json.dumps({"task_id": task.task_id, "outcome": r.outcome, "seconds": r.seconds,
                          "stderr_tail": r.stderr_tail}))
    else:
        print(f"{task.task_id}: {r.outcome} ({r.seconds:.2f} s)")
        if r.stderr_tail.strip():
            print(r.stderr_tail.rstrip("\n"))
    return 0 if r.outcome == "pass" else 1
