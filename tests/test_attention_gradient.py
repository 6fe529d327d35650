"""Self-attention and gradient attribution on tiny models of every family the study used.

References are computed independently of the code under test: a separate forward pass with
attentions for the layer/head views, captum's own Saliency/InputXGradient and a float64
finite difference for the gradients, and a hand-wired GPT-2 whose output one prompt token decides.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tiny_models import FAMILIES, family_contexts, gpt2_tokenizer

from pytest_attnalign.errors import AttnalignError
from pytest_attnalign.generation import Generation, build_prompt, generate
from pytest_attnalign.methods import BUILTIN, COMPAT, AttributionContext, get_method
from pytest_attnalign.methods.gradient import GradientMethod, step_gradients
from pytest_attnalign.models import load_model
from pytest_attnalign.tasks import get_task

TASK = get_task("HumanEval/0")
ATTENTION = [n for n, (_, _, c) in BUILTIN.items() if c == "self_attention"]
GRADIENT = [n for n, (_, _, c) in BUILTIN.items() if c == "gradient"]
TEN = ATTENTION + GRADIENT


@pytest.fixture(scope="module")
def contexts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, AttributionContext]:
    """One tiny model per family, 6 greedy tokens on HumanEval/0 in completion format."""
    return family_contexts(tmp_path_factory, 6)


def fresh(ctx: AttributionContext, **changes: object) -> AttributionContext:
    """The same generation with an empty memo (no pass shared with earlier calls)."""
    return AttributionContext(lm=ctx.lm, task=ctx.task, prompt=ctx.prompt,
                              generation=dataclasses.replace(ctx.generation, **changes))


def scores_by_token(ctx: AttributionContext, name: str) -> torch.Tensor:
    """Method scores as a vector indexed like ``ctx.description_tokens()``."""
    return torch.tensor([v for _, _, v in get_method(name).attribute(ctx)], dtype=torch.float64)


def reference_attention(ctx: AttributionContext) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-layer, per-head READING row P-1+first and CODING rows P-1+j (explained j) at the description
    tokens: [L, H, U]. Step j explains generated token j, predicted at position P-1+j."""
    gen = ctx.generation
    P, (first, end) = len(gen.prompt_ids), gen.explained
    with torch.no_grad():
        atts = ctx.lm.model(torch.tensor([gen.prompt_ids + gen.generated_ids]), output_attentions=True).attentions
    full = torch.stack([a[0] for a in atts]).double()  # [L, H, T, T]
    cols = [i for _, _, i in ctx.description_tokens()]
    return full[:, :, P - 1 + first, cols], full[:, :, P - 1 + first : P - 1 + end][..., cols].sum(dim=2)


# (a) every family, every method: one finite score per description token ------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_every_method_scores_every_description_token(contexts: dict[str, AttributionContext], family: str) -> None:
    ctx = fresh(contexts[family])
    units = ctx.description_tokens()
    assert units
    for name in TEN + list(COMPAT):
        got = get_method(name).attribute(ctx)
        assert [(s, e) for s, e, _ in got] == [(s, e) for s, e, _ in units], name
        assert all(type(v) is float and math.isfinite(v) and v >= 0 for _, _, v in got), name
    # one attention pass; one gradient pass for the READING pair, one for the CODING pair
    G = len(ctx.generation.generated_ids)
    assert {k for k in ctx._memo if k not in ("description_tokens", "code_lines")} == {"attention", "gradients:steps=0-1", f"gradients:steps=0-{G}"}


# (b) + (f) layer and head views against an independent forward pass ------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_layer_and_compat_views_match_reference(contexts: dict[str, AttributionContext], family: str) -> None:
    ctx = fresh(contexts[family])
    reading, coding = reference_attention(ctx)
    for phase, ref in (("reading", reading), ("coding", coding)):
        per_layer = ref.sum(dim=1)  # heads summed: [L, U]
        expected = {
            f"{phase}_first": per_layer[0], f"{phase}_last": per_layer[-1], f"{phase}_all": per_layer.sum(dim=0),
            # the study's code's defect: "layers" that are heads of layer 0
            f"compat_{phase}_head0": ref[0, 0], f"compat_{phase}_lasthead": ref[0, -1],
            f"compat_{phase}_allheads": ref[0].sum(dim=0),
        }
        for name, want in expected.items():
            torch.testing.assert_close(scores_by_token(ctx, name), want, rtol=1e-5, atol=1e-6, msg=name)
    assert reading.shape[0] == 2 and not torch.allclose(reading[0], reading[1])  # first != last is tested


