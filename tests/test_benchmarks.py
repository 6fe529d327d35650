"""A third benchmark is one Benchmark description plus its data: ids, loading, labels and the stop
rule follow from the description, with no test of a benchmark's name anywhere else."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_attnalign import benchmarks, labels
from pytest_attnalign.benchmarks import Benchmark
from pytest_attnalign.errors import AttnalignError
from pytest_attnalign.generation import body_span, completion_from_text
from pytest_attnalign.tasks import Task, canonical_task_id, get_task, load_tasks

TEXT = "Return the largest even number."
PROMPT = f'"""\n{TEXT}\n"""\n'


def _toy_tasks() -> dict[str, Task]:
    start = PROMPT.index(TEXT)
    return {f"Toy/{n}": Task(benchmark="toy", task_id=f"Toy/{n}", prompt=PROMPT, description=(start, start + len(TEXT)),
                             entry_point="largest", canonical_solution="def largest(xs):\n    return max(xs)\n",
                             test="assert largest([2, 4]) == 4\n", label_text=TEXT) for n in (1, 2)}


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Benchmark]:
    """A third benchmark: its description and its labels file, nothing else."""
    bench = Benchmark(name="toy", prefix="Toy", ids="Toy/1..2", load=_toy_tasks, labels="toy.jsonl",
                      continues_function=False, study_labels_off_by_one=True)
    monkeypatch.setattr(benchmarks, "BENCHMARKS", (*benchmarks.BENCHMARKS, bench))
    sha = hashlib.sha256(TEXT.encode("utf-8")).hexdigest()
    even = {"start": TEXT.index("even"), "end": TEXT.index("even") + 4, "word": "even", "type": "property"}
    (tmp_path / "toy.jsonl").write_text("".join(
        json.dumps({"task_id": f"Toy/{n}", "text_sha256": sha, "labels": [even] if n == 1 else []}) + "\n"
        for n in (1, 2)), encoding="utf-8")
    monkeypatch.setattr(labels, "LABELS_DIR", tmp_path)
    labels._read.cache_clear()
    yield bench
    labels._read.cache_clear()


def test_a_third_benchmark_is_one_description_plus_its_data(toy: Benchmark) -> None:
    assert canonical_task_id("TOY/01") == "Toy/1"
    assert [t.task_id for t in load_tasks("toy")] == ["Toy/1", "Toy/2"]
    assert [t.task_id for t in load_tasks("all")][-2:] == ["Toy/1", "Toy/2"]  # after the shipped ones
    task = get_task("toy/1")
    # labels: its own file, shifted into the prompt, and the study's off-by-one mode applies to it
    (span,) = labels.human_spans(task)
    assert task.prompt[slice(*span)] == "even"
    assert labels.human_spans(task, "study") == [(span[0], span[1] - 1)]
    # the stop rule: a completion writes the whole function (continues_function=False)
    raw = "def largest(xs):\n    return max(xs)\nprint(1)\n"
    assert completion_from_text(task, "completion", raw) == "def largest(xs):\n    return max(xs)\n"
    assert raw[slice(*body_span(task, "completion", raw))] == "    return max(xs)"
    with pytest.raises(AttnalignError, match=r"no task 'Toy/3': ids are HumanEval/0\.\.163, Mbpp/1\.\.974, Toy/1\.\.2"):
        get_task("Toy/3")


def test_unknown_benchmarks_and_ids_name_the_valid_ones() -> None:
    with pytest.raises(AttnalignError, match=r"unknown benchmark 'apps': use humaneval, mbpp or all"):
        load_tasks("apps")
    with pytest.raises(AttnalignError, match=r"malformed task id 'Apps/1': use HumanEval/0\.\.163 or Mbpp/1\.\.974"):
        get_task("Apps/1")
    for digits in ("\u00b2", "\u0661"):  # str.isdigit() holds for both; int() fails on one and reads the other as 1
        with pytest.raises(AttnalignError, match=f"malformed task id 'HumanEval/{digits}'"):
            get_task(f"HumanEval/{digits}")
    with pytest.raises(AttnalignError, match=r"unknown benchmark 'apps': use humaneval or mbpp"):
        labels.load_labels("apps")
