"""The speed paths give the reference's numbers: chunked, prefix-detached gradients equal the single
full pass (itself checked against captum's per-prefix loop in test_attention_gradient.py)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from tiny_models import FAMILIES, build_tiny

from pytest_attnalign.generation import generate
from pytest_attnalign.methods import AttributionContext
from pytest_attnalign.methods.gradient import gradient_norms, step_gradients
from pytest_attnalign.models import load_model
from pytest_attnalign.tasks import get_task

TASK = get_task("HumanEval/0")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def contexts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, AttributionContext]:
    out = {}
    for family in FAMILIES:
        lm = load_model(str(build_tiny(family, tmp_path_factory.mktemp(family))), device="cpu", dtype="float32")
        prompt, gen = generate(lm, TASK, "completion", max_new_tokens=9)
        gen = dataclasses.replace(gen, generated_ids=gen.raw_ids, explained=(0, len(gen.raw_ids)))
        out[family] = AttributionContext(lm=lm, task=TASK, prompt=prompt, generation=gen)
    return out


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
                assert a.shape == b.shape == (len(steps), len(gen.prompt_ids))
                assert bool(a[:, :F].isnan().all())  # not computed, never a silent 0
                torch.testing.assert_close(a[:, F:], b[:, F:], rtol=1e-4, atol=1e-7)
        # the raw per-step gradients too, not only their norms
        ref = list(step_gradients(model, gen.prompt_ids, gen.generated_ids, steps, chunk=10**9))
        new = list(step_gradients(model, gen.prompt_ids, gen.generated_ids, steps, from_token=F, chunk=2))
        for r, n in zip(ref, new, strict=True):
            scale = float(r[F:].abs().max())  # float32 rounding, relative to the step's largest entry
            torch.testing.assert_close(n[F:], r[F:], rtol=1e-4, atol=1e-5 * scale)
            assert not math.isnan(float(n[F:].sum()))
