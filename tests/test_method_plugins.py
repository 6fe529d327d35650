"""Third-party methods load, take settings and report exactly like the built-in ones.

The example package ``tests/example_method`` (integrated gradients through captum, ``ig_reading``)
is installed by putting its folder, which holds its dist-info, on the path: in this process through
``sys.path``, in pytester subprocesses through ``PYTHONPATH``, as a user's ``pip install`` would.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from pytest_attnalign.errors import AttnalignError
from pytest_attnalign.methods import BUILTIN, code_identity, get_method, method_options, registry, resolve_methods

EXAMPLE = Path(__file__).resolve().parent / "example_method"
HE = "benchmarks/humaneval/test_humaneval.py::test_alignment"


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch):
    """The example package installed in this process; the registry re-reads entry points around it."""
    monkeypatch.syspath_prepend(str(EXAMPLE))
    registry.cache_clear()
    yield
    monkeypatch.undo()
    registry.cache_clear()


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_models import build_tiny

    return build_tiny("gpt2", tmp_path_factory.mktemp("models") / "tiny-gpt2")


def test_selectors_include_entry_point_methods_where_documented(installed: None) -> None:
    info = registry()["ig_reading"]
    assert (info.category, info.options, info.origin) == ("gradient", ("n_steps",), "attnalign-ig 0.1.0")
    assert resolve_methods("all") == [*BUILTIN, "ig_reading"]
    assert resolve_methods("builtin") == list(BUILTIN)
    assert resolve_methods("plugins") == ["ig_reading"]
    assert resolve_methods("gradient") == [n for n, (_, _, c) in BUILTIN.items() if c == "gradient"] + ["ig_reading"]


def test_settings_by_method_or_category_are_checked_by_the_method(installed: None) -> None:
    gradient = resolve_methods("gradient")
    assert method_options(settings=["gradient.n_steps=4"], selected=gradient) == {"ig_reading": {"n_steps": 4}}
    # a method's own setting overrides its category's, whatever the order
    assert method_options(settings=["ig_reading.n_steps=2", "gradient.n_steps=4"], selected=gradient) == {
        "ig_reading": {"n_steps": 2}}
    with pytest.raises(AttnalignError, match=r"^setting 'gradient.n_steps=4': no selected gradient method takes 'n_steps'"):
        method_options(settings=["gradient.n_steps=4"], selected=["saliency_reading"])
    with pytest.raises(AttnalignError, match=r"with one of .*ig_reading\.n_steps"):
        method_options(settings=["ig_reading.steps=4"])
    assert get_method("ig_reading", n_steps=3).settings()["n_steps"] == 3
    assert get_method("ig_reading").name == "ig_reading"
    with pytest.raises(AttnalignError, match=r"^ig_reading: n_steps must be a positive integer, got 0$"):
        get_method("ig_reading", n_steps=0)
    with pytest.raises(AttnalignError, match=r"^method 'ig_reading' takes no setting signed; it takes n_steps$"):
        get_method("ig_reading", signed=True)


def test_a_broken_entry_point_is_one_line_naming_its_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    info = tmp_path / "broken_method-2.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-method\nVersion: 2.0\n")
    (info / "entry_points.txt").write_text("[pytest_attnalign.methods]\nbroken = no_such_module:Method\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.cache_clear()
    try:
        with pytest.raises(AttnalignError, match=r"^method entry point 'broken' \(broken-method 2\.0\) does not load "
                                                 r"\(ModuleNotFoundError: .*\): fix or uninstall broken-method$"):
            resolve_methods("all")
    finally:
        monkeypatch.undo()
        registry.cache_clear()


def test_cache_key_holds_settings_and_the_method_code(installed: None, tiny_gpt2: Path, tmp_path: Path,
                                                      one_thread: None) -> None:
    from pytest_attnalign.study import Study, StudyConfig
    from pytest_attnalign.tasks import get_task

    study = Study(StudyConfig(cache_dir=tmp_path, device="cpu", max_new_tokens=8))
    ctx = study.context(str(tiny_gpt2), get_task("HumanEval/1"))  # the tiny model writes a body here
    first, info = study.attribute(ctx, get_method("ig_reading", n_steps=2))
    again, info2 = study.attribute(ctx, get_method("ig_reading", n_steps=2))
    other, info3 = study.attribute(ctx, get_method("ig_reading", n_steps=8))
    assert (info["cached"], info2["cached"], info3["cached"]) == (False, True, False)
    assert again == first and other != first  # n_steps reached the constructor and the key
    saliency, _ = study.attribute(ctx, "saliency_reading")
    assert [u[:2] for u in first] == [u[:2] for u in saliency]  # the same token units as the built-in gradients
    assert len({round(u[2], 9) for u in first}) > 1
    ident = code_identity(get_method("ig_reading"))
    assert ident["class"] == "attnalign_ig.IntegratedGradientsReading" and re.fullmatch(r"[0-9a-f]{16}", ident["module_sha256"])
    # a release may change only modules the class imports: its version is keyed too (it once was not, and
    # the record named the new version beside the old one's numbers)
    assert ident["origin"] == "attnalign-ig 0.1.0"
    assert code_identity(get_method("shap")) == {}  # built-ins keep their keys


def test_installed_method_runs_like_a_builtin_one(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
                                                  tiny_gpt2: Path, tmp_path: Path) -> None:
    """A user's run: its items, its settings in the header, its row in Table 2, a bad setting a usage error."""
    import shutil

    target = pytester.path / "benchmarks" / "humaneval"
    target.mkdir(parents=True)
    shutil.copy(Path(__file__).resolve().parent.parent / "benchmarks" / "humaneval" / "test_humaneval.py", target)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(EXAMPLE), *filter(None, [os.environ.get("PYTHONPATH")])]))
    opts = [f"--attn-model={tiny_gpt2}", "--attn-benchmark=humaneval", "--attn-limit=2", "--attn-max-new-tokens=8",
            "--attn-device=cpu", "--attn-threads=1", f"--attn-cache-dir={tmp_path / 'cache'}", "-p", "no:cacheprovider"]
    bad = pytester.runpytest_subprocess(*opts, "--attn-method=ig_reading", "--attn-method-option=ig_reading.n_steps=0")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    assert [line for line in bad.errlines if line.strip()] == [
        "ERROR: --attn-method-option: ig_reading: n_steps must be a positive integer, got 0"]

    out = tmp_path / "run.json"
    result = pytester.runpytest_subprocess(*opts, "--attn-method=saliency_reading,plugins",
                                           "--attn-method-option=ig_reading.n_steps=8", f"--attn-json={out}", "-v",
                                           timeout=300)
    result.stdout.fnmatch_lines([f"{HE}[[]{tiny_gpt2}-ig_reading-HumanEval/0[]]*",
                                 f"{HE}[[]{tiny_gpt2}-ig_reading-HumanEval/1[]]*"])
    text = result.stdout.str()
    assert "methods: gradient: saliency_reading, ig_reading (attnalign-ig 0.1.0)" in text
    assert "method settings: ig_reading n_steps=8" in text
    table2 = text.split("Table 2 (K=10)")[1].split("\n\n")[0]
    assert re.search(rf"{re.escape(str(tiny_gpt2))}\s+ig_reading\s+1\s+\d", table2), table2
    (ig,) = [r for r in json.loads(out.read_text())["records"] if r["method"] == "ig_reading" and not r["no_code"]]
    assert ig["attribution"]["settings"]["n_steps"] == 8 and ig["units"]


