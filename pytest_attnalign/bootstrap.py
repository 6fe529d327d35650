"""Paired bootstrap over tasks: how much a pooled figure, or a difference of two, moves by chance.

Twenty tasks of F1 move by several points by chance, so a gate reports a 95% confidence interval
with every measured difference. Both sides are resampled with the SAME task ids (paired), and each
resample re-pools its tasks' :func:`alignment.task_sums` rows with :func:`alignment.pool_sums`, the
library's pooling, so the resample that draws every task once gives the measured value. The seed is
fixed: a gate line is reproducible line for line.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

RESAMPLES = 1000
SEED = 0
LEVEL = 0.95

#: Pooled figure from summed per-task rows (last axis), vectorised over leading axes; NaN if undefined.
Metric = Callable[[np.ndarray], np.ndarray]


def resample_counts(n_tasks: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """``(resamples, n_tasks)``: how often each task is drawn in each resample (with replacement)."""
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, n_tasks, size=(resamples, n_tasks))
    flat = drawn + np.arange(resamples)[:, None] * n_tasks
    return np.bincount(flat.ravel(), minlength=resamples * n_tasks).reshape(resamples, n_tasks).astype(float)


@dataclass(frozen=True)
class Estimate:
    """``a`` (and ``b``) pooled over the tasks, ``diff = a - b`` (``a`` alone without ``b``) and its CI.

    None where the figure is undefined (e.g. alpha with one class only); the interval leaves out
    resamples where it is undefined.
    """

    a: float | None
    b: float | None
    diff: float | None
    low: float | None
    high: float | None
    tasks: int
    resamples: int


def _value(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def paired(metric: Metric, a: np.ndarray, b: np.ndarray | None = None,
           resamples: int = RESAMPLES, seed: int = SEED) -> Estimate:
    """Bootstrap ``metric(a) - metric(b)`` over tasks; ``a`` and ``b`` are ``(tasks, columns)`` rows of
    the same task ids in the same order (``b`` None: ``metric(a)`` alone)."""
    a = np.asarray(a, dtype=float)
    n = a.shape[0]
    if n == 0:
        return Estimate(None, None, None, None, None, 0, resamples)
    counts = resample_counts(n, resamples, seed)
    va = float(metric(a.sum(axis=0)))
    dist = metric(counts @ a)
    vb = None
    if b is not None:
        b = np.asarray(b, dtype=float)
        if b.shape[0] != n:
            raise ValueError(f"paired rows differ in length: {n} and {b.shape[0]}")
        vb = float(metric(b.sum(axis=0)))
        dist = dist - metric(counts @ b)
    diff = va - vb if vb is not None else va
    defined = dist[~np.isnan(dist)]
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(defined, [tail, 100 - tail]) if defined.size else (math.nan, math.nan)
    return Estimate(_value(va), None if vb is None else _value(vb), _value(diff), _value(low), _value(high),
                    n, resamples)
