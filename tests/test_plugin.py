"""The pytest plugin end to end, through pytester: options, ids, verdicts, the summary, xdist.

Runs use a pytester project shaped like the repository (``pyproject.toml`` with ``testpaths =
["tests"]``, the plugin's own ``tests/`` and copies of ``benchmarks/*/test_*.py``), a tiny local
GPT-2 (``tiny_models``) and a scripted OpenAI-compatible server (``openai_server``) whose replies the
tests choose. Every run gets its own cache directory, so no test touches ``~/.cache``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from openai_server import OpenAIStub

from pytest_attnalign.cli import main
from pytest_attnalign.patterns import PATTERNS
from pytest_attnalign.tasks import get_task

REPO = Path(__file__).resolve().parent.parent
SEP = "attention alignment (pytest-attnalign)"
NO_CACHE = ("-p", "no:cacheprovider")
HE = "benchmarks/humaneval/test_humaneval.py::test_alignment"
MB = "benchmarks/mbpp/test_mbpp.py::test_alignment"


# --------------------------------------------------------------------------------------- helpers


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    """A directory laid out like the repository: own tests under tests/, the study under benchmarks/."""
    pytester.makepyprojecttoml('[tool.pytest.ini_options]\ntestpaths = ["tests"]\n')
    tests = pytester.mkdir("tests")
    (tests / "test_own.py").write_text("def test_own():\n    pass\n")
    for bench in ("humaneval", "mbpp"):
        target = pytester.path / "benchmarks" / bench
        target.mkdir(parents=True)
        shutil.copy(REPO / "benchmarks" / bench / f"test_{bench}.py", target / f"test_{bench}.py")
    return pytester


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No ambient OpenAI settings, proxies or caches: each run talks only to a 127.0.0.1 server."""
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ATTNALIGN_OPENAI_MODEL", "ATTNALIGN_OPENAI_MAX_RETRIES",
                "ATTNALIGN_OPENAI_TIMEOUT", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID", "PYTEST_XDIST_WORKER",
                "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    # openai:stub items that never reach a server (they end in set-up, or the run stops first) pass the
    # start-up check of API models: a local server needs no key (nothing listens on port 9)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("ATTNALIGN_CACHE_DIR", str(tmp_path / "env-cache"))  # where a missing option would go
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # bert_masking: offline substitutes, no probe of the hub


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_models import build_tiny

    return build_tiny("gpt2", tmp_path_factory.mktemp("models") / "tiny-gpt2")


def collected(result: pytest.RunResult) -> list[str]:
    """Node ids printed by ``--collect-only -q``, in order."""
    return [line.strip() for line in result.outlines if "::" in line and not line.startswith(("=", " "))]


def summary(result: pytest.RunResult) -> str:
    """The plugin's section: the lines after its separator, up to pytest's next ``=== ... ===`` line."""
    lines = result.outlines
    starts = [i for i, line in enumerate(lines) if SEP in line and line.startswith("=")]
    assert len(starts) == 1, result.stdout.str()
    out = []
    for line in lines[starts[0] + 1:]:
        if re.fullmatch(r"=+ .* =+", line):
            break
        out.append(line)
    return "\n".join(out).strip("\n")


def records(path: Path) -> dict[str, Any]:
    """The --attn-json document without run-to-run noise (durations)."""
    doc = json.loads(path.read_text(encoding="utf-8"))

    def strip(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: strip(v) for k, v in obj.items() if k not in ("seconds", "generation_seconds")}
        if isinstance(obj, list):
            return [strip(v) for v in obj]
        return obj

    return strip(doc)


# --------------------------------------------------------------------------------------- usage errors


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        ("--attn-model=nosuchmodel", r"--attn-model: unknown model 'nosuchmodel': use an alias \(.*smollm2.*\), a hub id"),
        ("--attn-model=openai:", r"--attn-model: unknown model 'openai:'"),
        ("--attn-method=saliency", r"--attn-method: unknown method 'saliency': valid are all, self_attention, gradient, perturbation, .*saliency_reading"),
        ("--attn-method=,", r"--attn-method: no attribution method given: use all, a category or method names"),
        ("--attn-benchmark=apps", r"--attn-benchmark: unknown 'apps'; use humaneval, mbpp or all"),
        ("--attn-k=0", r"--attn-k: values must be positive integers, got '0'"),
        ("--attn-k=abc", r"--attn-k: 'abc' is not a comma list of integers \(e.g. 5,10,20\)"),
        ("--attn-limit=0", r"--attn-limit: must be a positive integer, got 0"),
        ("--attn-max-new-tokens=0", r"--attn-max-new-tokens: must be a positive integer, got 0"),
        ("--attn-device=tpu", r"--attn-device: unknown 'tpu'; use auto, cpu, cuda or cuda:N"),
        ("--attn-dtype=int8", r"--attn-dtype: unknown dtype 'int8': use auto, float32, float16 or bfloat16"),
        ("--attn-prompt-format=instruct", r"--attn-prompt-format: unknown 'instruct'; use completion or chat or chat-prefill$"),
        ("--attn-method-option=shap.sign=true", r"--attn-method-option: setting 'shap.sign=true' is not METHOD.NAME=VALUE or CATEGORY.NAME=VALUE with one of "
                                          r"self_attention.restated_copy, gradient.restated_copy, shap.evaluations, shap.signed, "
                                          r"shap.l1_reg, shap.seed, bert_masking.fill_mask_model"),
        ("--attn-method-option=shap.seed=-1", r"--attn-method-option: shap: seed must be an integer from 0 to 2\*\*32 - 1 "
                                              r"\(numpy's seeds; default 0\), got -1$"),
        ("--attn-method-option=shap.l1_reg=lasso", r"--attn-method-option: shap: l1_reg must be auto \(the study's\), aic, bic, "
                                                   r"num_features\(N\) or false, got 'lasso'$"),
        ("--attn-method-option=shap.signed=maybe", r"--attn-method-option: shap: signed must be true or false, got 'maybe'"),
        ("--attn-method-option=gradient.restated_copy=maybe", r"--attn-method-option: saliency_reading: restated_copy must be "
                                                              r"ignore or credit, not 'maybe'$"),
        ("--attn-labels=paper", r"--attn-labels: unknown 'paper'; use corrected or study"),
        ("--attn-timeout=0", r"--attn-timeout: timeout must be a number of seconds above 0 and at most 86400 \(a day\), not 0\.0$"),
        ("--attn-timeout=nan", r"--attn-timeout: timeout must be a number of seconds above 0 and at most 86400 \(a day\), not nan$"),
        ("--attn-timeout=inf", r"--attn-timeout: timeout must be .* not inf$"),
        ("--attn-timeout=1e30", r"--attn-timeout: timeout must be .* not 1e\+30$"),
        ("--attn-model=", r"--attn-model: no model given in '': give an alias \(e.g. smollm2\), a hub id"),
        ("--attn-model=,,", r"--attn-model: no model given in ',,': give an alias"),
        ("--attn-method=plugins", r"--attn-method: plugins selects no method: no entry-point method is installed \(group "
                                  r"pytest_attnalign.methods\): install a package that provides one, or choose all, builtin"),
        ("--attn-json=", r"--attn-json: empty value: give a file path \(e.g. run.json\), or leave the option out$"),
        ("--attn-html=", r"--attn-html: empty value: give a file path \(e.g. report.html\), or leave the option out$"),
        ("--attn-save=", r"--attn-save: empty value: give a run name \(e.g. main\), or leave the option out$"),
        ("--attn-storage=", r"--attn-storage: empty value: give a directory, or leave the option out$"),
        ("--attn-fill-mask-model=", r"--attn-fill-mask-model: empty value: give a hub id or a local directory, or leave"),
        ("--attn-method-option=bert_masking.fill_mask_model=/nonexistent",
         r"--attn-method-option: no such directory '/nonexistent': give an existing model directory or a hub id"),
        ("--attn-error-k=0", r"--attn-error-k: must be a positive integer, got 0"),
        ("--attn-shap-evaluations=0", r"--attn-shap-evaluations: must be a positive integer, got 0"),
        ("--attn-pass1=maybe", r"--attn-pass1: unknown 'maybe'; use fail or report"),
        ("--attn-gate=shap.f1@10>=40", r"--attn-gate: 'shap.f1@10>=40': F1 thresholds are written as percent \(e.g. 2%\); grammar: METHOD"),
        ("--attn-gate=shap.f1@10=>40%", r"--attn-gate: 'shap.f1@10=>40%' is not a gate; grammar: METHOD.METRIC@K OP"),
        ("--attn-gate=mine.f1@10>=shap.f1@10", r"--attn-gate: 'mine.f1@10>=shap.f1@10': method 'mine' is not in this run \(methods: reading_first,"),
        ("--attn-gate=shap.alpha@7>=0.1", r"--attn-gate: 'shap.alpha@7>=0.1': K=7 is not in this run \(K: 5, 10, 20\)"),
        ("--attn-gate=shap.f1@10>=nan%", r"--attn-gate: 'shap.f1@10>=nan%': 'nan%' is not a finite number; grammar: METHOD"),
        ("--attn-gate=shap.alpha@10>=-inf", r"--attn-gate: 'shap.alpha@10>=-inf': '-inf' is not a finite number; grammar"),
        ("--attn-compare-fail=f1@10:nan%", r"--attn-compare-fail: 'f1@10:nan%': 'nan%' is not a finite number; grammar"),
        ("--attn-compare-fail=alpha@10:inf", r"--attn-compare-fail: 'alpha@10:inf': 'inf' is not a finite number; grammar"),
        ("--attn-compare-fail=f1@10:2%", r"--attn-compare-fail: no baseline: add --attn-compare"),
        ("--attn-gate=", r"--attn-gate: '' holds no expression; grammar: METHOD"),  # an unset variable: was no gate, exit 0
        ("--attn-compare-fail=,", r"--attn-compare-fail: ',' holds no expression; grammar: \[METHOD.\]METRIC@K:DROP"),
        ("--attn-compare-fail=f1:2%", r"--attn-compare-fail: 'f1:2%' is not a compare-fail expression; grammar: \[METHOD.\]METRIC@K:DROP"),
        ("--attn-save=a/b", r"--attn-save: 'a/b' is not a run name: use letters, digits"),
        ("--attn-compare=nope", r"--attn-compare: no saved run in '.*' and no file 'nope': save one with --attn-save NAME"),
    ],
    ids=lambda v: v if v.startswith("--") else "",
)
def test_invalid_option_is_one_line_usage_error_before_any_model_loads(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, option: str, expected: str
) -> None:
    import pytest_attnalign.models as models

    loads: list[str] = []
    monkeypatch.setattr(models, "load_model", lambda *a, **k: loads.append(a) or pytest.fail("a model loaded"))
    cache = tmp_path / "cache"
    started = time.monotonic()
    result = project.runpytest(option, f"--attn-cache-dir={cache}", *NO_CACHE)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str() + result.stderr.str()
    errors = [line for line in result.errlines if line.strip()]
    assert len(errors) == 1, result.errlines
    assert re.match("ERROR: " + expected, errors[0]), errors[0]
    assert "collected" not in result.stdout.str() and SEP not in result.stdout.str()
    assert not loads and not cache.exists()
    assert time.monotonic() - started < 10  # nothing heavy was imported or loaded


