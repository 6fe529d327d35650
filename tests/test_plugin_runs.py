"""Whole runs whose shape the plugin must see right: xdist workers over --tx (output paths left to
the controller, restarts bounded, a host that cannot be reached one line, the controller not counted
as a process running items), an --lf
run being a selection, and a broken labels file failing the run before any item runs.

Same pytester project, tiny GPT-2 and isolated environment as ``test_plugin``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
from test_plugin import NO_CACHE, REPO, _isolated_env, project, summary, tiny_gpt2  # noqa: F401 (fixtures)


def _opts(model: Path, tmp_path: Path) -> list[str]:
    return [f"--attn-model={model}", "--attn-method=reading_last", "--attn-limit=1", "--attn-max-new-tokens=4",
            "--attn-device=cpu", f"--attn-cache-dir={tmp_path / 'cache'}", "-p", "no:randomly"]


def test_workers_leave_the_controllers_output_paths_alone(
    project: pytest.Pytester, tiny_gpt2: Path, tmp_path: Path
) -> None:
    """A worker on a host (here a directory) without the --attn-json file's directory: it checked
    the path as if it wrote it, and every worker failed to start."""
    elsewhere = tmp_path / "host"
    shutil.copytree(project.path / "benchmarks", elsewhere / "benchmarks")
    (project.path / "out").mkdir()
    result = project.runpytest_subprocess(
        *_opts(tiny_gpt2, tmp_path), "--attn-benchmark=humaneval", "--attn-threads=1", "--attn-json=out/run.json",
        "--attn-html=out/run.html", "-d", "--tx", f"popen//chdir={elsewhere}", "--max-worker-restart=0",
        *NO_CACHE, timeout=180)
    assert result.ret in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED), result.stdout.str()
    assert len(json.loads((project.path / "out" / "run.json").read_text())["records"]) == 1
    assert (project.path / "out" / "run.html").exists() and not (elsewhere / "out").exists()


def test_tx_workers_count_as_xdist_counts_them() -> None:
    from pytest_attnalign.options import tx_specs

    assert len(tx_specs(["popen"])) == 1
    specs = tx_specs(["2*popen", "3*ssh=host//python=python3", "popen//env:X=a*b"])
    assert len(specs) == 6 and [bool(s.popen) for s in specs] == [True] * 2 + [False] * 3 + [True]
    assert specs[2].ssh == "host" and specs[2].python == "python3"


def test_a_tx_worker_that_cannot_start_ends_the_run(project: pytest.Pytester, tmp_path: Path) -> None:
    """xdist bounds restarts only under -n: a --tx worker without the plugin (its --attn-* options
    unknown) was restarted forever and the run never ended."""
    result = project.runpytest_subprocess(
        "--attn-model=openai:stub", "--attn-method=shap", "--attn-benchmark=humaneval", "--attn-limit=1",
        f"--attn-cache-dir={tmp_path / 'cache'}", "-d", "--tx", "popen//env:PYTEST_ADDOPTS=-p no:attnalign",
        *NO_CACHE, timeout=90)  # seconds when bounded
    assert result.ret != pytest.ExitCode.OK
    assert "maximum crashed workers reached: 4" in result.stdout.str()


def test_a_tx_host_that_cannot_be_reached_is_one_line(project: pytest.Pytester, tmp_path: Path) -> None:
    """A host down or refusing ended the run with xdist's 40-line INTERNALERROR traceback of execnet."""
    import socket

    with socket.socket() as probe:  # a port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = project.runpytest_subprocess(
        "--attn-model=openai:stub", "--attn-method=shap", "--attn-benchmark=humaneval", "--attn-limit=1",
        f"--attn-cache-dir={tmp_path / 'cache'}", "-d", "--tx", f"socket=127.0.0.1:{port}", *NO_CACHE, timeout=90)
    assert result.ret == pytest.ExitCode.INTERNAL_ERROR
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str() and "Traceback" not in result.stderr.str()
    assert [line for line in result.errlines if line.strip()] == [
        f"Exit: pytest-attnalign: cannot start the xdist workers of --tx socket=127.0.0.1:{port} (ConnectionRefusedError: "
        "[Errno 111] Connection refused): check that each host is up and reachable (ssh HOST true), or leave it out"]


