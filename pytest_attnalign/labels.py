"""Programmer attention labels (Kou et al., FSE 2024), read from the package's ``data/labels/*.jsonl``.

``scripts/convert_labels.py`` writes those files from the study's CSVs; this module needs only the
committed copies. Spans are half-open offsets into ``task.label_text``; :func:`prompt_labels` moves
them into ``task.prompt``, where attention is measured. Every file line carries the sha256 of the
text it was labelled on, so a changed benchmark text fails loudly instead of shifting spans.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

from .benchmarks import get_benchmark
from .errors import AttnalignError
from .tasks import DATA, Task, canonical_task_id

#: Folder of the shipped label files, a path or importlib.resources Traversable (module-level so
#: tests can point it elsewhere).
LABELS_DIR: Any = DATA / "labels"
#: The study's four label types, normalised.
LABEL_TYPES = ("data_type", "operator", "conditional", "property")
#: How labelled spans are scored: ``corrected`` (default) or as the ``study`` scored them.
LABEL_MODES = ("corrected", "study")

FIX = "regenerate it with python scripts/convert_labels.py"
_REQUIRED = {"start", "end", "word", "type"}
_OPTIONAL = {"snapped_from", "source_type"}  # converter provenance, not needed at run time
_SHA = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Label:
    """One human-marked word: ``text[start:end] == word``."""

    start: int
    end: int
    word: str
    type: str
    #: the converter moved this span to a whole word; the study scored it at this original span
    snapped_from: tuple[int, int] | None = None


def _bad(path: Any, lineno: int, why: str) -> AttnalignError:
    return AttnalignError(f"malformed labels file {path} line {lineno}: {why}; {FIX}")


def _parse_label(raw: object, path: Any, lineno: int) -> Label:
    if not isinstance(raw, dict) or not _REQUIRED <= raw.keys() or raw.keys() - _REQUIRED - _OPTIONAL:
        raise _bad(path, lineno, f"label {raw!r} needs exactly the keys start, end, word, type")
    start, end, word, kind = raw["start"], raw["end"], raw["word"], raw["type"]
    if not (type(start) is int and type(end) is int and 0 <= start < end):
        raise _bad(path, lineno, f"span ({start!r}, {end!r}) is not a non-empty half-open range")
    if not isinstance(word, str) or len(word) != end - start:
        raise _bad(path, lineno, f"word {word!r} does not fit span ({start}, {end})")
    if kind not in LABEL_TYPES:
        raise _bad(path, lineno, f"type {kind!r} is not one of {', '.join(LABEL_TYPES)}")
    snapped = raw.get("snapped_from")
    if snapped is not None and not (isinstance(snapped, list) and len(snapped) == 2
                                    and all(type(v) is int for v in snapped) and 0 <= snapped[0] < snapped[1]):
        raise _bad(path, lineno, f"snapped_from {snapped!r} is not a [start, end] span")
    return Label(start, end, word, kind, tuple(snapped) if snapped else None)


def _spelled(tid: object, tasks: Any) -> str:
    """``; write Mbpp/1`` where ``tid`` is a task's id spelled another way (``Mbpp/01``, ``MBPP/1``)."""
    try:
        canon = canonical_task_id(tid) if isinstance(tid, str) else None
    except AttnalignError:
        return ""
    return f"; write {canon}" if canon in tasks else ""