def test_a_gate_rerun_computes_only_the_new_method(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
                                                   tiny_gpt2: Path, tmp_path: Path) -> None:
    """CI gating from a method's repository: the baseline method ran before (saved), so a re-run that adds
    the new method and gates it against the baseline generates nothing and attributes only the new method;
    the gate line decides the exit status (held, then FAILED with a doctored threshold)."""
    import shutil

    target = pytester.path / "benchmarks" / "humaneval"
    target.mkdir(parents=True)
    shutil.copy(Path(__file__).resolve().parent.parent / "benchmarks" / "humaneval" / "test_humaneval.py", target)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(EXAMPLE), *filter(None, [os.environ.get("PYTHONPATH")])]))
    opts = [f"--attn-model={tiny_gpt2}", "--attn-benchmark=humaneval", "--attn-limit=3", "--attn-max-new-tokens=8",
            "--attn-device=cpu", "--attn-threads=1", f"--attn-cache-dir={tmp_path / 'cache'}", "--attn-pass1=report",
            f"--attn-storage={tmp_path / 'runs'}", "-p", "no:cacheprovider"]
    base = pytester.runpytest_subprocess(*opts, "--attn-method=saliency_reading", "--attn-save=base", timeout=300)
    assert base.ret == pytest.ExitCode.OK, base.stdout.str()

    def gated(threshold: str, out: Path) -> tuple[pytest.RunResult, list[dict], list[str]]:
        result = pytester.runpytest_subprocess(
            *opts, "--attn-method=saliency_reading,ig_reading", "--attn-method-option=ig_reading.n_steps=4",
            f"--attn-gate=ig_reading.f1@10>={threshold}", f"--attn-json={out}", timeout=300)
        lines = [line for line in result.stdout.lines if line.startswith("gate ")]
        return result, json.loads(out.read_text())["records"], lines

    first, recs, lines = gated("0%", tmp_path / "first.json")
    assert first.ret == pytest.ExitCode.OK and len(lines) == 1 and ": held: " in lines[0], first.stdout.str()
    scored = [r for r in recs if not r["no_code"]]  # an item with no code attributes nothing, cached or not
    computed = sorted((r["method"], r["task_id"]) for r in scored if not r["attribution"]["cached"])
    assert computed == sorted(("ig_reading", r["task_id"]) for r in scored if r["method"] == "ig_reading") != []
    assert all(r["generation_cached"] for r in recs)  # the baseline run generated every task once

    again, recs, lines = gated("saliency_reading.f1@10", tmp_path / "again.json")
    assert not [r for r in recs if not r["attribution"]["cached"] and not r["no_code"]]  # nothing new: all cached
    assert len(lines) == 1 and lines[0].startswith("gate ig_reading.f1@10>=saliency_reading.f1@10 [")
    doctored, _, lines = gated("100%", tmp_path / "doctored.json")
    assert doctored.ret == pytest.ExitCode.TESTS_FAILED and ": FAILED: " in lines[0], lines