def test_coding_needs_generated_tokens(contexts: dict[str, AttributionContext]) -> None:
    ctx = fresh(contexts["gpt2"], generated_ids=(), explained=(0, 0))
    assert len(get_method("reading_all").attribute(ctx)) == len(ctx.description_tokens())
    for name in ("coding_all", "compat_coding_head0", "saliency_reading", "inputxgradient_coding"):
        with pytest.raises(AttnalignError, match="generated no code"):
            get_method(name).attribute(ctx)


def test_names_and_settings() -> None:
    from pytest_attnalign.methods.attention import SelfAttention

    assert get_method("compat_coding_lasthead").settings() == {
        "rows": "P-1+j per body token, summed", "layers": "0", "heads": "last", "dtype": "float32",
        "restated_copy": "ignore"}
    assert get_method("saliency_coding", restated_copy="credit").settings()["restated_copy"] == "credit"
    with pytest.raises(AttnalignError, match="^coding_all: restated_copy must be ignore or credit, not 'yes'$"):
        get_method("coding_all", restated_copy="yes")
    with pytest.raises(AttnalignError, match="^saliency_reading: restated_copy must be"):
        get_method("saliency_reading", restated_copy="maybe")
    assert get_method("reading_last").settings()["layers"] == "last"
    assert get_method("inputxgradient_reading").settings()["target"] == "log_prob"
    for bad in ("reading_head0", "compat_reading_all", "writing_all", "saliency_writing"):
        with pytest.raises(AttnalignError, match="unknown"):
            (GradientMethod if bad.startswith("saliency") else SelfAttention)(bad)


def test_missing_attentions_is_a_clear_error(contexts: dict[str, AttributionContext]) -> None:
    class NoAttentions(torch.nn.Module):  # what an sdpa/flash-attention model gives back
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, **_: object) -> SimpleNamespace:
            return SimpleNamespace(attentions=(None, None))

    ctx = contexts["gpt2"]
    ctx = AttributionContext(lm=SimpleNamespace(model=NoAttentions(), tokenizer=ctx.lm.tokenizer), task=TASK,
                             prompt=ctx.prompt, generation=ctx.generation)
    with pytest.raises(AttnalignError, match="eager"):
        get_method("reading_all").attribute(ctx)


# (c) gradients: captum equality and a float64 finite difference ---------------------------------

