"""The registry of attribution methods: the study's twelve plus third-party entry points.

Names resolve without importing torch, so a typo fails before any model loads. Built-in methods
live in :mod:`.attention`, :mod:`.gradient` and :mod:`.perturbation`; a package adds one through
the entry-point group ``pytest_attnalign.methods`` (``name = "pkg.module:MethodClass"``).
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
from functools import lru_cache

from ..errors import AttnalignError
from .base import CATEGORIES, AttributionContext, Method, MethodNotApplicable, Unit

ENTRY_POINT_GROUP = "pytest_attnalign.methods"

#: name -> (module, class, category) of the study's twelve, in the study's order.
BUILTIN: dict[str, tuple[str, str, str]] = {
    **{f"{phase}_{layer}": ("attention", "SelfAttention", "self_attention")
       for phase in ("reading", "coding") for layer in ("first", "last", "all")},
    **{f"{kind}_{phase}": ("gradient", "GradientMethod", "gradient")
       for kind in ("saliency", "inputxgradient") for phase in ("reading", "coding")},
    "shap": ("perturbation", "ShapMethod", "perturbation"),
    "bert_masking": ("perturbation", "BertMasking", "perturbation"),
}
#: The study's own code's self-attention variant (head 0 / last head / all heads of LAYER 0):
#: offered under explicit compat names, never as the default meaning of first/last/all.
COMPAT: dict[str, tuple[str, str, str]] = {
    f"compat_{phase}_{variant}": ("attention", "SelfAttention", "self_attention")
    for phase in ("reading", "coding") for variant in ("head0", "lasthead", "allheads")
}


@lru_cache(maxsize=None)
def _entry_points() -> dict[str, md.EntryPoint]:
    return {ep.name: ep for ep in md.entry_points(group=ENTRY_POINT_GROUP)}


def available() -> dict[str, str]:
    """Every selectable method name -> category (third-party categories from their entry point)."""
    names = {n: c for n, (_, _, c) in BUILTIN.items()}
    names.update({n: c for n, (_, _, c) in COMPAT.items()})
    for name in _entry_points():
        names.setdefault(name, "plugin")
    return names


def resolve_methods(spec: str | list[str]) -> list[str]:
    """Expand ``all``, category names and comma lists into method names, in a stable order."""
    items = [s.strip() for part in ([spec] if isinstance(spec, str) else spec) for s in part.split(",") if s.strip()]
    if not items:
        raise AttnalignError("no attribution method given: use all, a category or method names")
    names = available()
    out: list[str] = []
    for item in items:
        if item == "all":
            chosen = list(BUILTIN)
        elif item in CATEGORIES:
            chosen = [n for n, (_, _, c) in BUILTIN.items() if c == item]
        elif item in names:
            chosen = [item]
        else:
            raise AttnalignError(
                f"unknown method {item!r}: valid are all, {', '.join(CATEGORIES)}, {', '.join(names)}"
            )
        out += [n for n in chosen if n not in out]
    return out


#: Settings a user may change per built-in method (plugin and CLI options pass them to the constructor).
OPTIONS: dict[str, tuple[str, ...]] = {
    **{n: ("restated_copy",) for n, (_, _, c) in {**BUILTIN, **COMPAT}.items() if c != "perturbation"},
    "shap": ("evaluations", "signed"),
    "bert_masking": ("fill_mask_model", "force_different"),
}


def _setting_value(text: str) -> object:
    """``true``/``false`` are booleans, digits integers, anything else a string."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    return int(low) if low.lstrip("-").isdigit() else text.strip()


def method_options(shap_evaluations: int | None = None, fill_mask_model: str | None = None,
                   settings: list[str] | None = None) -> dict[str, dict[str, object]]:
    """The per-method settings of the plugin's and CLI's options; ``None`` keeps a method's default.

    ``settings`` are ``METHOD.NAME=VALUE`` strings (``shap.signed=true``); an unknown method or a
    setting it does not take is an error naming the valid ones.
    """
    out: dict[str, dict[str, object]] = {}
    if shap_evaluations is not None:
        out["shap"] = {"evaluations": shap_evaluations}
    if fill_mask_model:
        out["bert_masking"] = {"fill_mask_model": fill_mask_model}
    valid = ", ".join(f"{m}.{n}" for m, names in OPTIONS.items() for n in names)
    for item in settings or []:
        key, eq, value = item.partition("=")
        method, _, name = key.strip().partition(".")
        if not eq or name not in OPTIONS.get(method, ()):
            raise AttnalignError(f"setting {item!r} is not METHOD.NAME=VALUE with one of {valid}")
        out.setdefault(method, {})[name] = _setting_value(value)
    return out


def get_method(name: str, **options: object) -> Method:
    """An instance of the named method (imports its module, so torch, on first use).

    ``options`` are constructor settings of that method (see :data:`OPTIONS`); a setting the
    method does not take is an error rather than silently ignored.
    """
    table = {**BUILTIN, **COMPAT}
    unknown = sorted(set(options) - set(OPTIONS.get(name, ())))
    if unknown:
        raise AttnalignError(f"method {name!r} takes no setting {', '.join(unknown)}")
    if name in table:
        module, cls, _ = table[name]
        return getattr(importlib.import_module(f"{__name__}.{module}"), cls)(name, **options)
    if name in _entry_points():
        obj = _entry_points()[name].load()
        method = obj() if isinstance(obj, type) else obj
        if not isinstance(method, Method):
            raise AttnalignError(f"entry point {name!r} does not give a pytest_attnalign Method")
        method.name = method.name or name
        return method
    resolve_methods(name)  # raises the error listing valid names
    raise AssertionError(name)


__all__ = ["OPTIONS", "AttributionContext", "Method", "MethodNotApplicable", "Unit", "available", "get_method",
           "method_options", "resolve_methods"]
