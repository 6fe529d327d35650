"""The one greedy-decoding core: the stop rule, the safe argmax, and the token loops built on them.

Generation (:func:`generation.greedy_decode`), verified regeneration (:mod:`.regenerate`: the
replay of the original tokens and the pooled decoding of the rows that diverged) all decode with
:class:`StopRule` and :func:`top`, so the stop rule exists once and every decoder stops at exactly
the same step counts:

- step ``i`` (0-based) picks token ``t``; at end-of-sequence decoding stops without appending it;
- otherwise ``t`` is appended, and decoding stops when ``(i + 1) % check_every == 0`` and the
  output so far has ended (the task's stop rule), or when ``i + 1`` reaches the budget.

:func:`decode` is plain greedy decoding of one row (the reference every shortcut must reproduce
token for token); :func:`decode_pooled` continues several rows in one left-padded batch per step.
A shortcut that meets a near-tie returns :class:`NearTie`; :func:`replay` then decodes that prompt
plainly through the tied step only (the reference's own choice there; the known tokens before it
in one forced pass with plain decoding's bits, :mod:`.teacher_forcing`) and hands the row back
(pooled rows rejoin their batch) with a :class:`Checkpoint`, plain decoding's own cache there, from
which the row's next tie resumes.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .forward import accepts, cache_kwarg, cache_of, reference_attention, step
from .teacher_forcing import exact, forced_steps


#: Guessed tokens checked per pass when one row decodes alone (:func:`decode_lookahead`).
LOOKAHEAD = 8


@dataclass(frozen=True)
class StopRule:
    """When greedy decoding stops; see the module docstring."""

    budget: int
    eos_id: int | None
    ended: Callable[[list[int]], bool]
    check_every: int = 4

    def emit(self, out: list[int], i: int, token: int) -> bool:
        """Apply step ``i``'s choice ``token`` to ``out``; whether decoding goes on after it."""
        if self.eos_id is not None and token == self.eos_id:
            return False
        out.append(token)
        if (i + 1) % self.check_every == 0 and self.ended(out):
            return False
        return i + 1 < self.budget


def top(logits: Any, tol: float) -> tuple[list[int], list[bool]]:
    """Argmax per row and whether it is safe: top-1 beats top-2 by more than the tie margin.

    ``tol >= 0`` is an absolute margin in logits; ``tol < 0`` means ``|tol| x max(1, max |logit|)``.
    """
    import torch

    logits = logits.float()
    top2 = logits.topk(2, dim=-1)
    margin = top2.values[..., 0] - top2.values[..., 1]
    if tol >= 0:
        need = tol
    else:  # max |logit| as max(max, -min): the same value without an |logits| copy of the vocabulary
        low, high = logits.aminmax(dim=-1)
        need = -tol * torch.maximum(high, -low).clamp(min=1.0)
    return top2.indices[..., 0].tolist(), (margin > need).tolist()


@dataclass(frozen=True)
class NearTie:
    """A shortcut stopped at step ``step`` (0-based), where the top two logits nearly tie; ``None``:
    the shortcut could not go on for another reason (a cache layout it cannot cut)."""

    step: int | None
    known: tuple[int, ...] = ()  # the tokens emitted before it (safe argmaxes: plain decoding's own)


def decode(model: Any, prompt_ids: Any, rule: StopRule) -> list[int]:
    """Plain greedy decoding of one row with a KV cache: the reference for every shortcut."""
    got = _decode_plain(model, prompt_ids, rule, rule.budget - 1)
    assert isinstance(got, list)
    return got


def replay(model: Any, prompt_ids: Any, rule: StopRule, tie: NearTie, forced: Sequence[int] = (),
           start: Checkpoint | None = None) -> list[int] | Row:
    """Plain decoding through the tied step, so that step's token is the reference's own choice.

    Every step is :func:`decode`'s, computed the same way (the prompt in one pass, then one token a
    step), so the tokens are plain decoding's. ``forced``: tokens the shortcut emitted before the tie
    (safe argmaxes, so plain decoding's own), run as one forced pass
    (:func:`teacher_forcing.forced_steps`: the same bits); pass them only where
    :func:`teacher_forcing.exact` holds for the model (:func:`replay_row` does). ``start``: an
    earlier replay's :class:`Checkpoint` of this prompt, resumed instead of running the prompt again.
    Returns the finished output when the stop rule ends it by then, else a :class:`Row` that a
    shortcut continues (its later near-ties come back here). A tie at an unknown step (``None``) is
    decoded plainly to the end.
    """
    last = rule.budget - 1 if tie.step is None else tie.step
    return _decode_plain(model, prompt_ids, rule, last, forced, start)


