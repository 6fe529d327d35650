"""One method's scores on one task, with the views a user's test asserts on (top-K words, labels covered).

What :func:`attribute` returns goes through :meth:`study.Study.attribute`, the same cache and context as
the study's items, so a built-in method's units here equal that method's units in the study's record.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .alignment import KScore, TaskUnits, score_tasks, strict_overlap, top_k
from .fixtures import _one_line
from .labels import human_spans, prompt_labels
from .methods import AttributionContext, Method, Unit
from .tasks import Task


@dataclass(frozen=True)
class Attribution:
    """Units ``(start, end, score)`` in ``task.prompt`` coordinates, in prompt order."""

    method: str
    task: Task
    units: tuple[Unit, ...]
    settings: dict[str, Any]
    cached: bool  # read from the result cache rather than computed
    labels: str = "corrected"  # the run's --attn-labels: what :meth:`score` scores against by default

    def top_k(self, k: int = 10) -> list[tuple[int, int]]:
        """The spans of the K best units, ties to the earlier unit (METRICS.md s2, as the tables rank)."""
        return top_k(self.units, k)

    def top_words(self, k: int = 10) -> list[str]:
        """The text of the K best units, best first."""
        return [self.task.prompt[s:e] for s, e in self.top_k(k)]

    def covered_labels(self, k: int = 10) -> list[str]:
        """The programmers' labelled words that some top-K unit overlaps, in prompt order."""
        top = self.top_k(k)
        labels = _one_line(prompt_labels, self.task)  # a bad labels file: one line in the user's test, as fixtures
        return [lab.word for lab in labels if any(strict_overlap((lab.start, lab.end), t) for t in top)]

    def agreement(self, other: Attribution, k: int = 10) -> float:
        """The share of this top-K that overlaps some unit of ``other``'s top-K (by characters, so
        token units and word units compare)."""
        mine, theirs = self.top_k(k), other.top_k(k)
        return sum(any(strict_overlap(m, t) for t in theirs) for m in mine) / len(mine) if mine else 0.0

    def score(self, k: int = 10, labels: str | None = None) -> KScore:
        """P, R, F1 and alpha of this one task against the labels (``labels``: a label mode; default
        the run's ``--attn-labels``), as the tables compute them."""
        spans = tuple(_one_line(human_spans, self.task, labels or self.labels))  # a bad labels file or mode: one line
        units = TaskUnits(self.task.prompt, self.units, spans, 0, self.task.task_id)
        return score_tasks([units], [k])[k]


def attribute(study: Any, ctx: AttributionContext, method: str | Method) -> Attribution:
    """``method`` (a registered name, with the study's settings for it, or an instance) on ``ctx``."""
    units, info = study.attribute(ctx, method)
    name = method if isinstance(method, str) else method.name or type(method).__name__
    return Attribution(name, ctx.task, tuple((int(s), int(e), float(v)) for s, e, v in units),
                       info["settings"], info["cached"], study.config.labels)
