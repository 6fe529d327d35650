"""Alignment between a model's scored units and programmer-labelled spans (METRICS.md, the contract).

Pure metric code on half-open character ranges: no model, no torch. Every rule here follows
``docs/METRICS.md`` (the project's copy of ``../shared/METRICS.md``) to the letter, because small deviations (tie-break, per-task averaging,
inclusive overlap) move the study's published cells by up to 10 points.

A ratio whose denominator is zero (precision with no selected unit, recall or keyword coverage with
no human span) is *undefined* and reported as ``None``, like an undefined alpha: never as 0.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import krippendorff
import numpy as np

from .errors import AttnalignError

Span = tuple[int, int]  # half-open [start, end) character range
Located = tuple[int, int, float]  # (start, end, score) of a located unit
DEFAULT_KS = (5, 10, 20)


def check_span(start: object, end: object, length: int, what: str = "span") -> Span:
    """A validated half-open range inside a text of ``length`` characters (bools are not ints)."""
    for x in (start, end):  # ``type(x) is int`` first: millions of spans are read back with a run file
        if type(x) is not int and (not isinstance(x, numbers.Integral) or isinstance(x, bool)):
            raise AttnalignError(f"{what} [{start!r}, {end!r}] must be two integers")
    s, e = int(start), int(end)  # type: ignore[call-overload]
    if not 0 <= s <= e <= length:
        raise AttnalignError(f"{what} [{s}, {e}] must satisfy 0 <= start <= end <= {length} (the text's length)")
    return s, e


def check_score(score: object) -> float:
    """A finite real score: a NaN would make the top-K order meaningless."""
    if type(score) is not float and (not isinstance(score, numbers.Real) or isinstance(score, bool)):
        raise AttnalignError(f"score {_shown(score)} must be a finite number")
    try:
        value = float(score)
    except OverflowError:  # an integer past the floats' range
        value = math.inf
    if not math.isfinite(value):
        raise AttnalignError(f"score {_shown(score)} must be a finite number")
    return value


def _shown(value: object) -> str:
    """A value's repr for an error line, cut with "..." (an integer of 400 digits is not printed whole)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def locate_units(text: str, units: Iterable[Sequence[object]]) -> tuple[list[Located], int]:
    """Character ranges of the units (METRICS.md s1) and how many string tokens were not found.

    ``units`` are ``(token, score)`` pairs, located left to right with ``str.find`` from a cursor
    (a token not found is dropped and leaves the cursor where it was), or ``(start, end, score)``
    triples, validated and put in prompt order (:func:`in_prompt_order`). One call takes one kind
    only: mixing them would leave the cursor's meaning undefined.
    """
    located: list[Located] = []
    dropped = cursor = 0
    kind = ""
    for unit in units:
        u = tuple(unit)
        this = "token" if len(u) == 2 and isinstance(u[0], str) else "range" if len(u) == 3 else ""
        if not this:
            raise AttnalignError(f"unit {list(u)!r} must be [token, score] or [start, end, score]")
        if kind and this != kind:
            raise AttnalignError("units mix [token, score] pairs and [start, end, score] triples: use one kind")
        kind = this
        score = check_score(u[-1])
        if this == "range":
            located.append((*check_span(u[0], u[1], len(text), "unit"), score))
            continue
        tok = str(u[0])
        pos = text.find(tok, cursor)
        if pos == -1:
            dropped += 1
            continue
        located.append((pos, pos + len(tok), score))
        cursor = pos + len(tok)
    return (in_prompt_order(located) if kind == "range" else located), dropped


def in_prompt_order(located: Iterable[Located]) -> list[Located]:
    """Units sorted by their place in the prompt (METRICS.md: units come "in prompt order", and the
    top-K's ties go to the EARLIER unit): ``[start, end, score]`` units given out of order would
    otherwise break ties by list position. A stable sort, so units with one range keep their order."""
    return sorted(located, key=lambda u: (u[0], u[1]))


def in_region(located: Iterable[Located], region: Span) -> list[Located]:
    """The units' parts inside the scored region (METRICS.md s6: units elsewhere are not scored).

    A unit wholly outside is left out (one that only touches an edge too), one across an edge is cut
    at it; an empty unit stays where it lies inside. Scores and order are kept.
    """
    lo, hi = region
    return [(max(s, lo), min(e, hi), v) for s, e, v in located
            if max(s, lo) < min(e, hi) or (s == e and lo <= s <= hi)]


def top_k(located: Sequence[Located], k: int) -> list[Span]:
    """Ranges of the K best units (METRICS.md s2): a STABLE sort, so the earlier unit wins a tie."""
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    return [(s, e) for s, e, _ in sorted(located, key=lambda u: u[2], reverse=True)[:k]]


