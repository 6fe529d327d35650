"""The cores' registry: which processes share this machine's cores."""

from __future__ import annotations

import fcntl
from pathlib import Path

import pytest
from tiny_models import build_tiny

from pytest_attnalign import threads
from pytest_attnalign.registry import HOST, live
from pytest_attnalign.cli import main
from pytest_attnalign.threads import CoreShare


def test_only_this_hosts_processes_share_its_cores(tmp_path: Path) -> None:
    """A cache on a shared filesystem holds other machines' registrations (flock is shared over NFS):
    counting them gave 16 shards of 8 cores each one thread."""
    registry = tmp_path / "runs"
    registry.mkdir()
    held = []
    for name in ("otherhost-7-abcd.lock", f"{HOST}-7-abcd.lock"):  # another host's, and ours
        fh = open(registry / name, "w")
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.append(fh)
    (registry / "otherhost-8-dead.lock").write_text("")  # unlocked: its host cleans it up, not this one
    share = CoreShare(registry)
    share.join()
    try:
        assert share.processes() == 2  # this process and the held one of this host
        assert (registry / "otherhost-8-dead.lock").exists()
    finally:
        share.leave()
        for fh in held:
            fh.close()


def test_attribute_rereads_its_share_before_each_method(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """It set its threads once, so a pytest run starting beside it left 3 threads on 2 cores."""
    applied: list[int] = []
    apply = CoreShare.apply
    monkeypatch.setattr(CoreShare, "apply", lambda self: applied.append(1) or apply(self))
    model = str(build_tiny("gpt2", tmp_path / "gpt2"))
    argv = ["attribute", "HumanEval/0", "--model", model, "--method", "reading_all,coding_last,saliency_reading",
            "--device", "cpu", "--cache-dir", str(tmp_path / "cache"), "--max-new-tokens", "3", "--json"]
    assert main(argv) in (0, 1)
    assert len(applied) >= 4  # at the start, before the generation and before each of the three methods


@pytest.mark.parametrize(("env", "option", "expected", "fixed_by"), [
    (None, None, None, ""), ("3", None, 3, "OMP_NUM_THREADS"), ("4,2", None, 4, "OMP_NUM_THREADS"),
    ("3", 2, 2, "--attn-threads"), ("0", None, None, ""), ("abc", None, None, ""), (" ", None, None, ""),
])
def test_omp_num_threads_fixes_the_threads_unless_the_option_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: str | None, option: int | None, expected: int | None,
    fixed_by: str
) -> None:
    """A job script's OMP_NUM_THREADS=1 was overridden by the share; a value torch ignores is ignored."""
    import torch

    if env is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", env)
    before = torch.get_num_threads()
    share = CoreShare(tmp_path / "runs", option)
    try:
        applied = share.apply()
    finally:
        share.leave()
        torch.set_num_threads(before)
    assert applied.fixed_by == fixed_by and applied.as_dict()["fixed"] is bool(fixed_by)
    assert applied.threads == (expected or threads.cpu_cores())  # alone in its registry: all cores


@pytest.mark.parametrize(("worker", "held", "expected"), [
    ("gw0", [], "cuda:0"), ("gw1", [], "cuda:1"), ("gw1", ["cuda0"], "cuda:1"),
    ("gw2", ["cuda0"], "cuda:1"),  # xdist's replacement for a crashed gw1: the GPU gw1 left
    ("gw2", ["cuda1"], "cuda:0"), ("gw3", ["cuda0", "cuda1"], "cuda:1"),  # all taken: its own among equals
])
def test_auto_takes_the_gpu_with_fewest_live_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, worker: str, held: list[str], expected: str
) -> None:
    """Worker gwN took GPU N mod count: after a crash, xdist's new gw2 shared GPU 0 with gw0 while GPU 1
    idled. A stale claim (its process gone) does not count."""
    import torch

    from pytest_attnalign import models

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(models, "_GPU_TAKEN", {})
    monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
    runs = tmp_path / "runs"
    runs.mkdir()
    locks = []
    for kind in held:
        fh = open(runs / f"{HOST}-7-{kind}.{kind}", "w")
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        locks.append(fh)
    for gpu in (0, 1):
        (runs / f"{HOST}-8-stale.cuda{gpu}").write_text("")  # unlocked: a crashed worker's
    try:
        assert models.pick_device("auto", runs) == expected
        assert models.pick_device("auto", runs) == expected  # a second model of the process: the same GPU
        assert live(runs, expected.replace(":", "")) == held.count(expected.replace(":", "")) + 1
    finally:
        for taken in models._GPU_TAKEN.values():
            taken.leave()
        for fh in locks:
            fh.close()


def test_a_share_written_before_fixed_by_reads_as_fixed_by_the_option() -> None:
    """Run files before 2026-12-03 keep 'fixed' only (--attn-threads was the one way): a shard of such a
    run was refused as damaged ("missing 'fixed_by'")."""
    from pytest_attnalign.jsonshape import from_json
    from pytest_attnalign.runinfo import RunInfo
    from pytest_attnalign.threads import Share

    old = {"threads": 1, "cores": 2, "processes": 2, "fixed": True}
    assert from_json(Share, old) == Share(1, 2, 2, True, "")
    assert RunInfo(shares=[old]).threads_line() == "torch threads: 1 per process (--attn-threads)"
    now = Share(3, 2, 1, True, "OMP_NUM_THREADS").as_dict()
    assert from_json(Share, now).as_dict() == now
    assert RunInfo(shares=[old, now]).threads_line() == "torch threads: 1-3 per process (--attn-threads; OMP_NUM_THREADS)"
    shared = Share(8, 8, 2, False).as_dict()  # a merge of shards where only some nodes fixed the number
    assert (RunInfo(shares=[now, shared]).threads_line()
            == "torch threads: 3-8 per process (OMP_NUM_THREADS; 8 cores shared by up to 2 attnalign processes)")
    assert (RunInfo(shares=[shared]).threads_line()
            == "torch threads: 8 per process (8 cores shared by up to 2 attnalign processes; --attn-threads N to fix)")


def test_a_process_given_a_gpu_counts_for_auto_and_its_claim_goes_when_it_exits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process given cuda:0 did not register, so a concurrent auto process took cuda:0 as well; and a
    finished process's claim stayed on disk until another process picked a GPU."""
    import subprocess
    import sys

    import torch

    from pytest_attnalign import models

    runs = tmp_path / "runs"
    script = ("import sys, torch\nfrom pathlib import Path\nfrom pytest_attnalign import models\n"
              "torch.cuda.is_available = lambda: True\ntorch.cuda.device_count = lambda: 2\n"
              "print(models.pick_device(sys.argv[1], Path(sys.argv[2])), sorted(p.name.split('.')[-1] "
              "for p in Path(sys.argv[2]).iterdir() if not p.name.startswith('.')))")
    done = subprocess.run([sys.executable, "-c", script, "cuda:0", str(runs)], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["cuda:0", "['cuda0']"]  # registered while it ran
    assert [p.name for p in runs.iterdir() if not p.name.startswith(".")] == []  # and gone when it exited

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    monkeypatch.setattr(models, "_GPU_TAKEN", {})
    held = dict(models._GPU_TAKEN)  # none yet
    try:
        assert models.pick_device("cuda:0", runs) == "cuda:0"  # as another process would
        held = dict(models._GPU_TAKEN)
        monkeypatch.setattr(models, "_GPU_TAKEN", {})  # now the auto process: gw0's own GPU is taken
        assert models.pick_device("auto", runs) == "cuda:1"
    finally:
        for taken in [*held.values(), *models._GPU_TAKEN.values()]:
            taken.leave()
