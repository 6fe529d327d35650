"""Metric code against hand-computed values (shared/METRICS.md is the contract).

The shared two-task fixture ``A`` + ``B`` is worked through by hand below; every expected number
in this file comes from that arithmetic, not from running the code.
"""

from __future__ import annotations

from pathlib import Path

import krippendorff
import numpy as np
import pytest

from pytest_attnalign.alignment import (
    TaskUnits,
    alpha_closed_form,
    cohen_kappa,
    locate_units,
    nominal_alpha,
    overlap,
    score_k,
    score_tasks,
    strict_overlap,
    top_k,
)
from pytest_attnalign.errors import AttnalignError

# Task A: triples in a 40-character text. Human spans H_A = [0,4) [10,20) [10,20) [30,30):
# a duplicate and a zero-length span.
#   unit  range    score  h (strictly overlaps some H_A span?)
#   u1    [0,2)    0.9    1  ([0,4))
#   u2    [2,6)    0.5    1  ([0,4): 6>0 and 2<4)
#   u3    [8,12)   0.5    1  ([10,20))
#   u4    [12,16)  0.7    1  ([10,20))
#   u5    [25,30)  0.1    0  ([30,30): 30>30 is false)
#   u6    [30,30)  0.8    0  (zero-length unit; [30,30): 30>30 false; [10,20): 30<20 false)
#   u7    [20,25)  0.5    0  (touches [10,20) at 20: 20<20 false)
# Stable order by score: u1 .9, u6 .8, u4 .7, u2 .5, u3 .5, u7 .5, u5 .1 (u2 < u3 < u7 keep prompt order).
A = TaskUnits.from_units(
    "x" * 40,
    [(0, 2, 0.9), (2, 6, 0.5), (8, 12, 0.5), (12, 16, 0.7), (25, 30, 0.1), (30, 30, 0.8), (20, 25, 0.5)],
    [(0, 4), (10, 20), (10, 20), (30, 30)],
    task_id="A",
)
# Task B: string tokens. "sort the list in place": s0..t3, the 5..8, list 9..13, in 14..16, place 17..22.
# "lists" is not found -> dropped (1). H_B = [0,4) "sort", [9,13) "list".
#   sort [0,4) .2 h1 | the [5,8) .1 h0 | list [9,13) .6 h1 | in [14,16) .3 h0 | place [17,22) .6 h0
# Stable order: list .6, place .6 (tie: list is earlier), in .3, sort .2, the .1.
B = TaskUnits.from_units(
    "sort the list in place",
    [("sort", 0.2), ("the", 0.1), ("lists", 0.9), ("list", 0.6), ("in", 0.3), ("place", 0.6)],
    [(0, 4), (9, 13)],
    task_id="B",
)


# ---- s1: locating units ------------------------------------------------------------------------


def test_locate_string_tokens_with_cursor() -> None:
    assert B.located == ((0, 4, 0.2), (5, 8, 0.1), (9, 13, 0.6), (14, 16, 0.3), (17, 22, 0.6))
    assert B.dropped == 1


def test_not_found_token_is_dropped_and_leaves_cursor() -> None:
    # "a a": "a" -> [0,1), cursor 1; "zzz" not found: dropped, cursor stays 1; "a" -> find from 1 = 2.
    # (Had the cursor moved by len("zzz") to 4, the second "a" would be dropped too.)
    assert locate_units("a a", [("a", 1.0), ("zzz", 2.0), ("a", 3.0)]) == ([(0, 1, 1.0), (2, 3, 3.0)], 1)
    # A token that only occurs before the cursor is dropped too ("def" at 0, cursor already 7).
    assert locate_units("def add(x)", [("def", 1), ("add(", 1), ("def", 1), ("x", 1)]) == (
        [(0, 3, 1.0), (4, 8, 1.0), (8, 9, 1.0)],
        1,
    )


def test_find_is_exact_and_case_sensitive() -> None:
    assert locate_units("Sort it", [("sort", 1.0), ("it", 0.5)]) == ([(5, 7, 0.5)], 1)