@pytest.mark.parametrize("unit, why", [((0, 10**6, 1.0), "unit [0, 1000000] must satisfy 0 <= start <= end <= "),
                                       ((0, 4, float("nan")), "score nan must be a finite number"),
                                       # checked as `attnalign score` checks triples, not converted
                                       ((0.5, 4, 1.0), "unit [0.5, 4] must be two integers"),
                                       ((True, 4, 1.0), "unit [True, 4] must be two integers"),
                                       ((0, 4, "0.5"), "score '0.5' must be a finite number"),
                                       ((0, 4, 10**400), f"score {'1' + '0' * 36}... must be a finite number"),
                                       ((0, 4), "unit (0, 4) is not [start, end, score]")])
def test_a_method_returning_a_bad_unit_fails_in_one_line(tiny_gpt2: Path, tmp_path: Path, one_thread: None,
                                                         unit: tuple[int, int, float], why: str) -> None:
    """A span past the prompt, a NaN score, a fractional offset or a string score is neither scored nor
    cached as if it were a result."""
    from pytest_attnalign.methods import Method
    from pytest_attnalign.study import Study, StudyConfig
    from pytest_attnalign.tasks import get_task

    class Broken(Method):
        name, category, needs_internals = "broken", "perturbation", False

        def attribute(self, ctx: object) -> list[tuple[int, int, float]]:
            return [unit]

    study = Study(StudyConfig(cache_dir=tmp_path, device="cpu", max_new_tokens=8))
    ctx = study.context(str(tiny_gpt2), get_task("HumanEval/1"))
    with pytest.raises(AttnalignError, match=re.escape(f"method broken returned a bad unit: {why}")):
        study.attribute(ctx, Broken())
    assert not list((tmp_path / "results").rglob("attribution/*/*.json"))


def test_plugins_without_an_installed_entry_point_method_is_an_error() -> None:
    """An empty selection would run nothing and pass."""
    registry.cache_clear()
    assert not any(info.plugin for info in registry().values())
    with pytest.raises(AttnalignError, match=r"^plugins selects no method: no entry-point method is installed \(group "
                                             r"pytest_attnalign\.methods\): install a package that provides one"):
        resolve_methods("plugins")
    assert resolve_methods("plugins,shap") == ["shap"]  # an empty part of a wider selection is fine


def test_a_methods_units_are_scored_in_the_region_in_prompt_order(tiny_gpt2: Path, tmp_path: Path,
                                                                   one_thread: None) -> None:
    """As ``attnalign score`` scores them (METRICS.md s2, s6): a unit outside the description (the
    import line) is not scored, one across its edge is cut there, and a tie goes to the earlier unit
    however the method listed them. The code-to-words map, a score per unit as listed, follows the
    units; a cache entry from before, in the order listed, is recomputed."""
    from pytest_attnalign.attribution import attribute
    from pytest_attnalign.methods import Method
    from pytest_attnalign.study import Study, StudyConfig
    from pytest_attnalign.tasks import get_task

    task = get_task("HumanEval/0")
    lo, hi = task.description
    later, earlier = (lo + 20, lo + 25, 1.0), (lo + 10, lo + 15, 1.0)

    class Listed(Method):
        name, category, needs_internals = "listed", "perturbation", False

        def attribute(self, ctx: object) -> list[tuple[int, int, float]]:
            return [(0, 4, 9.0), later, (hi - 3, hi + 2, 0.5), earlier]  # (0, 4): "from", before the region

        def line_units(self, ctx: object) -> list[tuple[int, int, list[float]]]:
            return [(0, 10, [9.0, 1.0, 0.5, 1.0])]

    study = Study(StudyConfig(cache_dir=tmp_path, device="cpu", max_new_tokens=8))
    ctx = study.context(str(tiny_gpt2), task)
    result = attribute(study, ctx, Listed())
    assert result.units == ((earlier[0], earlier[1], 1.0), (later[0], later[1], 1.0), (hi - 3, hi, 0.5))
    assert result.top_k(1) == [earlier[:2]]
    assert study.attribute_lines(ctx, Listed())[1] == [(0, 10, [(0, 1.0), (1, 1.0), (2, 0.5)])]  # indices: scored units
    again = Study(StudyConfig(cache_dir=tmp_path, device="cpu", max_new_tokens=8))
    cached = attribute(again, again.context(str(tiny_gpt2), task), Listed())
    assert cached.cached and cached.units == result.units
    from pytest_attnalign.study import _decode_attribution

    entry = {"units": [list(u) for u in Listed().attribute(ctx)], "lines": [], "info": {}}
    with pytest.raises(ValueError, match="units not in prompt order inside the scored region"):
        _decode_attribution(entry, task)