def _decode_plain(model: Any, prompt_ids: Any, rule: StopRule, last: int, forced: Sequence[int] = (),
                  start: Checkpoint | None = None) -> list[int] | Row:
    """:func:`decode`'s loop through step ``last``: the output if it ended, else the row to continue.

    The tokens in ``forced`` run in one forced pass; from ``start`` (plain decoding's state after
    its first tokens, which ``forced`` then begins with) only the tokens after its cache are run.
    """
    import torch

    with torch.no_grad(), reference_attention(model):
        if start is None:
            out = list(forced)
            res = step(model, prompt_ids, None)
            if out:
                res = forced_steps(model, out, cache_of(res))
        else:
            past = start.fork(len(prompt_ids[0]))
            if forced:
                assert tuple(forced[: len(start.out)]) == start.out, "forced tokens must extend the checkpoint's"
                out = list(forced)
                res = forced_steps(model, out[len(start.out) - 1 :], past)
            else:  # its last token (the tie's plain choice) in one plain step; the rest decode plainly below
                out = list(start.out)
                res = step(model, torch.tensor([[out[-1]]], device=prompt_ids.device), past)
        for i in range(len(out), rule.budget):
            past = cache_of(res)
            nxt = int(res.logits[0, -1].argmax())
            if not rule.emit(out, i, nxt):
                break
            if i == last:
                row = Row(prompt_ids[0].tolist(), out, past, i + 1, replayed=True)
                row.checkpoint = Checkpoint.of(row)
                return row
            res = step(model, torch.tensor([[nxt]], device=prompt_ids.device), past)
    return out


@dataclass(frozen=True)
class Checkpoint:
    """Plain decoding's own state where a replay stopped: ``out`` through the tied step's token and
    ``past``, the cache over ``prompt + out[:-1]`` (its own layer objects: whatever later extends
    the row's cache leaves it as it is). A later tie of the row resumes here (:func:`replay_row`)."""

    out: tuple[int, ...]
    past: Any

    @staticmethod
    def of(row: Row) -> Checkpoint | None:
        past = row_cache(row.past, 0, 0, len(row.prompt) + len(row.out) - 1)
        return None if past is None else Checkpoint(tuple(row.out), past)

    def fork(self, prompt_len: int) -> Any:
        """A cache to extend: new layer objects over the checkpoint's tensors (extending one replaces
        its tensors, never writes into them)."""
        return row_cache(self.past, 0, 0, prompt_len + len(self.out) - 1)


@dataclass
class Row:
    """A row to continue: ``out`` so far (its last token not yet in ``past``), ``past`` its one-row
    KV cache over ``prompt + out[:-1]``, ``step`` the index of its next decoding step."""

    prompt: Sequence[int]
    out: list[int]
    past: Any
    step: int
    index: int = -1  # the caller's position for it
    replayed: bool = False  # decoded plainly through a near-tie already (:func:`replay`)
    checkpoint: Checkpoint | None = None  # where that replay stopped (None: a cache layout it cannot keep)


