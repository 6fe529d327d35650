"""One item's result: the contract between the study, xdist, the run JSON and the report.

A :class:`Record` is built by :meth:`study.Study.run_item`, travels from an xdist worker to the
controller as the plain JSON dict of :meth:`Record.to_dict` (on the test report), and is read back
from a run file with :meth:`Record.from_dict`, which checks every field's shape: a hand-edited or
foreign file fails with one line instead of a KeyError inside the report.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .alignment import Located, Span, TaskUnits, check_score, check_span
from .errors import AttnalignError
from .jsonshape import ShapeError, check, from_json
from .linemap import LineUnits

T = TypeVar("T")
#: A key of ``top_k`` and ``metrics``: str(K) of a K from 1 to under 10**18 in ASCII digits (isdigit() takes
#: "²", which int() refuses; int() refuses 5,000 digits).
_K = re.compile(r"[1-9][0-9]{0,17}")


@dataclass(frozen=True)
class Record:
    """Model x method x task: generation, attribution, scores against the labels and the tests' verdict."""

    model: str
    model_identity: dict[str, Any]  # models.LoadedModel.identity: source, revision, dtype
    method: str
    task_id: str
    benchmark: str
    prompt_format: str
    max_new_tokens: int
    budget_rule: str
    stop_rule: str
    device: str
    completion: str
    no_code: bool  # no function body: left out of the alignment tables; in Pass@1 by its tests (an empty completion fails)
    generated_tokens: int
    explained_tokens: list[str]
    labels: str  # label mode, labels.LABEL_MODES
    generation_cached: bool
    usage: dict[str, Any] | None  # API models: tokens and the served model
    execution: dict[str, Any]  # execution.ExecResult.as_dict without the machine-dependent rlimits
    passed: bool
    units: list[Located]  # (start, end, score) in task.prompt coordinates
    human: list[Span]  # the labelled spans that were scored
    top_k: dict[str, list[list[int]]]  # str(K) -> spans of the top-K units
    metrics: dict[str, dict[str, Any]]  # str(K) -> alignment.KScore.as_dict of this task alone
    error_k: int
    error_patterns: list[str]
    missed_keywords: list[dict[str, Any]]  # labels.Label as dicts
    attribution: dict[str, Any]  # seconds, settings, cached (and a note for no-code items)
    #: The code-to-words map of a CODING method (:mod:`linemap`): per code line ``[start, end)`` in
    #: ``completion`` and its top units ``(index into units, score)``; empty for the other methods.
    #: Optional, so run files written before it existed still read.
    line_units: list[LineUnits] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (lists, not tuples), so xdist ships it and ``from_dict`` reads it back equal."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Any, where: str = "record") -> Record:
        """The record, every field checked; raises :class:`jsonshape.ShapeError` naming the field."""
        return from_json(cls, data, where)

    def check_values(self, where: str = "record") -> None:
        """What the shape leaves open and the report and page rely on: a known task, spans inside its
        prompt, finite scores, top-K and metrics keys that are Ks, text where they show text, code-map units
        among the record's units. A run file's reader calls it, so a damaged file is refused on reading,
        not by a crash while rendering; raises :class:`jsonshape.ShapeError` naming the field."""
        from .tasks import get_task

        length = len(_named(f"{where}.task_id", get_task, self.task_id).prompt)
        for name in ("model", "method"):
            if not getattr(self, name).strip():
                raise ShapeError(f"{where}.{name}: empty")
        for key in ("source", "revision", "dtype"):
            if key not in self.model_identity:
                raise ShapeError(f"{where}.model_identity: missing {key!r}")
        settings = check(self.attribution.get("settings", {}), dict, f"{where}.attribution.settings")
        texts = {"execution.outcome": self.execution.get("outcome"),  # sorted, joined, shown as text
                 "execution.stderr_tail": self.execution.get("stderr_tail", ""),
                 "usage.served_model": (self.usage or {}).get("served_model", ""),
                 "attribution.settings.restated_copy": settings.get("restated_copy", "")}
        for name, value in texts.items():
            check(value, str, f"{where}.{name}")
        if "method" in self.attribution:  # the method's provenance (runs since 2026-12-03)
            kept = check(self.attribution["method"], dict[str, Any], f"{where}.attribution.method")
            for key, kind in (("category", str), ("origin", str), ("options", list[str])):
                check(kept.get(key), kind, f"{where}.attribution.method.{key}")
        i = 0
        try:  # a field's path is spelled only when it is wrong: a run file holds millions of units
            for i, (start, end, score) in enumerate(self.units):
                check_span(start, end, length, "unit")
                check_score(score)
        except AttnalignError as exc:
            raise ShapeError(f"{where}.units[{i}]: {exc}") from None
        for i, (start, end) in enumerate(self.human):
            _named(f"{where}.human[{i}]", check_span, start, end, length, "human span")
        for part in ("top_k", "metrics"):
            for k in getattr(self, part):
                if not _K.fullmatch(k):
                    raise ShapeError(f"{where}.{part}: key {k!r:.40} is not a K such as \"10\"")
        for k, spans in self.top_k.items():
            for j, (start, end) in enumerate(check(spans, list[Span], f"{where}.top_k.{k}")):
                _named(f"{where}.top_k.{k}[{j}]", check_span, start, end, length, "top-K span")
        for k, scores in self.metrics.items():
            check(scores, dict, f"{where}.metrics.{k}")
            for name in ("f1", "alpha"):  # the page shows them; null is an undefined figure
                if scores.get(name) is not None:
                    _named(f"{where}.metrics.{k}.{name}", check_score, scores[name])
        for i, (_, _, kept) in enumerate(self.line_units):
            for j, (unit, score) in enumerate(kept):
                if not 0 <= unit < len(self.units):
                    raise ShapeError(f"{where}.line_units[{i}][2][{j}]: unit {unit} is not an index into the "
                                     f"record's {len(self.units)} units")
                if _named(f"{where}.line_units[{i}][2][{j}]", check_score, score) <= 0:  # linemap.compact keeps > 0
                    raise ShapeError(f"{where}.line_units[{i}][2][{j}]: score {score!r} must be positive")

    @property
    def computed(self) -> bool:
        """Whether the item computed its result rather than reading it from the cache: an attribution,
        or, with no code to attribute, the generation (the progress ETA measures computed items only)."""
        if self.no_code:
            return not self.generation_cached
        return not self.attribution.get("cached", False)

    def task_units(self) -> TaskUnits:
        """The metric input of this item (for pooling over tasks)."""
        from .tasks import get_task

        return TaskUnits(get_task(self.task_id).prompt, tuple(self.units), tuple(self.human), 0, self.task_id)


def _named(where: str, check_value: Callable[..., T], *args: Any) -> T:
    """``check_value(*args)``, its :class:`AttnalignError` made a :class:`ShapeError` naming the field."""
    try:
        return check_value(*args)
    except AttnalignError as exc:
        raise ShapeError(f"{where}: {exc}") from None


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