def captum_norms(ctx: AttributionContext, j: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """captum's Saliency(abs=False) and InputXGradient for step j on the prefix alone, plus norms."""
    from captum.attr import InputXGradient, Saliency

    gen, model = ctx.generation, ctx.lm.model
    P, y = len(gen.prompt_ids), gen.generated_ids[j]
    ids = torch.tensor([gen.prompt_ids + gen.generated_ids[:j]])
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_()

    def logprob(e: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(model(inputs_embeds=e, logits_to_keep=1).logits[:, -1].float(), dim=-1)[:, y]

    sal = Saliency(logprob).attribute(embeds, abs=False)[0, :P]
    ixg = InputXGradient(logprob).attribute(embeds)[0, :P]
    return sal, ixg, sal.norm(dim=-1), ixg.norm(dim=-1)


def test_gradients_equal_captum(contexts: dict[str, AttributionContext]) -> None:
    ctx = fresh(contexts["codegen"])
    gen = ctx.generation
    cols = [i for _, _, i in ctx.description_tokens()]
    steps = [captum_norms(ctx, j) for j in range(len(gen.generated_ids))]
    # raw per-step gradients of the shared single forward pass == captum's per-prefix attributions
    sg = step_gradients(ctx.lm.model, gen.prompt_ids, gen.generated_ids, gen.explained_steps)
    x = sg.embeds.detach()[0, : len(gen.prompt_ids)]
    for (sal, ixg, _, _), g in zip(steps, sg, strict=True):
        torch.testing.assert_close(g, sal, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(x * g, ixg, rtol=1e-4, atol=1e-6)  # exactly captum's InputXGradient
    # and the methods' scores are those norms: step 0 for reading, summed over steps for coding
    for kind, k in (("saliency", 2), ("inputxgradient", 3)):
        want_reading = steps[0][k][cols].double()
        want_coding = sum(s[k] for s in steps)[cols].double()
        torch.testing.assert_close(scores_by_token(ctx, f"{kind}_reading"), want_reading, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(scores_by_token(ctx, f"{kind}_coding"), want_coding, rtol=1e-4, atol=1e-7)


def test_attention_and_gradients_explain_the_same_steps(contexts: dict[str, AttributionContext]) -> None:
    """A generation whose body starts at step 2 (as after a restated line): both families explain steps
    2..G-1, READING is step 2 in both, and every score equals its independent reference."""
    base = contexts["llama"].generation
    G = len(base.generated_ids)
    assert G >= 4
    ctx = fresh(contexts["llama"], explained=(2, G))
    reading, coding = reference_attention(ctx)  # rows P+1 and P+1..P+G-2
    torch.testing.assert_close(scores_by_token(ctx, "reading_all"), reading.sum(dim=(0, 1)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(scores_by_token(ctx, "coding_all"), coding.sum(dim=(0, 1)), rtol=1e-5, atol=1e-6)
    cols = [i for _, _, i in ctx.description_tokens()]
    steps = [captum_norms(ctx, j) for j in range(2, G)]
    torch.testing.assert_close(scores_by_token(ctx, "saliency_reading"), steps[0][2][cols].double(), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(scores_by_token(ctx, "inputxgradient_coding"),
                               sum(s[3] for s in steps)[cols].double(), rtol=1e-4, atol=1e-7)
    # and the explained steps decide the scores: steps 0..1 are not in them
    assert scores_by_token(ctx, "coding_all").tolist() != scores_by_token(fresh(contexts["llama"]), "coding_all").tolist()


def test_gradient_matches_finite_difference(contexts: dict[str, AttributionContext]) -> None:
    """d log p(y_j) along a perturbation of one prompt token's embedding == gradient . perturbation.

    float64 GPT-2: its LayerNorm and attention stay in float64 (Llama's RMSNorm and RoPE upcast to
    float32, whose rounding swamps a finite difference). The targets are a fixed code line, so a
    coding step (j = 3) is checked whatever the tiny model generated.
    """
    ctx = contexts["gpt2"]
    model = load_model(ctx.lm.model.name_or_path, device="cpu", dtype="float32").model.double()
    prompt_ids = ctx.generation.prompt_ids
    targets = tuple(ctx.lm.tokenizer("    for i in range(len(numbers)):", add_special_tokens=False)["input_ids"])
    j = 3
    g = list(step_gradients(model, prompt_ids, targets, range(len(targets))))[j]
    embeds = model.get_input_embeddings()(torch.tensor([prompt_ids + targets[:j]])).detach()

    def logprob(e: torch.Tensor) -> float:
        with torch.no_grad():
            return float(torch.log_softmax(model(inputs_embeds=e, logits_to_keep=1).logits[0, -1], dim=-1)[targets[j]])

    i = max((i for _, _, i in ctx.description_tokens()), key=lambda i: float(g[i].norm()))
    random = torch.randn(g.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for direction in (g[i] / g[i].norm(), random / random.norm()):  # the steepest and a random one
        delta = torch.zeros_like(embeds)
        delta[0, i] = 1e-4 * direction
        fd = (logprob(embeds + delta) - logprob(embeds - delta)) / 2
        assert fd == pytest.approx(float(g[i] @ delta[0, i]), rel=1e-5, abs=1e-12)


def test_max_steps_caps_coding(contexts: dict[str, AttributionContext]) -> None:
    ctx = fresh(contexts["codegen"])
    capped = GradientMethod("saliency_coding", max_steps=1)
    assert capped.settings()["max_steps"] == 1 and get_method("saliency_coding").settings()["max_steps"] is None
    # a 1-step pass runs a shorter sequence than the full one: equal up to float32 matmul rounding
    reading = get_method("saliency_reading").attribute(ctx)
    torch.testing.assert_close(torch.tensor(capped.attribute(ctx)), torch.tensor(reading), rtol=1e-4, atol=1e-7)
    with pytest.raises(AttnalignError, match="max_steps"):
        GradientMethod("saliency_coding", max_steps=0)


# (d) determinism ------------------------------------------------------------------------------

def test_same_input_gives_identical_scores(contexts: dict[str, AttributionContext]) -> None:
    ctx = contexts["codegen"]
    first = {n: get_method(n).attribute(fresh(ctx)) for n in TEN}
    assert first == {n: get_method(n).attribute(fresh(ctx)) for n in TEN}


# (e) a model whose output one description token alone decides -----------------------------------

def decisive_gpt2(directory: Path, x: int, y: int) -> Path:
    """A 2-layer, 1-head GPT-2 (width 8) that emits token ``y`` iff token ``x`` is in its context.

    Dimensions: 0 = "x is here" (only ``x``'s embedding is non-zero: ``S`` there), 2 = the output
    read by the unembedding, 3/4 = a constant +1/-1 from the position embeddings so LayerNorm of a
    zero embedding is well defined and has 0 in dimension 0. The query is a constant (a bias A in
    q), the key and value are LayerNorm(x)[0]: positive at ``x``, exactly 0 elsewhere, so every
    position after ``x`` attends to it with weight ~1 - e^-50 in both layers, and the value it
    copies into dimension 2 gives ``y`` a logit ~12 against 0 for every other token. The MLPs are
    zero. Hence every method can see it: attention mass concentrates on ``x`` from every row
    after it; the target's gradient reaches other prompt tokens only through attention weights of
    ~e^-50; and their embeddings are zero, so InputXGradient gives them exactly 0.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=50257, n_embd=8, n_layer=2, n_head=1, n_positions=512, tie_word_embeddings=False,
                     bos_token_id=50256, eos_token_id=50256)
    model = GPT2LMHeadModel(cfg)
    A, S, C = 64.0, 4.0, 5.0
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for name, p in model.named_parameters():
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                p.fill_(1.0)
        model.transformer.wte.weight[x, 0] = S
        model.transformer.wpe.weight[:, 3], model.transformer.wpe.weight[:, 4] = 1.0, -1.0
        for block in model.transformer.h:
            block.attn.c_attn.bias[0] = A  # q = (A, 0, ...): the same query at every position
            block.attn.c_attn.weight[0, 8] = 1.0  # k[0] = LN(h)[0]
            block.attn.c_attn.weight[0, 16] = 1.0  # v[0] = LN(h)[0]
            block.attn.c_proj.weight[0, 2] = 1.0  # attention output -> dimension 2
        model.lm_head.weight[y, 2] = C
    model.save_pretrained(str(directory))
    gpt2_tokenizer().save_pretrained(str(directory))
    return directory


def test_decisive_token_ranks_first_for_every_method(tmp_path: Path) -> None:
    tok = gpt2_tokenizer()
    prompt = build_prompt(TASK, tok, "completion")
    ids = tuple(tok(prompt.text, add_special_tokens=False)["input_ids"])
    probe = AttributionContext(lm=SimpleNamespace(tokenizer=tok), task=TASK, prompt=prompt,
                               generation=Generation(TASK.task_id, "completion", 0, "", "", "", (), ids))
    unique = [i for _, _, i in probe.description_tokens() if ids.count(ids[i]) == 1]
    decisive = unique[len(unique) // 2]
    y = tok(" x", add_special_tokens=False)["input_ids"][0]
    lm = load_model(str(decisive_gpt2(tmp_path, ids[decisive], y)), device="cpu", dtype="float32")

    prompt, gen = generate(lm, TASK, "completion", max_new_tokens=4)
    assert gen.generated_ids == (y,) * 4
    without = list(ids)
    without[decisive] = ids[decisive - 1]  # the same prompt without that token: y becomes as unlikely as any
    with torch.no_grad():
        p_with, p_without = (torch.softmax(lm.model(torch.tensor([seq])).logits[0, -1], dim=-1)[y]
                             for seq in (ids, without))
    assert p_with > 0.5 and p_without < 1e-4

    ctx = AttributionContext(lm=lm, task=TASK, prompt=prompt, generation=gen)
    position = [i for _, _, i in ctx.description_tokens()].index(decisive)
    for name in TEN + list(COMPAT):
        scores = scores_by_token(ctx, name)
        assert int(scores.argmax()) == position, name
        assert scores[position] > 100 * scores[torch.arange(len(scores)) != position].max(), name


# (d) the restated copy: ignored by default, credited to the words it copies on request ---------

def test_restated_copy_is_credited_to_the_words_it_copies(contexts: dict[str, AttributionContext]) -> None:
    """A reply that restates 40 characters of the description before its body: with
    restated_copy=credit, each copying token's attention / gradient column goes to the description
    tokens whose characters it copies (split equally); by default the scores ignore those columns."""
    from captum.attr import Saliency

    base = contexts["llama"]
    tok, gen = base.lm.tokenizer, base.generation
    lo = base.prompt.description[0]
    copy = base.prompt.text[lo : lo + 40]
    head, body = tok(copy, add_special_tokens=False)["input_ids"], tok("\n    return 1\n", add_special_tokens=False)["input_ids"]
    ids = tuple(head + body)
    assert tok.decode(list(head)) == copy
    ctx = fresh(base, generated_ids=ids, raw_ids=ids, raw=tok.decode(list(ids)), explained=(len(head), len(ids)))
    P, first = len(gen.prompt_ids), len(head)
    units = ctx.description_tokens()
    shift = ctx.prompt.task_offset
    credit: dict[int, list[int]] = {}  # generated column -> description tokens it copies (by character)
    for i in range(first):
        s, e = len(tok.decode(list(ids[:i]))), len(tok.decode(list(ids[: i + 1])))
        credit[P + i] = [t for us, ue, t in units if us < lo + e - shift and lo + s - shift < ue]
    assert sum(map(bool, credit.values())) == first  # every copying token copies a description token

    def expected(column: torch.Tensor) -> torch.Tensor:
        out = {t: float(column[t]) for _, _, t in units}
        for c, hit in credit.items():
            for t in hit:
                out[t] += float(column[c]) / len(hit)
        return torch.tensor([out[t] for _, _, t in units], dtype=torch.float64)

    seq = torch.tensor([list(gen.prompt_ids) + list(ids)])
    with torch.no_grad():
        atts = ctx.lm.model(seq, output_attentions=True).attentions
    row = torch.stack([a[0] for a in atts]).double().sum(dim=(0, 1))[P - 1 + first]  # reading_all's row
    embeds = ctx.lm.model.get_input_embeddings()(seq[:, : P + first]).detach().requires_grad_()

    def logprob(e: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(ctx.lm.model(inputs_embeds=e).logits[:, -1].float(), dim=-1)[:, ids[first]]

    grad_norms = Saliency(logprob).attribute(embeds, abs=False)[0].norm(dim=-1).double()
    for name, column in (("reading_all", row), ("saliency_reading", grad_norms)):
        plain = torch.tensor([v for _, _, v in get_method(name).attribute(ctx)], dtype=torch.float64)
        torch.testing.assert_close(plain, torch.stack([column[t] for _, _, t in units]), rtol=1e-4, atol=1e-7)
        got = torch.tensor([v for _, _, v in get_method(name, restated_copy="credit").attribute(ctx)], dtype=torch.float64)
        torch.testing.assert_close(got, expected(column), rtol=1e-4, atol=1e-7, msg=name)
        assert not torch.allclose(got, plain)
    # completion format continues the prompt: nothing before the body, so crediting changes nothing
    cont = fresh(base)
    assert cont.generation.explained[0] == 0
    assert get_method("coding_all", restated_copy="credit").attribute(cont) == get_method("coding_all").attribute(cont)
