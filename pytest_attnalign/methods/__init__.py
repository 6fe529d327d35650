"""The registry of attribution methods: the study's twelve plus third-party entry points.

Built-in and entry-point methods load the same way: :func:`registry` maps every name to a
:class:`MethodInfo` (its category, the settings a user may change, where it comes from) and
:func:`get_method` constructs it with checked settings. A package adds a method through the
entry-point group ``pytest_attnalign.methods`` (``name = "pkg.module:MethodClass"``); the class
declares its ``category`` and its user settings (``options``, constructor keywords). Method
modules import torch only inside their functions, so names and settings resolve before any
model loads.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata as md
import inspect
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Iterable

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
#: Selectors of ``--attn-method`` besides categories and names: every installed method (the study's
#: twelve plus entry-point methods; not the compat variants), the twelve only, entry points only.
SELECTORS = ("all", "builtin", "plugins")


@dataclass(frozen=True)
class Provenance:
    """Where a method came from, as a record keeps it: a report renders a run's header from it on a
    machine where the method's package is absent or at another version."""

    category: str
    options: tuple[str, ...]  # settings a user may change: --attn-method-option NAME.KEY=VALUE
    origin: str  # "builtin", "compat", or the entry point's "DISTRIBUTION VERSION"

    @property
    def plugin(self) -> bool:
        return self.origin not in ("builtin", "compat")

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> Provenance:
        return cls(value["category"], tuple(value["options"]), value["origin"])

    def as_dict(self) -> dict[str, Any]:
        return {"category": self.category, "options": list(self.options), "origin": self.origin}


@dataclass(frozen=True)
class MethodInfo:
    """What the registry knows of a method before constructing it."""

    name: str
    category: str
    options: tuple[str, ...]
    origin: str
    make: Callable[..., Method]  # make(**settings) -> a Method named ``name``

    @property
    def provenance(self) -> Provenance:
        return Provenance(self.category, self.options, self.origin)

    @property
    def plugin(self) -> bool:
        return self.provenance.plugin


def _builtin(name: str, module: str, cls: str, category: str, origin: str) -> MethodInfo:
    klass = getattr(importlib.import_module(f"{__name__}.{module}"), cls)
    return MethodInfo(name, category, tuple(klass.options), origin, lambda **settings: klass(name, **settings))


def _from_entry_point(ep: md.EntryPoint) -> MethodInfo:
    dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist else "unknown distribution"
    try:
        obj = ep.load()
    except Exception as exc:  # noqa: BLE001 - any import error of a third-party package: one line, the fix
        raise AttnalignError(f"method entry point {ep.name!r} ({dist}) does not load ({type(exc).__name__}: {exc}): "
                             f"fix or uninstall {dist.split()[0]}") from None
    if isinstance(obj, type) and issubclass(obj, Method):
        options: tuple[str, ...] = tuple(obj.options)
        klass = obj

        def make(**settings: Any) -> Method:
            method = klass(**settings)
            method.name = ep.name
            return method
    elif isinstance(obj, Method):
        options = ()

        def make(**settings: Any) -> Method:
            obj.name = ep.name
            return obj
    else:
        raise AttnalignError(f"method entry point {ep.name!r} ({dist}) gives {obj!r}, not a pytest_attnalign Method "
                             "subclass or instance")
    if ep.name in BUILTIN or ep.name in COMPAT or ep.name in SELECTORS or ep.name in CATEGORIES:
        raise AttnalignError(f"method entry point {ep.name!r} ({dist}) takes a built-in name: rename it")
    return MethodInfo(ep.name, obj.category or "plugin", options, dist, make)


@lru_cache(maxsize=None)
def registry() -> dict[str, MethodInfo]:
    """Every method: the study's twelve (its order), the compat variants, then entry points by name."""
    out = {name: _builtin(name, *spec, "builtin") for name, spec in BUILTIN.items()}
    out.update({name: _builtin(name, *spec, "compat") for name, spec in COMPAT.items()})
    eps = sorted({ep.name: ep for ep in md.entry_points(group=ENTRY_POINT_GROUP)}.items())
    out.update({name: _from_entry_point(ep) for name, ep in eps})
    return out