def decode_pooled(model: Any, rows: list[Row], rule: StopRule, tol: float, device: Any,
                  counter: dict[str, int] | None = None, lookahead: int = LOOKAHEAD) -> list[list[int]]:
    """Go on decoding several rows in one left-padded batch per step, to the end of each.

    The caches are padded on the left to a common width (masked out), each row gets its own
    position ids, and every step feeds each row's last token. A row leaves the batch where
    :meth:`StopRule.emit` stops it; the batch's cache grows in place and shrinks in place as rows
    leave (:mod:`.growing_cache`: the same values, without a fresh copy of the batch's cache every
    step or every time a row leaves). A row that meets a near-tie is replayed plainly through it
    (:func:`replay`) and joins the batch again, so a tie costs plain steps up to the tie only and
    the rest still decodes batched. The last row left decodes alone with :func:`decode_lookahead`.
    """
    import torch

    from .growing_cache import keep_rows, pooled

    rows = list(rows)  # replayed rows replace their entries
    out: list[list[int]] = [r.out for r in rows]
    live = [i for i, r in enumerate(rows) if r.step < rule.budget]
    if not live:
        return out
    lengths = [len(rows[i].prompt) + len(rows[i].out) - 1 for i in live]
    width = max(lengths)
    cache = pooled([rows[i].past for i in live], lengths, width)
    mask = torch.zeros((len(live), width + 1), dtype=torch.long)
    for j, n in enumerate(lengths):
        mask[j, width - n :] = 1
    mask = mask.to(device)
    pos = torch.tensor([[n] for n in lengths], device=device)
    kwargs: dict[str, Any] = {"use_cache": True}
    if accepts(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = 1
    cache_kw = cache_kwarg(model)
    with torch.no_grad():
        while live:
            feed = torch.tensor([[rows[i].out[-1]] for i in live], device=device)
            res = model(input_ids=feed, attention_mask=mask, position_ids=pos, **{cache_kw: cache}, **kwargs)
            cache = cache_of(res)
            tokens, safe = top(res.logits[:, -1, :], tol)
            keep, joining = [], []
            for j, i in enumerate(live):
                r = rows[i]
                if counter is not None:
                    counter["decoded"] = counter.get("decoded", 0) + 1
                r.step += 1
                if not safe[j]:
                    got = replay_row(model, r, NearTie(r.step - 1), rule, device, counter)
                    if isinstance(got, Row):
                        rows[i] = got
                        joining.append(i)
                    else:
                        out[i] = got
                    continue
                if not rule.emit(r.out, r.step - 1, tokens[j]):
                    out[i] = r.out
                    continue
                keep.append(j)
            if len(keep) < len(live):
                keep_rows(cache, keep)
                idx = torch.tensor(keep, dtype=torch.long, device=device)
                mask, pos = mask.index_select(0, idx), pos.index_select(0, idx)
                live = [live[j] for j in keep]
            mask = torch.cat([mask, mask.new_ones((len(live), 1))], dim=1)
            pos = pos + 1
            for i in joining:
                cache, mask, pos = _join(cache, mask, pos, rows[i], device)
                live.append(i)
            if len(live) == 1 and lookahead > 0:
                r = rows[live[0]]
                pad = int((mask[0] == 0).sum())
                r.past = row_cache(cache, 0, pad, mask.shape[1] - 1)  # the cache without its padding
                if r.past is not None:
                    out[live[0]] = _alone(model, r, rule, tol, device, counter, lookahead)
                    return out
    return out


def replay_row(model: Any, row: Row, tie: NearTie, rule: StopRule, device: Any,
               counter: dict[str, int] | None = None) -> list[int] | Row:
    """:func:`replay` a row's prompt through ``tie``: from the row's :class:`Checkpoint` where an
    earlier tie left one, else from its prompt; without a checkpoint a second tie plainly to the end.

    ``row.out`` holds the tokens emitted before the tie: :func:`replay` forces those it has to run
    where :func:`teacher_forcing.exact` holds. So every tie of a row costs its new tokens since the
    last tie (forced, or plain steps), never the prompt again, and a row tied at every step costs
    about plain decoding. ``counter`` accumulates ``fallbacks`` (replays), ``replayed`` and
    ``decoded`` (the new tokens they decoded) and ``forced`` (tokens they ran in forced passes).
    """
    import torch

    at_tie = tie.step is not None and len(row.out) == tie.step
    start = row.checkpoint if at_tie else None
    if row.replayed and start is None:
        tie = NearTie(None)  # no checkpoint to resume: plainly to the end (bounds the row's cost)
    known = row.out if (at_tie or tie.step is None) and row.out and exact(model) else []
    got = replay(model, torch.tensor([list(row.prompt)], device=device), rule, tie, known, start)
    if isinstance(got, Row):
        got.index = row.index
    if counter is not None:
        had = len(start.out) if start is not None else 0  # tokens the checkpoint had (all but its last in its cache)
        n = len(got.out if isinstance(got, Row) else got) - had
        forced = len(known) - max(had - 1, 0) if known else 0
        for key, add in (("fallbacks", 1), ("replayed", n), ("decoded", n), ("forced", forced)):
            counter[key] = counter.get(key, 0) + add
    return got


def _alone(model: Any, row: Row, rule: StopRule, tol: float, device: Any, counter: dict[str, int] | None,
           lookahead: int) -> list[int]:
    """Decode one row to its end with :func:`decode_lookahead`, replaying it through a near-tie."""
    got = decode_lookahead(model, row, rule, tol, device, counter, lookahead)
    while isinstance(got, NearTie):
        again = replay_row(model, row, got, rule, device, counter)
        if not isinstance(again, Row):
            return again
        row = again
        got = decode_lookahead(model, row, rule, tol, device, counter, lookahead)
    return got


def _join(cache: Any, mask: Any, pos: Any, row: Row, device: Any) -> tuple[Any, Any, Any]:
    """Add ``row`` (its cache over prompt + out[:-1]) to a pooled batch whose ``mask`` also covers the next feed."""
    import torch

    from .growing_cache import pad_left, pooled

    length = len(row.prompt) + len(row.out) - 1
    width = mask.shape[1] - 1
    if length > width:  # widen the batch on the left
        grow = length - width
        for layer in cache.layers:
            layer.keys, layer.values = pad_left(layer.keys, grow), pad_left(layer.values, grow)
        mask = torch.cat([mask.new_zeros((mask.shape[0], grow)), mask], dim=1)
        width = length
    single = pooled([row.past], [length], width)
    for layer, extra in zip(cache.layers, single.layers):
        layer.keys = torch.cat([layer.keys, extra.keys], dim=0)
        layer.values = torch.cat([layer.values, extra.values], dim=0)
    mask = torch.cat([mask, torch.tensor([[0] * (width - length) + [1] * (length + 1)], device=device)], dim=0)
    pos = torch.cat([pos, torch.tensor([[length]], device=device)], dim=0)
    return cache, mask, pos


def decode_lookahead(model: Any, row: Row, rule: StopRule, tol: float, device: Any,
                     counter: dict[str, int] | None = None, draft: int = 0) -> list[int] | NearTie:
    """Go on decoding one row, checking up to ``draft`` guessed tokens per forward pass; :class:`NearTie` at a near-tie.

    One row alone is bound by reading the weights, so a pass over a few tokens costs about one
    step. The guesses continue the most recent earlier occurrence of the row's last 3 (else 2,
    else 1) tokens in its prompt and output (prompt-lookup drafting: code and degenerate loops
    repeat themselves). Each position's argmax is what greedy decoding emits there as long as the
    guesses before it matched (the verification argument of :mod:`.regenerate`), so tokens are
    taken up to and including the first position whose argmax differs from the guess; every
    argmax is checked against the tie margin, and the stop rule is applied token by token.
    """
    import torch

    draft = draft or LOOKAHEAD
    out, past, i = row.out, row.past, row.step
    history = list(row.prompt) + out
    cache_kw = cache_kwarg(model)
    with torch.no_grad():
        while i < rule.budget:
            guess = _lookup(history, min(draft, rule.budget - i - 1))
            feed = [out[-1]] + guess
            kwargs: dict[str, Any] = {"use_cache": True, cache_kw: past}
            if accepts(model, "logits_to_keep"):
                kwargs["logits_to_keep"] = len(feed)
            res = model(input_ids=torch.tensor([feed], device=device), **kwargs)
            past = cache_of(res)
            preds, safe = top(res.logits[0, -len(feed) :], tol)
            kept = 0  # guesses confirmed: they stay in the cache
            for m, tok in enumerate(preds):
                if counter is not None:
                    counter["decoded"] = counter.get("decoded", 0) + 1
                if not safe[m]:
                    return NearTie(i)
                go = rule.emit(out, i, tok)
                i += 1
                if not go:
                    return out
                history.append(tok)
                if m < len(guess) and tok == guess[m]:
                    kept += 1
                    continue
                break
            if counter is not None:
                counter["guessed"] = counter.get("guessed", 0) + kept
            if kept < len(guess):
                past = row_cache(past, 0, 0, len(row.prompt) + len(out) - 1)
                if past is None:
                    return NearTie(None)
    return out


def _lookup(history: list[int], k: int) -> list[int]:
    """Up to ``k`` tokens that followed the latest earlier occurrence of ``history``'s last 3, 2 or 1 tokens."""
    if k <= 0:
        return []
    for n in (3, 2, 1):
        if len(history) <= n:
            continue
        tail = history[-n:]
        for start in range(len(history) - n - 1, -1, -1):
            if history[start : start + n] == tail:
                return history[start + n : start + n + k]
    return []


def row_cache(cache: Any, row: int, start: int, end: int) -> Any:
    """One row's KV cache over columns ``[start, end)`` of a batched pass (padding dropped).

    Only plain dynamic layers (keys/values of shape batch x heads x time x dim) can be sliced this
    way; any other cache layout returns ``None`` and the caller decodes that prompt plainly.
    """
    from transformers.cache_utils import DynamicLayer

    from .growing_cache import GrowingLayer

    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer) not in (DynamicLayer, GrowingLayer) for layer in layers):
        return None
    new = copy.copy(cache)
    new.layers = []
    for layer in layers:
        piece = copy.copy(layer)
        if layer.is_initialized:
            piece.keys = layer.keys[row : row + 1, :, start:end, :]
            piece.values = layer.values[row : row + 1, :, start:end, :]
        new.layers.append(piece)
    return new
