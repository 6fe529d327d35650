"""The speed paths give the reference's numbers: chunked, prefix-detached gradients equal the single
full pass (itself checked against captum's per-prefix loop in test_attention_gradient.py)."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_models import FAMILIES, family_contexts

from pytest_attnalign.generation import generate
from pytest_attnalign.methods import AttributionContext
from pytest_attnalign.methods.gradient import gradient_norms, step_gradients
from pytest_attnalign.tasks import get_task

TASK = get_task("HumanEval/0")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def contexts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, AttributionContext]:
    """One tiny model per family, 9 greedy tokens on HumanEval/0 in completion format."""
    return family_contexts(tmp_path_factory, 9)


@pytest.mark.parametrize("family", FAMILIES)
def test_chunked_detached_gradients_equal_one_full_pass(contexts: dict[str, AttributionContext], family: str) -> None:
    ctx = contexts[family]
    gen, model = ctx.generation, ctx.lm.model
    F = min(i for _, _, i in ctx.description_tokens())
    assert F > 0  # HumanEval/0's scored region starts after `from typing import List`
    for steps in (range(0, len(gen.generated_ids)), range(2, len(gen.generated_ids))):
        full = gradient_norms(model, gen.prompt_ids, gen.generated_ids, steps, from_token=0, chunk=10**9)
        for chunk in (1, 2, 3, 10**9):
            got = gradient_norms(model, gen.prompt_ids, gen.generated_ids, steps, from_token=F, chunk=chunk)
            for kind in ("saliency", "inputxgradient"):
                a, b = getattr(got, kind), getattr(full, kind)
                # the prompt's columns and those of the generated tokens before the first step (restated_copy)
                assert a.shape == b.shape == (len(steps), len(gen.prompt_ids) + steps.start)
                assert bool(a[:, :F].isnan().all())  # not computed, never a silent 0
                torch.testing.assert_close(a[:, F:], b[:, F:], rtol=1e-4, atol=1e-7)
        # the raw per-step gradients too, not only their norms
        ref = list(step_gradients(model, gen.prompt_ids, gen.generated_ids, steps, chunk=10**9))
        new = list(step_gradients(model, gen.prompt_ids, gen.generated_ids, steps, from_token=F, chunk=2))
        for r, n in zip(ref, new, strict=True):
            scale = float(r[F:].abs().max())  # float32 rounding, relative to the step's largest entry
            torch.testing.assert_close(n[F:], r[F:], rtol=1e-4, atol=1e-5 * scale)
            assert not math.isnan(float(n[F:].sum()))


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_backward_passes_equal_one_step_at_a_time(contexts: dict[str, AttributionContext], family: str) -> None:
    """Steps' gradients from one vmapped backward pass (the GPU lever) are the loop's to float rounding,
    whatever the batch and however it meets the chunk boundaries."""
    ctx = contexts[family]
    gen, model = ctx.generation, ctx.lm.model
    F = min(i for _, _, i in ctx.description_tokens())
    steps = range(0, len(gen.generated_ids))
    ref = list(step_gradients(model, gen.prompt_ids, gen.generated_ids, steps, from_token=F, chunk=3))
    for batch in (2, 4, 64):
        new = list(step_gradients(model, gen.prompt_ids, gen.generated_ids, steps, from_token=F, chunk=3, batch=batch))
        assert len(new) == len(ref) == len(steps)
        for r, n in zip(ref, new, strict=True):
            assert bool(n[:F].isnan().all())
            scale = float(r[F:].abs().max())
            torch.testing.assert_close(n[F:], r[F:], rtol=1e-4, atol=1e-5 * scale)
    loop = gradient_norms(model, gen.prompt_ids, gen.generated_ids, steps, from_token=F, batch=1)
    batched = gradient_norms(model, gen.prompt_ids, gen.generated_ids, steps, from_token=F, batch=8)
    for kind in ("saliency", "inputxgradient"):
        torch.testing.assert_close(getattr(batched, kind)[:, F:], getattr(loop, kind)[:, F:], rtol=1e-4, atol=1e-7)


def _graph_size(t: torch.Tensor) -> int:
    """Autograd nodes a backward pass from ``t`` would visit."""
    seen, todo = set(), [t.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        todo += [n for n, _ in node.next_functions]
    return len(seen)


@pytest.mark.parametrize("family", FAMILIES)
def test_an_early_steps_backward_pass_stops_at_its_own_chunk(contexts: dict[str, AttributionContext], family: str) -> None:
    """The point of chunking: step j's graph holds the chunks up to its own only (a slice of one
    concatenated target tensor would lead every step's backward pass through every chunk)."""
    ctx = contexts[family]
    gen = ctx.generation
    steps = range(0, len(gen.generated_ids))
    sg = step_gradients(ctx.lm.model, gen.prompt_ids, gen.generated_ids, steps, chunk=2)
    sizes = [_graph_size(t) for t in sg.targets]
    assert len(sizes) == len(steps) >= 4
    per_chunk = sizes[::2]
    assert sizes == [n for n in per_chunk for _ in (0, 1)][: len(sizes)], sizes  # the same within a chunk
    assert per_chunk == sorted(set(per_chunk)), sizes  # and larger with every chunk