@pytest.mark.parametrize("case", ["empty cache dir", "setting twice", "page over run file", "page over baseline",
                                  "fill-mask model from the environment"])
def test_contradicting_or_empty_options_are_one_line_usage_errors(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, case: str
) -> None:
    import pytest_attnalign.models as models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("a model loaded"))
    run, base = tmp_path / "run.json", tmp_path / "base.json"
    base.write_text("{}")
    (tmp_path / "sub").mkdir()
    args, expected = {
        "empty cache dir": (["--attn-cache-dir="], "--attn-cache-dir: empty value: give a directory, or leave the option out"),
        "setting twice": (["--attn-method-option=shap.evaluations=5", "--attn-shap-evaluations=7"],
                          "--attn-method-option: shap.evaluations=5 contradicts --attn-shap-evaluations=7: give the setting once"),
        "page over run file": ([f"--attn-json={run}", f"--attn-html={tmp_path / 'sub' / '..' / 'run.json'}"],
                               f"--attn-html: '{tmp_path / 'sub' / '..' / 'run.json'}' is the --attn-json file '{run}', "
                               "which the page would overwrite: give the page another path"),
        "page over baseline": ([f"--attn-compare={base}", f"--attn-html={base}"],
                               f"--attn-html: '{base}' is the --attn-compare baseline '{base}', which the page would "
                               "overwrite: give the page another path"),
        "fill-mask model from the environment": (
            ["--attn-method=bert_masking"],
            "ATTNALIGN_FILL_MASK_MODEL: no such directory '/nonexistent': give an existing model directory or a hub id "
            "like org/name"),
    }[case]
    monkeypatch.setenv("ATTNALIGN_FILL_MASK_MODEL", "/nonexistent")
    if case != "fill-mask model from the environment":  # a run without bert_masking does not check it
        args.append("--attn-method=shap")
    result = project.runpytest(*args, *NO_CACHE)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    assert [line for line in result.errlines if line.strip()] == [f"ERROR: {expected}"]
    assert not run.exists() and base.read_text() == "{}"


@pytest.mark.parametrize(("gpus", "args", "expected"), [
    (0, ["--attn-device=cuda"], "--attn-device: device 'cuda' asked for but CUDA is not available: use device cpu "
                                r"\(--attn-device=cpu; attnalign attribute: --device cpu\)$"),
    (0, ["--attn-device=cuda:0", "-n", "2"], "--attn-device: device 'cuda:0' asked for but CUDA is not available"),
    (2, ["--attn-device=cuda:2", "--tx", "2*popen", "--dist", "load"],
     r"--attn-device: device 'cuda:2' asked for but this machine has 2 GPU\(s\), cuda:0 to cuda:1: use one of them or auto$"),
])
def test_a_gpu_this_machine_lacks_is_a_usage_error_at_start_up(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, gpus: int, args: list[str], expected: str
) -> None:
    """It failed each model's first item, after the run had started (serial) or on every worker (-n)."""
    import torch

    import pytest_attnalign.models as models

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("a model loaded"))
    small = ["--attn-limit=1", "--attn-method=reading_all", "--attn-max-new-tokens=2"]  # short if it regresses
    result = project.runpytest(*args, *small, *NO_CACHE)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    errors = [line for line in result.errlines if line.strip()]
    assert len(errors) == 1 and re.match("ERROR: " + expected, errors[0]), errors


def test_only_local_workers_have_their_device_checked_by_the_controller() -> None:
    """A controller dispatching to --tx ssh hosts may have no GPU itself: their devices are theirs."""
    from types import SimpleNamespace

    from pytest_attnalign.options import _items_run_here

    def here(tx: list[str] | None, worker: bool = False) -> bool:
        config = SimpleNamespace(getoption=lambda name, default=None: tx if name == "tx" else default)
        if worker:
            config.workerinput = {}
        return _items_run_here(config)  # type: ignore[arg-type]

    assert here(None) and here([]) and here(["popen", "3*popen//python=python3"]) and here(["id=a//popen"])
    assert not here(None, worker=True)
    assert not here(["ssh=gpu1//python=python3"]) and not here(["popen", "2*ssh=gpu2"]) and not here(["socket=1.2.3.4:8888"])


def test_agreeing_setting_and_its_option_run(project: pytest.Pytester) -> None:
    """The same value twice is no contradiction."""
    result = project.runpytest("--attn-method-option=shap.evaluations=7", "--attn-shap-evaluations=7",
                               "--attn-method=shap", "--attn-limit=1", "--collect-only", "-q", *NO_CACHE)
    assert result.ret == pytest.ExitCode.OK, result.stderr.str()
    assert collected(result) == [f"{HE}[smollm2-shap-HumanEval/0]", f"{MB}[smollm2-shap-Mbpp/1]"]


def test_model_directory_without_config_is_a_usage_error(project: pytest.Pytester, tmp_path: Path) -> None:
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    result = project.runpytest(f"--attn-model={empty}", *NO_CACHE)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.re_match_lines([r"ERROR: --attn-model: model directory .* has no config.json: point --attn-model \(attnalign attribute: --model\) at a saved"])