def test_a_worker_running_other_code_than_the_controller_refuses_the_run(
    project: pytest.Pytester, tiny_gpt2: Path, tmp_path: Path
) -> None:
    """A --tx host with another checkout of the same version ran its items into the controller's run
    file: one table of two programs' figures, which attnalign merge refuses for shards. The host is a
    local execnet socket server whose python path starts with a changed copy of the package (a popen
    worker gets the controller's sys.path, a socket or ssh one its own)."""
    import socket
    import subprocess
    import time

    import execnet

    from pytest_attnalign.versions import CODE

    other = tmp_path / "host"
    shutil.copytree(REPO / "pytest_attnalign", other / "pytest_attnalign", ignore=shutil.ignore_patterns("__pycache__"))
    with open(other / "pytest_attnalign" / "generation.py", "a") as fh:
        fh.write("# a later commit\n")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, str(Path(execnet.__file__).parent / "script" / "socketserver.py"), f"127.0.0.1:{port}"],
        env={**os.environ, "PYTHONPATH": str(other)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):  # until it listens
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        out = tmp_path / "run.json"
        out.write_text("an earlier run's file")
        result = project.runpytest_subprocess(  # the odd host beside a local worker of the controller's code
            *_opts(tiny_gpt2, tmp_path), "--attn-benchmark=humaneval", "--attn-limit=2", f"--attn-json={out}", "-d",
            "--tx", f"socket=127.0.0.1:{port}//chdir={project.path}", "--tx", "popen", *NO_CACHE, timeout=180)
    finally:
        server.kill()
        server.wait()
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    (line,) = [line for line in result.errlines if line.strip()]
    assert re.fullmatch(rf"ERROR: xdist worker gw0 \(host .+, {re.escape(str(other / 'pytest_attnalign'))}\) runs "
                        rf"pytest-attnalign code (?!{CODE})[0-9a-f]{{16}}, the controller {CODE}: give every --tx host "
                        r"the controller's checkout", line), line
    printed = result.stdout.str()
    assert not re.search(r"passed|failed|Different tests were collected", printed), printed
    assert out.read_text() == "an earlier run's file"  # a refused run removes no file


def test_a_tx_controller_is_not_a_process_running_items(
    project: pytest.Pytester, tiny_gpt2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under -d --tx the controller joined the cores' registry: two workers shared the cores with it
    ('up to 3 processes'), unlike under -n 2."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # it would fix the threads (threads.omp_threads)
    result = project.runpytest_subprocess(
        *_opts(tiny_gpt2, tmp_path), "--attn-benchmark=humaneval", "--attn-limit=2", "-d", "--tx", "2*popen",
        *NO_CACHE, timeout=180)  # two groups: neither worker leaves before both have started an item
    assert result.ret in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED), result.stdout.str()
    cores = len(os.sched_getaffinity(0))
    assert (f"torch threads: {max(1, cores // 2)} per process ({cores} cores shared by up to 2 attnalign processes;"
            in summary(result))


FAIL_HUMANEVAL_0 = """
def pytest_runtest_call(item):
    if "HumanEval/0]" in item.nodeid:
        raise AssertionError("made to fail")
"""


