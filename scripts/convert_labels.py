#!/usr/bin/env python3
"""Convert the Kou et al. (FSE 2024) attention labels into the package's ``data/labels/*.jsonl``.

Only this script reads ``../shared/data/attention-labels``; the package reads the committed output,
so a fresh clone works without the source folder. Every quirk handled here is described in
``../shared/data/README.md``. Output: one JSON object per task, sorted by task number::

    {"labels": [{"end": 17, "start": 10, "type": "data_type", "word": "numbers"}, ...],
     "task_id": "HumanEval/0", "text_sha256": "<sha256 of task.label_text>"}

Spans are half-open character offsets into ``task.label_text`` (HumanEval: the packaged prompt;
MBPP: the ``text`` field), in CSV order, duplicates kept (METRICS.md counts them in recall).
Optional provenance keys: ``snapped_from`` ([start, end] before snapping to a whole word) and
``source_type`` (the raw type where it was not one of the four, i.e. ``Type2``).

Usage: ``python scripts/convert_labels.py [--source DIR] [--out DIR] [--check]``.
"""

from __future__ import annotations

import argparse
import csv
import difflib
import hashlib
import json
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a plain script from a clone that is not pip-installed
    sys.path.insert(0, str(ROOT))

from pytest_attnalign.benchmarks import get_benchmark  # noqa: E402
from pytest_attnalign.errors import AttnalignError  # noqa: E402
from pytest_attnalign.tasks import Task  # noqa: E402

DEFAULT_SOURCE = ROOT / ".." / "shared" / "data" / "attention-labels"
DEFAULT_OUT = ROOT / "pytest_attnalign" / "data" / "labels"  # package data: ships in the wheel
FIX = "python scripts/convert_labels.py"

#: Raw CSV types (case-folded) onto the project's four types. ``type2`` (two MBPP rows, task 602:
#: "the" and "given") is not one of the study's four: we keep both spans, since a programmer marked
#: those words and recall counts them, and type them ``property`` because every other labelled
#: "the" (10) and "given" (3) in MBPP is a Property. ``source_type`` keeps the raw value.
TYPE_MAP = {
    "datatype": "data_type",
    "operator": "operator",
    "conditional": "conditional",
    "property": "property",
    "type2": "property",
}
TYPE2_DECISION = (
    "Type2 decision: the 2 Type2 rows (Mbpp/602 'the', 'given') are kept as spans and typed\n"
    "  'property' (every other labelled 'the' and 'given' in MBPP is Property); the raw type\n"
    "  stays in the file as source_type='Type2'"
)
_SPAN = re.compile(r"^\(\s*(\d+)\s*,\s*(\d+)\s*\)$")
#: The columns each source CSV must have (others, such as MBPP's unnamed row number, are ignored).
COLUMNS = {
    "humaneval.csv": ("prompt_id", "prompt", "word", "label type", "index range"),
    "mbpp.csv": ("prompt_id", "Prompt", "Word", "Label Type", "index"),
}


def _span(raw: str, where: str) -> tuple[int, int]:
    m = _SPAN.match(raw.strip())
    if m is None:
        raise AttnalignError(f"{where}: index {raw!r} is not '(start, end)'")
    return int(m.group(1)), int(m.group(2))


def _type(raw: str, where: str) -> str:
    key = raw.strip().lower()
    if key not in TYPE_MAP:
        raise AttnalignError(f"{where}: unknown label type {raw!r}: add it to TYPE_MAP in scripts/convert_labels.py")
    return TYPE_MAP[key]


