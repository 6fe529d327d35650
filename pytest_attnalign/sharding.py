"""``--attn-shard I/N``: a deterministic 1/N of the study's items, for job arrays (SLURM, ...).

Items are shared out by model x task, so all methods of one generation run in the same shard (one
generation, cached, serves them). Shards are balanced by an estimate of each model x task's cost,
the task's generation budget: greedy longest-first into the least loaded of N bins. Every process
that collects the same items computes the same assignment, so xdist workers of one shard agree.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from .errors import AttnalignError


def parse_shard(text: str) -> tuple[int, int]:
    """``I/N`` with 0 <= I < N (``$SLURM_ARRAY_TASK_ID/N`` of ``--array=0-(N-1)``)."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m:
        raise AttnalignError(f"{text!r} is not I/N (e.g. 0/16: the first of 16 shards)")
    index, count = int(m[1]), int(m[2])
    if count < 1 or index >= count:
        raise AttnalignError(f"shard {text!r} does not exist: I/N needs N >= 1 and I from 0 to N-1 "
                             f"(e.g. --attn-shard $SLURM_ARRAY_TASK_ID/{max(count, 1)} with --array=0-{max(count, 1) - 1})")
    return index, count


def task_cost(task_id: str, max_new_tokens: int | None) -> int:
    """A model x task's estimated cost: its new-token budget (fixed by --attn-max-new-tokens, else
    growing with the canonical solution as the study's rule does)."""
    if max_new_tokens is not None:
        return max_new_tokens
    from .tasks import get_task

    return len(get_task(task_id).canonical_solution)


def assign(groups: Iterable[tuple[str, int]], count: int) -> dict[str, int]:
    """Shard index of each ``(group, cost)``: longest first into the least loaded shard.

    Ties are broken by the groups' order and the shards' index, so the result depends only on the input.
    """
    order = sorted(enumerate(dict(groups).items()), key=lambda x: (-x[1][1], x[0]))
    loads = [0] * count
    shard_of: dict[str, int] = {}
    for _, (group, cost) in order:
        target = min(range(count), key=lambda i: (loads[i], i))
        shard_of[group] = target
        loads[target] += cost
    return shard_of


def in_shard(items: list[tuple[str, str]], shard: tuple[int, int], max_new_tokens: int | None) -> list[bool]:
    """Whether each ``(model, task_id)`` item belongs to ``shard`` (index, count)."""
    shard_of = assign(((f"{m}@{t}", task_cost(t, max_new_tokens)) for m, t in items), shard[1])
    return [shard_of[f"{m}@{t}"] == shard[0] for m, t in items]
