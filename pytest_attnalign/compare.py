"""Two runs side by side: which settings differ, and the change of every figure both runs have.

Figures are compared on the tasks both runs scored (a run over more tasks is not better or worse
for it), so the change is the change of the model or method, not of the task sample.
"""

from __future__ import annotations

from typing import Any

from tabulate import tabulate

from .record import Record
from .report import groups, pass_counts, pooled, task_order, with_code
from .runfile import Run


def settings_diff(now: dict[str, Any], base: dict[str, Any]) -> list[str]:
    """``key: baseline -> now`` for every differing setting (of the models and methods both runs have)."""
    out = []
    for key in sorted(set(now) | set(base)):
        if key in ("models", "methods"):
            mine, theirs = now.get(key, {}), base.get(key, {})
            for name in sorted(set(mine) & set(theirs)):
                for k in sorted(set(mine[name]) | set(theirs[name])):
                    if mine[name].get(k) != theirs[name].get(k):
                        out.append(f"{key[:-1]} {name} {k}: {theirs[name].get(k)!r} -> {mine[name].get(k)!r}")
        elif now.get(key) != base.get(key):
            out.append(f"{key}: {base.get(key)!r} -> {now.get(key)!r}")
    return out


def scored_in_both(a: list[Record], b: list[Record], pass1: bool = False) -> tuple[list[Record], list[Record]]:
    """The records of ``a`` and ``b`` of the tasks both scored: for alignment those whose model wrote code
    in both (the only ones the tables pool), for Pass@1 every task both ran. The comparison table and the
    compare-fail verdicts both pair with this, so a verdict judges the tasks of the figures shown."""
    if not pass1:
        a, b = with_code(a), with_code(b)
    both = {r.task_id for r in a} & {r.task_id for r in b}
    return [r for r in a if r.task_id in both], [r for r in b if r.task_id in both]


def _pct(x: float | None) -> str:
    return "undefined" if x is None else f"{x:.1%}"


def _change(now: float | None, base: float | None, alpha: bool) -> str:
    if now is None or base is None:
        return f"{'undefined' if now is None else (f'{now:.2f}' if alpha else _pct(now))} (n/a)"
    return f"{now:.2f} ({now - base:+.2f})" if alpha else f"{now:.1%} ({(now - base) * 100:+.1f})"


#: Task ids a "nothing in common" line names of each run before "and N more".
SHOW_TASKS = 3


def _names(values: set[str], what: str) -> str:
    """``methods a, b`` (``method a``; ``no method`` for none)."""
    return f"{what}{'s' if len(values) != 1 else ''} {', '.join(sorted(values))}" if values else f"no {what}"


def _holdings(run: Run) -> str:
    """What a run scored, for a line saying two runs share nothing: its models, methods and tasks."""
    ids = sorted({r.task_id for r in run.records}, key=task_order)
    more = f" and {len(ids) - SHOW_TASKS} more" if len(ids) > SHOW_TASKS else ""
    tasks = f"{len(ids)} task{'s' if len(ids) != 1 else ''} ({', '.join(ids[:SHOW_TASKS])}{more})" if ids else "no task"
    return (f"{_names({r.model for r in run.records}, 'model')}, {_names({r.method for r in run.records}, 'method')}, "
            f"{tasks}")


def compare_table(now: Run, base: Run) -> str:
    """Per model x method x K in both runs: this run's P/R/F1/alpha and (the change); Pass@1 per model."""
    ks = [k for k in now.ks if k in base.ks]
    theirs = groups(base.records, "model", "method")
    rows = []
    for key, group in groups(now.records, "model", "method").items():
        if key not in theirs:
            continue
        mine, old = scored_in_both(group, theirs[key])
        a, b = pooled(mine, ks), pooled(old, ks)
        for k in ks:
            rows.append([*key, k, len(mine), _change(a[k].precision, b[k].precision, False),
                         _change(a[k].recall, b[k].recall, False), _change(a[k].f1, b[k].f1, False),
                         _change(a[k].alpha, b[k].alpha, True)])
    old_models = groups(base.records, "model")
    pass_rows = []
    for (model,), group in groups(now.records, "model").items():
        if (model,) in old_models:
            mine, old = scored_in_both(group, old_models[(model,)], pass1=True)
            (p, n), (q, _) = pass_counts(mine).get((), (0, 0)), pass_counts(old).get((), (0, 0))
            pass_rows.append([model, n, _change(p / n, q / n, False) if n else "n/a"])
    if not any(row[3] for row in rows) and not any(row[1] for row in pass_rows):
        # no figure pairs up: empty tables and "0 n/a" said nothing of why (a run of other methods or tasks)
        return (f"nothing to compare: no model x method scored a task in both runs (this run: {_holdings(now)}; "
                f"the baseline: {_holdings(base)})")
    alignment = ("Alignment, this run (change in points; alpha: change) on the tasks both runs scored\n"
                 + tabulate(rows, headers=["model", "method", "K", "tasks", "P", "R", "F1", "alpha"],
                            disable_numparse=True)) if rows else \
        (f"Alignment: no model x method in both runs (this run: {_names({r.method for r in now.records}, 'method')}; "
         f"the baseline: {_names({r.method for r in base.records}, 'method')})")
    return "\n\n".join([
        alignment,
        "Pass@1, this run (change in points)\n"
        + tabulate(pass_rows, headers=["model", "tasks", "Pass@1"], disable_numparse=True)])