@lru_cache(maxsize=None)
def _read(benchmark: str) -> dict[str, tuple[str, tuple[Label, ...]]]:
    """task_id -> (sha256 of the labelled text, labels); cached and immutable."""
    bench = get_benchmark(benchmark)
    path = LABELS_DIR / bench.labels
    if not path.is_file():
        raise AttnalignError(f"labels file {path} missing: {FIX}")
    tasks = bench.load()  # a line of another id would be ignored, and its task reported as unlabelled
    table: dict[str, tuple[str, tuple[Label, ...]]] = {}
    with path.open("rb") as fh:  # bytes: a line that is not UTF-8 is reported with its number
        for lineno, raw_line in enumerate(fh, start=1):
            try:
                rec = json.loads(raw_line.decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise _bad(path, lineno, f"not UTF-8 text ({exc.reason})") from None
            except json.JSONDecodeError as exc:
                raise _bad(path, lineno, f"not JSON ({exc.msg})") from None
            if not isinstance(rec, dict) or set(rec) != {"task_id", "text_sha256", "labels"}:
                raise _bad(path, lineno, "a line needs exactly the keys task_id, text_sha256, labels")
            tid, sha, labels = rec["task_id"], rec["text_sha256"], rec["labels"]
            if not isinstance(tid, str) or tid not in tasks:  # the exact id: not Mbpp/01, Mbpp/9999 nor Mbpp/abc
                ids = f"ids {bench.ids}{_spelled(tid, tasks)}"
                raise _bad(path, lineno, f"task_id {tid!r} is not a task of {bench.name} ({ids})")
            if tid in table:
                raise _bad(path, lineno, f"task_id {tid!r} appears twice")
            if not isinstance(sha, str) or not _SHA.match(sha) or not isinstance(labels, list):
                raise _bad(path, lineno, "text_sha256 must be 64 hex digits and labels a list")
            table[tid] = (sha, tuple(_parse_label(raw, path, lineno) for raw in labels))
    return table


def load_labels(benchmark: str) -> dict[str, list[Label]]:
    """All labels of one benchmark by task id; a task with ``[]`` was labelled with none.

    The file is parsed once (cached); each call returns fresh lists so callers cannot corrupt it.
    Spans are not checked against task texts here: :func:`labels_for` does that per task.
    """
    return {tid: list(labels) for tid, (_, labels) in _read(benchmark).items()}


def labels_for(task: Task) -> list[Label]:
    """The task's labels relative to ``task.label_text``, after checking the text is unchanged."""
    table = _read(task.benchmark)
    if task.task_id not in table:
        raise AttnalignError(f"no labels for {task.task_id} in {LABELS_DIR / get_benchmark(task.benchmark).labels}: {FIX}")
    sha, labels = table[task.task_id]
    text = task.label_text
    if hashlib.sha256(text.encode("utf-8")).hexdigest() != sha:
        raise AttnalignError(f"labels of {task.task_id} were made for a different text (sha256 mismatch): {FIX}")
    for lab in labels:
        if text[lab.start : lab.end] != lab.word:
            raise AttnalignError(f"label {lab.word!r} of {task.task_id} does not cover its word: {FIX}")
    return list(labels)


def prompt_labels(task: Task) -> list[Label]:
    """The task's labels in ``task.prompt`` coordinates (HumanEval: same text; MBPP: shifted)."""
    offset = task.label_offset
    return [replace(lab, start=lab.start + offset, end=lab.end + offset) for lab in labels_for(task)]


def human_spans(task: Task, mode: str = "corrected") -> list[tuple[int, int]]:
    """The labelled spans that the metrics score, in ``task.prompt`` coordinates.

    ``corrected``: the labels as converted (MBPP's end-inclusive offsets made half-open, spans that
    lay inside another word moved to the whole word). ``study``: MBPP as the study's pipeline scored
    it, to set a table beside the published one: each span at its original place, read end-exclusive
    though it was end-inclusive, so every label loses its last character (a one-letter word becomes
    an empty range, which still counts in recall's denominator). HumanEval is the same in both modes.
    """
    if mode not in LABEL_MODES:
        raise AttnalignError(f"unknown label mode {mode!r}: use {' or '.join(LABEL_MODES)}")
    labels = prompt_labels(task)
    if mode == "corrected" or not get_benchmark(task.benchmark).study_labels_off_by_one:
        return [(lab.start, lab.end) for lab in labels]
    offset = task.label_offset
    out = []
    for lab in labels:
        a, b = (lab.snapped_from[0] + offset, lab.snapped_from[1] + offset) if lab.snapped_from else (lab.start, lab.end)
        out.append((a, b - 1))
    return out