def test_triples_pass_through_and_are_validated() -> None:
    assert locate_units("abcdef", [(0, 6, 1), (3, 3, 0.5)]) == ([(0, 6, 1.0), (3, 3, 0.5)], 0)
    for bad in [(-1, 2, 0.1), (4, 2, 0.1), (0, 7, 0.1), (0.0, 2, 0.1), (True, 2, 0.1)]:
        with pytest.raises(AttnalignError):
            locate_units("abcdef", [bad])


@pytest.mark.parametrize("score", [float("nan"), float("inf"), "0.5", None, True,
                                   pytest.param(10**400, id="int-past-float-range")])
def test_non_finite_or_non_numeric_score_rejected(score: object) -> None:
    with pytest.raises(AttnalignError, match="finite number"):
        locate_units("abc", [("a", score)])


def test_mixing_pairs_and_triples_rejected() -> None:
    with pytest.raises(AttnalignError, match="mix"):
        locate_units("abc", [("a", 1.0), (1, 2, 1.0)])


# ---- s2: top-K ---------------------------------------------------------------------------------


def test_top_k_ties_keep_prompt_order() -> None:
    located = [(0, 1, 0.5), (2, 3, 0.5), (4, 5, 1.0), (6, 7, 1.0)]
    # Stable by score desc: [4,5) 1.0, [6,7) 1.0, [0,1) .5, [2,3) .5 -> the earlier unit wins each tie.
    assert top_k(located, 1) == [(4, 5)]
    assert top_k(located, 3) == [(4, 5), (6, 7), (0, 1)]
    assert top_k(A.located, 4) == [(0, 2), (30, 30), (12, 16), (2, 6)]  # u2 beats u3, u7 (all .5)
    assert top_k(B.located, 1) == [(9, 13)]  # "list" beats "place" (both .6)


def test_reversed_ascending_argsort_picks_the_later_unit() -> None:
    # A common idiom, argsort ascending then reverse, breaks ties toward the LATER unit.
    s = np.array([0.5, 0.5, 1.0, 1.0])
    assert list(np.argsort(s, kind="stable")[::-1][:3]) == [3, 2, 1]  # wrong: contract says 2, 3, 0
    located = [(i, i + 1, float(x)) for i, x in enumerate(s)]
    assert top_k(located, 3) == [(2, 3), (3, 4), (0, 1)]


def test_numpy_default_argsort_may_differ() -> None:
    # numpy's default kind ("quicksort": introsort, or a SIMD sort on AVX-512 CPUs) is not stable;
    # on an AVX-512 machine argsort(-[.5, .5, 1, 1]) gives [3, 2, 1, 0]. Whether it differs here
    # depends on the CPU and the numpy build, so this only documents it.
    s = np.array([0.5, 0.5, 1.0, 1.0])
    order = list(np.argsort(-s))
    if order == [2, 3, 0, 1]:
        pytest.skip("numpy's default sort happens to be stable on this machine for this input")
    assert order != [i for i, _ in sorted(enumerate(s), key=lambda t: t[1], reverse=True)]


def test_fewer_units_than_k_selects_all() -> None:
    assert top_k(B.located, 20) == [(9, 13), (17, 22), (14, 16), (0, 4), (5, 8)]
    s = score_k([B], 20)
    # T_B = all 5 units. P_num = sort 4/4 + list 4/4 = 2 -> P = 2/5; R_num = 1 + 1 = 2 -> R = 2/2 = 1.
    assert s.n_selected == 5
    assert s.precision == pytest.approx(2 / 5)
    assert s.recall == pytest.approx(1.0)


# ---- overlap -----------------------------------------------------------------------------------


def test_strict_overlap_touching_ranges_do_not_overlap() -> None:
    assert not strict_overlap((0, 5), (5, 9))
    assert not strict_overlap((5, 9), (0, 5))
    assert strict_overlap((0, 5), (4, 9))
    # e > a and s < b, literally: a zero-length range strictly inside counts, one at an edge does not.
    assert strict_overlap((0, 5), (3, 3))
    assert not strict_overlap((0, 5), (5, 5))
    assert not strict_overlap((3, 3), (3, 3))
    assert overlap((0, 5), (3, 9)) == 2
    assert overlap((0, 5), (5, 9)) == 0


# ---- s4: San Martino P/R/F1, pooled ------------------------------------------------------------