def test_an_option_value_taken_for_the_rootdir_is_a_usage_error(project: pytest.Pytester, tmp_path: Path) -> None:
    """pytest finds its rootdir before it knows the plugin's options: ``--attn-cache-dir DIR`` (two tokens)
    would make an existing DIR the rootdir (ini, conftest.py, .pytest_cache, saved runs there)."""
    outside = tmp_path / "cache"
    outside.mkdir()
    opts = ["--attn-model=openai:stub", "--attn-method=shap", "--attn-limit=1", "--collect-only", "-q"]
    result = project.runpytest(*opts, "--attn-cache-dir", str(outside))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    became = os.path.commonpath([outside, project.path])  # pytest's fallback: the common ancestor of cwd and the "path"
    assert [line for line in result.errlines if line.strip()] == [
        f"ERROR: --attn-cache-dir {outside}: pytest took the value for a test path, so the rootdir became "
        f"{became} instead of {project.path} (its config, conftest.py, .pytest_cache, saved runs): "
        f"write --attn-cache-dir={outside}"]
    assert sorted(p.name for p in outside.iterdir()) == []  # no .pytest_cache, no results
    # the same value after "=", or a separate value inside the project (same rootdir), runs as asked
    ids = [f"{HE}[openai:stub-shap-HumanEval/0]", f"{MB}[openai:stub-shap-Mbpp/1]"]
    assert collected(project.runpytest(*opts, f"--attn-cache-dir={outside}", *NO_CACHE)) == ids
    (project.path / "run.json").write_text("{}")
    assert collected(project.runpytest(*opts, f"--attn-cache-dir={outside}", "--attn-json", "run.json",
                                       *NO_CACHE)) == ids


# --------------------------------------------------------------------------------------- collection


def test_bare_pytest_runs_only_the_own_tests(project: pytest.Pytester) -> None:
    result = project.runpytest("--collect-only", "-q", *NO_CACHE)
    assert result.ret == pytest.ExitCode.OK
    assert collected(result) == ["tests/test_own.py::test_own"]
    assert SEP not in result.stdout.str()
    result = project.runpytest("-q", *NO_CACHE)  # and runs them, without the study's summary
    result.assert_outcomes(passed=1)
    assert SEP not in result.stdout.str()
    # an option's value that merely mentions benchmarks is not a path into benchmarks/
    result = project.runpytest("--collect-only", "-q", "-k", "benchmarks", *NO_CACHE)
    assert collected(result) == [] and SEP not in result.stdout.str()


def test_any_attn_option_or_benchmarks_path_runs_the_study(project: pytest.Pytester, tmp_path: Path) -> None:
    opts = ["--attn-model=openai:stub", "--attn-method=shap", "--attn-limit=2", f"--attn-cache-dir={tmp_path}"]
    from_root = project.runpytest("--collect-only", "-q", *opts, *NO_CACHE)
    assert collected(from_root) == [f"{HE}[openai:stub-shap-HumanEval/{i}]" for i in (0, 1)] + [
        f"{MB}[openai:stub-shap-Mbpp/{i}]" for i in (1, 2)]
    only_mbpp = project.runpytest("--collect-only", "-q", *opts, "--attn-benchmark=mbpp", *NO_CACHE)
    assert collected(only_mbpp) == [f"{MB}[openai:stub-shap-Mbpp/{i}]" for i in (1, 2)]
    # a path into benchmarks/ alone selects the study too (default model smollm2: names resolve, nothing loads)
    by_path = project.runpytest("--collect-only", "-q", "benchmarks/humaneval", "--attn-limit=1", *NO_CACHE)
    assert len(collected(by_path)) == 12 and all(i.startswith(f"{HE}[smollm2-") for i in collected(by_path))
    assert collected(by_path)[0] == f"{HE}[smollm2-reading_first-HumanEval/0]"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--attn-limit=10", "-k", "HumanEval/12]"],
         "-k 'HumanEval/12]': HumanEval/12 is past --attn-limit=10 (humaneval: HumanEval/0 to HumanEval/9): raise --attn-limit"),
        (["-k", "humaneval/164]"], "-k 'humaneval/164]': no task HumanEval/164: ids are HumanEval/0..163"),
        (["-k", "Mbpp/9750"], "-k 'Mbpp/9750': no task id starts with Mbpp/9750: ids are Mbpp/1..974"),
        (["-k", "Foo/1]"], "-k 'Foo/1]': no task Foo/1: ids are HumanEval/0..163, Mbpp/1..974"),
        (["-k", "HumanEval/-1]"], "-k 'HumanEval/-1]': no task HumanEval/-1: ids are HumanEval/0..163"),
        (["-k", "shap and humaneval/-1"], "-k 'shap and humaneval/-1': no task id starts with HumanEval/-1: ids are HumanEval/0..163"),
        (["--attn-benchmark=humaneval", "-k", "Mbpp/3] and shap"],
         "-k 'Mbpp/3] and shap': Mbpp/3 is in mbpp, which --attn-benchmark=humaneval leaves out: use --attn-benchmark=mbpp or all"),
    ],
)
def test_k_naming_a_task_the_run_lacks_is_a_usage_error(project: pytest.Pytester, tmp_path: Path, args: list[str],
                                                       expected: str) -> None:
    """Without the check such a run collected every item, deselected them all and said only "0 selected"."""
    result = project.runpytest("--attn-model=openai:stub", "--attn-method=shap", f"--attn-cache-dir={tmp_path}",
                               "--collect-only", "-q", *args, *NO_CACHE)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert [line for line in result.errlines if line.strip()] == [f"ERROR: {expected}"]


def test_k_selects_by_prefix_and_by_exclusion_unchecked(project: pytest.Pytester, tmp_path: Path) -> None:
    opts = ["--attn-model=openai:stub", "--attn-method=shap", "--attn-benchmark=humaneval", "--attn-limit=12",
            f"--attn-cache-dir={tmp_path}", "--collect-only", "-q", *NO_CACHE]
    assert collected(project.runpytest(*opts, "-k", "HumanEval/1")) == [
        f"{HE}[openai:stub-shap-HumanEval/{i}]" for i in (1, 10, 11)]
    assert len(collected(project.runpytest(*opts, "-k", "not HumanEval/99]"))) == 12  # exclusion: nothing to check


def test_k_selects_exactly_one_task_and_ids_are_stable(project: pytest.Pytester, tmp_path: Path) -> None:
    models, methods = ["openai:a", "openai:b"], ["reading_last", "bert_masking", "shap"]
    opts = [f"--attn-model={models[0]}", f"--attn-model={models[1]}", f"--attn-method={','.join(methods)}",
            "--attn-limit=12", f"--attn-cache-dir={tmp_path}", "--collect-only", "-q", *NO_CACHE]
    first = project.runpytest(*opts, "-k", "HumanEval/1]")
    expected = [f"{HE}[{m}-{meth}-HumanEval/1]" for m in models for meth in methods]
    assert collected(first) == expected  # not HumanEval/10, /11, nor Mbpp/1
    first.stdout.fnmatch_lines(["6/144 tests collected (138 deselected)*"])
    assert collected(project.runpytest(*opts, "-k", "HumanEval/1]")) == expected

    everything = collected(project.runpytest(*opts))
    assert len(everything) == len(set(everything)) == 2 * 3 * 12 * 2
    assert collected(project.runpytest(*opts)) == everything  # same ids, same order
    assert set(collected(project.runpytest(*opts, "-k", "openai:b and shap"))) == {
        i for i in everything if "[openai:b-shap-" in i}
    assert collected(project.runpytest(*opts, "-k", "Mbpp/3]")) == [
        f"{MB}[{m}-{meth}-Mbpp/3]" for m in models for meth in methods]


NO_ITEM_RUNS = """
def pytest_runtest_setup(item):
    raise AssertionError("an item ran")
"""
K_NAMES = "items are named MODEL-METHOD-TASK with models openai:stub and methods reading_last, coding_all"


@pytest.mark.parametrize(("k", "unknown"), [
    ("salency_coding", "salency_coding matches"),
    ("coding_all or salency_coding", "salency_coding matches"),  # the typo'd half was dropped silently
    ("(opneai:stub or humaneval) and reding_last and not shap", "opneai:stub, reding_last match"),
    ("not (not mbbp)", "mbbp matches"),  # under two nots a word selects again
    ("not not not_a_word_x", "not_a_word_x matches"),
    ("not (coding_all and not (salency or not not_a_word_x))", "salency matches"),
])
def test_k_with_a_word_that_matches_no_item_is_a_usage_error(project: pytest.Pytester, tmp_path: Path, k: str,
                                                             unknown: str) -> None:
    """Such a run deselected every item ("no tests ran", exit 5) or the misspelt part of its selection."""
    project.makeconftest(NO_ITEM_RUNS)
    result = project.runpytest("--attn-model=openai:stub", "--attn-method=reading_last,coding_all", "--attn-limit=1",
                               f"--attn-cache-dir={tmp_path}", f"--attn-json={tmp_path / 'run.json'}", "-k", k,
                               *NO_CACHE)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    assert [line for line in result.errlines if line.strip()] == [
        f"ERROR: -k {k!r}: {unknown} no item of this run: {K_NAMES}"]
    assert "an item ran" not in result.stdout.str() and not (tmp_path / "run.json").exists()