def test_an_lf_run_is_a_selection_of_the_study(project: pytest.Pytester, tiny_gpt2: Path, tmp_path: Path) -> None:
    """--lf drops items (and a module without failures whole) before pytest_collection_modifyitems:
    counted there, an --lf run was the whole study (no selection line, collected 1 of 2)."""
    project.makeconftest(FAIL_HUMANEVAL_0)
    opts = [*_opts(tiny_gpt2, tmp_path), "--attn-benchmark=all", "--attn-pass1=report", "--attn-threads=1"]
    first = project.runpytest_subprocess(*opts, timeout=180)
    first.assert_outcomes(passed=1, failed=1)
    for name, extra in (("serial", ()), ("xdist", ("-n", "2"))):
        out = tmp_path / f"{name}.json"
        result = project.runpytest_subprocess(*opts, "--lf", f"--attn-json={out}", *extra, timeout=180)
        result.assert_outcomes(failed=1)
        assert "selection: 1 of the study's 2 items (-k, -m, --lf or --deselect)" in summary(result), name
        run = json.loads(out.read_text())["run"]
        assert (run["items"], run["collected"], run["complete"]) == (1, 2, True), name


BAD_LABELS = """
from pathlib import Path

from pytest_attnalign import labels

labels.LABELS_DIR = Path(__file__).parent / "labels"
labels._read.cache_clear()


def pytest_runtest_setup(item):
    raise AssertionError("an item ran")
"""


@pytest.mark.parametrize("extra", [(), ("-n", "2")], ids=["serial", "xdist"])
def test_a_broken_labels_file_fails_the_run_before_any_item(
    project: pytest.Pytester, tiny_gpt2: Path, tmp_path: Path, extra: tuple[str, ...]
) -> None:
    """Labels were read only once an item had loaded its model, generated and attributed: every item
    then failed on its own with the same message."""
    project.makeconftest(BAD_LABELS)
    (project.path / "labels").mkdir()
    (project.path / "labels" / "humaneval.jsonl").write_text('{"task_id": "HumanEval/0", "labels": [\n')
    result = project.runpytest_subprocess(
        f"--attn-model={tiny_gpt2}", "--attn-method=reading_last,coding_all", "--attn-benchmark=humaneval",
        "--attn-limit=2", f"--attn-cache-dir={tmp_path / 'cache'}", *extra, *NO_CACHE, timeout=120)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    errors = [line for line in result.stderr.lines if "malformed labels file" in line]
    assert len(errors) == 1 and errors[0].startswith("ERROR: malformed labels file "), result.stderr.str()
    assert "python scripts/convert_labels.py" in errors[0]
    assert "an item ran" not in result.stdout.str() + result.stderr.str()


@pytest.mark.parametrize("refusal", [("-k", "reading_last and"), ("-m", "("), ("broken",)],
                         ids=["k-expression", "m-expression", "collection-error"])
def test_a_run_pytest_refuses_leaves_the_earlier_runs_files_alone(
    project: pytest.Pytester, tiny_gpt2: Path, tmp_path: Path, refusal: tuple[str, ...]
) -> None:
    """A -k or -m expression pytest cannot parse, or a test file that does not import, stopped the run
    before any item; it still printed "no item produced a result" and replaced the earlier run file,
    page and saved run with empty ones."""
    run, page, storage = tmp_path / "run.json", tmp_path / "report.html", tmp_path / "runs"
    run.write_text("an earlier run's file")
    page.write_text("an earlier run's page")
    how = list(refusal)
    if refusal == ("broken",):
        (project.path / "tests" / "test_broken.py").write_text("def test_x(:\n")
        how = ["benchmarks", "tests/test_broken.py"]
    result = project.runpytest_subprocess(*_opts(tiny_gpt2, tmp_path), *how, f"--attn-json={run}",
                                          f"--attn-html={page}", "--attn-save=main", f"--attn-storage={storage}",
                                          *NO_CACHE, timeout=120)
    assert result.ret in (pytest.ExitCode.USAGE_ERROR, pytest.ExitCode.INTERRUPTED), result.stdout.str()
    out = result.stdout.str()
    assert "attention alignment (pytest-attnalign)" not in out and "no item produced a result" not in out, out
    assert run.read_text() == "an earlier run's file" and page.read_text() == "an earlier run's page"
    assert not storage.exists() or not list(storage.glob("*.json"))
