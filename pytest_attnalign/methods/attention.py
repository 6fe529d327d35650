"""Self-attention attribution: READING/CODING x first/last/all layers, plus the study's compat variants.

Definitions (``P`` prompt tokens; the explained steps ``[first, end)`` are the generated function
body's tokens, ``Generation.explained``; step ``j`` explains generated token ``y_j``, and the row
that predicts it is position ``P - 1 + j``, as for the gradient methods. One forward pass over
``prompt + y_<end-1`` with ``output_attentions=True``; every layer's attention is summed over its
heads and only the columns of prompt tokens are kept):

- READING: the row of the first explained step, ``P - 1 + first``: the attention paid to the prompt
  when the model predicts the body's first token (HumanEval in completion or prefill format: the last
  prompt position; where the model writes the function, after its ``def`` line and docstring).
  One row, not the sum over prompt rows: a sum over rows ``0..P-1`` would mostly measure how often
  each column is visible under the causal mask, not what the model attends to.
- CODING: the rows ``P - 1 + j`` of every explained step, summed: the attention to the prompt while
  each body token is predicted. READING's row is CODING's first row.
- Attention to generated columns (a chat reply's restated signature and docstring) is attention
  to generated text, which the study never counted: by default it is not credited to the prompt
  words; setting ``restated_copy=credit`` credits a verbatim copy's columns to the words it copies
  (:mod:`..restated`).
- first = layer 0, last = layer ``L - 1``, all = the sum over layers.
- A unit's score is the attention mass on its token's column.
- The code-to-words map (:mod:`..linemap`): the CODING rows summed per code line instead of over
  all steps, from the same pass; the lines' rows sum to the CODING scores.

``compat_{reading,coding}_{head0,lasthead,allheads}`` reproduce a DEFECT of the study's own code
(METRICS.md, "Known defects"): its "first/last/all layer" in fact took head 0, the last head and
the sum of heads of LAYER 0. They exist only to set the published numbers' layer choice beside the
real one: they change the layer and heads only, and their rows are this tool's (CODING sums every
body token's row, where the study's code took the body's last token's row alone).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ..errors import AttnalignError
from ..forward import run_model
from ..linemap import LineScores, code_lines, line_scores, sum_by_line
from ..restated import check_mode, unit_scores
from .base import AttributionContext, Method, Unit

#: view name -> (layers, heads) selected from the per-layer, per-head rows.
_LAYER_VIEWS: dict[str, tuple[slice, slice]] = {
    "first": (slice(0, 1), slice(None)),
    "last": (slice(-1, None), slice(None)),
    "all": (slice(None), slice(None)),
}
#: The study's code's defect: heads of LAYER 0 under its "first/last/all layer" labels.
_COMPAT_VIEWS: dict[str, tuple[slice, slice]] = {
    "head0": (slice(0, 1), slice(0, 1)),
    "lasthead": (slice(0, 1), slice(-1, None)),
    "allheads": (slice(0, 1), slice(None)),
}
NO_CODE = "the model generated no code: coding methods have nothing to attribute"


@dataclass(frozen=True)
class AttentionRows:
    """What the six views need from the pass, as float32 CPU tensors of shape ``[L, H, P + first]``:
    the prompt's columns and those of the generated tokens before the body (a restated copy).

    Kept per head so the compat (head-of-layer-0) variants share the same pass; ``L * H * C``
    floats is small, unlike the ``L * H * T * T`` attention maps it is reduced from.
    """

    reading: Any  # row P-1+first (P-1 when nothing is explained)
    coding: Any  # rows P-1+j of the explained steps, summed over rows (zeros when there are none)
    lines: Any = None  # the same rows summed per code line, [L, H, N, C] float64 (None without ``line_of``)


def attention_rows(model: Any, prompt_ids: Sequence[int], generated_ids: Sequence[int], steps: range,
                   line_of: Sequence[int] = ()) -> AttentionRows:
    """One forward pass with attentions, reduced layer by layer on the model's device.

    ``line_of``: the code line (0..N-1) of each explained step, to keep the CODING rows per line too.
    """
    import torch

    P = len(prompt_ids)
    if P == 0:
        raise AttnalignError("empty prompt: nothing to attribute")
    device = next(model.parameters()).device
    ids = torch.tensor([list(prompt_ids) + list(generated_ids[: max(steps.stop - 1, 0)])], device=device)
    first = P - 1 + (steps.start if steps else 0)
    columns = first + 1  # the prompt and the generated tokens before the first explained step
    rows = slice(P - 1 + steps.start, P - 1 + steps.stop) if steps else slice(0, 0)
    with torch.no_grad():
        out = run_model(model, 1, input_ids=ids, output_attentions=True)
        atts = getattr(out, "attentions", None)
        if not atts or any(a is None for a in atts):
            raise AttnalignError(
                "the model returned no attention weights: load it with attn_implementation='eager' "
                "(sdpa/flash attention kernels do not expose them)"
            )
        reading, coding, lines = [], [], []
        n = max(line_of, default=-1) + 1
        for att in atts:  # [1, H, T, T]
            layer = att[0, :, :, :columns].float()
            reading.append(layer[:, first])
            coding.append(layer[:, rows].sum(dim=1))
            if n:
                lines.append(sum_by_line(layer[:, rows], line_of, n, dim=1))
        del out, atts
        return AttentionRows(torch.stack(reading).cpu(), torch.stack(coding).cpu(),
                             torch.stack(lines).cpu() if lines else None)


class SelfAttention(Method):
    """One of the six self-attention views (or a compat variant), named ``{phase}_{view}``."""

    category = "self_attention"
    decodes = False
    options = ("restated_copy",)

    def __init__(self, name: str, restated_copy: str = "ignore") -> None:
        self.restated_copy = check_mode(name, restated_copy)
        self.compat = name.startswith("compat_")
        views = _COMPAT_VIEWS if self.compat else _LAYER_VIEWS
        self.phase, _, self.view = name.removeprefix("compat_").partition("_")
        if self.phase not in ("reading", "coding") or self.view not in views:
            raise AttnalignError(f"unknown self-attention method {name!r}")
        self.name = name
        self.layers, self.heads = views[self.view]

    def settings(self) -> dict[str, Any]:
        rows = "P-1+first (predicts the body's first token)" if self.phase == "reading" else "P-1+j per body token, summed"
        if self.compat:
            layers, heads = "0", {"head0": "0", "lasthead": "last", "allheads": "sum"}[self.view]
        else:
            layers, heads = self.view, "sum"
        return {"rows": rows, "layers": layers, "heads": heads, "dtype": "float32", "restated_copy": self.restated_copy}

    def attribute(self, ctx: AttributionContext) -> list[Unit]:
        if self.phase == "coding" and not ctx.generation.explained_steps:
            raise AttnalignError(NO_CODE)
        rows = _rows(ctx)
        table = rows.reading if self.phase == "reading" else rows.coding
        scores = unit_scores(ctx, table[self.layers, self.heads].sum(dim=(0, 1)).tolist(), self.restated_copy)
        return [(s, e, v) for (s, e, _), v in zip(ctx.description_tokens(), scores)]

    def line_units(self, ctx: AttributionContext) -> list[LineScores] | None:
        """CODING views: the per-line rows of the shared pass, viewed like :meth:`attribute`'s."""
        if self.phase != "coding":
            return None
        rows = _rows(ctx)
        if rows.lines is None:
            return []
        return line_scores(ctx, rows.lines[self.layers, self.heads].sum(dim=(0, 1)), self.restated_copy)


def _rows(ctx: AttributionContext) -> AttentionRows:
    """The context's one attention pass, shared by every view (with the CODING rows per code line)."""
    gen = ctx.generation
    return ctx.memo("attention", lambda: attention_rows(ctx.lm.model, gen.prompt_ids, gen.generated_ids,
                                                        gen.explained_steps, code_lines(ctx).of_step))
