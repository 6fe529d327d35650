"""The run as one self-contained web page (``--attn-html``, ``attnalign report RUN.json --html``).

People look at attention; they do not read lists of spans. The page shows the summary's tables (the
very rows the terminal prints), an inline-SVG chart per K, and per task the study's Figure 3 view:
the description with the labelled keywords marked by type and a method's top-K units marked, next to
the completion and its test verdict, and the code-to-words map of the CODING methods (a code line
lights the description units its steps leaned on; a unit lights the lines). Everything is inline
(CSS, JS, SVG, the data as one JSON blob), so the page opens from disk and makes no network request.
The JS and CSS live in ``data/html/``.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .alignment import SUMS, pool_sums, task_sums
from .bootstrap import Estimate, paired
from .labels import LABEL_TYPES, prompt_labels
from .linemap import DIGITS, LINE_TOP
from .patterns import PATTERNS
from .record import Record
from .report import (LEGEND, groups, header_lines, method_order, pass_at_1, pattern_counts, sort_records, table2,
                     table3, with_code)
from .atomic import write_atomic
from .runfile import Run
from .tasks import DATA, get_task

ASSETS = DATA / "html"
#: The K values the task view switches between (those the records carry).
VIEW_KS = (5, 10, 20)


def _table(caption: str, headers: Sequence[str], rows: Sequence[Sequence[Any]], cls: str) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return (f'<table class="{cls}"><caption>{html.escape(caption)}</caption>'
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def estimates(records: Sequence[Record], k: int) -> list[tuple[str, str, dict[str, Estimate]]]:
    """Per model x method (tasks with code, as in Table 2): pooled F1 and alpha at K with a 95% CI from
    a bootstrap over its tasks (:mod:`bootstrap`, the gates' resampling)."""
    out = []
    for (model, method), group in groups(with_code(records), "model", "method").items():
        rows = np.array([task_sums(r.task_units(), k) for r in group], dtype=float).reshape(len(group), len(SUMS))
        out.append((model, method, {m: paired(lambda s, m=m: pool_sums(s)[m], rows) for m in ("f1", "alpha")}))
    return out


def chart(k: int, rows: Sequence[tuple[str, str, dict[str, Estimate]]]) -> str:
    """F1 (0..1) and alpha (up to 1, down to the lowest value below 0, zero marked) per model x method,
    each bar with its 95% bootstrap interval."""
    label_w, panel_w, row_h, top = 190, 240, 18, 22
    alphas = [v for *_, e in rows for v in (e["alpha"].a, e["alpha"].low) if v is not None]
    lo, hi = min([0.0, *alphas]), 1.0
    height = top + row_h * len(rows) + 6
    axes = {"f1": lambda v: label_w + v * panel_w,
            "alpha": lambda v: label_w + panel_w + 80 + (v - lo) / (hi - lo) * panel_w}
    parts = [f'<svg class="chart" role="img" viewBox="0 0 {label_w + 2 * panel_w + 140} {height}" '
             f'width="{label_w + 2 * panel_w + 140}" height="{height}" aria-label="F1 and alpha at K={k}">',
             f'<text x="{label_w}" y="14" class="axis">F1@{k} (0 to 100%)</text>',
             f'<text x="{axes["alpha"](lo):.1f}" y="14" class="axis">alpha@{k} ({lo:.2f} to {hi:.2f})</text>',
             f'<line class="zero" x1="{axes["alpha"](0):.1f}" x2="{axes["alpha"](0):.1f}" y1="{top - 4}" y2="{height}"/>']
    for i, (model, method, est) in enumerate(rows):
        y, name = top + i * row_h, f"{model} {method}"
        parts.append(f'<text x="{label_w - 6}" y="{y + 12}" class="name">{html.escape(name)}</text>')
        for metric, x in axes.items():
            e = est[metric]
            if e.a is None:
                parts.append(f'<text x="{x(0) + 4:.1f}" y="{y + 12}" class="value">undefined</text>')
                continue
            fmt = (lambda v: f"{v:.1%}") if metric == "f1" else (lambda v: f"{v:.2f}")
            ci = (f"95% CI {fmt(e.low)} to {fmt(e.high)}, bootstrap over {e.tasks} tasks" if e.low is not None
                  else "95% CI undefined")
            left, right = sorted((x(0), x(e.a)))
            title = f"{name}: {'F1' if metric == 'f1' else 'alpha'}@{k} = {fmt(e.a)} ({ci})"
            parts.append(f'<rect class="{metric}" x="{left:.1f}" y="{y + 2}" width="{right - left:.1f}" '
                         f'height="{row_h - 5}"><title>{html.escape(title)}</title></rect>')
            end = x(e.a)
            if e.low is not None and e.high is not None:
                a, b, mid = x(e.low), x(e.high), y + row_h / 2 - 1
                parts.append(f'<path class="ci" d="M{a:.1f} {mid - 4}v8M{a:.1f} {mid}H{b:.1f}M{b:.1f} {mid - 4}v8"/>')
                end = max(end, b)
            parts.append(f'<text x="{max(end, x(0)) + 4:.1f}" y="{y + 12}" class="value">{fmt(e.a)}</text>')
    return "".join(parts) + "</svg>"


def _code_map(r: Record, a: int, b: int, units: dict[tuple[int, int], int]) -> list[list[Any]]:
    """``r``'s code-to-words map for the page: per line ``[start, end, [unit, weight, unit, weight, ...]]``,
    a unit as an index into its generation's table of description-relative spans (``units``, extended
    here: the CODING methods of one model share their token units), a weight 1..100 relative to the
    map's highest score. Units outside the description (none today) are left out."""
    top = max((v for *_, kept in r.line_units for _, v in kept), default=0.0)
    out = []
    for start, end, kept in r.line_units:
        flat: list[int] = []
        for u, v in kept:
            s, e, _ = r.units[u]
            if e > a and s < b:
                flat += [units.setdefault((max(s, a) - a, min(e, b) - a), len(units)), max(1, round(100 * v / top))]
        out.append([start, end, flat])
    return out


def page_data(records: Sequence[Record], ks: Sequence[int]) -> dict[str, Any]:
    """The JSON the page's script renders: tasks once, generations per model x task, spans per method.

    Spans are relative to the task's description (the scored region), the only text shown; a code
    map's lines are in the completion's characters.
    """
    recs = sort_records(records)
    models = list(dict.fromkeys(r.model for r in recs))
    methods = sorted({r.method for r in recs}, key=method_order)
    tasks: dict[str, Any] = {}
    gens: dict[tuple[str, str], dict[str, Any]] = {}
    units: dict[tuple[str, str], dict[tuple[int, int], int]] = {}  # per generation: span -> index
    for r in recs:
        if r.task_id not in tasks:
            task = get_task(r.task_id)
            a, b = task.description
            tasks[r.task_id] = {"benchmark": r.benchmark, "text": task.description_text,
                                "labels": [[lab.start - a, lab.end - a, lab.type, lab.word]
                                           for lab in prompt_labels(task) if lab.start >= a and lab.end <= b]}
        a, b = get_task(r.task_id).description
        gen = gens.setdefault((r.model, r.task_id), {
            "model": r.model, "task": r.task_id, "completion": r.completion, "no_code": r.no_code,
            "outcome": r.execution.get("outcome", "pass" if r.passed else "fail"), "passed": r.passed,
            "tail": r.execution.get("stderr_tail", ""), "methods": {}})
        gen["methods"][r.method] = {
            "top": {k: [[max(s, a) - a, min(e, b) - a] for s, e in spans if e > a and s < b]
                    for k, spans in r.top_k.items() if int(k) in VIEW_KS or int(k) in ks},
            "scores": {k: {"f1": m.get("f1"), "alpha": m.get("alpha")} for k, m in r.metrics.items()},
            "patterns": r.error_patterns}
        if r.line_units:
            gen["methods"][r.method]["lines"] = _code_map(r, a, b, units.setdefault((r.model, r.task_id), {}))
    for key, gen in gens.items():
        gen["units"] = [list(span) for span in units.get(key, {})]
    view_ks = (sorted({int(k) for g in gens.values() for m in g["methods"].values() for k in m["top"]})
               or list(VIEW_KS))  # records without top-K (no code anywhere) still get a switch
    return {"models": models, "methods": methods, "types": list(LABEL_TYPES), "patterns": list(PATTERNS),
            "ks": view_ks, "k": 10 if 10 in view_ks else view_ks[0], "error_k": recs[0].error_k,
            "line_top": LINE_TOP, "digits": DIGITS,
            "tasks": tasks, "gens": list(gens.values())}


def _blob(data: dict[str, Any]) -> str:
    """JSON safe inside <script>, the same values once parsed: ``<``, ``>`` and ``&`` as JSON escapes, as
    ``</script>`` would end the element and ``<!--<script>`` make the parser swallow the rest of the page."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_html(run: Run) -> str:
    """The whole page of ``run``."""
    recs = sort_records(run.records)
    css = (ASSETS / "report.css").read_text(encoding="utf-8")
    js = (ASSETS / "report.js").read_text(encoding="utf-8")
    if not recs:
        lines = ["pytest-attnalign: no item produced a result", *run.info.get("lines", [])]  # why: its incomplete line
        body = "".join(f"<p>{html.escape(line)}</p>" for line in lines)
        return f'<!DOCTYPE html><html lang="en"><meta charset="utf-8"><title>attnalign</title><body>{body}</body></html>'
    header = [*header_lines(recs, run.versions), *run.info.get("lines", [])]
    scored = with_code(recs)
    parts = ["<h2>Pass@1</h2>", _table("Pass@1 per model x benchmark", ["model", "benchmark", "passed", "Pass@1"],
                                       pass_at_1(recs), "pass1")]
    for k in run.ks:
        h2, r2 = table2(scored, k)
        parts.append(f"<h2>Table 2, K={k}</h2>")
        parts.append(_table(f"Table 2 (K={k}): alignment per model x method, pooled over tasks", h2, r2,
                            f"table2 k{k}"))
        parts.append(chart(k, estimates(recs, k)))
    h3, r3 = table3(scored, run.ks)
    parts += ["<h2>Table 3</h2>", _table("Table 3: per method, mean over models", h3, r3, "table3")]
    hp, rp = pattern_counts(scored)
    parts += [f"<h2>Error patterns (K={recs[0].error_k})</h2>",
              _table("Failing items per error pattern (automatic; see README)", hp, rp, "patterns")]
    summary = "".join(parts)
    title = html.escape(f"attnalign: {', '.join(dict.fromkeys(r.model for r in recs))}")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{css}</style></head><body>"
            f'<header><h1>Attention alignment with human programmers</h1><pre id="provenance">'
            f'{html.escape(chr(10).join(header))}</pre></header>'
            f'<section id="summary">{summary}<details class="legend-text"><summary>How to read</summary>'
            f"<pre>{html.escape(LEGEND)}</pre></details></section>"
            f'<section id="tasks"><h2>Tasks: where each method looked</h2><div id="controls"></div>'
            f'<div id="legend"></div><p id="count"></p><div id="list"></div></section>'
            f'<script type="application/json" id="attn-data">{_blob(page_data(recs, run.ks))}</script>'
            f"<script>{js}</script></body></html>")


def write_html(path: Path, run: Run) -> Path:
    """Atomically, like the run file: a half-written page never looks complete; returns ``path``."""
    write_atomic(path, lambda fh: fh.write(render_html(run)))
    return path