def strict_overlap(a: Span, b: Span) -> bool:
    """Ranges share an interior point: touching ranges ``[0, 5)``, ``[5, 9)`` do NOT overlap.

    Exactly the test of METRICS.md s3 (``e > a and s < b``); note that it makes a zero-length range
    strictly inside the other one count as overlapping.
    """
    return a[1] > b[0] and a[0] < b[1]


def overlap(a: Span, b: Span) -> int:
    """Length of the intersection, ``ov`` of METRICS.md s4."""
    return max(0, min(a[1], b[1]) - max(a[0], b[0]))


def ratio(num: float, den: float) -> float | None:
    """``num / den``, or None (undefined) when ``den`` is 0."""
    return None if den == 0 else num / den


def f1_score(p: float | None, r: float | None) -> float | None:
    """Harmonic mean; 0 when P + R == 0 (METRICS.md s4), None when either is undefined."""
    if p is None or r is None:
        return None
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def alpha_closed_form(h: Sequence[int], m: Sequence[int]) -> float | None:
    """Nominal Krippendorff alpha of two binary coders, closed form of METRICS.md s3."""
    n = 2 * len(h)
    n1 = sum(h) + sum(m)
    n0 = n - n1
    if n0 == 0 or n1 == 0:
        return None
    d = sum(1 for x, y in zip(h, m) if x != y)
    return 1 - (n - 1) * d / (n0 * n1)


def nominal_alpha(h: Sequence[int], m: Sequence[int]) -> float | None:
    """Alpha from the ``krippendorff`` library as the study computed it; None when undefined.

    Undefinedness is decided by the closed form first: the library raises on a one-value domain.
    """
    if alpha_closed_form(h, m) is None:
        return None
    return float(krippendorff.alpha(reliability_data=[list(h), list(m)], level_of_measurement="nominal"))


def cohen_kappa(h: Sequence[int], m: Sequence[int]) -> float | None:
    """Cohen's kappa of two binary coders, in exact integer arithmetic; None when undefined.

    kappa = (N(N-D) - E) / (N^2 - E) with E = sh*sm + (N-sh)(N-sm), the chance agreement times N^2;
    undefined with no units or when chance agreement is 1 (both coders constant and equal).
    """
    n = len(h)
    sh, sm = sum(h), sum(m)
    d = sum(1 for x, y in zip(h, m) if x != y)
    chance = sh * sm + (n - sh) * (n - sm)
    if n == 0 or chance == n * n:
        return None
    return (n * (n - d) - chance) / (n * n - chance)


@dataclass(frozen=True)
class TaskUnits:
    """One task's input to the metrics: its text, located units, human spans and dropped count."""

    text: str
    located: tuple[Located, ...]
    human: tuple[Span, ...]  # a LIST in the contract's sense: duplicates and empty ranges count
    dropped: int = 0
    task_id: str = ""

    @classmethod
    def from_units(
        cls, text: str, units: Iterable[Sequence[object]], human: Iterable[Sequence[object]], task_id: str = ""
    ) -> TaskUnits:
        """Locate ``units`` in ``text`` and validate the human spans against it."""
        located, dropped = locate_units(text, units)
        spans = []
        for h in human:
            h = tuple(h)
            if len(h) != 2:
                raise AttnalignError(f"human span {list(h)!r} must be [start, end]")
            spans.append(check_span(h[0], h[1], len(text), "human span"))
        return cls(text, tuple(located), tuple(spans), dropped, task_id)


@dataclass(frozen=True)
class _Counts:
    """One task's contribution at one K, from which pooled and per-task figures both derive."""

    p_num: float
    n_selected: int
    r_num: float
    n_human: int
    covered: int
    h: list[int]
    m: list[int]


def _counts(task: TaskUnits, k: int) -> _Counts:
    selected = top_k(task.located, k)
    t_set, h_set = set(selected), set(task.human)
    p_num = math.fsum(overlap(h, m) / (m[1] - m[0]) for h in h_set for m in t_set if m[1] > m[0])
    r_num = math.fsum(overlap(h, m) / (h[1] - h[0]) for h in h_set if h[1] > h[0] for m in t_set)
    covered = sum(1 for h in task.human if any(strict_overlap(h, m) for m in selected))
    units = [(s, e) for s, e, _ in task.located]
    h_vec = [int(any(strict_overlap(u, h) for h in task.human)) for u in units]
    m_vec = [int(u in t_set) for u in units]  # "t is in T_p": membership of the range
    return _Counts(p_num, len(selected), r_num, len(task.human), covered, h_vec, m_vec)


