"""Records without a model: real tasks and labels, units scored by a rule the test chooses."""

from __future__ import annotations

import random
import re
from typing import Any

from pytest_attnalign.alignment import DEFAULT_KS, TaskUnits, score_tasks, top_k
from pytest_attnalign.labels import human_spans
from pytest_attnalign.linemap import LineUnits, compact
from pytest_attnalign.record import Record
from pytest_attnalign.tasks import get_task


def make_record(task_id: str, units: list[tuple[int, int, float]], method: str = "shap", model: str = "m",
                passed: bool = False, no_code: bool = False, **changes: Any) -> Record:
    """A complete record of ``task_id`` whose metrics follow from ``units`` (start, end, score)."""
    task = get_task(task_id)
    human = human_spans(task, changes.get("labels", "corrected"))
    ks = sorted(set(DEFAULT_KS) | {10})
    fields: dict[str, Any] = dict(
        model=model, model_identity={"model": model, "source": "s", "revision": "r", "dtype": "float32"},
        method=method, task_id=task.task_id, benchmark=task.benchmark, prompt_format="chat", max_new_tokens=9,
        budget_rule="prompt + canonical solution + 20", stop_rule="eos", device="cpu", completion="    return 1\n",
        no_code=no_code, generated_tokens=3, explained_tokens=["return", " 1"], labels="corrected",
        generation_cached=False, usage=None,
        execution={"outcome": "pass" if passed else "fail", "seconds": 0.1, "returncode": 0, "stderr_tail": "",
                   "sandbox": {}, "limits": {"timeout_s": 10.0}},
        passed=passed, units=[tuple(u) for u in units], human=list(human),
        top_k={str(k): [list(t) for t in top_k(units, k)] for k in ks},
        metrics={str(k): s.as_dict() for k, s in
                 score_tasks([TaskUnits(task.prompt, tuple(units), tuple(human))], ks).items()},
        error_k=10, error_patterns=[] if passed else ["attended but mis-mapped"], missed_keywords=[],
        attribution={"seconds": 0.5, "settings": {"evaluations": 50} if method == "shap" else {}, "cached": False},
    )
    fields.update(changes)
    return Record(**fields)


def word_units(task_id: str, skill: float, seed: int) -> list[tuple[int, int, float]]:
    """The words of the task's description, scored ``skill`` higher when labelled, plus noise in [0, 1)."""
    task = get_task(task_id)
    a, b = task.description
    human = human_spans(task)
    rng = random.Random(f"{task_id}/{skill}/{seed}")
    units = []
    for m in re.finditer(r"\w+", task.prompt[a:b]):
        s, e = a + m.start(), a + m.end()
        labelled = any(e > x and s < y for x, y in human)
        units.append((s, e, skill * labelled + rng.random()))
    return units


def study_records(n_tasks: int, methods: dict[str, float], model: str = "m", seed: int = 0,
                  passed_every: int = 2) -> list[Record]:
    """Records of the first ``n_tasks`` HumanEval tasks for each method name -> skill."""
    return [make_record(f"HumanEval/{i}", word_units(f"HumanEval/{i}", skill, seed), method=method, model=model,
                        passed=i % passed_every == 0)
            for i in range(n_tasks) for method, skill in methods.items()]


def line_map(n_units: int, completion: str, seed: str) -> list[LineUnits]:
    """A code-to-words map as a record keeps it (:func:`linemap.compact`): every non-blank line of
    ``completion`` scores each of ``n_units`` units at random, at the scale of attention sums."""
    rng = random.Random(seed)
    lines, start = [], 0
    for line in completion.split("\n"):
        if line.strip():
            lines.append((start, start + len(line), [rng.expovariate(10.0) for _ in range(n_units)]))
        start += len(line) + 1
    return compact(lines)
