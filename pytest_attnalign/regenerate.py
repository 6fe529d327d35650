"""Regenerating a task's completion from perturbed versions of its prompt (perturbation methods).

SHAP and BERT masking each regenerate the code dozens of times per task, so this is where their time
goes. Decoding is greedy, so most perturbed prompts reproduce a long prefix of the original output;
the *verified* path exploits that without changing a single token of the result:

1. one forward pass runs ``perturbed prompt + original generated tokens`` (``Generation.raw_ids``,
   every token before the cut; the first chunk of them, then further chunks on the row's cache
   while they keep matching: see :class:`_Chunks`, which plans the chunks from where the rows
   before diverged, so an early divergence wastes few tokens and a late one few passes). On CPU
   prompts go one at a time and each reuses the original prompt's KV cache over the tokens it
   shares with it (the chat template and the words before the first change), so only the rest is
   run; with ``batch_size > 1`` (the GPU default) several prompts share one left-padded pass with
   an attention mask and explicit position ids. The
   shortcuts run with torch's fused attention (:func:`forward.fast_attention`: SDPA, where the
   model can switch), plain decoding with the model's own;
2. the argmax at every position says what greedy decoding of the perturbed prompt would emit there;
   walking the original tokens, the first position where the argmax differs is where the perturbed
   generation diverges (all earlier tokens are, by induction, exactly what greedy decoding emits);
3. from there decoding continues greedily on the verification pass's KV cache cut to the common
   prefix, with the one stop rule of every decoder (:class:`decoding.StopRule`: eos before
   appending, ``ended`` every ``check_every`` tokens, the budget). The rows that diverged continue
   *together*: up to :data:`POOL` of them are decoded in one left-padded batch per step (their caches
   padded to a common length, an attention mask and each row's own position ids), because a decoding
   step is bound by reading the weights, not by arithmetic: on CPU, SmolLM2-135M decodes 16 rows a
   step at ~5x the tokens per second of one row. Finished rows leave the batch.
   A prompt whose generation reproduces all original tokens costs one forward pass.

``verify=False`` skips step 1 (each prompt is run from its start, nothing of the original generation
is used) but decodes the same way; it is the baseline that shows what verification saves.

Floating point: a batched, cached or longer forward pass computes the same logits as incremental
decoding only up to rounding, so an argmax can flip where the top two logits nearly tie. Every argmax this
module takes (verified and continued) is therefore checked against a margin (``tie_tol``, far above
the measured rounding noise); a prompt meeting a near-tie is decoded plainly (as
:func:`generation.greedy_decode` does) through the tied step, so that token is plain decoding's own
choice, and then rejoins the shortcuts (:func:`decoding.replay`): the result is token-for-token
that of plain decoding, and a tie costs plain steps up to the tie, not to the end of the output.
The tokens before the tie are known (safe argmaxes), so where the model allows it the replay runs
them in one forced pass that computes plain decoding's one-token steps bit for bit
(:mod:`.teacher_forcing`) instead of one step each; a row's later tie resumes from the plain
cache its previous replay left (:class:`decoding.Checkpoint`) and runs only the tokens since.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import replace
from typing import Any, Callable, Sequence

from .decoding import Row as _Pending
from .decoding import LOOKAHEAD, NearTie, StopRule, decode, decode_pooled, replay_row, row_cache, top
from .forward import accepts, cache_kwarg, cache_of, fast_attention, step
from .generation import Generation, build_prompt, decode_text, encode, has_ended
from .tasks import Task

#: Near-tie margin = factor x machine epsilon x max(1, largest |logit| of the row). Measured on CPU
#: fp32 by ``scripts/measure_tie_noise.py`` (SmolLM2-135M, HumanEval/0, 2 and 4, 16 one-word
#: deletions each, 24 teacher-forced steps against plain eager decoding): a verification pass on a
#: reused prefix strays by up to 20.4 eps x scale and a step of the 16-row pool by up to 33.1 with
#: the shortcuts' SDPA attention (18.2 and 26.8 with eager attention; tiny random models: 2e-7 at
#: scale 0.6), so 1024 leaves a ~31x safety factor and still flags only real near-ties (5e-3
#: logits at scale 44). Half precisions are not listed: their rounding noise was not measured (no
#: GPU here), so with float16/bfloat16 weights regeneration decodes plainly unless the caller passes
#: ``tie_tol``.
TIE_EPS_FACTOR = {"float32": 1024.0, "float64": 1024.0}
#: Original tokens checked by the first verification pass until :class:`_Chunks` has rows to learn
#: from; later passes double the checked length.
FIRST_CHUNK = 16
#: What one more verification pass costs, in checked tokens: one row's pass over n tokens took
#: ~100 ms + 5 ms x n (SmolLM2-135M, CPU, 1 thread, 150-token cache; its logits at every position).
PASS_COST = 20
#: Rows decoded together after verification (batched decoding steps; see the module docstring). 64
#: (all of SHAP's evaluations in one pool) vs 16: 1.14x on SHAP, SmolLM2 CPU, HumanEval/0, same tokens.
POOL = 64


def regenerate(ctx: Any, task_prompts: Sequence[str], *, verify: bool = True, batch_size: int | None = None,
               pool_size: int | None = None, tie_tol: float | None = None,
               stats: dict[str, int] | None = None, lookahead: int | None = None) -> list[str]:
    """The completion (after the stop rule) that ``generate`` would give for each perturbed task prompt.

    Same model, prompt format and token budget (``ctx.generation.max_new_tokens``) as the original
    generation. ``verify=False`` decodes each prompt from its start (the speed baseline).
    Identical prompts are decoded once. The model regenerates (:meth:`lm.LanguageModel.regenerate`):
    a local model through :func:`regenerate_ids`, an API model with one request per prompt (it has
    no tokens to verify and ignores the speed options).
    """
    unique = list(dict.fromkeys(task_prompts))
    completions = ctx.lm.regenerate(ctx.task, ctx.generation, unique, verify=verify, batch_size=batch_size,
                                    pool_size=pool_size, tie_tol=tie_tol, stats=stats, lookahead=lookahead)
    out = dict(zip(unique, completions))
    return [out[p] for p in task_prompts]


def regenerate_ids(lm: Any, task: Task, gen: Generation, task_prompts: Sequence[str], *, verify: bool = True,
                   batch_size: int | None = None, pool_size: int | None = None, tie_tol: float | None = None,
                   stats: dict[str, int] | None = None, lookahead: int | None = None) -> list[list[int]]:
    """Raw generated token ids (before the cut) for each perturbed task prompt of a local model
    (:class:`models.LoadedModel`) whose original generation of ``task`` is ``gen``.

    ``batch_size``: prompts per verification pass (default 1 on CPU, where a prompt-length pass is
    bound by arithmetic so batching buys nothing, and a single row can instead reuse the original
    prompt's KV cache for the shared prefix; 8 on GPU). ``pool_size``: rows decoded together after
    verification (default :data:`POOL`; 1 decodes each row alone). ``lookahead``: guessed tokens
    checked per pass by the last row of a pool (default :data:`decoding.LOOKAHEAD`; 0: none).
    ``tie_tol``: absolute near-tie margin in logits (default: :data:`TIE_EPS_FACTOR` x eps x scale;
    half-precision models have no default and are decoded plainly unless it is given).
    ``stats`` (optional) accumulates ``prompts``, ``verified`` (tokens taken from verification
    passes), ``decoded`` (tokens decoded step by step, alone, pooled or replayed plainly),
    ``fallbacks`` (near-ties replayed plainly), ``replayed`` (new tokens those replays decoded) and
    ``forced`` (tokens a replay ran in one forced pass: :mod:`.teacher_forcing`). A row's later
    near-tie resumes from where its previous replay stopped (:class:`decoding.Checkpoint`), so even
    a row tied at every step costs about plain decoding.
    """
    import torch

    tok, fmt, budget = lm.tokenizer, gen.prompt_format, gen.max_new_tokens
    ended = _ended(task, fmt, tok)
    prompts = [_prompt_ids(lm, task, fmt, p) for p in task_prompts]
    st = stats if stats is not None else {}
    for key in ("prompts", "verified", "decoded", "fallbacks", "replayed"):
        st.setdefault(key, 0)
    st["prompts"] += len(prompts)
    dtype = lm.model.dtype
    factor = TIE_EPS_FACTOR.get(str(dtype).replace("torch.", ""))
    if tie_tol is None and factor is None:
        results = [_plain(lm, ids, budget, ended) for ids in prompts]
        st["decoded"] += sum(len(r) for r in results)
        return results
    ref = _Chunks(list(getattr(gen, "raw_ids", ()) or gen.generated_ids)[:budget] if verify else [])
    tol = float(tie_tol) if tie_tol is not None else -float(factor) * torch.finfo(dtype).eps
    if batch_size is None:
        batch_size = 1 if str(lm.device).startswith("cpu") else 8
    step = max(1, batch_size)
    pool = POOL if pool_size is None else max(1, pool_size)
    if not (accepts(lm.model, "attention_mask") and accepts(lm.model, "position_ids")):
        pool = 1  # a left-padded batch needs both
    prefix = _Prefix(lm, list(gen.prompt_ids)) if verify else None
    results: list[list[int] | None] = [None] * len(prompts)
    group = max(pool, step)  # rows verified, then decoded together; bounds the KV caches held at once
    with torch.no_grad(), fast_attention(lm.model):  # plain replays inside switch back to the reference's
        for lo in range(0, len(prompts), group):
            pending: list[_Pending] = []
            for blo in range(lo, min(lo + group, len(prompts)), step):
                batch = prompts[blo : min(blo + step, lo + group)]
                for i, got in enumerate(_verified_batch(lm, batch, ref, budget, ended, tol, st, prefix, pool > 1),
                                        start=blo):
                    if isinstance(got, _Pending):
                        got.index = i
                        pending.append(got)
                    else:
                        results[i] = got
            for lo_pool in range(0, len(pending), pool):
                rows = pending[lo_pool : lo_pool + pool]
                for row, got in zip(rows, decode_pooled(lm.model, rows, _rule(lm, budget, ended), tol, lm.device, st,
                                                       LOOKAHEAD if lookahead is None else lookahead)):
                    results[row.index] = got
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]


class _Prefix:
    """The original prompt's KV cache, computed on first use; single rows reuse its shared prefix."""

    MIN_SHARED = 8  # below this many shared tokens the copy is not worth it

    def __init__(self, lm: Any, ids: list[int]) -> None:
        self.lm, self.ids, self.cache = lm, ids, None

    def shared(self, row: list[int]) -> int:
        n = 0
        for a, b in zip(self.ids, row):
            if a != b:
                break
            n += 1
        return min(n, len(row) - 1)  # the row's last prompt token must be run: it predicts token 0

    def cache_upto(self, n: int) -> Any:
        import torch

        if self.cache is None:
            self.cache = cache_of(step(self.lm.model, torch.tensor([self.ids], device=self.lm.device), None))
        return row_cache(self.cache, 0, 0, n)


class _Chunks:
    """The original tokens and where each verification pass over them ends.

    A row needs the argmax at every step up to its divergence ``d`` (or through the end of the
    original tokens), so it costs one pass per chunk it reaches plus the tokens checked. Until
    :attr:`MIN_SEEN` rows have been verified the chunks double from :data:`FIRST_CHUNK`; after
    that each pass ends where the expected cost over the divergences seen so far (of rows that got
    this far) is least, with a pass costing :data:`PASS_COST` tokens more than its length: BERT's
    one-word changes mostly diverge at a few shared points or not at all, so a row that passes the
    first point gets the rest in one pass instead of three or four doubling ones. The chunking
    changes which passes run, never a token: every argmax is checked against the original.
    """

    MIN_SEEN = 4

    def __init__(self, ids: list[int]) -> None:
        self.ids = ids
        self.seen: list[int] = []  # steps through which a verified row needed the argmax

    def saw(self, need: int) -> None:
        self.seen.append(need)

    def end(self, covered: int) -> int:
        """How many original tokens the pass after ``covered`` of them should cover."""
        size = len(self.ids)
        rest = sorted(n for n in self.seen if n > covered)
        if len(self.seen) < self.MIN_SEEN or len(rest) < 2:
            return min(size, covered + max(FIRST_CHUNK, covered))
        ends = sorted({min(n, size) for n in rest} | {size})

        def left(x: int) -> int:  # rows seen that a pass through x would not have finished
            return len(rest) - bisect_right(rest, x)

        # to_go[x]: least expected cost, summed over rows seen, of the passes after covering x
        to_go: dict[int, float] = {}
        for x in reversed(ends):
            to_go[x] = min((left(x) * (PASS_COST + e - x) + to_go[e] for e in ends if e > x), default=0.0)
        return min(ends, key=lambda e: left(covered) * (PASS_COST + e - covered) + to_go[e])


def _ended(task: Any, fmt: str, tok: Any) -> Callable[[list[int]], bool]:
    return lambda new: has_ended(task, fmt, decode_text(tok, new))


def _prompt_ids(lm: Any, task: Any, fmt: str, task_prompt: str) -> list[int]:
    """Token ids of the full model prompt (chat template included) around a perturbed task prompt."""
    perturbed = replace(task, prompt=task_prompt, description=(0, len(task_prompt)))
    text = build_prompt(perturbed, lm.tokenizer, fmt).text
    return list(encode(lm.tokenizer, text, fmt)["input_ids"])


def _plain(lm: Any, ids: list[int], budget: int, ended: Callable[[list[int]], bool]) -> list[int]:
    import torch

    return decode(lm.model, torch.tensor([ids], device=lm.device), _rule(lm, budget, ended))


def _rule(lm: Any, budget: int, ended: Callable[[list[int]], bool]) -> StopRule:
    return StopRule(budget, lm.tokenizer.eos_token_id, ended)


def _verified_batch(lm: Any, prompts: list[list[int]], ref: _Chunks, budget: int,
                    ended: Callable[[list[int]], bool], tol: float, st: dict[str, int],
                    prefix: _Prefix | None = None, hand_off: bool = False) -> list[list[int] | _Pending]:
    """One left-padded forward pass over ``prompt + ref`` for each prompt, then per-row continuation.

    A single row whose prompt shares a prefix with the original prompt runs only the rest, on a
    copy of the original prompt's cache over that prefix. With ``hand_off`` a row that diverges
    from ``ref`` is returned as :class:`_Pending` (for :func:`decoding.decode_pooled`) instead of being
    decoded here.
    """
    import torch

    k = ref.end(0)  # original tokens checked by this pass; _continue checks the rest
    chunk = ref.ids[:k]
    kwargs: dict[str, Any] = {"use_cache": True}
    if accepts(lm.model, "logits_to_keep"):
        kwargs["logits_to_keep"] = k + 1  # only the positions that predict generated tokens (memory)
    if len(prompts) == 1 and prefix is not None and prefix.shared(prompts[0]) >= prefix.MIN_SHARED:
        n = prefix.shared(prompts[0])
        cache = prefix.cache_upto(n)
        if cache is not None:
            st["prefix_reused"] = st.get("prefix_reused", 0) + n
            kwargs[cache_kwarg(lm.model)] = cache
            kwargs["input_ids"] = torch.tensor([prompts[0][n:] + chunk], dtype=torch.long, device=lm.device)
            res = lm.model(**kwargs)
            preds, safe = top(res.logits[:, -(k + 1) :, :], tol)
            return [_continue_or_plain(lm, cache_of(res), 0, 0, prompts[0], ref, preds[0], safe[0], budget, ended, tol, st,
                                       hand_off)]
    lengths = [len(p) + k for p in prompts]
    width = max(lengths)
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        input_ids[i, width - lengths[i] :] = torch.tensor(p + chunk, dtype=torch.long)
        mask[i, width - lengths[i] :] = 1
    kwargs["input_ids"] = input_ids.to(lm.device)
    if len(prompts) > 1:  # a single row has no padding: run it as greedy_decode runs a prompt
        kwargs["attention_mask"] = mask.to(lm.device)
        kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0).to(lm.device)
    res = lm.model(**kwargs)
    # Row i's prediction after its prompt + ref[:s] sits k + 1 - s columns from the end of every row.
    preds, safe = top(res.logits[:, -(k + 1) :, :], tol)
    return [_continue_or_plain(lm, cache_of(res), i, width - lengths[i], p, ref, preds[i], safe[i], budget, ended, tol, st,
                               hand_off)
            for i, p in enumerate(prompts)]


