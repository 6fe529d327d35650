"""Gates on a run's alignment: thresholds within the run (``--attn-gate``) and against a saved baseline
(``--attn-compare-fail``), each judged with a bootstrap CI over tasks (:mod:`bootstrap`), paired where
two figures are compared (a threshold gate resamples one side).

Grammar (README, "Baselines and gates"):

- gate: ``METHOD.METRIC@K OP (METHOD.METRIC@K | NUMBER)[!]``, e.g. ``mymethod.f1@10>=coding_last.f1@10``,
  ``mymethod.alpha@10>=0.05``; OP is ``>=``, ``>``, ``<=`` or ``<``. Checked for every model of the run.
- compare-fail: ``[METHOD.]METRIC@K:DROP[!]`` or ``pass1:DROP[!]``, e.g. ``f1@10:2%``: fails when the
  figure fell by more than DROP from the baseline (every model x method in both runs, or METHOD's).

METRIC is p, r, f1 or alpha. P, R, F1 and Pass@1 numbers are percent (``40%``; a DROP of ``2%`` is 2
percentage points, not 2% of the value), alpha numbers are plain (``0.05``). Without ``!`` the measured
value decides; with ``!`` the whole 95% CI must: a gate holds only if the CI clears the threshold,
a compare-fail fails only if the CI lies entirely below baseline - DROP (the drop is significant).
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .alignment import pool_sums, task_sums
from .bootstrap import Estimate, paired
from .compare import compare_table, scored_in_both, settings_diff
from .errors import AttnalignError
from .record import Record
from .report import groups, printable, task_order
from .runfile import Run

METRICS = {"p": "precision", "r": "recall", "f1": "f1", "alpha": "alpha"}
LABEL = {"precision": "P", "recall": "R", "f1": "F1", "alpha": "alpha", "pass1": "Pass@1"}
GATE_GRAMMAR = ("METHOD.METRIC@K OP (METHOD.METRIC@K | NUMBER)[!] with METRIC p, r, f1 or alpha, OP >=, >, <= or <, "
                "P/R/F1 numbers in percent (40%), alpha plain (0.05); e.g. mymethod.f1@10>=coding_last.f1@10")
COMPARE_GRAMMAR = ("[METHOD.]METRIC@K:DROP[!] or pass1:DROP[!] with METRIC p, r, f1 or alpha, DROP in percentage "
                   "points for P/R/F1/Pass@1 (2%), plain for alpha (0.02); e.g. f1@10:2%")
_OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}
#: Float rounding allowed when a figure meets its bound, in ulps of the larger magnitude (at least 1, a
#: fraction's scale): pooled figures are ratios and differences of floats (0.7 - 0.9 is -0.20000000000000007).
_ROUNDING_ULPS = 64
_TERM = r"(?:(?P<{p}method>\S+)\.)?(?P<{p}metric>[A-Za-z0-9]+)@(?P<{p}k>\d+)"
_GATE = re.compile(rf"{_TERM.format(p='l')}\s*(?P<op>>=|<=|>|<)\s*(?:{_TERM.format(p='r')}|(?P<number>[^!]+?))\s*(?P<bang>!)?")
_COMPARE = re.compile(rf"(?:{_TERM.format(p='l')}|(?P<pass1>pass1))\s*:\s*(?P<number>[^!]+?)\s*(?P<bang>!)?")


@dataclass(frozen=True)
class Term:
    method: str
    metric: str  # precision, recall, f1, alpha
    k: int

    def __str__(self) -> str:
        return f"{self.method}.{self.metric}@{self.k}"


@dataclass(frozen=True)
class Gate:
    text: str
    left: Term
    op: str
    right: Term | float  # another figure of the run, or a threshold
    significant: bool  # trailing "!"


@dataclass(frozen=True)
class CompareFail:
    text: str
    metric: str  # precision, recall, f1, alpha or pass1
    k: int | None  # None for pass1
    method: str | None  # None: every method in both runs
    drop: float
    significant: bool


def _split(values: list[str] | None, grammar: str) -> list[str]:
    """The expressions of repeated, comma-listed values; a value with none is an error, not "no gate":
    ``--attn-gate="$UNSET"`` in a CI line would otherwise always pass."""
    out = []
    for value in values or []:
        exprs = [v.strip() for v in value.split(",") if v.strip()]
        if not exprs:
            raise AttnalignError(f"{value!r} holds no expression; grammar: {grammar} (or leave the option out)")
        out += exprs
    return out


def _number(text: str, metric: str, grammar: str, expr: str) -> float:
    """A percent (``2%``, for P/R/F1/Pass@1) or a plain number (alpha) as a fraction."""
    percent = text.endswith("%")
    try:
        value = float(text.rstrip("%").strip())
    except ValueError:
        raise AttnalignError(f"{expr!r}: {text!r} is not a number; grammar: {grammar}") from None
    if not math.isfinite(value):  # float() takes nan and inf, against which every comparison is meaningless
        raise AttnalignError(f"{expr!r}: {text!r} is not a finite number; grammar: {grammar}")
    if percent == (metric == "alpha"):
        want = "a plain number (e.g. 0.05)" if metric == "alpha" else "percent (e.g. 2%)"
        raise AttnalignError(f"{expr!r}: {LABEL[metric]} thresholds are written as {want}; grammar: {grammar}")
    return value / 100 if percent else value


def _metric(name: str, expr: str, grammar: str) -> str:
    if name.lower() not in METRICS:
        raise AttnalignError(f"{expr!r}: unknown metric {name!r} (use p, r, f1 or alpha); grammar: {grammar}")
    return METRICS[name.lower()]


def parse_gates(values: list[str] | None) -> list[Gate]:
    """``--attn-gate`` values (repeatable, comma lists); a malformed one raises naming the grammar."""
    out = []
    for expr in _split(values, GATE_GRAMMAR):
        m = _GATE.fullmatch(expr)
        if not m or not m["lmethod"] or (m["rmetric"] and not m["rmethod"]):
            raise AttnalignError(f"{expr!r} is not a gate; grammar: {GATE_GRAMMAR}")
        left = Term(m["lmethod"], _metric(m["lmetric"], expr, GATE_GRAMMAR), int(m["lk"]))
        if m["rmetric"]:
            right: Term | float = Term(m["rmethod"], _metric(m["rmetric"], expr, GATE_GRAMMAR), int(m["rk"]))
            if right.metric != left.metric:
                raise AttnalignError(f"{expr!r}: both sides must be the same metric; grammar: {GATE_GRAMMAR}")
        else:
            right = _number(m["number"], left.metric, GATE_GRAMMAR, expr)
        out.append(Gate(expr, left, m["op"], right, bool(m["bang"])))
    return out


def parse_compare_fails(values: list[str] | None) -> list[CompareFail]:
    """``--attn-compare-fail`` values (repeatable, comma lists); a malformed one raises naming the grammar."""
    out = []
    for expr in _split(values, COMPARE_GRAMMAR):
        m = _COMPARE.fullmatch(expr)
        if not m:
            raise AttnalignError(f"{expr!r} is not a compare-fail expression; grammar: {COMPARE_GRAMMAR}")
        metric = "pass1" if m["pass1"] else _metric(m["lmetric"], expr, COMPARE_GRAMMAR)
        drop = _number(m["number"], metric, COMPARE_GRAMMAR, expr)
        if drop < 0:
            raise AttnalignError(f"{expr!r}: the allowed drop must not be negative; grammar: {COMPARE_GRAMMAR}")
        out.append(CompareFail(expr, metric, None if m["pass1"] else int(m["lk"]), m["lmethod"], drop, bool(m["bang"])))
    return out


def check_baseline_ks(fails: Sequence[CompareFail], base: Run, base_name: str) -> None:
    """Every compare-fail's K is one the baseline has: its figure there is missing otherwise."""
    missing = sorted({f.k for f in fails if f.k is not None and f.k not in base.ks})
    if missing:
        raise AttnalignError(f"K={', '.join(map(str, missing))} is not in the baseline {base_name} "
                             f"(K: {', '.join(map(str, base.ks))})")