def available() -> dict[str, str]:
    """Every selectable method name -> category."""
    return {name: info.category for name, info in registry().items()}


def categories() -> list[str]:
    """The study's three categories, then any new ones entry-point methods declare."""
    return list(dict.fromkeys([*CATEGORIES, *(i.category for i in registry().values())]))


def resolve_methods(spec: str | list[str]) -> list[str]:
    """Expand selectors (``all``, ``builtin``, ``plugins``), categories and comma lists into names."""
    items = [s.strip() for part in ([spec] if isinstance(spec, str) else spec) for s in part.split(",") if s.strip()]
    if not items:
        raise AttnalignError("no attribution method given: use all, a category or method names")
    reg = registry()
    selected = {
        "all": [n for n, i in reg.items() if i.origin != "compat"],
        "builtin": list(BUILTIN),
        "plugins": [n for n, i in reg.items() if i.plugin],
    }
    out: list[str] = []
    for item in items:
        if item in selected:
            chosen = selected[item]
        elif item in reg:
            chosen = [item]
        elif item in categories():
            chosen = [n for n, i in reg.items() if i.category == item and i.origin != "compat"]
        else:
            raise AttnalignError(
                f"unknown method {item!r}: valid are all, {', '.join(categories())}, builtin, plugins, {', '.join(reg)}")
        out += [n for n in chosen if n not in out]
    if not out:  # only ``plugins`` can select nothing: a run of no method would pass having done nothing
        raise AttnalignError(f"{', '.join(items)} selects no method: no entry-point method is installed (group "
                             f"{ENTRY_POINT_GROUP}): install a package that provides one, or choose all, builtin, "
                             "a category or method names")
    return out


