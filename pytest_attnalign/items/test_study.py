"""The study's items: pytest-attnalign parametrizes one per model x method x task of every benchmark
that ``--attn-benchmark`` selects (a module without ``BENCHMARK``, unlike the repository's
``benchmarks/NAME/test_NAME.py``, which import this function and name their benchmark).
"""

from pytest_attnalign.plugin import check_item


def test_alignment(attn_result):
    check_item(attn_result)
