"""The summary's tables from item records: what is pooled and what is counted apart."""

from __future__ import annotations

import pytest
from synthetic import make_record

from pytest_attnalign.labels import human_spans
from pytest_attnalign.record import Record
from pytest_attnalign.report import pooled, render, with_code
from pytest_attnalign.tasks import get_task


def test_a_no_code_item_is_counted_apart_and_left_out_of_the_pooled_scores() -> None:
    task = get_task("HumanEval/0")
    hit = [(a, b, 1.0) for a, b in human_spans(task)]
    scored = make_record("HumanEval/0", hit)
    empty = make_record("HumanEval/2", [], no_code=True)
    both = [scored, empty]
    assert with_code(both) == [scored]
    alone = pooled([scored], [5])[5]
    assert pooled(both, [5])[5].recall < alone.recall       # ...which is why it is left out
    text = render(both, [5])
    assert "no code: 1 tasks (m 1); left out of the alignment tables, failures in Pass@1" in text
    assert "0/2" in text  # Pass@1 still counts it
    assert f"{alone.recall:.1%}" in text and f"{pooled(both, [5])[5].recall:.1%}" not in text
    assert "labels: corrected" in text


@pytest.mark.parametrize("mode", ["corrected", "study"])
def test_header_names_the_label_mode(mode: str) -> None:
    r = make_record("Mbpp/5", [(4, 9, 1.0)], labels=mode)
    assert f"labels: {mode} (" in render([r], [5])


def test_header_says_how_the_restated_copy_was_treated() -> None:
    def attn(method: str, mode: str) -> Record:
        return make_record("HumanEval/0", [(4, 9, 1.0)], method=method,
                           attribution={"seconds": 0.5, "settings": {"heads": "sum", "restated_copy": mode}, "cached": False})

    text = render([attn("coding_all", "ignore"), attn("saliency_coding", "ignore")], [5])
    assert "restated copy (a chat reply's copy of the description): ignore (2 methods)" in text
    assert "method settings" not in text  # one line for the ten methods, not one entry each
    mixed = render([attn("saliency_coding", "credit"), attn("coding_all", "ignore"), attn("reading_first", "credit")], [5])
    assert "copy of the description): credit: reading_first, saliency_coding; ignore: coding_all" in mixed