def _mean(values: Iterable[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return math.fsum(defined) / len(defined) if defined else None


@dataclass(frozen=True)
class KScore:
    """All figures for one K. P/R/F1/alpha are the study's pooled (micro) ones; the rest are extras.

    ``macro_*`` are plain means over the tasks where the per-task figure is defined (a task with no
    located unit has no precision; one with no human span has no recall).
    """

    k: int
    n_tasks: int
    n_units: int  # located units, the alpha sample size
    dropped_units: int  # string tokens not found in their text
    n_selected: int  # sum of len(T_p), the precision denominator
    n_human: int  # sum of len(H_p), the recall denominator
    precision: float | None
    recall: float | None
    f1: float | None
    alpha: float | None
    cohen_kappa: float | None
    keyword_coverage: float | None  # share of human spans strictly overlapping a top-K unit
    macro_precision: float | None
    macro_recall: float | None
    macro_f1: float | None

    def as_dict(self) -> dict[str, float | int | None]:
        """JSON-ready: fractions, not percents; None for undefined."""
        return asdict(self)


def score_k(tasks: Sequence[TaskUnits], k: int) -> KScore:
    """Every figure at one K, pooled over ``tasks`` (METRICS.md s3, s4)."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise AttnalignError(f"K must be a positive integer, got {k!r}")
    counts = [_counts(t, k) for t in tasks]
    h = [x for c in counts for x in c.h]
    m = [x for c in counts for x in c.m]
    n_sel = sum(c.n_selected for c in counts)
    n_human = sum(c.n_human for c in counts)
    p = ratio(math.fsum(c.p_num for c in counts), n_sel)
    r = ratio(math.fsum(c.r_num for c in counts), n_human)
    per_task = [(ratio(c.p_num, c.n_selected), ratio(c.r_num, c.n_human)) for c in counts]
    return KScore(
        k=int(k),
        n_tasks=len(tasks),
        n_units=len(h),
        dropped_units=sum(t.dropped for t in tasks),
        n_selected=n_sel,
        n_human=n_human,
        precision=p,
        recall=r,
        f1=f1_score(p, r),
        alpha=nominal_alpha(h, m),
        cohen_kappa=cohen_kappa(h, m),
        keyword_coverage=ratio(sum(c.covered for c in counts), n_human),
        macro_precision=_mean(tp for tp, _ in per_task),
        macro_recall=_mean(tr for _, tr in per_task),
        macro_f1=_mean(f1_score(tp, tr) for tp, tr in per_task),
    )


def score_tasks(tasks: Sequence[TaskUnits], ks: Iterable[int] = DEFAULT_KS) -> dict[int, KScore]:
    """Figures for each K (duplicates removed, order kept), pooled over all ``tasks``."""
    return {int(k): score_k(tasks, k) for k in dict.fromkeys(ks)}


#: One task's additive contribution to the pooled figures, the columns of :func:`task_sums`.
SUMS = ("p_num", "n_selected", "r_num", "n_human", "n_units", "disagreements", "positives")


def task_sums(task: TaskUnits, k: int) -> tuple[float, ...]:
    """What one task adds at K to the pooled P, R and alpha, in :data:`SUMS` order.

    Pooled P, R and alpha are ratios of sums over tasks (METRICS.md s3, s4), so a resample of tasks
    is a weighted sum of these rows: :func:`pool_sums` re-pools it without rescoring any task.
    """
    c = _counts(task, k)
    return (c.p_num, c.n_selected, c.r_num, c.n_human, len(c.h),
            sum(x != y for x, y in zip(c.h, c.m)), sum(c.h) + sum(c.m))


def pool_sums(sums: np.ndarray) -> dict[str, np.ndarray]:
    """Pooled precision, recall, f1 and alpha from :func:`task_sums` summed over tasks (last axis).

    Vectorised over the leading axes (bootstrap resamples); NaN where :func:`score_k` says None.
    Equal to :func:`score_k` up to float rounding (alpha by the closed form of METRICS.md s3).
    """
    p_num, n_sel, r_num, n_human, n_units, d, n1 = np.moveaxis(np.asarray(sums, dtype=float), -1, 0)
    n = 2 * n_units
    n0 = n - n1
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(n_sel > 0, p_num / n_sel, np.nan)
        r = np.where(n_human > 0, r_num / n_human, np.nan)
        f1 = np.where(np.isnan(p) | np.isnan(r), np.nan, np.where(p + r > 0, 2 * p * r / (p + r), 0.0))
        alpha = np.where((n0 > 0) & (n1 > 0), 1 - (n - 1) * d / (n0 * n1), np.nan)
    return {"precision": p, "recall": r, "f1": f1, "alpha": alpha}