def test_pooled_prf_hand_computed_k4() -> None:
    # K=4. T_A = u1 [0,2), u6 [30,30), u4 [12,16), u2 [2,6).   set(H_A) = {[0,4), [10,20), [30,30)}
    #   P_num_A: [0,2): ov([0,4))=2 -> 2/2 = 1;  [12,16): ov([10,20))=4 -> 4/4 = 1;
    #            [2,6): ov([0,4))=2 -> 2/4 = 0.5;  [30,30): |m| = 0, excluded      -> 2.5 over len 4
    #   R_num_A: [0,4): (2 + 2)/4 = 1;  [10,20): 4/10 = 0.4;  [30,30): |h| = 0, excluded
    #            -> 1.4 over len(H_A) = 4 (the duplicate [10,20) counts twice in the LIST, once in the set)
    # T_B = list [9,13), place [17,22), in [14,16), sort [0,4).
    #   P_num_B = list 4/4 + sort 4/4 = 2 over 4;  R_num_B = sort 1 + list 1 = 2 over 2
    # Pooled: P = (2.5 + 2)/(4 + 4) = 9/16;  R = (1.4 + 2)/(4 + 2) = 17/30
    #   F1 = 2 (9/16)(17/30) / (9/16 + 17/30) = (153/240) / (271/240) = 153/271
    s = score_tasks([A, B], (4,))[4]
    assert (s.n_tasks, s.n_units, s.dropped_units, s.n_selected, s.n_human) == (2, 12, 1, 8, 6)
    assert s.precision == pytest.approx(9 / 16, abs=1e-12)
    assert s.recall == pytest.approx(17 / 30, abs=1e-12)
    assert s.f1 == pytest.approx(153 / 271, abs=1e-12)


def test_pooled_prf_hand_computed_k20() -> None:
    # K=20 > units: all selected. A: P_num = 1 + .5 + ([8,12): 2/4 =) .5 + 1 + 0 + 0 = 3 over 7;
    #   R_num = [0,4): 4/4 = 1, [10,20): (2 + 4)/10 = .6 -> 1.6 over 4.  B: 2 over 5; 2 over 2.
    # P = 5/12, R = 3.6/6 = 3/5, F1 = 2 (5/12)(3/5) / (5/12 + 3/5) = (1/2)/(61/60) = 30/61.
    s = score_tasks([A, B], (20,))[20]
    assert s.n_selected == 12
    assert s.precision == pytest.approx(5 / 12, abs=1e-12)
    assert s.recall == pytest.approx(3 / 5, abs=1e-12)
    assert s.f1 == pytest.approx(30 / 61, abs=1e-12)


def test_zero_length_spans() -> None:
    text = "abcdefghij"
    # Human [2,2) (empty) and [0,4). Units [2,2) .9 (empty, selected first) and [0,2) .5.
    # K=2: P_num: [2,2) excluded (|m|=0); [0,2) vs [0,4) = 2/2 = 1 -> P = 1/2 (len T = 2).
    #      R_num: [2,2) excluded (|h|=0); [0,4): ov([0,2)) = 2 -> 2/4 -> R = 0.5/2 = 1/4 (len H = 2).
    task = TaskUnits.from_units(text, [(2, 2, 0.9), (0, 2, 0.5)], [(2, 2), (0, 4)])
    s = score_k([task], 2)
    assert s.precision == pytest.approx(1 / 2)
    assert s.recall == pytest.approx(1 / 4)
    assert s.f1 == pytest.approx(2 * (1 / 2) * (1 / 4) / (3 / 4))  # = 1/3


def test_duplicate_human_spans_count_twice_in_recall_denominator_once_in_numerator() -> None:
    # H = [0,4) twice; unit [0,4) selected. R_num = set -> 4/4 = 1; denominator len(H) = 2 -> R = 1/2.
    # P_num = sum over set(H) -> 1; len T = 1 -> P = 1 (not 2).
    task = TaskUnits.from_units("abcdefgh", [(0, 4, 1.0)], [(0, 4), (0, 4)])
    s = score_k([task], 5)
    assert (s.precision, s.recall) == (pytest.approx(1.0), pytest.approx(0.5))
    assert s.keyword_coverage == pytest.approx(1.0)  # both copies are covered: 2/2