def check_names(gates: Sequence[Gate], fails: Sequence[CompareFail], methods: Sequence[str], ks: Sequence[int]) -> None:
    """Every method and K an expression names must be in the run (checked before it starts)."""
    for gate in gates:
        for term in (gate.left, gate.right):
            if isinstance(term, Term) and term.method not in methods:
                raise AttnalignError(f"{gate.text!r}: method {term.method!r} is not in this run "
                                     f"(methods: {', '.join(methods)})")
            if isinstance(term, Term) and term.k not in ks:
                raise AttnalignError(f"{gate.text!r}: K={term.k} is not in this run (K: {', '.join(map(str, ks))})")
    for fail in fails:
        if fail.method is not None and fail.method not in methods:
            raise AttnalignError(f"{fail.text!r}: method {fail.method!r} is not in this run "
                                 f"(methods: {', '.join(methods)})")
        if fail.k is not None and fail.k not in ks:
            raise AttnalignError(f"{fail.text!r}: K={fail.k} is not in this run (K: {', '.join(map(str, ks))})")


# ------------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class Verdict:
    """One summary line and whether the gate held."""

    line: str
    held: bool


def _ids(records: list[Record]) -> list[str]:
    """The task ids of ``records`` (:func:`compare.scored_in_both`'s, alike on both sides), in task order:
    the bootstrap resamples these, pairing the sides."""
    return sorted({r.task_id for r in records}, key=task_order)


