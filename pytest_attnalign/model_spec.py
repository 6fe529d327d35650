"""What a model name resolves to, without loading anything: study aliases, hub ids, local
directories, ``openai:MODEL`` and the embedded default.

Kept apart from the backends (:mod:`.models`, :mod:`.openai_model`) so that naming a model, at
start-up and in every backend, imports none of them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import AttnalignError
from .preflight import local_directory


@dataclass(frozen=True)
class ModelSpec:
    """What a model name resolved to; ``kind`` is ``hf`` (local weights) or ``openai`` (API only) and
    picks the loader (:data:`models.LOADERS`, the one place that maps kinds to backends)."""

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
            raise AttnalignError(f"model directory {name!r} has no config.json: point --attn-model (attnalign attribute: "
                                 "--model) at a saved transformers model")
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
