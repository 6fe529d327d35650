"""One description per benchmark: everything the other modules need to know about a benchmark.

Options, task ids, the item-id pattern, the stop rule, the labels and the item modules all read
these descriptions, so a third benchmark is one more :class:`Benchmark` in :data:`BENCHMARKS` plus
its data: a loader that builds :class:`~.tasks.Task` records (setting each task's scored region)
and a labels file in ``data/labels``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .errors import AttnalignError
from .tasks import Task, humaneval_tasks, mbpp_tasks


@dataclass(frozen=True)
class Benchmark:
    """What differs between benchmarks; each field replaces a test of the benchmark's name."""

    name: str  # --attn-benchmark value, Task.benchmark, and the item module test_<name>.py
    prefix: str  # task ids are PREFIX/N
    ids: str  # the valid ids, for messages
    #: task id -> Task in task order; the loader applies the scored-region rule (METRICS.md s6)
    load: Callable[[], Mapping[str, Task]]
    labels: str  # the programmers' labels: a file in the package's data/labels
    #: the completion-mode prompt ends inside the function's ``def``: the model writes its body
    #: (else it writes the whole function)
    continues_function: bool
    #: the study scored its end-inclusive label spans as half-open (``--attn-labels=study``)
    study_labels_off_by_one: bool

    def owns(self, task_id: str) -> bool:
        """Whether a canonical task id is one of this benchmark's."""
        return task_id.startswith(f"{self.prefix}/")


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark(name="humaneval", prefix="HumanEval", ids="HumanEval/0..163", load=humaneval_tasks,
              labels="humaneval.jsonl", continues_function=True, study_labels_off_by_one=False),
    Benchmark(name="mbpp", prefix="Mbpp", ids="Mbpp/1..974", load=mbpp_tasks,
              labels="mbpp.jsonl", continues_function=False, study_labels_off_by_one=True),
)
NAMES: tuple[str, ...] = tuple(b.name for b in BENCHMARKS)


def choices(*extra: str) -> str:
    """``humaneval, mbpp or all``: the accepted names for a message or a help text."""
    words = [*NAMES, *extra]
    return ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else words[0]


def get_benchmark(name: str) -> Benchmark:
    """The benchmark called ``name``, or a one-line error listing the names."""
    for b in BENCHMARKS:
        if b.name == name:
            return b
    raise AttnalignError(f"unknown benchmark {name!r}: use {choices()}")


def benchmark_of(task_id: str) -> Benchmark | None:
    """The benchmark whose prefix ``task_id`` carries, in any letter case (``MBPP/3``)."""
    prefix = task_id.partition("/")[0].lower()
    return next((b for b in BENCHMARKS if b.prefix.lower() == prefix), None)
