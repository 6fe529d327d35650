"""Gradient attribution: Saliency and InputXGradient (as captum defines them), READING and CODING.

Definitions (``P`` prompt tokens, generated tokens ``y_0 .. y_{G-1}``):

- Step ``j`` explains ``y_j``: its target is ``log p(y_j | prompt, y_<j)``, the LOG-PROBABILITY at
  position ``P - 1 + j`` (log-softmax of the logits, computed in float32), not the raw logit: a
  raw logit can be moved by a shift shared by every vocabulary entry, which changes no prediction.
  The explained steps are the generation's body tokens ``[first, end)`` (``Generation.explained``):
  the same steps, and the same rows, as the self-attention CODING views.
- Gradients are taken with respect to ``inputs_embeds`` (the output of the model's input embedding
  module, so scaled embeddings such as XGLM's are included; position embeddings are not inputs).
- Saliency = the raw gradient (``captum.attr.Saliency(abs=False)``); InputXGradient = embeddings x
  gradient (``captum.attr.InputXGradient``). tests/test_attention_gradient.py proves both equal to
  captum's on one step.
- A unit's score for one step = the L2 norm over the embedding dimension of its token's attribution.
- READING = the first explained step only (the body's first token); CODING = the sum over the
  explained steps of the per-step norms (at most ``max_steps`` of them, from the first).
- Only the prompt's tokens are attributed: gradients reaching earlier generated tokens (a chat
  reply's restated signature) are gradients to generated text, which the study never scored;
  ``restated_copy=credit`` credits a verbatim copy's norms to the words it copies (:mod:`..restated`).
- The code-to-words map (:mod:`..linemap`): CODING's per-step norms summed per code line instead of
  over all steps; the lines' rows sum to the CODING scores.

Efficiency (the same numbers as one backward pass per step over a full forward pass, to float
rounding; tests/test_attention_gradient.py checks them against captum's per-prefix reference):

- The forward pass runs in chunks of :data:`CHUNK` explained steps, each chunk on the KV cache of
  the previous ones, with the graph kept through that cache. Causal masking makes the output at
  ``P - 1 + j`` depend on the prefix only, so step ``j``'s backward pass then traverses only the
  chunks up to its own, not the whole sequence (autograd runs only a target's ancestors).
- ``from_token``: prompt positions before it (the chat template and the code before the scored
  region) are run once without a graph, as a KV cache: no gradient is asked for them and none of
  theirs reaches a later position's score (a position's embedding influences later positions
  only). Their rows of the per-step gradients are NaN ("not computed").
- ``batch``: steps whose backward passes run as one vmapped pass (``is_grads_batched``, one
  cotangent per step, never across a chunk boundary). On CPU it does not pay (SmolLM2, 1 thread:
  HumanEval/5's first 16 steps 6.67 s one at a time, 6.56/7.01/7.03 s in batches of 4/8/16;
  earlier 4-5x slower at 8 or 40 on HumanEval/0), so :data:`STEP_BATCH` is 1; it is meant for a
  GPU, where each step's pass is bound by kernel launches, and ``scripts/check_cuda.py`` times it
  there. captum's attribute() would redo the forward pass for every step.

Saliency and InputXGradient share the per-step gradients through ``ctx.memo``: one one-step pass
for both READING methods, one pass over all steps for both CODING methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from ..errors import AttnalignError
from ..forward import accepts, cache_kwarg, cache_of
from ..linemap import LineScores, code_lines, line_scores, sum_by_line
from ..restated import check_mode, unit_scores
from .base import AttributionContext, Method, Unit

NO_TARGET = "the model generated no code: gradient methods have no generated token to explain"


def _wide(t: Any) -> Any:
    """At least float32: norms of bf16/fp16 gradients lose digits; float64 stays float64."""
    import torch

    return t.to(torch.promote_types(t.dtype, torch.float32))


#: Explained steps per chunk of the forward pass (a backward pass spans the chunks up to its step's).
#: Measured on SmolLM2 (CPU, 1 thread, HumanEval/1: 218 body steps after a 173-token prompt; mean
#: of 10 sampled steps' backward passes): one chunk 2.02 s a step, chunks of 32 1.65 s (early steps
#: 0.8 s, late ones 2.4 s: every chunk adds graph nodes that late steps traverse), 64 1.47 s, 96
#: 1.44 s. Bodies of up to 64 steps (most of HumanEval) are one chunk. Smaller chunks lose more than
#: they save (2026-12-04, 1 thread, ms a step for chunks of 8/16/32/64: HumanEval/5's 71 steps
#: 850/663/601/623, HumanEval/9's 38 steps 470/391/378/388): a step's backward pass skips the
#: positions after it in its chunk, but reads every weight (~0.5 GB) once per chunk it traverses.
CHUNK = 64
#: Explained steps per backward pass (see ``batch`` in the module docstring): 1 until a GPU
#: measurement shows batches pay there.
STEP_BATCH = 1


@dataclass
class StepGradients:
    """The shared, chunked forward pass: prompt embeddings and the per-step target log-probabilities.

    Iterate it once: the graph is freed after the last step's backward pass.
    """

    embeds: Any  # [1, T0, D], requires grad: positions from_token .. (the prompt and the tokens before the first step lie in the first chunk)
    targets: list[Any]  # log p(y_j | prefix) per explained step, float32 (or wider), each from its own chunk
    columns: int  # positions attributed: the prompt and the generated tokens before the first explained step
    from_token: int = 0  # prompt positions before it have no gradient (NaN rows)
    chunk: int = CHUNK  # steps per forward chunk: a batch of backward passes stays inside one
    batch: int = 1  # steps per backward pass

    def __iter__(self) -> Iterator[Any]:
        """Yield, for each explained step, d targets[j] / d embeds at the attributed positions: ``[C, D]``."""
        import torch

        S, C, F = len(self.targets), self.columns, self.from_token
        chunk, batch = max(1, self.chunk), max(1, self.batch)
        lo = 0
        while lo < S:
            hi = min(lo + batch, S, (lo // chunk + 1) * chunk)
            if hi - lo == 1:
                grads = torch.autograd.grad(self.targets[lo], self.embeds, retain_graph=hi < S)
            else:  # one cotangent per step: row i of the result is step lo + i's gradient
                out = torch.stack(self.targets[lo:hi])
                eye = torch.eye(hi - lo, dtype=out.dtype, device=out.device)
                (g,) = torch.autograd.grad(out, self.embeds, grad_outputs=eye, retain_graph=hi < S,
                                           is_grads_batched=True)
                grads = tuple(g)
            for g in grads:
                g = g[0, : C - F]
                yield g if F == 0 else torch.cat([g.new_full((F, g.shape[-1]), float("nan")), g])
            lo = hi


def step_gradients(model: Any, prompt_ids: Sequence[int], generated_ids: Sequence[int], steps: range, *,
                   from_token: int = 0, chunk: int = CHUNK, batch: int = 1) -> StepGradients:
    """Run the forward pass that serves the explained ``steps`` (indices into ``generated_ids``).

    ``from_token``: the first prompt position that needs a gradient (earlier ones run without one).
    ``chunk``: explained steps per forward chunk; ``batch``: steps per backward pass (see the module docstring).
    """
    import torch

    P, S = len(prompt_ids), len(steps)
    if S == 0 or steps.stop > len(generated_ids) or steps.step != 1:
        raise AttnalignError(NO_TARGET)
    if model.training:
        raise AttnalignError("the model is in training mode (dropout on): call model.eval() before attribution")
    F = max(0, min(int(from_token), P - 1))
    device = next(model.parameters()).device
    ids = torch.tensor([list(prompt_ids) + list(generated_ids[: steps.stop - 1])], device=device)
    targets = torch.tensor(list(generated_ids[steps.start : steps.stop]), device=device)
    embed = model.get_input_embeddings()
    cache = None
    if F:
        with torch.no_grad():
            cache = cache_of(_run(model, F, None, input_ids=ids[:, :F]))
    logps, leaf = [], None
    begin = F  # first position of the next chunk
    with torch.enable_grad():
        for lo in range(steps.start, steps.stop, max(1, chunk)):
            hi = min(lo + max(1, chunk), steps.stop)
            stop = P + hi - 1  # positions P-1+lo .. P-1+hi-1 predict steps lo .. hi-1
            if leaf is None:
                leaf = embed(ids[:, begin:stop]).detach().requires_grad_(True)
                x = leaf
            else:
                with torch.no_grad():
                    x = embed(ids[:, begin:stop])  # generated tokens: no gradient asked for them
            res = _run(model, hi - lo, cache, inputs_embeds=x)
            cache = cache_of(res)
            logits = res.logits[0, -(hi - lo) :]
            logp = torch.log_softmax(_wide(logits), dim=-1)
            # One scalar per step, split off its own chunk: a slice of one concatenated tensor would
            # send (zero) gradients back through EVERY chunk and undo the truncation.
            logps += logp[torch.arange(hi - lo, device=device), targets[lo - steps.start : hi - steps.start]].unbind(0)
            begin = stop
        return StepGradients(leaf, logps, P + steps.start, F, max(1, chunk), batch)


def _run(model: Any, keep: int, cache: Any, **inputs: Any) -> Any:
    """``model(**inputs)`` on ``cache`` (``None``: a fresh one), returning the cache and the last ``keep`` logits."""
    kwargs: dict[str, Any] = {"use_cache": True, **inputs}
    if cache is not None:
        kwargs[cache_kwarg(model)] = cache
    if accepts(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = keep
    return model(**kwargs)


@dataclass(frozen=True)
class GradientNorms:
    """Per-step norms ``[S, C]`` (CPU) of both attribution kinds at the attributed positions (the prompt's
    tokens, then the generated tokens before the first explained step)."""

    saliency: Any
    inputxgradient: Any


def gradient_norms(model: Any, prompt_ids: Sequence[int], generated_ids: Sequence[int], steps: range, *,
                   from_token: int = 0, chunk: int = CHUNK, batch: int = STEP_BATCH) -> GradientNorms:
    """Both kinds' L2 norms over the embedding dimension, one row per step (NaN before ``from_token``)."""
    import torch

    sg = step_gradients(model, prompt_ids, generated_ids, steps, from_token=from_token, chunk=chunk, batch=batch)
    C, F = sg.columns, sg.from_token
    x = _wide(sg.embeds.detach()[0, : C - F])
    if F:
        x = torch.cat([x.new_full((F, x.shape[-1]), float("nan")), x])
    sal, ixg = [], []
    for g in sg:
        g = _wide(g)
        sal.append(g.norm(dim=-1))
        ixg.append((x * g).norm(dim=-1))
    return GradientNorms(torch.stack(sal).cpu(), torch.stack(ixg).cpu())


