"""The code-to-words map: which description units each line of the generated code leaned on.

A CODING method's unit score is a sum over the explained steps (the body's tokens) of a per-step
score (attention rows, gradient norms). Grouping those per-step scores by the code line each step's
token lies on, before summing, gives one row of unit scores per line; the rows of all lines sum to
the method's unit scores (with ``restated_copy`` applied per line: crediting a copy is linear, so
per line equals per step). The page lights a line's units when the line is hovered, and the lines
that leaned on a unit when the unit is selected. No extra model pass: the rows come from the
memoised attention pass and the gradient loop.

Lines are those of the record's ``completion`` (what the page shows), as ``[start, end)`` character
offsets without the newline. A step's token is located by its characters in the decoded reply
(``Generation.raw``, token ``n`` spanning ``[end(n-1), end(n))`` of :func:`generation.decoded_ends`);
the completion holds the reply's code verbatim (stripped of leading newlines and trailing
whitespace; a chat reply's code starts after the fence and the completion adds a leading newline),
so one shift maps reply characters to completion characters. A token belongs to the line of its
first non-whitespace character; a whitespace-only token to the line of its last character (so a
newline token belongs to the line it ends, indentation, also a newline merged with the next line's
indentation as SmolLM2 writes it, to the line it indents), except on a blank line, where it goes
with the token before it (a blank line is never a line of the map). A character outside
the completion's code (a fence, a token that straddles the body's start) counts as its nearest code
character. A completion whose code is not found in the reply gets no map.

The record keeps, per line, its :data:`LINE_TOP` highest units with scores rounded to
:data:`DIGITS` significant digits: enough to light a line's words, and the page of the study's size
stays under its size budget (README, "The web page").
"""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import dataclass
from typing import Any, Sequence

from .restated import unit_scores

#: Units kept per line in the record (the highest scores; the rest are dropped).
LINE_TOP = 10
#: Significant digits of a kept score.
DIGITS = 4

#: One line of the map as the record keeps it: ``[start, end)`` in the completion and
#: ``(unit index into the record's units, score)`` pairs, highest score first.
LineUnits = tuple[int, int, list[tuple[int, float]]]
#: One line with a score for every unit (what a method computes, before :func:`compact`).
LineScores = tuple[int, int, list[float]]


@dataclass(frozen=True)
class CodeLines:
    """The completion's lines that hold explained steps, and each step's line."""

    spans: tuple[tuple[int, int], ...]  # [start, end) in the completion, in order
    of_step: tuple[int, ...]  # per explained step (from ``explained[0]``): index into ``spans``


def code_lines(ctx: Any) -> CodeLines:
    """The line of every explained step of ``ctx``'s generation (memoised on the context)."""
    return ctx.memo("code_lines", lambda: _code_lines(ctx))


def _code_lines(ctx: Any) -> CodeLines:
    from .generation import decoded_ends

    gen = ctx.generation
    comp, (first, end) = gen.completion, gen.explained
    code = comp.lstrip("\n").rstrip()
    at = gen.raw.find(code) if code else -1
    if at < 0 or end <= first:
        return CodeLines((), ())
    lead = len(comp) - len(comp.lstrip("\n"))
    shift = at - lead  # reply character c is completion character c - shift
    newlines = [i for i, ch in enumerate(comp) if ch == "\n"]
    ends = list(decoded_ends(ctx.lm.tokenizer, gen.generated_ids[:end]))
    lines = []
    for j in range(first, end):
        a = ends[j - 1] if j else 0
        text = gen.raw[a : ends[j]]
        ink = len(text) - len(text.lstrip())
        c = a + (ink if ink < len(text) else len(text) - 1) - shift
        line = bisect_left(newlines, min(max(c, lead), lead + len(code) - 1))
        if ink == len(text) and lines and not _line_text(comp, newlines, line).strip():
            line = lines[-1]  # whitespace on a blank line: nothing to show there, it goes with the token before
        lines.append(line)
    order = sorted(set(lines))
    index = {n: i for i, n in enumerate(order)}
    return CodeLines(tuple(_line_span(comp, newlines, n) for n in order), tuple(index[n] for n in lines))


def _line_span(text: str, newlines: Sequence[int], n: int) -> tuple[int, int]:
    """``[start, end)`` of line ``n`` of ``text`` (``newlines``: the positions of its newlines)."""
    return newlines[n - 1] + 1 if n else 0, newlines[n] if n < len(newlines) else len(text)


def _line_text(text: str, newlines: Sequence[int], n: int) -> str:
    start, end = _line_span(text, newlines, n)
    return text[start:end]


def sum_by_line(scores: Any, line_of: Sequence[int], lines: int, dim: int) -> Any:
    """``scores`` (a tensor with one entry per step along ``dim``) summed per line, in float64."""
    import torch

    shape = list(scores.shape)
    shape[dim] = lines
    index = torch.tensor(list(line_of), dtype=torch.long, device=scores.device)
    return scores.new_zeros(shape, dtype=torch.float64).index_add_(dim, index, scores.double())


def line_scores(ctx: Any, rows: Any, restated_copy: str) -> list[LineScores]:
    """Per line of :func:`code_lines`, the unit scores of its row of ``rows`` (``[lines, columns]``,
    columns as the method's: prompt tokens, then generated tokens before the body), ordered like
    ``ctx.description_tokens()``, the copy credited when ``restated_copy`` is ``credit``."""
    spans = code_lines(ctx).spans
    return [(start, end, unit_scores(ctx, row, restated_copy)) for (start, end), row in zip(spans, rows.tolist())]


def compact(lines: Sequence[LineScores], top: int = LINE_TOP, digits: int = DIGITS) -> list[LineUnits]:
    """What the record keeps: per line its ``top`` highest positive units (ties to the earlier unit),
    rounded; a line left with none is dropped."""
    out = []
    for start, end, scores in lines:
        kept = sorted((u for u, v in enumerate(scores) if v > 0 and math.isfinite(v)), key=lambda u: -scores[u])[:top]
        if kept:
            out.append((int(start), int(end), [(u, float(f"{scores[u]:.{digits}g}")) for u in kept]))
    return out
