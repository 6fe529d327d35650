"""``attnalign score FILE``: score attributions computed elsewhere, given as JSON Lines.

One task a line::

    {"id": "t1", "text": "...", "units": [["tok", 0.3], ...], "human": [[0, 5], ...]}
    {"id": "t2", "task_id": "HumanEval/12", "units": [[0, 4, 0.9], ...]}

``units`` are ``[token, score]`` pairs or ``[start, end, score]`` triples (METRICS.md s1). A
``task_id`` line takes its text (``Task.label_text``) and human spans from the shipped programmer
labels, and scores only its units' parts inside the task's scored region (METRICS.md s6: HumanEval's
imports and examples are not scored; MBPP's region is the whole text). Every line is validated
before anything is scored, so a bad file never yields numbers.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tabulate import tabulate

from .alignment import KScore, Span, TaskUnits, in_region, score_tasks
from .errors import AttnalignError

KEYS = {"id", "text", "human", "task_id", "units"}


def _shipped_spans(task_id: str, labels: str = "corrected") -> tuple[str, str, list[Span], Span]:
    """Canonical id, label text, programmer spans (``labels`` mode) and scored region of a benchmark
    task, all in ``label_text``'s coordinates."""
    from .tasks import get_task

    task = get_task(task_id)
    try:
        from .labels import human_spans
    except ImportError as exc:
        if exc.name != f"{__package__}.labels":
            raise
        raise AttnalignError("programmer labels are not available (pytest_attnalign.labels is missing)") from None
    shift = task.label_offset  # human_spans are in prompt coordinates, the file's in label_text's
    lo, hi = task.description
    return (task.task_id, task.label_text, [(a - shift, b - shift) for a, b in human_spans(task, labels)],
            (lo - shift, hi - shift))


def _list(obj: dict[str, Any], key: str) -> list[Any]:
    value = obj[key]
    if not isinstance(value, list):
        raise AttnalignError(f'"{key}" must be a list, got {type(value).__name__}')
    return value


def parse_line(line: str, labels: str = "corrected") -> TaskUnits:
    """One validated task from one JSON line; raises AttnalignError saying what is wrong."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise AttnalignError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    except (RecursionError, ValueError) as exc:  # nested deeper than the parser goes; an integer of 4,300+ digits
        raise AttnalignError(f"not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise AttnalignError(f"a line must be a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - KEYS)
    if unknown:
        raise AttnalignError(f"unknown key(s) {', '.join(map(repr, unknown))}: allowed are {', '.join(sorted(KEYS))}")
    if "units" not in obj:
        raise AttnalignError('missing key "units"')
    if "task_id" in obj:
        if "text" in obj or "human" in obj:
            raise AttnalignError('give either "task_id" or "text" and "human", not both')
        if not isinstance(obj["task_id"], str):
            raise AttnalignError('"task_id" must be a string such as "HumanEval/12"')
        default_id, text, human, region = _shipped_spans(obj["task_id"], labels)
    else:
        missing = [k for k in ("text", "human") if k not in obj]
        if missing:
            raise AttnalignError(f'missing key(s) {", ".join(map(repr, missing))} (or give "task_id")')
        if not isinstance(obj["text"], str):
            raise AttnalignError('"text" must be a string')
        default_id, text, human = "", obj["text"], _list(obj, "human")
        region = (0, len(text))
    task_id = obj.get("id", default_id)
    if not isinstance(task_id, str):
        raise AttnalignError('"id" must be a string')
    units = _list(obj, "units")
    for u in [*units, *human]:
        if not isinstance(u, (list, tuple)):
            raise AttnalignError(f"a unit or span must be a list, got {u!r}")
    task = TaskUnits.from_units(text, units, human, task_id=task_id)
    return dataclasses.replace(task, located=tuple(in_region(task.located, region)))


def read_score_file(path: str | Path, labels: str = "corrected") -> list[TaskUnits]:
    """All tasks of the file (``-``: standard input), or an AttnalignError ``FILE:LINE: what is wrong``
    for the first bad line."""
    name = "<stdin>" if str(path) == "-" else str(path)
    try:
        if str(path) == "-":
            return _read_tasks(sys.stdin, name, labels)
        if Path(path).is_dir():
            raise AttnalignError(f"{name} is a directory: give a JSON Lines file (or - for standard input)")
        with open(path, encoding="utf-8") as fh:
            return _read_tasks(fh, name, labels)
    except OSError as exc:
        raise AttnalignError(f"cannot read {name}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise AttnalignError(f"{name}: not UTF-8 text ({exc.reason})") from None


def _read_tasks(lines: Iterable[str], name: str, labels: str) -> list[TaskUnits]:
    tasks: list[TaskUnits] = []
    first_line: dict[str, int] = {}
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            task = parse_line(line, labels)
        except AttnalignError as exc:
            raise AttnalignError(f"{name}:{no}: {exc}") from None
        if task.task_id and task.task_id in first_line:
            raise AttnalignError(
                f"{name}:{no}: duplicate id {task.task_id!r} (first on line {first_line[task.task_id]}):"
                " each task must be scored once"
            )
        first_line[task.task_id] = no
        tasks.append(task)
    if not tasks:
        raise AttnalignError(f"{name}: no tasks: the file is empty (expected one JSON object a line)")
    return tasks


def _pct(x: float | None) -> str:
    return "undefined" if x is None else f"{x:.1%}"


def format_table(n_tasks: int, scores: dict[int, KScore]) -> str:
    """Rows K; P/R/F1 as the study printed them, alpha to two places."""
    rows = [
        [
            k,
            _pct(s.precision),
            _pct(s.recall),
            _pct(s.f1),
            "undefined" if s.alpha is None else f"{s.alpha:.2f}",
            s.dropped_units,
        ]
        for k, s in scores.items()
    ]
    headers = ["K", "P", "R", "F1", "alpha", "dropped units"]
    table = tabulate(rows, headers=headers, disable_numparse=True, colalign=("right",) * len(headers))
    return f"{n_tasks} task{'' if n_tasks == 1 else 's'}\n{table}"


def format_json(n_tasks: int, scores: dict[int, KScore]) -> str:
    """One JSON object: fractions, null for undefined."""
    return json.dumps({"n_tasks": n_tasks, "k": {str(k): s.as_dict() for k, s in scores.items()}})


def score_file_command(path: str, ks: Sequence[int], as_json: bool, labels: str = "corrected") -> int:
    """The ``score`` sub-command: validate the whole file, then print the figures for each K."""
    bad = [k for k in ks if k < 1]
    if bad:
        raise AttnalignError(f"--k values must be positive, got {bad[0]}")
    tasks = read_score_file(path, labels)
    scores = score_tasks(tasks, ks)
    print(format_json(len(tasks), scores) if as_json else format_table(len(tasks), scores))
    return 0