def test_k_words_match_as_pytest_matches_them(project: pytest.Pytester, tmp_path: Path) -> None:
    """Any case, a part of a parent's name or a marker selects; a word under an odd number of nots
    (through parentheses) only excludes and is not checked, one under an even number selects; a
    parent's name misspelt is refused too."""
    opts = ["--attn-model=openai:stub", "--attn-method=reading_last,coding_all", "--attn-limit=1",
            f"--attn-cache-dir={tmp_path}", "--collect-only", "-q", *NO_CACHE]
    expected = {"OPENAI and Reading": 2, "test_mbpp": 2, "attnalign and not salency": 4,
                "benchmarks and not (mbpp)": 2, "not (mbbp)": 4, "benchmarks and not (reading_last or codng_all)": 2,
                "not not_a_word_x": 4, "not (not_a_word_x or (salency and mbbp))": 4, "not not coding_all": 2,
                "not (reading_last and not not mbbp)": 4, "not ((mbbp)) and not not mbpp": 2}
    got = {}
    for k in expected:
        result = project.runpytest(*opts, "-k", k)  # a refused run lists its items too: the exit code tells
        got[k] = len(collected(result)) if result.ret == pytest.ExitCode.OK else f"exit {result.ret!r}"
    assert got == expected
    assert project.runpytest(*opts, "-k", "test_mbbp").errlines[0] == (
        f"ERROR: -k 'test_mbbp': test_mbbp matches no item of this run: {K_NAMES}")


@pytest.mark.parametrize("k", ["salency or", "(salency", "coding_all or", "not (mbbp"])
def test_k_that_pytest_refuses_gets_pytests_own_error(project: pytest.Pytester, tmp_path: Path, k: str) -> None:
    """No word of an expression pytest cannot parse is checked: pytest says what is wrong with it,
    not that a word of it matches no item."""
    result = project.runpytest("--attn-model=openai:stub", "--attn-method=reading_last,coding_all",
                               "--attn-limit=1", f"--attn-cache-dir={tmp_path}", "--collect-only", "-q", "-k", k,
                               *NO_CACHE)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    errors = [line for line in result.errlines if line.strip()]
    assert len(errors) == 1 and errors[0].startswith(f"ERROR: Wrong expression passed to '-k': {k}: at column ")
    assert "no item of this run" not in result.stdout.str() + result.stderr.str()


def test_k_under_lf_counts_the_items_lf_left_out(project: pytest.Pytester, tmp_path: Path) -> None:
    """--lf collects only the last failures: a word naming other items of the study, or a user's own
    test that passed, is no typo; a typo's error says what --lf left out."""
    project.makeconftest("import pytest\n\n\ndef pytest_runtest_setup(item):\n"
                         "    assert 'reading_last' not in item.nodeid\n"
                         "    if 'benchmarks' in item.nodeid:\n        pytest.skip('no model needed')\n")
    opts = ["tests", "benchmarks", "--attn-model=openai:stub", "--attn-method=reading_last,coding_all",
            "--attn-limit=1", f"--attn-cache-dir={tmp_path}", "--attn-benchmark=humaneval"]
    project.runpytest(*opts).assert_outcomes(errors=1, skipped=1, passed=1)  # the project's own test_own passes
    for k in ("coding_all", "test_own"):
        assert project.runpytest(*opts, "--lf", "-k", k).ret == pytest.ExitCode.NO_TESTS_COLLECTED, k
    result = project.runpytest(*opts, "--lf", "-k", "salency")
    assert result.ret == pytest.ExitCode.USAGE_ERROR and result.errlines[0].startswith(
        "ERROR: -k 'salency': salency matches no item of this run")
    assert result.errlines[0].endswith("; or a test --lf left out (it passed last time): to select it, run without --lf")


def test_k_with_a_word_that_matches_no_item_is_one_usage_error_under_xdist(project: pytest.Pytester,
                                                                            tmp_path: Path) -> None:
    """The controller collects nothing: each worker's items show the word matches none, and the run
    stops with one usage error, not a crash (and restart) of every worker."""
    project.makeconftest(NO_ITEM_RUNS)
    result = project.runpytest_subprocess(
        "--attn-model=openai:stub", "--attn-method=reading_last,coding_all", "--attn-limit=1",
        f"--attn-cache-dir={tmp_path}", "-n", "2", "-k", "coding_all or salency_coding", *NO_CACHE, timeout=120)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    errors = [line for line in result.stderr.lines if line.startswith("ERROR")]
    assert errors == [f"ERROR: -k 'coding_all or salency_coding': salency_coding matches no item of this run: {K_NAMES}"]
    assert "an item ran" not in result.stdout.str() + result.stderr.str()
    assert "crashed" not in result.stdout.str() + result.stderr.str()


# --------------------------------------------------------------------------------------- verdicts


CRASHING_METHOD = """
from pytest_attnalign.methods.base import Method


class Crashing(Method):
    \"\"\"A third-party method that raises: its items must error alone, the rest of the run goes on.\"\"\"

    name = "crashing"
    category = "plugin"
    needs_internals = False

    def attribute(self, ctx):
        raise RuntimeError("attribution exploded")
"""


def install_crashing_method(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """A distribution on PYTHONPATH whose entry point adds the method ``crashing`` (as a package would)."""
    site = pytester.mkdir("site")
    (site / "crashing_method.py").write_text(CRASHING_METHOD)
    info = site / "crashing_method-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: crashing-method\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[pytest_attnalign.methods]\ncrashing = crashing_method:Crashing\n")
    monkeypatch.setenv("PYTHONPATH", str(site))


def _script(body: dict[str, Any]) -> str:
    """HumanEval/0 gets its canonical solution (passes), HumanEval/1 a wrong function (fails).

    Perturbed prompts keep the examples after the scored region, so every regeneration of a task is
    recognised; replacing "closer" changes the reply, so bert_masking has a word to find.
    """
    text = body["messages"][0]["content"]
    if ">>> has_close_elements(" in text:
        task = get_task("HumanEval/0")
        code = task.prompt + task.canonical_solution
        return f"Sure.\n```python\n{code if 'closer' in text else code.replace('< threshold', '< 0')}```\n"
    if ">>> separate_paren_groups(" in text:
        return "```python\ndef separate_paren_groups(paren_string: str):\n    return ['wrong']\n```\n"
    return "I cannot help with that."


