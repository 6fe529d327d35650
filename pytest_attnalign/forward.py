"""Forward-pass helpers that paper over transformers versions and model families.

transformers >= 5.24 names the KV cache ``cache`` (``past_key_values`` is deprecated and warns on
every call); older releases and remote-code models know only ``past_key_values``. Most models
accept ``logits_to_keep``, which avoids computing ~50k-wide logits at positions nobody reads.
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=None)
def _parameters(cls: type) -> frozenset[str]:
    return frozenset(inspect.signature(cls.forward).parameters)


def accepts(model: Any, name: str) -> bool:
    """Whether ``model.forward`` takes the keyword ``name``."""
    return name in _parameters(type(model))


def cache_kwarg(model: Any) -> str:
    """The keyword that passes a KV cache to ``model.forward``."""
    return "cache" if accepts(model, "cache") else "past_key_values"


def cache_of(res: Any) -> Any:
    """The KV cache a forward pass returned, under either name, without the deprecation warning."""
    cache = res.get("cache") if hasattr(res, "get") else None
    return cache if cache is not None else res.past_key_values


def run_model(model: Any, keep_logits: int, **inputs: Any) -> Any:
    """``model(**inputs)`` without a cache, computing logits at the last ``keep_logits`` positions only."""
    if accepts(model, "logits_to_keep"):
        return model(**inputs, use_cache=False, logits_to_keep=keep_logits)
    return model(**inputs, use_cache=False)


def step(model: Any, input_ids: Any, cache: Any) -> Any:
    """One cached decoding step: logits for the last position only, the cache passed and kept."""
    kwargs: dict[str, Any] = {"input_ids": input_ids, "use_cache": True}
    if cache is not None:
        kwargs[cache_kwarg(model)] = cache
    if accepts(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = 1
    return model(**kwargs)