def _continue_or_plain(lm: Any, cache: Any, row: int, pad: int, prompt: list[int], ref: _Chunks, preds: list[int],
                       safe: list[bool], budget: int, ended: Callable[[list[int]], bool], tol: float,
                       st: dict[str, int], hand_off: bool = False) -> list[int] | _Pending:
    got = _continue(lm, cache, row, pad, prompt, ref, preds, safe, budget, ended, tol, st, hand_off=hand_off)
    if not isinstance(got, NearTie):
        return got
    # Without a pool to hand the row to (``hand_off`` false) the replay runs plainly to the end.
    return _replay(lm, prompt, got if hand_off else NearTie(None, got.known), budget, ended, st)


def _replay(lm: Any, prompt: list[int], tie: NearTie, budget: int, ended: Callable[[list[int]], bool],
            st: dict[str, int]) -> list[int] | _Pending:
    """A near-tie made a shortcut unsafe: decode this prompt the reference way through the tied step."""
    return replay_row(lm.model, _Pending(prompt, list(tie.known), None, len(tie.known)), tie, _rule(lm, budget, ended),
                      lm.device, st)


def _continue(lm: Any, cache: Any, row: int, pad: int, prompt: list[int], ref: _Chunks, preds: list[int],
              safe: list[bool], budget: int, ended: Callable[[list[int]], bool], tol: float,
              st: dict[str, int], hand_off: bool = False) -> list[int] | _Pending | NearTie:
    """Replay ``greedy_decode``'s loop for one row; :class:`NearTie` where the shortcut is unsafe.

    ``cache`` holds the row's prompt + ``ref[:covered]`` (``covered = len(preds) - 1``) from column
    ``pad`` on. While the output equals ``ref[:i]`` at step ``i``, the next token is a verification argmax,
    and the next chunk of ``ref`` is verified (on the row's own cache) when the checked ones run
    out; after the first difference the cache is cut to prompt + ``ref[:i]`` and decoding goes on
    token by token. eos and the ``ended`` check apply at exactly greedy_decode's step counts.
    """
    import torch

    rule = _rule(lm, budget, ended)
    cache_kw = cache_kwarg(lm.model)
    p = len(prompt)
    preds, safe = list(preds), list(safe)
    covered = len(preds) - 1
    out: list[int] = []
    following, past, nxt = True, None, 0  # past: this row's own cache once it is needed
    verified = decoded = 0
    for i in range(budget):
        if following and i > covered:  # all checked tokens matched: check the next chunk
            if past is None:
                past = row_cache(cache, row, pad, pad + p + covered)
                if past is None:
                    return NearTie(None, tuple(out))
            end = ref.end(covered)
            res = lm.model(input_ids=torch.tensor([ref.ids[covered:end]], device=lm.device), use_cache=True,
                           **{cache_kw: past})
            past = cache_of(res)
            more, more_safe = top(res.logits[0], tol)
            preds += more
            safe += more_safe
            covered = end
        if following:
            nxt, ok = preds[i], safe[i]
            verified += 1
        else:
            res = lm.model(input_ids=torch.tensor([[nxt]], device=lm.device), use_cache=True, **{cache_kw: past})
            past = cache_of(res)
            (nxt,), (ok,) = top(res.logits[:, -1, :], tol)
            decoded += 1
        if not ok:
            return NearTie(i, tuple(out))
        if not rule.emit(out, i, nxt):
            if following:
                ref.saw(i)
            break
        if following and (i >= len(ref.ids) or nxt != ref.ids[i]):
            following = False  # diverged: keep the cache of prompt + ref[:i], then feed nxt
            ref.saw(i)
            past = row_cache(cache, row, pad, pad + p + i) if past is None else row_cache(past, 0, 0, p + i)
            if past is None:
                return NearTie(None, tuple(out))
            if hand_off:
                st["verified"] += verified
                st["decoded"] += decoded
                return _Pending(prompt, out, past, i + 1)
    st["verified"] += verified
    st["decoded"] += decoded
    return out
