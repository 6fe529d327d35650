"""Error patterns on hand-made cases: which labelled keywords a failing item's top-K missed."""

from __future__ import annotations

from pytest_attnalign.labels import Label
from pytest_attnalign.patterns import MISMAPPED, error_patterns, missed_labels

#: "if x > 0 return list" with one keyword of each type (character offsets into that text)
TEXT = "if x > 0 return list"
LABELS = [Label(0, 2, "if", "conditional"), Label(3, 4, "x", "property"),
          Label(5, 6, ">", "operator"), Label(16, 20, "list", "data_type")]
REGION = (0, len(TEXT))


def test_a_passing_item_has_no_pattern() -> None:
    assert error_patterns(True, LABELS, [], REGION) == []


def test_every_missed_type_in_the_studys_order() -> None:
    assert error_patterns(False, LABELS, [], REGION) == [
        "missed conditional", "missed property", "missed operator", "missed data type"]
    assert error_patterns(False, LABELS, [(0, 2), (16, 20)], REGION) == ["missed property", "missed operator"]


def test_overlap_is_strict_and_partial_overlap_covers() -> None:
    top = [(1, 3), (6, 16)]  # overlaps "if" by one character; only touches ">" (ends at 6) and "list" (starts at 16)
    assert [lab.word for lab in missed_labels(LABELS, top, REGION)] == ["x", ">", "list"]


def test_all_covered_yet_failing_is_mismapped() -> None:
    assert error_patterns(False, LABELS, [(0, 20)], REGION) == [MISMAPPED]


def test_labels_outside_the_region_are_ignored() -> None:
    assert error_patterns(False, LABELS, [(0, 8)], (0, 15)) == [MISMAPPED]  # "list" lies past the region
    assert error_patterns(False, LABELS, [(0, 8)], (0, 18)) == ["missed data type"]  # it straddles the edge


def test_no_labelled_keyword_no_pattern() -> None:
    """Mbpp/274 has no labels: "every keyword covered" held vacuously and called it mis-mapped."""
    assert error_patterns(False, [], [(0, 2)], REGION) == []
    assert error_patterns(False, LABELS, [(0, 2)], (8, 15)) == []  # none inside the scored region