def _matrix(records: list[Record], ids: list[str], metric: str, k: int | None) -> np.ndarray:
    """One row per task id: its :func:`alignment.task_sums` at K, or (passed, 1) for Pass@1."""
    by_id = {r.task_id: r for r in records}

    def row(r: Record) -> tuple[float, ...]:
        return (float(r.passed), 1.0) if metric == "pass1" else task_sums(r.task_units(), k)  # type: ignore[arg-type]

    return np.array([row(by_id[t]) for t in ids], dtype=float).reshape(len(ids), 2 if metric == "pass1" else 7)


def _pooled(metric: str):  # noqa: ANN202 - a bootstrap.Metric
    if metric == "pass1":
        return lambda s: np.asarray(s)[..., 0] / np.asarray(s)[..., 1]
    return lambda s: pool_sums(s)[metric]


def _fmt(x: float | None, metric: str) -> str:
    if x is None:
        return "undefined"
    return f"{x:.3f}" if metric == "alpha" else f"{x:.1%}"


def _diff(x: float | None, metric: str) -> str:
    if x is None:
        return "undefined"
    return f"{x:+.3f}" if metric == "alpha" else f"{x * 100:+.2f} points"


def _ci(est: Estimate, metric: str, shift: float = 0.0) -> str:
    if est.low is None or est.high is None:
        return "95% CI undefined"
    lo, hi = _settled(est.low, shift) - shift, _settled(est.high, shift) - shift
    bounds = f"{lo:+.3f}, {hi:+.3f}" if metric == "alpha" else f"{lo * 100:+.2f}, {hi * 100:+.2f} points"
    kind = "bootstrap" if est.b is None else "paired bootstrap"
    return f"95% CI [{bounds}] ({kind} over {est.tasks} tasks, {est.resamples} resamples, fixed seed)"


def evaluate_gate(gate: Gate, run: Run) -> list[Verdict]:
    """One verdict per model of the run."""
    by = groups(run.records, "model", "method")
    metric = gate.left.metric
    if not by:
        return [Verdict(f"gate {gate.text}: FAILED: the run has no results to judge", False)]
    out = []
    for model in sorted({m for m, _ in by}):
        left = by.get((model, gate.left.method), [])
        right = by.get((model, gate.right.method), []) if isinstance(gate.right, Term) else left
        head = f"gate {gate.text} [{model}]"
        if not left or not right:
            missing = gate.left.method if not left else gate.right.method  # type: ignore[union-attr]
            out.append(Verdict(f"{head}: FAILED: no result of {missing} to judge", False))
            continue
        left, right = scored_in_both(left, right)
        ids = _ids(left)
        a = _matrix(left, ids, metric, gate.left.k)
        if isinstance(gate.right, Term):
            est = paired(_pooled(metric), a, _matrix(right, ids, metric, gate.right.k))
            threshold, shift = 0.0, 0.0
            measured = f"{_fmt(est.a, metric)} vs {_fmt(est.b, metric)}"
        else:
            est = paired(_pooled(metric), a)
            threshold = shift = gate.right
            measured = f"{_fmt(est.a, metric)} vs threshold {_fmt(gate.right, metric)}"
        diff = None if est.diff is None else _settled(est.diff, shift) - shift
        held = _holds(gate, est, threshold)
        note = f"; ! needs the whole CI {gate.op} 0" if gate.significant and not held and diff is not None else ""
        out.append(Verdict(f"{head}: {'held' if held else 'FAILED'}: {measured}, difference {_diff(diff, metric)}, "
                           f"{_ci(est, metric, shift)}{note}", held))
    return out


def _settled(x: float, bound: float) -> float:
    """``bound`` where ``x`` differs from it by float rounding only, else ``x``: a figure exactly at its
    threshold or allowed drop then meets it (``>=`` holds, ``>`` does not) and shows no -0.00 difference."""
    return bound if abs(x - bound) <= _ROUNDING_ULPS * math.ulp(max(1.0, abs(x), abs(bound))) else x


def _meets(x: float, op: str, bound: float) -> bool:
    return _OPS[op](_settled(x, bound), bound)


def _holds(gate: Gate, est: Estimate, threshold: float) -> bool:
    if est.diff is None:
        return False
    if not gate.significant:
        return _meets(est.diff, gate.op, threshold)
    if est.low is None or est.high is None:
        return False
    bound = est.low if gate.op in (">=", ">") else est.high
    return _meets(bound, gate.op, threshold)