class GradientMethod(Method):
    """``{saliency,inputxgradient}_{reading,coding}``; see the module docstring for definitions."""

    category = "gradient"
    decodes = False
    options = ("restated_copy",)

    def __init__(self, name: str, max_steps: int | None = None, restated_copy: str = "ignore") -> None:
        kind, _, phase = name.partition("_")
        if kind not in ("saliency", "inputxgradient") or phase not in ("reading", "coding"):
            raise AttnalignError(f"unknown gradient method {name!r}")
        if max_steps is not None and (not isinstance(max_steps, int) or max_steps < 1):
            raise AttnalignError(f"max_steps must be a positive integer or None, not {max_steps!r}")
        self.name, self.kind, self.phase, self.max_steps = name, kind, phase, max_steps
        self.restated_copy = check_mode(name, restated_copy)

    def settings(self) -> dict[str, Any]:
        return {"target": "log_prob", "wrt": "inputs_embeds", "norm": "l2",
                "steps": "first body token" if self.phase == "reading" else "body tokens, summed",
                "max_steps": self.max_steps, "restated_copy": self.restated_copy}

    def attribute(self, ctx: AttributionContext) -> list[Unit]:
        _, table = self._norms(ctx)
        columns = table[0] if self.phase == "reading" else table.sum(dim=0)
        scores = unit_scores(ctx, columns.tolist(), self.restated_copy)
        return [(s, e, v) for (s, e, _), v in zip(ctx.description_tokens(), scores)]

    def line_units(self, ctx: AttributionContext) -> list[LineScores] | None:
        """CODING: the per-step norms of :meth:`attribute`'s pass, summed per code line."""
        if self.phase != "coding":
            return None
        steps, table = self._norms(ctx)
        lines = code_lines(ctx)
        if not lines.spans:
            return []
        first = ctx.generation.explained[0]
        line_of = lines.of_step[steps.start - first : steps.stop - first]
        return line_scores(ctx, sum_by_line(table, line_of, len(lines.spans), dim=0), self.restated_copy)

    def _norms(self, ctx: AttributionContext) -> tuple[range, Any]:
        """The steps this method explains and this kind's per-step norms ``[S, C]`` (memoised pass)."""
        gen = ctx.generation
        first, end = gen.explained
        if end <= first:
            raise AttnalignError(NO_TARGET)
        # READING runs its own one-step pass (up to the body's first token) rather than reusing the
        # first step of the CODING pass: far cheaper when only READING is asked for, and its scores
        # then do not depend on which other methods ran first (a longer pass differs in the last bits).
        if self.phase == "reading":
            steps = range(first, first + 1)
        else:
            steps = range(first, end if self.max_steps is None else min(end, first + self.max_steps))
        # Only the scored tokens' columns are read: earlier prompt positions need no gradient.
        cols = ctx.description_tokens()
        from_token = min((i for _, _, i in cols), default=0)
        norms: GradientNorms = ctx.memo(
            f"gradients:steps={steps.start}-{steps.stop}",
            lambda: gradient_norms(ctx.lm.model, gen.prompt_ids, gen.generated_ids, steps, from_token=from_token),
        )
        return steps, getattr(norms, self.kind)