def _is_word_char(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def inside_other_word(text: str, start: int, end: int) -> bool:
    """True when ``text[start:end]`` is glued to a neighbouring word ("in" inside "find").

    Only an edge that is itself a word character can be glued: ``pairs.`` ending before a letter
    is fine, ``in`` ending before ``d`` is not.
    """
    word = text[start:end]
    glued_left = start > 0 and _is_word_char(text[start - 1]) and _is_word_char(word[0])
    glued_right = end < len(text) and _is_word_char(text[end]) and _is_word_char(word[-1])
    return glued_left or glued_right


def snap_to_whole_word(text: str, start: int, end: int) -> tuple[int, int] | None:
    """The first whole-word occurrence of ``text[start:end]`` after ``start``, or None."""
    word = text[start:end]
    pos = text.find(word, start + 1)
    while pos != -1:
        if not inside_other_word(text, pos, pos + len(word)):
            return pos, pos + len(word)
        pos = text.find(word, pos + 1)
    return None


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _read_csv(path: Path) -> list[dict[str, str]]:
    """The records of one source CSV, after checking its header has :data:`COLUMNS` and every record
    as many cells as the header."""
    if not path.exists():
        raise AttnalignError(f"labels source {path} missing: pass --source DIR holding humaneval.csv and mbpp.csv")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        missing = [c for c in COLUMNS[path.name] if c not in header]
        if missing:
            names = f"column{'s' * (len(missing) > 1)} {', '.join(map(repr, missing))}"
            raise AttnalignError(f"{path} lacks the {names} (its header: {', '.join(map(repr, header)) or 'none'}): "
                                 "restore the header, or pass --source DIR holding the study's CSVs")
        rows = list(reader)
    for i, row in enumerate(rows, start=1):
        if None in row or None in row.values():  # DictReader's marks for extra and missing cells
            raise AttnalignError(f"{path.name} record {i}: its cells do not match the header's {len(header)} columns")
    return rows


def _task(benchmark: str, raw_id: str, where: str) -> Task:
    """The task a record's ``prompt_id`` (its number, ``601``) names, or a one-line error naming the record."""
    bench = get_benchmark(benchmark)
    num = raw_id.strip()
    task = bench.load().get(f"{bench.prefix}/{int(num)}") if num.isascii() and num.isdigit() else None
    if task is None:
        raise AttnalignError(f"{where}: prompt_id {raw_id!r} is not a task of {bench.name} (ids {bench.ids})")
    return task


def _aligned(csv_text: str, label_text: str) -> list[tuple[int, int, int]]:
    """Equal blocks (csv_start, label_start, size) between the CSV prompt and the packaged prompt."""
    matcher = difflib.SequenceMatcher(None, csv_text, label_text, autojunk=False)
    return [(a, b, n) for a, b, n in matcher.get_matching_blocks() if n]


def convert_humaneval(source: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Map CSV offsets (into a copy of the prompt without empty lines) onto the packaged prompt."""
    tasks: dict[str, dict[str, Any]] = {}
    blocks: dict[tuple[str, str], list[tuple[int, int, int]]] = {}
    stats: Counter[str] = Counter()
    for i, row in enumerate(_read_csv(source / "humaneval.csv"), start=1):
        where = f"humaneval.csv record {i}"
        task = _task("humaneval", row["prompt_id"], where)
        text = task.label_text
        entry = tasks.setdefault(task.task_id, {"task": task, "labels": []})
        key = (task.task_id, row["prompt"])
        if key not in blocks:
            blocks[key] = _aligned(row["prompt"], text)
        s, e = _span(row["index range"], where)
        hit = [(s - a + b, e - a + b) for a, b, n in blocks[key] if a <= s and e <= a + n]
        if not hit or s >= e:
            raise AttnalignError(f"{where}: span ({s}, {e}) of {task.task_id} does not map onto the packaged prompt")
        start, end = hit[0]
        word = row["word"]
        if not word:  # the literal word "None" was lost when the CSV was written
            word = text[start:end]
            stats["word_from_span"] += 1
        stats["inside_word"] += inside_other_word(text, start, end)
        entry["labels"].append({"start": start, "end": end, "word": word, "type": _type(row["label type"], where)})
    return _finish("humaneval", tasks, stats)


def convert_mbpp(source: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """End-inclusive -> half-open, blank separators dropped, mid-word spans snapped to whole words."""
    tasks: dict[str, dict[str, Any]] = {}
    stats: Counter[str] = Counter()
    for i, row in enumerate(_read_csv(source / "mbpp.csv"), start=1):
        where = f"mbpp.csv record {i}"
        task = _task("mbpp", row["prompt_id"], where)
        text = task.label_text
        if row["Prompt"] != text:
            raise AttnalignError(f"{where}: Prompt differs from the MBPP text of {task.task_id}")
        entry = tasks.setdefault(task.task_id, {"task": task, "labels": []})
        fields = (row["Word"], row["Label Type"], row["index"])
        if not any(fields):
            stats["blank_rows_dropped"] += 1
            continue
        if not all(fields):
            raise AttnalignError(f"{where}: partly blank label row {fields!r}")
        s, e_incl = _span(row["index"], where)
        start, end = s, e_incl + 1
        word = row["Word"]
        if text[start:end] != word:
            raise AttnalignError(f"{where}: {text[start:end]!r} at {row['index']} is not the word {word!r}")
        label: dict[str, Any] = {"start": start, "end": end, "word": word, "type": _type(row["Label Type"], where)}
        if inside_other_word(text, start, end):
            snapped = snap_to_whole_word(text, start, end)
            if snapped is None:
                raise AttnalignError(f"{where}: {word!r} lies inside another word and never occurs as a whole word")
            label["snapped_from"] = [start, end]
            label["start"], label["end"] = snapped
            stats["snapped"] += 1
        if row["Label Type"].strip().lower() == "type2":
            label["source_type"] = row["Label Type"].strip()
            stats["type2"] += 1
        entry["labels"].append(label)
    return _finish("mbpp", tasks, stats)


def _finish(
    benchmark: str, tasks: dict[str, dict[str, Any]], stats: Counter[str]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Records sorted by task number, and the summary every count in the issue is checked against."""
    records = []
    for tid in sorted(tasks, key=lambda t: int(t.split("/")[1])):
        text = tasks[tid]["task"].label_text
        labels = tasks[tid]["labels"]
        stats["mismatched"] += sum(text[lab["start"] : lab["end"]] != lab["word"] for lab in labels)
        records.append({"task_id": tid, "text_sha256": _sha(text), "labels": labels})
    all_labels = [lab for r in records for lab in r["labels"]]
    summary: dict[str, Any] = {
        "spans": len(all_labels),
        "tasks": len(records),
        "tasks_labelled": sum(bool(r["labels"]) for r in records),
        "tasks_unlabelled": [r["task_id"] for r in records if not r["labels"]],
        "mismatched": stats["mismatched"],
        "snapped": stats["snapped"],
        "padded": sum(lab["word"] != lab["word"].strip() for lab in all_labels),
        "types": dict(sorted(Counter(lab["type"] for lab in all_labels).items())),
        **{k: stats[k] for k in ("word_from_span", "inside_word", "blank_rows_dropped", "type2") if k in stats},
    }
    if benchmark == "mbpp":
        summary["type2_decision"] = TYPE2_DECISION
    return records, summary


def render_jsonl(records: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in records)


def render_readme(summaries: dict[str, dict[str, Any]]) -> str:
    """A committed note saying where the labels came from and which choices were made."""
    he, mb = summaries["humaneval"], summaries["mbpp"]
    return f"""# Programmer attention labels

Generated by `{FIX}` from `../shared/data/attention-labels/*.csv`: the human-labelled important
words of Kou, Chen, Wang, Ma, Zhang, "Do Large Language Models Pay Similar Attention Like Human
Programmers When Generating Code?", Proc. ACM Softw. Eng. 1(FSE), 2024 (arXiv 2306.01220).
Do not edit by hand: re-run the converter (`--check` verifies these files byte for byte).

Format: JSON Lines, one task per line sorted by task number:
`{{"labels": [{{"end", "start", "type", "word"}}, ...], "task_id", "text_sha256"}}`; a label may also
carry converter provenance: `snapped_from` (below; `--attn-labels=study` rebuilds the study's MBPP
spans from it) and `source_type`, which the loader ignores.
Spans are half-open offsets into `task.label_text` (HumanEval: the packaged prompt; MBPP: `text`),
in CSV order, duplicates kept. `type` is one of data_type, operator, conditional, property.
`text_sha256` is the sha256 of the UTF-8 `label_text`; the loader refuses labels whose text changed.
A task with `"labels": []` was labelled with none (Mbpp/274); a missing task is unknown.

- HumanEval: {he['spans']} spans on {he['tasks']} tasks. CSV offsets (into the prompt without its
  empty lines) mapped onto the packaged prompt by aligning the texts; {he['word_from_span']} empty `word`
  cells (the literal `None`) taken from the span. {he['padded']} spans keep the spaces or indentation
  the labeller's selection took in (`'    factorial'`): kept as labelled, so a word unit earns only
  its share of such a span's recall.
- MBPP: {mb['spans']} spans on {mb['tasks_labelled']} tasks ({', '.join(mb['tasks_unlabelled'])} has none).
  End-inclusive offsets made half-open; {mb['blank_rows_dropped']} blank separator rows dropped.
  {mb['snapped']} spans that lay inside another word ("in" inside "find": the study placed every
  word at its first occurrence) were moved to the word's first whole-word occurrence after it;
  they carry `snapped_from` (the original half-open span).
- Type2: {TYPE2_DECISION.split(": ", 1)[1]}.
"""


def convert(source: Path) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """File name -> content for the output folder, and the per-benchmark summary."""
    he_records, he = convert_humaneval(source)
    mb_records, mb = convert_mbpp(source)
    summaries = {"humaneval": he, "mbpp": mb}
    files = {
        "humaneval.jsonl": render_jsonl(he_records),
        "mbpp.jsonl": render_jsonl(mb_records),
        "README.md": render_readme(summaries),
    }
    return files, summaries


def format_summary(summaries: dict[str, dict[str, Any]]) -> str:
    lines = []
    for bench, s in summaries.items():
        unl = f" ({', '.join(s['tasks_unlabelled'])} has none)" if s["tasks_unlabelled"] else ""
        lines.append(f"{bench}: {s['spans']} spans on {s['tasks_labelled']} tasks{unl}; {s['tasks']} task lines")
        lines.append(f"  spans whose text != word: {s['mismatched']}")
        lines.append(f"  snapped from inside another word to a whole word: {s['snapped']}")
        for key in ("inside_word", "word_from_span", "blank_rows_dropped", "type2"):
            if key in s:
                lines.append(f"  {key}: {s[key]}")
        lines.append("  types: " + ", ".join(f"{k} {v}" for k, v in s["types"].items()))
        if "type2_decision" in s:
            lines.append(f"  {s['type2_decision']}")
    return "\n".join(lines)


def _on_disk(path: Path) -> bytes | None:
    return path.read_bytes() if path.exists() else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="folder with humaneval.csv, mbpp.csv")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: pytest_attnalign/data/labels/)")
    parser.add_argument("--check", action="store_true", help="exit 1 if the files in --out differ")
    args = parser.parse_args(argv)
    try:
        files, summaries = convert(args.source)
    except AttnalignError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_summary(summaries))
    if any(s["mismatched"] for s in summaries.values()):
        print("error: some spans do not cover their word", file=sys.stderr)
        return 2
    if args.check:
        stale = [n for n, text in files.items() if _on_disk(args.out / n) != text.encode("utf-8")]
        if stale:
            print(f"check: {', '.join(stale)} in {args.out} differ: re-run {FIX}", file=sys.stderr)
            return 1
        print(f"check: {args.out} is up to date")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (args.out / name).write_bytes(text.encode("utf-8"))
    print(f"wrote {', '.join(files)} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