def test_one_unit_earns_precision_from_several_overlapping_human_spans() -> None:
    # H = [0,8) and [0,4) (not merged); unit [0,4): P_num = 4/4 + 4/4 = 2, over len T = 1 -> P = 2.
    task = TaskUnits.from_units("abcdefgh", [(0, 4, 1.0)], [(0, 8), (0, 4)])
    assert score_k([task], 1).precision == pytest.approx(2.0)


def test_f1_zero_when_p_and_r_zero_and_undefined_ratios_are_none() -> None:
    # Unit [0,2) and human [4,6): no overlap -> P = 0/1, R = 0/1, F1 = 0 (P + R == 0).
    s = score_k([TaskUnits.from_units("abcdef", [(0, 2, 1.0)], [(4, 6)])], 5)
    assert (s.precision, s.recall, s.f1) == (0.0, 0.0, 0.0)
    # No units at all: nothing selected -> P undefined (None); R = 0/1 = 0; F1 undefined.
    s = score_k([TaskUnits.from_units("abcdef", [], [(4, 6)])], 5)
    assert (s.precision, s.recall, s.f1, s.alpha, s.cohen_kappa) == (None, 0.0, None, None, None)
    # No human spans: R and keyword coverage undefined.
    s = score_k([TaskUnits.from_units("abcdef", [(0, 2, 1.0)], [])], 5)
    assert (s.precision, s.recall, s.keyword_coverage) == (0.0, None, None)


def test_pooled_differs_from_macro() -> None:
    # K=4, per task: P_A = 2.5/4 = .625, P_B = 2/4 = .5 -> macro P = .5625 (= pooled: equal len T).
    # R_A = 1.4/4 = .35, R_B = 2/2 = 1 -> macro R = .675, but pooled R = 17/30 = .5667.
    # F1_A = 2(.625)(.35)/.975 = 35/78, F1_B = 2(.5)(1)/1.5 = 2/3 = 52/78 -> macro F1 = 87/156 = 29/52.
    s = score_k([A, B], 4)
    assert s.macro_precision == pytest.approx(0.5625, abs=1e-12)
    assert s.macro_recall == pytest.approx(0.675, abs=1e-12)
    assert s.macro_f1 == pytest.approx(29 / 52, abs=1e-12)
    assert s.recall == pytest.approx(17 / 30, abs=1e-12)
    assert s.f1 != pytest.approx(s.macro_f1, abs=1e-3)  # 153/271 = .5646 vs 29/52 = .5577


# ---- s3: alpha, and the extra views ------------------------------------------------------------

# K=4 vectors over the 12 located units, A then B (see the tables at the top):
#   h = A: 1 1 1 1 0 0 0 | B: 1 0 1 0 0  (sum 6)
#   m = A: 1 1 0 1 0 1 0 | B: 1 0 1 1 1  (u1 u2 u4 u6 selected; B: sort list in place; sum 8)
H4 = [1, 1, 1, 1, 0, 0, 0, 1, 0, 1, 0, 0]
M4 = [1, 1, 0, 1, 0, 1, 0, 1, 0, 1, 1, 1]


def test_alpha_closed_form_and_library_agree_on_pooled_case() -> None:
    # n = 24, n1 = 6 + 8 = 14, n0 = 10, D = 4 (u3, u6, in, place)
    # alpha = 1 - 23 * 4 / (10 * 14) = 1 - 92/140 = 48/140 = 12/35
    assert alpha_closed_form(H4, M4) == pytest.approx(12 / 35, abs=1e-12)
    lib = krippendorff.alpha(reliability_data=[H4, M4], level_of_measurement="nominal")
    assert abs(lib - 12 / 35) < 1e-9
    s = score_k([A, B], 4)
    assert abs(s.alpha - 12 / 35) < 1e-9
    # K=20: m all 1, D = 6 (h = 0), n1 = 18, n0 = 6 -> 1 - 23*6/108 = -30/108 = -5/18
    assert abs(score_k([A, B], 20).alpha - (-5 / 18)) < 1e-9


