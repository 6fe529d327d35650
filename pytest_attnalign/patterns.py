"""Error patterns of failing items: an automatic stand-in for the study's manual RQ2 analysis.

Rule: for a failing item, with the top-K units (K = ``--attn-error-k``, default 10), each label type
with a labelled keyword inside the scored region that strictly overlaps no top-K unit gives
"missed <type>" (an item can show several); when every such keyword is covered and the code still
fails, the pattern is "attended but mis-mapped". Keywords outside the scored region (imports, the
examples) are left out: no scored unit can ever cover them. This approximates, and is not the same
as, the study's reading of each failure by hand.
"""

from __future__ import annotations

from collections.abc import Sequence

from .alignment import Span, strict_overlap
from .labels import LABEL_TYPES, Label

#: The study's order of the label types in its error analysis.
TYPE_ORDER = ("conditional", "property", "operator", "data_type")
MISSED = {t: "missed " + t.replace("_", " ") for t in LABEL_TYPES}
MISMAPPED = "attended but mis-mapped"
PATTERNS = (*(MISSED[t] for t in TYPE_ORDER), MISMAPPED)


def missed_labels(labels: Sequence[Label], top: Sequence[Span], region: Span) -> list[Label]:
    """Labelled keywords inside ``region`` that no top-K unit overlaps."""
    inside = [lab for lab in labels if strict_overlap((lab.start, lab.end), region)]
    return [lab for lab in inside if not any(strict_overlap((lab.start, lab.end), t) for t in top)]


def error_patterns(passed: bool, labels: Sequence[Label], top: Sequence[Span], region: Span) -> list[str]:
    """The patterns of one item, in :data:`PATTERNS` order; none for a passing item, nor for one with no
    labelled keyword in ``region`` (Mbpp/274): "every keyword covered" would hold only vacuously."""
    if passed or not any(strict_overlap((lab.start, lab.end), region) for lab in labels):
        return []
    missed_types = {lab.type for lab in missed_labels(labels, top, region)}
    found = [MISSED[t] for t in TYPE_ORDER if t in missed_types]
    return found or [MISMAPPED]