# --------------------------------------------------------------------------------- regeneration
def reference_greedy(lm: object, ids: list[int], budget: int, ended: object) -> list[int]:
    """Plain greedy decoding written out here, independent of the library's decoding core."""
    from pytest_attnalign.forward import cache_kwarg, cache_of

    out: list[int] = []
    past, inputs = None, torch.tensor([ids])
    eos = lm.tokenizer.eos_token_id
    with torch.no_grad():
        for i in range(budget):
            kwargs = {cache_kwarg(lm.model): past} if past is not None else {}
            res = lm.model(input_ids=inputs, use_cache=True, **kwargs)
            past = cache_of(res)
            nxt = int(res.logits[0, -1].argmax())
            if eos is not None and nxt == eos:
                break
            out.append(nxt)
            if (i + 1) % 4 == 0 and ended(out):
                break
            inputs = torch.tensor([[nxt]])
    return out


def perturbed(ctx: AttributionContext) -> list[str]:
    """Single-word changes early, in the middle and late, SHAP-style masks, and the original."""
    from pytest_attnalign.methods.perturbation import mask_words

    p, words = ctx.task.prompt, ctx.description_words()
    n = len(words)
    out = [p] + [p[: words[i][0]] + w + p[words[i][1] :] for i, w in ((0, "class"), (n // 2, "..."), (n - 1, "value."))]
    out += [mask_words(p, words, [(i * k) % 3 != 0 for i in range(n)]) for k in (1, 2)]
    return out + [mask_words(p, words, [False] * n), p]


def expected_ids(ctx: AttributionContext, prompts: list[str]) -> list[list[int]]:
    from pytest_attnalign.generation import has_ended
    from pytest_attnalign.regenerate import _prompt_ids

    lm, gen = ctx.lm, ctx.generation
    ended = lambda new: has_ended(ctx.task, gen.prompt_format, lm.tokenizer.decode(new, skip_special_tokens=True))  # noqa: E731
    return [reference_greedy(lm, _prompt_ids(lm, ctx.task, gen.prompt_format, p), gen.max_new_tokens, ended)
            for p in prompts]


@pytest.fixture(scope="module")
def regen_contexts(contexts: dict[str, AttributionContext]) -> dict[str, AttributionContext]:
    out = {}
    for family, c in contexts.items():
        prompt, gen = generate(c.lm, TASK, "completion", max_new_tokens=20)
        out[family] = AttributionContext(lm=c.lm, task=TASK, prompt=prompt, generation=gen)
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_every_decoding_path_equals_plain_greedy(regen_contexts: dict[str, AttributionContext], family: str) -> None:
    """generate(), verified (one row with prefix reuse, batched as on GPU), pooled and unverified
    regeneration: token for token the reference loop above, on every architecture."""
    from pytest_attnalign.generation import greedy_decode
    from pytest_attnalign.regenerate import regenerate_ids

    ctx = regen_contexts[family]
    prompts = perturbed(ctx)
    expected = expected_ids(ctx, prompts)
    assert expected[0] == list(ctx.generation.raw_ids)
    for batch_size, pool_size in ((1, 1), (1, 8), (8, None), (3, 2), (8, 1)):
        stats: dict[str, int] = {}
        got = regenerate_ids(ctx.lm, ctx.task, ctx.generation, prompts,
                             batch_size=batch_size, pool_size=pool_size, stats=stats)
        assert got == expected, f"{family} batch_size={batch_size} pool_size={pool_size} {stats}"
        assert stats["verified"] > 0 and (pool_size != 8 or stats["decoded"] > 0)
    assert regenerate_ids(ctx.lm, ctx.task, ctx.generation, prompts, verify=False) == expected
    lm = ctx.lm
    from pytest_attnalign.regenerate import _ended, _prompt_ids

    ids = torch.tensor([_prompt_ids(lm, TASK, "completion", prompts[1])])
    assert greedy_decode(lm.model, ids, 20, lm.tokenizer.eos_token_id, _ended(TASK, "completion", lm.tokenizer)) == expected[1]


def test_a_growing_cache_layer_equals_the_concatenating_one_and_copies_once_per_room() -> None:
    from transformers.cache_utils import DynamicLayer

    from pytest_attnalign.growing_cache import ROOM, GrowingLayer

    torch.manual_seed(0)
    plain, grow = DynamicLayer(), GrowingLayer()
    buffers: list[torch.Tensor] = []  # kept alive, so that each new one is told apart by identity
    for i in range(2 * ROOM + 10):
        shape = (3 if i < ROOM else 2, 2, 7 if i == 0 else 1, 4)
        k, v = torch.randn(shape), torch.randn(shape)
        if i == ROOM:  # a row leaves the batch: both layers' tensors are replaced from outside
            for layer in (plain, grow):
                layer.keys, layer.values = layer.keys[[0, 2]], layer.values[[0, 2]]
        got, want = grow.update(k, v), plain.update(k, v)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), i
        if grow.buffers and not any(b is grow.buffers[0] for b in buffers):
            buffers.append(grow.buffers[0])
    assert 2 <= len(buffers) <= 4  # a fresh buffer at the first step, when full and after the row left


def _one_row_caches(lengths: list[int], kind: type | None = None) -> list:
    """One-row caches of two layers with random keys and values (4 heads x length x 8)."""
    from types import SimpleNamespace

    from transformers.cache_utils import DynamicLayer

    caches = []
    for n in lengths:
        layers = []
        for _ in range(2):
            layer = kind(sliding_window=4096) if kind else DynamicLayer()
            layer.update(torch.randn(1, 4, n, 8), torch.randn(1, 4, n, 8))
            layers.append(layer)
        caches.append(SimpleNamespace(layers=layers))
    return caches


def _concatenated(caches: list, lengths: list[int], width: int, name: str, layer: int) -> torch.Tensor:
    """The stacked tensor the way the pool used to build it: zero padding on the left, one cat."""
    return torch.cat([torch.cat([torch.zeros(1, 4, width - n, 8), getattr(c.layers[layer], name)], dim=2)
                      for c, n in zip(caches, lengths)], dim=0)


def test_a_pool_grows_and_shrinks_in_its_own_buffers_with_the_values_of_fresh_copies() -> None:
    from transformers.cache_utils import DynamicLayer

    from pytest_attnalign.growing_cache import ROOM, GrowingLayer, keep_rows, pooled

    torch.manual_seed(0)
    lengths, width = [5, 9, 3, 9, 7], 9
    caches = _one_row_caches(lengths)
    want = [[_concatenated(caches, lengths, width, name, n) for name in ("keys", "values")] for n in range(2)]
    cache = pooled(caches, lengths, width)
    for n, layer in enumerate(cache.layers):
        assert type(layer) is GrowingLayer
        assert torch.equal(layer.keys, want[n][0]) and torch.equal(layer.values, want[n][1])
    # four steps, rows leaving after the second (the first row: every later row moves down) and the
    # third; the first step copies into room, every later one writes there
    plain = [DynamicLayer() for _ in range(2)]
    for n, layer in enumerate(plain):
        layer.update(*want[n])
    live = list(range(len(lengths)))
    for keep in ([0, 1, 2, 3, 4], [1, 2, 3, 4], [0, 2], None):
        k, v = torch.randn(len(live), 4, 1, 8), torch.randn(len(live), 4, 1, 8)
        for mine, ref in zip(cache.layers, plain):
            storage = mine.buffers[0].data_ptr() if mine.buffers else None
            got, expected = mine.update(k, v), ref.update(k, v)
            assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
            assert mine.buffers[0].shape[2] == width + 1 + ROOM  # one buffer with room for all steps
            assert storage in (None, mine.buffers[0].data_ptr())  # written into its room, not re-allocated
        if keep is None:
            break
        idx = torch.tensor(keep)
        for ref in plain:
            ref.keys, ref.values = ref.keys.index_select(0, idx), ref.values.index_select(0, idx)
        storage = [layer.buffers[0].data_ptr() for layer in cache.layers]
        keep_rows(cache, keep)
        live = [live[j] for j in keep]
        for mine, ref, ptr in zip(cache.layers, plain, storage):
            assert torch.equal(mine.keys, ref.keys) and torch.equal(mine.values, ref.values)
            assert mine.buffers[0].data_ptr() == ptr and mine.views[0] is mine.keys  # in place, still its own views
    assert live == [1, 3]


def test_a_pool_of_other_cache_layers_is_stacked_as_they_are() -> None:
    from transformers.cache_utils import DynamicSlidingWindowLayer

    from pytest_attnalign.growing_cache import keep_rows, pooled

    torch.manual_seed(0)
    lengths, width = [4, 6], 6
    caches = _one_row_caches(lengths, DynamicSlidingWindowLayer)
    cache = pooled(caches, lengths, width)
    for n, layer in enumerate(cache.layers):
        assert type(layer) is DynamicSlidingWindowLayer
        assert torch.equal(layer.keys, _concatenated(caches, lengths, width, "keys", n))
    want = cache.layers[1].values[[1]]
    keep_rows(cache, [1])
    assert torch.equal(cache.layers[1].values, want)


@pytest.mark.parametrize("family", FAMILIES)
def test_pooled_steps_write_into_a_growing_cache(regen_contexts: dict[str, AttributionContext], family: str) -> None:
    from pytest_attnalign.growing_cache import GrowingLayer
    from pytest_attnalign.regenerate import regenerate_ids

    ctx = regen_contexts[family]
    prompts = perturbed(ctx)
    kinds: list[set[str]] = []

    def seen(module: object, args: tuple, kwargs: dict) -> None:
        ids, cache = kwargs.get("input_ids"), kwargs.get("cache", kwargs.get("past_key_values"))
        if ids is not None and ids.shape[0] > 1 and ids.shape[1] == 1 and cache is not None:
            kinds.append({type(layer).__name__ for layer in cache.layers})

    hook = ctx.lm.model.register_forward_pre_hook(seen, with_kwargs=True)
    try:
        assert regenerate_ids(ctx.lm, ctx.task, ctx.generation, prompts, verify=False) == expected_ids(ctx, prompts)
    finally:
        hook.remove()
    assert kinds and all(k == {GrowingLayer.__name__} for k in kinds), kinds


@pytest.mark.parametrize("family", FAMILIES)
def test_lookahead_decoding_equals_plain_greedy(regen_contexts: dict[str, AttributionContext], family: str) -> None:
    """One row decoded with guessed tokens (prompt lookup) from any step, with the shortcuts' attention:
    the reference's tokens."""
    _lookahead_guessed(regen_contexts, family)  # asserts the tokens; memoises the guesses confirmed


def _lookahead_guessed(regen_contexts: dict[str, AttributionContext], family: str) -> int:
    """Check :func:`decoding.decode_lookahead` against plain greedy decoding on ``family`` (once per
    process) and return how many guessed tokens it confirmed."""
    from pytest_attnalign.decoding import NearTie, Row, StopRule, decode_lookahead
    from pytest_attnalign.forward import cache_of, fast_attention, step
    from pytest_attnalign.regenerate import _ended, _prompt_ids

    if family in GUESSED:
        return GUESSED[family]
    ctx = regen_contexts[family]
    lm = ctx.lm
    ended = _ended(TASK, "completion", lm.tokenizer)
    budget = 40
    guessed, completed = 0, 0
    for text in perturbed(ctx)[:4]:
        ids = _prompt_ids(lm, TASK, "completion", text)
        want = reference_greedy(lm, ids, budget, ended)
        for start in (1, 5):  # hand over after `start` plainly decoded tokens
            if len(want) < start:
                continue
            with torch.no_grad():
                past = cache_of(step(lm.model, torch.tensor([ids + want[: start - 1]]), None))
            counter: dict[str, int] = {}
            with fast_attention(lm.model):
                got = decode_lookahead(lm.model, Row(ids, list(want[:start]), past, start),
                                       StopRule(budget, lm.tokenizer.eos_token_id, ended), TEST_TOL, "cpu", counter)
            tie = isinstance(got, NearTie)  # the caller replays it plainly
            assert tie or got == want, (family, text[:40], start)
            completed += not tie
            guessed += counter.get("guessed", 0) if not tie else 0
    assert completed > 0, family
    GUESSED[family] = guessed
    return guessed


GUESSED: dict[str, int] = {}  # per process: under xdist the per-family tests may run on other workers
#: Random tiny models' top-2 logits often lie within the default margin (1024 eps x scale), which
#: would send every row to plain decoding; 64 eps still leaves 2x the measured rounding noise.
TEST_TOL = -64 * 1.2e-7


def test_lookahead_guesses_were_taken(regen_contexts: dict[str, AttributionContext]) -> None:
    """Across the families, some guessed tokens were confirmed (the multi-token path ran); families
    whose per-family test ran in another process are checked here."""
    guessed = {family: _lookahead_guessed(regen_contexts, family) for family in FAMILIES}
    assert sum(guessed.values()) > 0, guessed


#: Families whose transformers classes can switch to SDPA at run time (XGLM cannot: it stays eager).
SDPA_FAMILIES = ("gpt2", "codegen", "gptj", "gpt_neox", "llama")


@pytest.mark.parametrize("family", FAMILIES)
def test_the_shortcuts_attention_switches_and_always_switches_back(regen_contexts: dict[str, AttributionContext],
                                                                   family: str) -> None:
    """The shortcuts run with SDPA where the model allows it; plain decoding inside them, everything
    after them (the attention methods read eager weights) and a failure inside them get eager back."""
    from pytest_attnalign.forward import fast_attention, reference_attention

    model = regen_contexts[family].lm.model
    impl = lambda: model.config._attn_implementation  # noqa: E731
    assert impl() == "eager"
    with fast_attention(model):
        inside = impl()
        with fast_attention(model):  # nested: no second switch, nothing restored too early
            assert impl() == inside
        assert impl() == inside
        with reference_attention(model):
            assert impl() == "eager"
        assert impl() == inside
    assert impl() == "eager"
    assert inside == ("sdpa" if family in SDPA_FAMILIES else "eager")
    with pytest.raises(RuntimeError), fast_attention(model):
        raise RuntimeError("inside the shortcuts")
    assert impl() == "eager"
    with reference_attention(model):  # outside the shortcuts: nothing to switch
        assert impl() == "eager"
