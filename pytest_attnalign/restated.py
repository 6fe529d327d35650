"""A chat reply's verbatim copy of the task description, and the option to credit it back.

A restating chat model (smollm2's default format) writes the task's signature and docstring again
before the body. When the body's tokens are explained, part of their attention and gradient flows
to that generated copy rather than to the prompt. The study never scored generated text (its models
continued the prompt, so no copy existed), and by default neither does this tool
(``restated_copy=ignore``). With ``restated_copy=credit`` (a setting of every self-attention and
gradient method) each generated token before the body that copies description characters verbatim
gives its score to the description tokens it copies, split equally among them. Measured on
HumanEval/0 with smollm2 (scripts/measure_restated_copy.py): 37-96% of a method's credited scores
come from the copy and crediting it changes 2-9 of the top-10 units, so the choice is offered, not hidden.
"""

from __future__ import annotations

import difflib
from typing import Any, Sequence

from .errors import AttnalignError

RESTATED_COPY = ("ignore", "credit")
#: A verbatim copy is a difflib matching block of at least this many characters: shorter blocks
#: (a shared "the", a bracket) are coincidences, not a restated description.
MIN_COPY_CHARS = 8


def check_mode(method: str, mode: object) -> str:
    """A ``restated_copy`` value, refused naming the method (as shap names itself), since a category
    setting (``gradient.restated_copy=...``) reaches several."""
    if mode not in RESTATED_COPY:
        raise AttnalignError(f"{method}: restated_copy must be ignore or credit, not {mode!r}")
    return str(mode)


def copy_credit(ctx: Any) -> dict[int, tuple[int, ...]]:
    """Sequence position of each generated token before the body that copies the scored description
    -> the prompt token indices (of ``ctx.description_tokens()``) whose characters it copies."""
    return ctx.memo("restated_copy", lambda: _copy_credit(ctx))


def _copy_credit(ctx: Any) -> dict[int, tuple[int, ...]]:
    from .generation import decode_text, decoded_ends

    gen, prompt = ctx.generation, ctx.prompt
    first = gen.explained[0]
    if first == 0:
        return {}
    ends = list(decoded_ends(ctx.lm.tokenizer, gen.raw_ids[:first]))
    head = decode_text(ctx.lm.tokenizer, gen.raw_ids[:first])
    lo, hi = prompt.description
    matcher = difflib.SequenceMatcher(None, prompt.text[lo:hi], head, autojunk=False)
    copied = {}  # character of head -> character of task.prompt it copies
    for block in matcher.get_matching_blocks():
        if block.size >= MIN_COPY_CHARS:
            copied.update({block.b + i: lo + block.a + i - prompt.task_offset for i in range(block.size)})
    units = ctx.description_tokens()
    P, out, start = len(gen.prompt_ids), {}, 0
    for i, end in enumerate(ends):
        chars = {copied[c] for c in range(start, end) if c in copied}
        hit = tuple(t for s, e, t in units if any(s <= c < e for c in chars))
        if hit:
            out[P + i] = hit
        start = end
    return out


def credited(scores: Sequence[float], credit: dict[int, tuple[int, ...]]) -> list[float]:
    """``scores`` over the sequence's columns with each copying column's score split over its tokens."""
    out = [float(v) for v in scores]
    for column, tokens in credit.items():
        for t in tokens:
            out[t] += out[column] / len(tokens)
    return out


def unit_scores(ctx: Any, columns: Sequence[float], mode: str) -> list[float]:
    """The scores of ``ctx.description_tokens()`` read from per-column ``columns`` (prompt tokens, then
    generated ones), a copy's columns credited when ``mode`` is ``credit``."""
    if mode == "credit":
        columns = credited(columns, copy_credit(ctx))
    return [float(columns[i]) for _, _, i in ctx.description_tokens()]