def _setting_value(text: str) -> object:
    """``true``/``false`` are booleans, numbers ints or floats, anything else a string."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(low)
        except ValueError:
            pass
    return text.strip()


def _valid_settings(reg: dict[str, MethodInfo]) -> list[str]:
    """``CATEGORY.KEY`` where every method of the category takes KEY, else ``METHOD.KEY``."""
    out: list[str] = []
    for category in categories():
        members = [i for i in reg.values() if i.category == category and i.origin != "compat"]
        shared = set.intersection(*(set(i.options) for i in members)) if len(members) > 1 else set()
        out += [category + "." + k for k in sorted(shared)]
        out += [f"{i.name}.{k}" for i in members for k in i.options if k not in shared]
    return out


def method_options(shap_evaluations: int | None = None, fill_mask_model: str | None = None,
                   settings: list[str] | None = None, selected: Iterable[str] | None = None,
                   flags: tuple[str, str] = ("--attn-shap-evaluations", "--attn-fill-mask-model"),
                   ) -> dict[str, dict[str, object]]:
    """The per-method settings of the plugin's and CLI's options; ``None`` keeps a method's default.

    ``settings`` are ``METHOD.KEY=VALUE`` or ``CATEGORY.KEY=VALUE`` strings. A category's setting
    goes to every ``selected`` method (default: every method) of that category that takes KEY, and
    a method's own setting overrides it. A setting no such method takes is an error naming the
    valid ones; values are checked when the method is constructed (:func:`get_method`). A setting
    that contradicts its dedicated option (``flags``: the two options' names, for the message) or the
    same setting given before is an error (one of them would silently win), and so is one for a method
    that is not ``selected`` (it would do nothing).
    """
    reg = registry()
    out: dict[str, dict[str, object]] = {}
    if shap_evaluations is not None:
        out["shap"] = {"evaluations": shap_evaluations}
    if fill_mask_model:
        out["bert_masking"] = {"fill_mask_model": fill_mask_model}
    pool = [reg[n] for n in (reg if selected is None else selected)]
    valid = ", ".join(_valid_settings(reg))
    general: list[tuple[str, str, object]] = []
    specific: list[tuple[str, str, object]] = []
    given: dict[tuple[str, str, bool], tuple[str, object]] = {}  # (method, name, its own?) -> first setting

    def once(method: str, name: str, value: object, own: bool, item: str) -> tuple[str, str, object]:
        first, before = given.setdefault((method, name, own), (item, value))
        if before != value:  # the later one would silently win
            raise AttnalignError(f"setting {item!r} contradicts {first!r}: give the setting once")
        return method, name, value

    for item in settings or []:
        key, eq, value = item.partition("=")
        target, _, name = key.strip().partition(".")
        if eq and target in reg and name in reg[target].options:
            if target not in [i.name for i in pool]:  # it would silently do nothing
                raise AttnalignError(f"setting {item!r}: method {target} is not selected in this run")
            specific.append(once(target, name, _setting_value(value), True, item))
        elif eq and name and target in categories() and target not in reg:
            takers = [i.name for i in pool if i.category == target and name in i.options]
            if not takers:
                raise AttnalignError(f"setting {item!r}: no selected {target} method takes {name!r} (valid: {valid})")
            general += [once(t, name, _setting_value(value), False, item) for t in takers]
        else:
            raise AttnalignError(f"setting {item!r} is not METHOD.NAME=VALUE or CATEGORY.NAME=VALUE with one of {valid}")
    dedicated = {("shap", "evaluations"): (flags[0], shap_evaluations),
                 ("bert_masking", "fill_mask_model"): (flags[1], fill_mask_model or None)}
    for method, name, value in general + specific:
        flag, given = dedicated.get((method, name), ("", None))
        if given is not None and value != given:
            raise AttnalignError(f"{method}.{name}={value} contradicts {flag}={given}: give the setting once")
        out.setdefault(method, {})[name] = value
    return out


def get_method(name: str, **settings: object) -> Method:
    """An instance of the named method (imports its module; torch only when it runs).

    ``settings`` are the method's declared ``options``; a setting it does not take is an error
    rather than silently ignored, and so is a value its constructor rejects.
    """
    info = registry().get(name)
    if info is None:
        resolve_methods(name)  # raises the error listing valid names
        raise AssertionError(name)
    unknown = sorted(set(settings) - set(info.options))
    if unknown:
        takes = f"; it takes {', '.join(info.options)}" if info.options else ""
        raise AttnalignError(f"method {name!r} takes no setting {', '.join(unknown)}{takes}")
    try:
        return info.make(**settings)
    except AttnalignError:
        raise
    except (TypeError, ValueError) as exc:  # a third-party constructor's own check
        raise AttnalignError(f"{name}: {exc}") from None


def code_identity(method: Method) -> dict[str, str | None]:
    """For a method defined outside this package: its class, a digest of the module defining it and, for
    an entry point's method, its distribution's version, so a cached attribution is not reused after the
    method's code changed (a release may change only modules the class imports; built-ins: ``{}``)."""
    cls = type(method)
    if cls.__module__.split(".")[0] == __name__.split(".")[0]:
        return {}
    try:
        digest: str | None = hashlib.sha256(inspect.getsource(inspect.getmodule(cls)).encode()).hexdigest()[:16]
    except (OSError, TypeError):  # defined interactively: no source to hash, so never cached (see Study.attribute)
        digest = None
    info = registry().get(method.name)
    return {"class": f"{cls.__module__}.{cls.__qualname__}", "module_sha256": digest,
            **({"origin": info.origin} if info is not None and info.plugin else {})}


__all__ = ["ENTRY_POINT_GROUP", "SELECTORS", "AttributionContext", "Method", "MethodInfo", "MethodNotApplicable",
           "Unit", "available", "categories", "code_identity", "get_method", "method_options", "registry",
           "resolve_methods"]
