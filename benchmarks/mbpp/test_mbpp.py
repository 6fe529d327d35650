"""MBPP items of the study: pytest-attnalign parametrizes one per model x method x task.

Data: pytest_attnalign/data/mbpp.jsonl.gz, shipped in the package (Austin et al. 2021, CC-BY-4.0).
Run from the repository root with `--attn-*` options.
"""

from pytest_attnalign.plugin import check_item

BENCHMARK = "mbpp"


def test_alignment(attn_result):
    check_item(attn_result)