def evaluate_compare_fail(fail: CompareFail, run: Run, base: Run) -> list[Verdict]:
    """One verdict per model x method in both runs (per model for pass1)."""
    fields = ("model",) if fail.metric == "pass1" else ("model", "method")
    mine, theirs = groups(run.records, *fields), groups(base.records, *fields)
    keys = [key for key in mine if key in theirs and (fail.method is None or key[-1] == fail.method)]
    if not keys:
        return [Verdict(f"compare-fail {fail.text}: FAILED: no {'model' if fail.metric == 'pass1' else 'model x method'} "
                        "in both runs to compare", False)]
    out = []
    name = LABEL[fail.metric] + (f"@{fail.k}" if fail.k else "")
    for key in keys:
        now, then = scored_in_both(mine[key], theirs[key], pass1=fail.metric == "pass1")  # the table's tasks
        ids = _ids(now)
        if not ids:  # the figures of no task pair up: "undefined -> undefined" said nothing of why
            out.append(Verdict(f"compare-fail {fail.text} [{' '.join(key)}]: FAILED: no task scored in both runs "
                               "to compare", False))
            continue
        est = paired(_pooled(fail.metric), _matrix(now, ids, fail.metric, fail.k),
                     _matrix(then, ids, fail.metric, fail.k))
        if est.diff is None:
            held = False
        elif fail.significant:
            held = est.high is None or _meets(est.high, ">=", -fail.drop)
        else:
            held = _meets(est.diff, ">=", -fail.drop)
        out.append(Verdict(
            f"compare-fail {fail.text} [{' '.join(key)}]: {'held' if held else 'FAILED'}: {name} "
            f"{_fmt(est.b, fail.metric)} -> {_fmt(est.a, fail.metric)}, change {_diff(est.diff, fail.metric)}, "
            f"{_ci(est, fail.metric)}; allowed drop {_diff(fail.drop, fail.metric).lstrip('+')}"
            + (" (only a significant drop fails)" if fail.significant else ""), held))
    return out


def judge(run: Run, gates: Sequence[Gate], base: Run | None = None, fails: Sequence[CompareFail] = (),
          force: bool = False, base_name: str = "the baseline", force_flag: str = "--compare-force") -> tuple[bool, list[str]]:
    """Whether every gate and compare-fail held, and the lines to print: the comparison with ``base``
    (refused when settings differ or the baseline is part of a run, unless ``force``), then one line
    per verdict, or one line saying why none is given (the run is part of a run)."""
    lines: list[str] = []
    verdicts = [v for gate in gates for v in evaluate_gate(gate, run)]
    refused, own = False, _part_of_a_run(run)
    if base is not None:
        # a baseline without a record has no settings: "differ" would list every one as blank
        differ = settings_diff(run.settings(), base.settings()) if base.records else []
        partial = _part_of_a_run(base)  # the baseline's figures lack tasks
        if (differ or partial) and not force:
            refused = bool(fails)
            why = "; ".join(([f"{base_name} {partial}"] if partial else [])  # the first reason to fix
                            + ([f"settings differ from {base_name}: {'; '.join(differ)}"] if differ else []))
            lines.append(f"comparison refused: {why}; pass {force_flag} to compare anyway")
        else:
            forced = f"settings differ, compared as forced: {'; '.join(differ)}" if differ else ""
            if partial:
                forced = (f"{forced}; " if forced else "compared as forced: ") + f"{base_name} {partial}"
            notes = [note for note in (forced, own and f"this run {own}") if note]  # its figures are its tasks'
            lines.append(f"Compared with {base_name}" + (f" ({'; '.join(notes)})" if notes else "") + ":")
            lines.append(compare_table(run, base))
            verdicts += [v for fail in fails for v in evaluate_compare_fail(fail, run, base)]
    held = not refused and all(v.held for v in verdicts)
    if own and (gates or fails):  # the figures lack items: a verdict on them is none, neither "held" nor "FAILED"
        held, verdict_lines = False, [f"gates not judged: the run {own}"]
    else:
        verdict_lines = [v.line for v in verdicts]
    return held, [printable(line) for line in (*lines, *verdict_lines)]  # model names come from run files


def _part_of_a_run(run: Run) -> str | None:
    """Why ``run``'s figures are those of part of a run (one shard, or items missing or without a
    result), or None for a whole run: the one rule for a baseline, which :func:`judge` refuses and
    ``--attn-compare`` with no value passes over (:func:`storage.find_run`)."""
    shard = run.info.get("shard")
    if isinstance(shard, dict):
        return (f"is shard {shard.get('index')}/{shard.get('count')}, part of a run: merge the shards "
                "(attnalign merge) and judge the merged run")
    if run.info.get("complete") is False:
        return (f"is incomplete ({len(run.info.get('missing', []))} items missing, "
                f"{len(run.info.get('errors', []))} without a result; see its header): rerun those items "
                "(the cache keeps the others' results)")
    return None