def test_passing_and_failing_programs_give_passing_and_failing_items(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    install_crashing_method(project, monkeypatch)
    monkeypatch.setenv("ATTNALIGN_OPENAI_MAX_RETRIES", "0")
    out = tmp_path / "run.json"
    with OpenAIStub(_script, reported_model="stub-0613") as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        result = project.runpytest_subprocess(
            "--attn-model=openai:stub", "--attn-method=bert_masking,saliency_reading,crashing",
            "--attn-benchmark=humaneval", "--attn-limit=2", f"--attn-cache-dir={tmp_path / 'cache'}",
            f"--attn-json={out}", f"--attn-html={tmp_path / 'run.html'}", "-rfEs", *NO_CACHE,
            timeout=240)  # seconds alone; minutes on a loaded machine
    result.assert_outcomes(passed=1, failed=1, skipped=2, errors=2)
    result.stdout.fnmatch_lines([f"page written to {tmp_path / 'run.html'}"])
    page = (tmp_path / "run.html").read_text(encoding="utf-8")
    blob = json.loads(page.split('<script type="application/json" id="attn-data">')[1].split("</script>")[0])
    shown = {(g["task"], m): v["top"]["10"] for g in blob["gens"] for m, v in g["methods"].items()}

    # pass / fail follow the generated program's tests
    result.stdout.fnmatch_lines([f"FAILED {HE}[[]openai:stub-bert_masking-HumanEval/1[]]*"])
    doc = json.loads(out.read_text(encoding="utf-8"))
    recs = {(r["method"], r["task_id"]): r for r in doc["records"]}
    assert set(recs) == {("bert_masking", "HumanEval/0"), ("bert_masking", "HumanEval/1")}
    # the crashing method's items gave no result: the run file and the summary say it is incomplete
    crashed = [f"{HE}[openai:stub-crashing-HumanEval/{i}]" for i in range(2)]
    assert (doc["run"]["complete"], doc["run"]["missing"], doc["run"]["errors"]) == (False, [], crashed)
    assert ("\nincomplete: 2 of 6 items gave no result (an error); the tables lack: "
            "test_alignment[openai:stub-crashing-HumanEval/0], test_alignment[openai:stub-crashing-HumanEval/1]\n"
            in summary(result))
    ok, bad = recs["bert_masking", "HumanEval/0"], recs["bert_masking", "HumanEval/1"]
    assert ok["passed"] is True and ok["execution"]["outcome"] == "pass" and ok["error_patterns"] == []
    assert bad["passed"] is False and bad["execution"]["outcome"] == "fail"
    assert max(v for _, _, v in ok["units"]) > 0  # the scripted reply reacts to "closer"
    for (method, task_id), rec in recs.items():  # the page marks each record's top-K in its description
        a = get_task(task_id).description[0]
        assert shown[task_id, method] == [[s - a, e - a] for s, e in rec["top_k"]["10"]]

    # the failing item's message: marked description, missed keywords with types, pattern, test output
    task = get_task("HumanEval/1")
    lines = result.outlines
    head = next(i for i, line in enumerate(lines) if line.startswith(
        "HumanEval/1 failed its tests under openai:stub (chat format); outcome: fail"))
    assert lines[head + 1] == "top-10 units of bert_masking marked [[...]] in the task description:"
    n = task.description_text.count("\n") + 1
    marked = "\n".join(line[4:] for line in lines[head + 2: head + 2 + n])
    assert "[[" in marked and marked.replace("[[", "").replace("]]", "") == task.description_text
    tops = [task.prompt[s:e] for s, e in bad["top_k"]["10"]]
    assert len(tops) == 10 and all(f"[[{word}]]" in marked for word in tops)
    assert bad["missed_keywords"] and all(m["type"] in ("conditional", "property", "operator", "data_type")
                                          for m in bad["missed_keywords"])
    missed = ", ".join(f"{m['word']} ({m['type']})" for m in bad["missed_keywords"])
    assert "balanced (property)" in missed
    assert lines[head + 2 + n] == f"labelled keywords missed by the top-10: {missed}"
    assert bad["error_patterns"] and set(bad["error_patterns"]) <= set(PATTERNS)
    assert lines[head + 3 + n] == f"error pattern: {', '.join(bad['error_patterns'])}"
    assert lines[head + 4 + n] == "test output (tail):"
    assert "AssertionError" in "\n".join(lines[head + 5 + n: head + 40 + n])

    # a gradient method cannot apply to an API model: skipped with the reason
    result.stdout.fnmatch_lines(["SKIPPED [[]2[]] *saliency_reading needs model internals; openai:stub exposes none (an API model): use the perturbation methods*"])
    # a crash inside a method is an error of its own items only; the summary still prints
    for i in (0, 1):
        result.stdout.fnmatch_lines([f"ERROR {HE}[[]openai:stub-crashing-HumanEval/{i}[]]*"])
    result.stdout.fnmatch_lines(["E * RuntimeError: attribution exploded"])
    section = summary(result)
    tables = section.split("\nPass@1\n", 1)[1]  # the header's incomplete line names the crashed items
    assert "crashing" not in tables and "saliency_reading" not in section
    assert f"model openai:stub: stub revision stub@{srv.base_url} dtype n/a (served as stub-0613)" in section
    assert re.search(r"openai:stub\s+humaneval\s+1/2\s+50\.0%", section)
    assert re.search(r"openai:stub\s+bert_masking\s+2\s", section)  # Table 2 row: two tasks pooled
    assert re.search(r"^bert_masking\s+1\s", section, re.M)  # Table 3 row: one model
    assert re.search(r"openai:stub\s+bert_masking\s+1\s", section.split("Error patterns")[1])  # one failing item
    assert f"records written to {out}" in section


def test_server_error_is_an_error_of_that_item_only(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ATTNALIGN_OPENAI_MAX_RETRIES", "0")
    with OpenAIStub(_script, failures=[500]) as srv:  # the first request (HumanEval/0's generation) fails
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        result = project.runpytest_subprocess(
            "--attn-model=openai:stub", "--attn-method=shap", "--attn-benchmark=humaneval",
            "--attn-limit=2", f"--attn-cache-dir={tmp_path}", *NO_CACHE, timeout=90)
    result.assert_outcomes(failed=1, errors=1)
    result.stdout.fnmatch_lines([f"ERROR {HE}[[]openai:stub-shap-HumanEval/0[]]*"])
    result.stdout.fnmatch_lines([f"FAILED {HE}[[]openai:stub-shap-HumanEval/1[]]*"])
    result.stdout.fnmatch_lines(["openai:stub/shap/HumanEval/0: http://127.0.0.1:*/v1 (model 'stub'): server error (500) "
                                 "after 0 retries: rerun later"])
    section = summary(result)
    assert re.search(r"openai:stub\s+humaneval\s+0/1\s+0\.0%", section)
    assert "items: 1;" in section


def test_server_down_for_every_item_still_prints_the_summary(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ATTNALIGN_OPENAI_MAX_RETRIES", "0")
    with OpenAIStub(_script, failures=[500] * 50) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        result = project.runpytest_subprocess(
            "--attn-model=openai:stub", "--attn-method=shap,bert_masking,saliency_coding", "--attn-limit=1",
            f"--attn-cache-dir={tmp_path}", f"--attn-json={tmp_path / 'run.json'}", *NO_CACHE, timeout=90)
    result.assert_outcomes(errors=4, skipped=2)
    assert len(srv.requests) == 3  # three failed generations, then the endpoint is given up; skipped items ask nothing
    assert summary(result).startswith("pytest-attnalign: no item produced a result")
    assert json.loads((tmp_path / "run.json").read_text())["records"] == []


def test_method_settings_reach_the_methods_and_the_summary(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """--attn-shap-evaluations changes shap's run (recorded, in the header); a named fill-mask model
    that cannot load is a one-line error of its items, never a silent switch to the offline source."""
    monkeypatch.setenv("ATTNALIGN_OPENAI_MAX_RETRIES", "0")
    out = tmp_path / "run.json"
    with OpenAIStub(_script) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        result = project.runpytest_subprocess(
            "--attn-model=openai:stub", "--attn-method=shap,bert_masking", "--attn-benchmark=humaneval",
            "--attn-limit=1", "--attn-shap-evaluations=6", "--attn-fill-mask-model=no-such-org/masker",
            f"--attn-cache-dir={tmp_path / 'cache'}", f"--attn-json={out}", "-rE", *NO_CACHE, timeout=300)
    result.assert_outcomes(passed=1, errors=1)
    (record,) = json.loads(out.read_text(encoding="utf-8"))["records"]
    assert record["method"] == "shap" and record["attribution"]["settings"]["evaluations"] == 6
    assert "method settings: shap evaluations=6" in summary(result)
    result.stdout.fnmatch_lines(["*ERROR at setup of test_alignment[[]openai:stub-bert_masking-HumanEval/0[]]*",
                                 "openai:stub/bert_masking/HumanEval/0: bert_masking: fill-mask model "
                                 "'no-such-org/masker' is not usable: offline *; pass a local directory of a masked LM*",
                                 "=*"])
    assert "During handling" not in result.stdout.str() and "Traceback" not in result.stdout.str()


# --------------------------------------------------------------------------------------- xdist


def test_xdist_and_serial_print_identical_tables_and_records(
    project: pytest.Pytester, tiny_gpt2: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Same selection, serial and -n 2, each with a cold cache of its own: same summary, same records.

    One torch thread in both: float sums differ in their last bits between thread counts."""
    runs = {}
    for name, extra in (("serial", ()), ("xdist", ("-n", "2", "-v"))):
        (tmp_path / name).mkdir()
        runs[name] = project.runpytest_subprocess(
            f"--attn-model={tiny_gpt2}", "--attn-method=saliency_reading,reading_last,coding_all",
            "--attn-limit=2", "--attn-max-new-tokens=8", "--attn-device=cpu", f"--attn-cache-dir={tmp_path / name / 'cache'}",
            f"--attn-json={tmp_path / name / 'run.json'}", "--attn-threads=1", *extra, *NO_CACHE, timeout=120)
    serial, xdist = runs["serial"], runs["xdist"]
    for result in (serial, xdist):
        assert result.ret in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED), result.stdout.str()
        outcomes = result.parseoutcomes()  # a random model's code fails; an empty completion errors coding items
        assert sum(outcomes.get(k, 0) for k in ("passed", "failed", "error", "errors")) == 3 * 4, outcomes
        assert outcomes.get("failed", 0) >= 4, outcomes
    def verdicts(result: pytest.RunResult) -> dict[str, int]:
        return {k: v for k, v in result.parseoutcomes().items() if not k.startswith("warning")}

    assert verdicts(serial) == verdicts(xdist)

    def section(result: pytest.RunResult, name: str) -> str:
        return summary(result).replace(str(tmp_path / name / "run.json"), "RUN.json")

    assert section(xdist, "xdist") == section(serial, "serial")
    docs = {name: records(tmp_path / name / "run.json") for name in runs}
    assert docs["xdist"] == docs["serial"]
    assert docs["serial"]["run"] == {"complete": True, "items": 12, "ran": 12, "missing": [], "errors": [], "collected": 12,
                                     "cache_invalid": 0, "cache_write_failures": 0, "threads": [1],
                                     "lines": ["torch threads: 1 per process (--attn-threads)"]}
    assert (docs["serial"]["format"], docs["serial"]["version"]) == ("pytest-attnalign-run", 1)

    # `attnalign report` of the run file prints the summary the run printed (less where it wrote the file)
    capsys.readouterr()
    assert main(["report", str(tmp_path / "serial" / "run.json")]) == 0
    printed = section(serial, "serial").removesuffix("\nrecords written to RUN.json")
    assert capsys.readouterr().out.rstrip("\n") == printed

    # the summary: provenance header, Pass@1, Table 2, Table 3, error patterns
    text = section(serial, "serial")
    assert text.startswith("pytest-attnalign: attention alignment with human programmers (Kou et al., FSE 2024)")
    assert re.search(f"model {re.escape(str(tiny_gpt2))}: {re.escape(str(tiny_gpt2))} revision local:[0-9a-f]{{16}} "
                     "dtype float32\n", text)
    n_records = len(json.loads((tmp_path / "serial" / "run.json").read_text())["records"])
    assert f"tasks: 4 (humaneval 2, mbpp 2); items: {n_records}; device: cpu; error-pattern K: 10" in text
    for title in ("Pass@1", "Table 2 (K=5): alignment per model x method, pooled over tasks",
                  "Table 2 (K=10): alignment per model x method, pooled over tasks",
                  "Table 2 (K=20): alignment per model x method, pooled over tasks",
                  "Table 3: per method, mean over models", "Error patterns of failing items at K=10 (automatic; see README)"):
        assert re.search(f"\n{re.escape(title)}.*\n", text), title
    for head in ("alpha@20", "F1@10", "conditional", "data type", "attended but mis-mapped"):
        assert head in text
    assert "\nHow to read: " in text and text.endswith("records written to RUN.json")
    # the tables fit 120 columns with a model named like smollm2 (the header may hold long paths)
    tables = text.split("\nPass@1\n", 1)[1].replace("RUN.json", "")
    assert max(len(line) for line in tables.splitlines()) <= 120 + len(str(tiny_gpt2)) - len("smollm2")
    # the study's method order, whatever the order of --attn-method
    table = text.split("Table 2 (K=5)")[1].split("\n\n")[0]
    assert table.index("reading_last") < table.index("coding_all") < table.index("saliency_reading")

    # -n puts a model x task's items on one worker (loadgroup), so one generation serves its methods
    workers: dict[str, set[str]] = {}
    for m in re.finditer(r"\[(gw\d)\] \[\s*\d+%\] \w+ \S+-(HumanEval/\d+|Mbpp/\d+)\]", xdist.stdout.str()):
        workers.setdefault(m.group(2), set()).add(m.group(1))
    assert sorted(workers) == ["HumanEval/0", "HumanEval/1", "Mbpp/1", "Mbpp/2"]
    assert all(len(w) == 1 for w in workers.values()), workers
    doc = json.loads((tmp_path / "xdist" / "run.json").read_text())
    assert len(doc["records"]) == n_records >= 8 and not any(r["generation_cached"] for r in doc["records"])


# --------------------------------------------------------------------------------------- fail early


def test_model_path_that_is_no_directory_is_a_usage_error(project: pytest.Pytester) -> None:
    result = project.runpytest("--attn-model=/nonexistent/dir", *NO_CACHE)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert [line for line in result.errlines if line.strip()] == [
        "ERROR: --attn-model: no such directory '/nonexistent/dir': give an existing model directory or a hub id like org/name"]


def test_an_api_model_without_a_key_is_a_usage_error_before_any_item(
        project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """It failed every item, each with the same line, and wrote a run file of errors."""
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    result = project.runpytest("--attn-model=gpt4", "--attn-method=shap", "--attn-limit=1",
                               f"--attn-json={tmp_path / 'run.json'}", f"--attn-cache-dir={tmp_path / 'cache'}", *NO_CACHE)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert [line for line in result.errlines if line.strip()] == [
        "ERROR: --attn-model: no API key for https://api.openai.com/v1: set OPENAI_API_KEY (or OPENAI_BASE_URL to "
        "a local OpenAI-compatible server)"]
    assert not (tmp_path / "run.json").exists()


@pytest.mark.parametrize("flag", ["--attn-json", "--attn-html"])
@pytest.mark.parametrize("where", ["missing", "file", "directory", "read-only", "pipe"])
def test_unusable_output_path_fails_before_any_item_runs(project: pytest.Pytester, tmp_path: Path, where: str,
                                                         flag: str) -> None:
    """A pipe stands for /dev/null: the run removed it at its first item and wrote a file in its place
    (as root, --attn-json=/dev/null deleted the machine's /dev/null)."""
    (tmp_path / "a-file").write_text("")
    os.mkfifo(tmp_path / "pipe")
    path, expected = {
        "missing": (tmp_path / "nonexistent" / "x.json", f"directory '{tmp_path / 'nonexistent'}' does not exist: create it first or choose another path"),
        "file": (tmp_path / "a-file" / "x.json",
                 f"directory '{tmp_path / 'a-file'}' is not a directory: create it first or choose another path"),
        "directory": (tmp_path, f"'{tmp_path}' is a directory: give a file path such as "
                                f"'{tmp_path / ('report.html' if flag == '--attn-html' else 'run.json')}'"),
        "read-only": (Path("/proc/x.json"), "directory '/proc' is not writable: choose a directory you can write to"),
        "pipe": (tmp_path / "pipe", f"'{tmp_path / 'pipe'}' is not a regular file (a device, pipe or socket), which the "
                                    f"run would replace: give a file path such as "
                                    f"'{tmp_path / ('report.html' if flag == '--attn-html' else 'run.json')}', or leave "
                                    "the option out"),
    }[where]
    result = project.runpytest("--attn-model=openai:stub", "--attn-method=shap", f"{flag}={path}",
                               f"--attn-cache-dir={tmp_path / 'cache'}", *NO_CACHE)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert [line for line in result.errlines if line.strip()] == [f"ERROR: {flag}: {expected}"]
    assert "collected" not in result.stdout.str()
    assert not (tmp_path / "nonexistent").exists()  # never created silently
    assert stat.S_ISFIFO((tmp_path / "pipe").stat().st_mode)


def test_a_device_is_no_output_file() -> None:
    from pytest_attnalign.errors import AttnalignError
    from pytest_attnalign.preflight import output_file

    with pytest.raises(AttnalignError, match=r"^'/dev/null' is not a regular file \(a device, pipe or socket\)"):
        output_file(Path("/dev/null"))


@pytest.mark.parametrize("where", ["/dev/null", "/proc", "file/below"])
def test_unusable_cache_directory_fails_at_once_with_one_line(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, where: str
) -> None:
    (tmp_path / "file").write_text("")
    cache = Path(where) if where.startswith("/") else tmp_path / where
    expected = {"/dev/null": "'/dev/null' is not a directory: point the cache at a directory",
                "/proc": "'/proc' is not writable: point the cache at a writable directory",
                "file/below": f"'{tmp_path / 'file'}' is not a directory: point the cache at a directory"}[where]
    for how in ([f"--attn-cache-dir={cache}"], []):  # the option, or the environment's default
        monkeypatch.setenv("ATTNALIGN_CACHE_DIR", str(cache))
        result = project.runpytest("--attn-model=openai:stub", "--attn-method=shap", *how, *NO_CACHE)
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        assert [line for line in result.errlines if line.strip()] == [f"ERROR: --attn-cache-dir: {expected}"]


# --------------------------------------------------------------------------------------- the cache


def test_cache_entries_of_the_wrong_shape_are_recomputed(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    opts = ["--attn-model=openai:stub", "--attn-method=shap", "--attn-shap-evaluations=4", "--attn-limit=1",
            "--attn-benchmark=humaneval", f"--attn-cache-dir={cache}", *NO_CACHE]
    with OpenAIStub(_script) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        first = project.runpytest_subprocess(*opts, f"--attn-json={tmp_path / 'first.json'}", timeout=120)
        generation, = (cache / "results" / "generation").rglob("*.json")
        attribution, = (cache / "results" / "attribution").rglob("*.json")
        # valid JSON that is no entry; the right key with an empty value
        generation.write_text("[1]")
        attribution.write_text(json.dumps({"key": json.loads(attribution.read_text())["key"], "value": {}}))
        second = project.runpytest_subprocess(*opts, f"--attn-json={tmp_path / 'second.json'}", timeout=120)
        # the right key, values of the wrong types
        for path in (generation, attribution):
            path.write_text(json.dumps({"key": json.loads(path.read_text())["key"], "value": {
                "prompt": {"text": 1}, "generation": [], "units": [["a", 1, 0.5]], "info": {}}}))
        third = project.runpytest_subprocess(*opts, timeout=120)
        fourth = project.runpytest_subprocess(*opts, timeout=120)  # the recomputed entries were stored
    first.assert_outcomes(passed=1)
    for result in (second, third):
        result.assert_outcomes(passed=1)
        assert "Traceback" not in result.stdout.str() and "KeyError" not in result.stdout.str()
        assert "cache: 2 unusable entries recomputed" in summary(result)
    doc1, doc2 = records(tmp_path / "first.json"), records(tmp_path / "second.json")
    assert doc2["run"]["cache_invalid"] == 2 and not doc2["records"][0]["generation_cached"]
    assert doc2["records"][0]["units"] == doc1["records"][0]["units"]
    fourth.assert_outcomes(passed=1)
    assert "cache:" not in summary(fourth)


# --------------------------------------------------------------------------------------- fail once

COUNT_LOADS = """
import pytest_attnalign.study as study

_load = study.load_model


def counting_load(*args, **kwargs):
    with open({path!r}, "a") as fh:
        fh.write(args[0] + "\\n")
    return _load(*args, **kwargs)


study.load_model = counting_load
"""


@pytest.mark.parametrize("hub", ["offline", "unreachable"])
def test_a_dead_hub_id_is_one_load_attempt_for_the_whole_run(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, hub: str
) -> None:
    if hub == "unreachable":
        monkeypatch.delenv("HF_HUB_OFFLINE")
        monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    project.makeconftest(COUNT_LOADS.format(path=str(tmp_path / "loads.txt")))
    started = time.monotonic()
    result = project.runpytest_subprocess(
        "--attn-model=no-such-org/no-such-model", "--attn-method=reading_first,reading_last,saliency_reading",
        "--attn-limit=2", f"--attn-cache-dir={tmp_path / 'cache'}", *NO_CACHE, timeout=120)
    assert time.monotonic() - started < 60
    result.assert_outcomes(errors=12)
    assert (tmp_path / "loads.txt").read_text().splitlines() == ["no-such-org/no-such-model"]
    out = result.stdout.str()
    why = "offline (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set)" if hub == "offline" else \
        "the hub (http://127.0.0.1:9) is unreachable"
    assert out.count("cannot load model") == 1 and "Traceback" not in out and "Retrying" not in out
    result.stdout.fnmatch_lines([f"no-such-org/no-such-model/reading_first/HumanEval/0: cannot load model "
                                 f"'no-such-org/no-such-model': {why} and *not in the local hub cache*"])
    first = "test_alignment[no-such-org/no-such-model-reading_first-HumanEval/0]"
    assert out.count(f"no-such-org/no-such-model: unavailable, not tried (why: see {first})") == 11
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert summary(result).startswith("pytest-attnalign: no item produced a result")


def test_a_dead_api_endpoint_stops_after_three_failures(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ATTNALIGN_OPENAI_MAX_RETRIES", "0")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    result = project.runpytest_subprocess(
        "--attn-model=openai:stub", "--attn-method=shap", "--attn-limit=4", f"--attn-cache-dir={tmp_path}",
        *NO_CACHE, timeout=120)
    result.assert_outcomes(errors=8)
    out = result.stdout.str()
    assert out.count("cannot connect to http://127.0.0.1:9/v1 after 0 retries") == 3
    result.stdout.fnmatch_lines(["openai:stub/shap/HumanEval/2: cannot connect to * (3 failures in a row: "
                                 "the model's remaining items are not tried)"])
    assert out.count("openai:stub: unavailable, not tried (why: see test_alignment[openai:stub-shap-HumanEval/2])") == 5


def test_a_run_without_any_result_fails(project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every item skipped (a gradient method on an API model) is no result: exit status 1, not 0."""
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    result = project.runpytest("--attn-model=openai:stub", "--attn-method=saliency_reading", "--attn-limit=1",
                               f"--attn-cache-dir={tmp_path}", *NO_CACHE)
    result.assert_outcomes(skipped=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert summary(result).startswith("pytest-attnalign: no item produced a result")


# --------------------------------------------------------------------------------------- partial runs

INTERRUPT_AFTER_FIRST_ITEM = """
def pytest_runtest_logfinish(nodeid, location):
    raise KeyboardInterrupt
"""
SIGNAL_AFTER_FIRST_ITEM = """
import os, signal
def pytest_runtest_logfinish(nodeid, location):
    os.kill(os.getpid(), signal.{})
"""


@pytest.mark.parametrize("stop", ["interrupt", "sigterm", "maxfail"])
def test_an_interrupted_run_says_it_is_partial(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, stop: str
) -> None:
    """Ctrl-C, a SIGTERM (a job's time limit, a cancelled CI job) and -x: the run file says what ran."""
    if stop != "maxfail":
        project.makeconftest(INTERRUPT_AFTER_FIRST_ITEM if stop == "interrupt" else SIGNAL_AFTER_FIRST_ITEM.format("SIGTERM"))
    out = tmp_path / "run.json"
    with OpenAIStub(_script) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        result = project.runpytest_subprocess(
            "--attn-model=openai:stub", "--attn-method=shap", "--attn-shap-evaluations=4", "--attn-limit=2",
            "--attn-benchmark=humaneval", f"--attn-cache-dir={tmp_path / 'cache'}", f"--attn-json={out}",
            *(["--maxfail=1", "-p", "no:randomly"] if stop == "maxfail" else []), *NO_CACHE, timeout=120)
    assert result.ret == (pytest.ExitCode.TESTS_FAILED if stop == "maxfail" else pytest.ExitCode.INTERRUPTED)
    ran = 2 if stop == "maxfail" else 1
    missing = [f"{HE}[openai:stub-shap-HumanEval/{i}]" for i in range(ran, 2)]
    doc = json.loads(out.read_text())
    assert doc["run"]["complete"] is (not missing) and doc["run"]["missing"] == missing
    if missing:
        assert "partial: 1 of 2 items ran; missing: test_alignment[openai:stub-shap-HumanEval/1]" in summary(result)
        assert len(doc["records"]) == 1


def test_a_killed_run_leaves_no_file_that_looks_complete(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """SIGKILL gives no chance to write: the previous run's file, removed at the start, is not left
    looking like this run's (a stale shard file once merged silently). Without a terminal reporter
    (-p no:terminal) a run that ends still writes its files."""
    out, page = tmp_path / "run.json", tmp_path / "report.html"
    opts = ["--attn-model=openai:stub", "--attn-method=shap", "--attn-shap-evaluations=4", "--attn-limit=1",
            "--attn-benchmark=humaneval", f"--attn-cache-dir={tmp_path / 'cache'}", f"--attn-json={out}",
            f"--attn-html={page}", *NO_CACHE]
    with OpenAIStub(_script) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        quiet = project.runpytest_subprocess(*opts, "-p", "no:terminal", timeout=120)
        assert quiet.ret in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED) and quiet.outlines == []
        assert json.loads(out.read_text())["run"]["complete"] is True and page.exists()
        # a run that selects nothing writes nothing and removes nothing; nor does one remove its own baseline
        nothing = project.runpytest_subprocess(*opts, "-k", "shap and not shap", timeout=120)
        assert nothing.ret == pytest.ExitCode.NO_TESTS_COLLECTED and out.exists() and page.exists()
        misspelt = project.runpytest_subprocess(*opts, "-k", "no_such_item", timeout=120)  # refused once collected
        assert misspelt.ret == pytest.ExitCode.USAGE_ERROR and out.exists() and page.exists()
        project.makeconftest(SIGNAL_AFTER_FIRST_ITEM.format("SIGKILL"))
        against_itself = project.runpytest_subprocess(*opts, f"--attn-compare={out}", timeout=120)
        assert against_itself.ret == -9 and json.loads(out.read_text())["run"]["complete"] is True
        killed = project.runpytest_subprocess(*opts, timeout=120)
    assert killed.ret == -9 and not out.exists() and not page.exists()


# --------------------------------------------------------------------------------------- threads

HOLDER = """
import sys, time
from pathlib import Path
from pytest_attnalign.threads import CoreShare

share = CoreShare(Path(sys.argv[1]))
share.join()  # held while `share` lives
print("joined", flush=True)
time.sleep(120)
"""


def test_concurrent_runs_each_use_their_share_of_the_cores(
    project: pytest.Pytester, tiny_gpt2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another attnalign process on the same cache (here a stand-in holding its registry lock) halves
    a serial run's threads; once it is gone the run takes all cores; --attn-threads overrides both,
    and so does $OMP_NUM_THREADS, which torch honours (the share overrode it)."""
    import subprocess
    import sys

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)

    cache = tmp_path / "cache"
    opts = [f"--attn-model={tiny_gpt2}", "--attn-method=reading_last", "--attn-limit=1", "--attn-benchmark=humaneval",
            "--attn-max-new-tokens=4", "--attn-device=cpu", f"--attn-cache-dir={cache}", *NO_CACHE]
    cores = len(os.sched_getaffinity(0))
    other = subprocess.Popen([sys.executable, "-c", HOLDER, str(cache / "runs")], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert other.stdout is not None and other.stdout.readline() == "joined\n"
        shared = project.runpytest_subprocess(*opts, timeout=120)
        fixed = project.runpytest_subprocess(*opts, "--attn-threads=3", timeout=120)
        monkeypatch.setenv("OMP_NUM_THREADS", "5")
        omp = project.runpytest_subprocess(*opts, timeout=120)
        monkeypatch.delenv("OMP_NUM_THREADS")
    finally:
        other.kill()
        other.wait()
    alone = project.runpytest_subprocess(*opts, timeout=120)  # the killed process's lock died with it
    assert (f"torch threads: {max(1, cores // 2)} per process ({cores} cores shared by up to 2 attnalign processes; "
            "--attn-threads N to fix)") in summary(shared)
    assert "torch threads: 3 per process (--attn-threads)" in summary(fixed)
    assert "torch threads: 5 per process (OMP_NUM_THREADS)" in summary(omp)
    assert f"torch threads: {cores} per process ({cores} cores shared by up to 1 attnalign process;" in summary(alone)
    assert [p.name for p in (cache / "runs").iterdir()] == []  # stale and finished registrations are gone


# --------------------------------------------------------------------------------------- output


def test_a_failing_task_shows_its_test_output_once(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with OpenAIStub(_script) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        result = project.runpytest_subprocess(
            "--attn-model=openai:stub", "--attn-method=shap,bert_masking", "--attn-shap-evaluations=4",
            "--attn-limit=2", "--attn-benchmark=humaneval", f"--attn-cache-dir={tmp_path}", *NO_CACHE, timeout=120)
    result.assert_outcomes(passed=2, failed=2)
    out = result.stdout.str()
    assert out.count("test output (tail):") == 1 and out.count("AssertionError") == 1
    assert out.count("test output: as under test_alignment[openai:stub-shap-HumanEval/1] (same generation)") == 1


# --------------------------------------------------------------------------------------- baselines and gates


def test_saved_runs_compare_and_gates_decide_the_exit_status(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """--attn-pass1=report lets failing code pass; a run is autosaved in pytest's cache directory, the
    next compares with it (honest: held; doctored: failed), a gate fails with a doctored threshold,
    and a run with other settings is refused (forcing is tested in test_gates)."""
    opts = ["--attn-model=openai:stub", "--attn-method=shap", "--attn-shap-evaluations=4", "--attn-limit=2",
            "--attn-benchmark=humaneval", f"--attn-cache-dir={tmp_path / 'cache'}", "--attn-pass1=report"]
    storage = project.path / ".pytest_cache" / "d" / "attnalign"

    def run(*extra: str) -> tuple[pytest.RunResult, list[str]]:
        result = project.runpytest_subprocess(*opts, *extra, timeout=120)
        return result, [line for line in summary(result).splitlines() if line.startswith(("gate ", "compare-fail ", "comparison "))]

    with OpenAIStub(_script) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        first, lines = run("--attn-autosave", "--attn-gate=shap.f1@10>=0%")
        first.assert_outcomes(passed=2)  # HumanEval/1's code fails its tests, yet its item passes
        assert first.ret == pytest.ExitCode.OK
        assert re.fullmatch(r"gate shap.f1@10>=0% \[openai:stub\]: held: \S+% vs threshold 0.0%, difference "
                            r"\+\S+ points, 95% CI \[\S+, \S+ points\] \(bootstrap over 2 tasks, 1000 resamples, fixed seed\)",
                            lines[0]), lines
        (saved,) = storage.glob("0001_*.json")
        assert f"run saved as {saved}" in summary(first)
        assert re.search(r"openai:stub\s+humaneval\s+1/2\s+50\.0%", summary(first))  # Pass@1 still reported

        honest, lines = run("--attn-compare", "--attn-compare-fail=f1@10:0%,pass1:0%", "--attn-gate=shap.f1@10>=100%")
        assert honest.ret == pytest.ExitCode.TESTS_FAILED  # the doctored gate only
        honest.assert_outcomes(passed=2)
        assert [line.split(": ")[1] for line in lines] == ["FAILED", "held", "held"], lines
        assert lines[0].startswith("gate shap.f1@10>=100% [openai:stub]: FAILED: ")
        assert [line.split(" [")[0] for line in lines[1:]] == ["compare-fail f1@10:0%", "compare-fail pass1:0%"]
        assert f"Compared with {saved}:" in summary(honest)

        doc = json.loads(saved.read_text())
        for rec in doc["records"]:  # a baseline whose units were the labelled words, whose code passed
            rec["units"], rec["passed"] = [[a, b, 1.0] for a, b in rec["human"]], True
        saved.write_text(json.dumps(doc))
        doctored, lines = run(f"--attn-compare={saved.name}", "--attn-compare-fail=f1@10:2%,pass1:1%")
        assert doctored.ret == pytest.ExitCode.TESTS_FAILED
        assert [line.split(": ")[1] for line in lines] == ["FAILED"] * 2, lines
        assert lines[1].startswith("compare-fail pass1:1% [openai:stub]: FAILED: Pass@1 100.0% -> 50.0%, change -50.00 points")

        other, lines = run("--attn-compare=1", "--attn-compare-fail=f1@10:2%", "--attn-labels=study")
        assert other.ret == pytest.ExitCode.TESTS_FAILED
        assert lines == [f"comparison refused: settings differ from {saved}: labels: 'corrected' -> 'study'; "
                         "pass --attn-compare-force to compare anyway"]
    assert [p.name for p in storage.iterdir()] == [saved.name]  # only --attn-save/--attn-autosave store runs


def test_collect_only_creates_no_storage(project: pytest.Pytester, tmp_path: Path) -> None:
    """--collect-only saves nothing, so it makes no --attn-storage directory either."""
    storage = tmp_path / "new" / "runs"
    result = project.runpytest("--attn-model=openai:stub", "--attn-method=shap", "--attn-limit=1", "--attn-save=main",
                               f"--attn-storage={storage}", f"--attn-cache-dir={tmp_path}", "--collect-only", "-q",
                               *NO_CACHE)
    assert result.ret == pytest.ExitCode.OK and len(collected(result)) == 2
    assert not (tmp_path / "new").exists()


def test_k_on_a_users_own_tests_is_not_a_study_task_filter(project: pytest.Pytester, tmp_path: Path) -> None:
    """-k with a path to one's own test file selects among its ids, which may look like task ids."""
    project.makepyfile(test_mine="import pytest\n\n@pytest.mark.parametrize('t', ['Foo/1', 'HumanEval/12'])\n"
                                 "def test_one(t):\n    pass\n")
    opts = ["--attn-model=openai:stub", "--attn-limit=1", f"--attn-cache-dir={tmp_path}", *NO_CACHE]
    for k in ("Foo/1]", "HumanEval/12]"):
        result = project.runpytest("test_mine.py", "-k", k, *opts)
        assert result.ret == pytest.ExitCode.OK, result.stdout.str()
        result.assert_outcomes(passed=1)
    assert project.runpytest("test_mine.py", "-k", "salency", *opts).ret == pytest.ExitCode.NO_TESTS_COLLECTED
    assert project.runpytest("benchmarks", "-k", "HumanEval/12]", *opts).ret == pytest.ExitCode.USAGE_ERROR
    assert project.runpytest("benchmarks", "-k", "salency", *opts).ret == pytest.ExitCode.USAGE_ERROR