def test_alpha_agrees_with_library_on_random_vectors() -> None:
    rng = np.random.default_rng(7)
    for _ in range(20):
        h, m = rng.integers(0, 2, 50).tolist(), rng.integers(0, 2, 50).tolist()
        lib = krippendorff.alpha(reliability_data=[h, m], level_of_measurement="nominal")
        assert abs(alpha_closed_form(h, m) - lib) < 1e-9


def test_alpha_undefined_is_none() -> None:
    # All units in the top K and all human: h = m = all 1 -> n0 = 0 -> undefined.
    task = TaskUnits.from_units("ab cd", [("ab", 1.0), ("cd", 0.5)], [(0, 5)])
    s = score_k([task], 5)
    assert s.alpha is None and s.cohen_kappa is None
    assert s.precision == pytest.approx(1.0)  # both units inside the one span: (2/2 + 2/2) / len T = 2/2
    # No units at all, and only empty vectors.
    assert score_k([TaskUnits.from_units("ab", [], [])], 5).alpha is None
    assert nominal_alpha([], []) is None
    assert nominal_alpha([0, 0], [0, 0]) is None  # n1 = 0
    assert score_k([], 5).alpha is None


def test_cohen_kappa_hand_case() -> None:
    # N = 12, agreements 8 -> po = 2/3; sh = 6, sm = 8: pe = (6*8 + 6*4)/144 = 1/2
    # kappa = (2/3 - 1/2)/(1 - 1/2) = 1/3
    assert cohen_kappa(H4, M4) == pytest.approx(1 / 3, abs=1e-12)
    assert score_k([A, B], 4).cohen_kappa == pytest.approx(1 / 3, abs=1e-12)
    # K=20: m constant 1 -> pe = po = 1/2 -> kappa 0; h = m constant -> undefined.
    assert score_k([A, B], 20).cohen_kappa == 0.0
    assert cohen_kappa([1, 1], [1, 1]) is None
    assert cohen_kappa([], []) is None


def test_keyword_coverage_hand_case() -> None:
    # K=4, human LIST: A: [0,4) by [0,2) yes; [10,20) by [12,16) yes, twice; [30,30) by nothing
    #   ([30,30) unit: 30>30 false) -> 3 of 4.  B: sort yes, list yes -> 2 of 2.  Pooled 5/6.
    assert score_k([A, B], 4).keyword_coverage == pytest.approx(5 / 6, abs=1e-12)
    # K=1 (A: u1 [0,2); B: list [9,13)): A covers [0,4) only -> 1 of 4; B list -> 1 of 2. Pooled 2/6.
    assert score_k([A, B], 1).keyword_coverage == pytest.approx(2 / 6, abs=1e-12)


# ---- API shape ---------------------------------------------------------------------------------


def test_score_tasks_keys_and_as_dict() -> None:
    scores = score_tasks([A, B], (5, 10, 5, 20))
    assert list(scores) == [5, 10, 20]
    d = scores[5].as_dict()
    assert {"precision", "recall", "f1", "alpha", "dropped_units", "n_units", "cohen_kappa"} <= set(d)
    assert d["dropped_units"] == 1 and d["n_units"] == 12


@pytest.mark.parametrize("k", [0, -1, True, 2.0])
def test_bad_k_rejected(k: object) -> None:
    with pytest.raises(AttnalignError):
        score_k([A], k)  # type: ignore[arg-type]


def test_human_spans_validated() -> None:
    with pytest.raises(AttnalignError, match="human span"):
        TaskUnits.from_units("abc", [], [(2, 1)])
    with pytest.raises(AttnalignError, match="human span"):
        TaskUnits.from_units("abc", [], [(0, 4)])


SHARED_METRICS = Path(__file__).resolve().parents[1].parent / "shared" / "METRICS.md"


@pytest.mark.skipif(not SHARED_METRICS.exists(), reason=f"the shared metrics page is not at {SHARED_METRICS}")
def test_the_shipped_metrics_page_is_the_shared_contract() -> None:
    """docs/METRICS.md is what this code follows: it must not drift from the team's page."""
    shipped = Path(__file__).resolve().parents[1] / "docs" / "METRICS.md"
    assert shipped.read_bytes() == SHARED_METRICS.read_bytes(), "copy ../shared/METRICS.md to docs/METRICS.md"
