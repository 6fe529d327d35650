"""Token units (self-attention and gradients) are the study's: each model token stripped of its
surrounding whitespace, at the place the study's scorer finds it.

The study's wrappers turn a byte-level token into text with ``.replace("Ġ", " ").replace("Ċ", "\\n")
.strip()`` and drop empty strings; its scorer (``tokenize_with_indices`` in calculate.ipynb) finds each
string in the prompt from the end of the previous one. This tool takes the tokenizer's offsets
instead; both must give the same units wherever the study's search finds the token.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from tiny_models import gpt2_tokenizer

from pytest_attnalign.generation import Generation, build_prompt
from pytest_attnalign.methods import AttributionContext
from pytest_attnalign.tasks import load_tasks


def study_units(text: str, lo: int, hi: int, tokens: list[str], offsets: list[tuple[int, int]]) -> list[tuple[int, int] | None]:
    """The study's unit of each token inside ``[lo, hi)``: its cleaned string found after the previous one
    (None where the search fails, as it does for a piece of a multi-byte character)."""
    out: list[tuple[int, int] | None] = []
    current = lo
    for token, (a, b) in zip(tokens, offsets):
        if a < lo or b > hi:
            continue
        clean = token.replace("Ġ", " ").replace("Ċ", "\n").strip()
        if not clean:
            continue
        start = text.find(clean, current, hi)
        if start == -1:
            out.append(None)
            continue
        out.append((start, start + len(clean)))
        current = start + len(clean)
    return out


@pytest.fixture(scope="module")
def fast_gpt2(tmp_path_factory: pytest.TempPathFactory):
    """GPT-2's tokenizer (the vocabulary of the study's codeparrot, codegen, gpt-j and polycoder), fast
    build: the tool maps tokens to characters through its offsets."""
    from transformers import AutoTokenizer

    directory = Path(tmp_path_factory.mktemp("gpt2_tokenizer"))
    gpt2_tokenizer().save_pretrained(directory)
    return AutoTokenizer.from_pretrained(directory, use_fast=True)


def test_token_units_equal_the_study_s_on_every_task(fast_gpt2) -> None:
    found = unfound = 0
    for task in load_tasks("all"):
        prompt = build_prompt(task, fast_gpt2, "completion")
        enc = fast_gpt2(prompt.text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        gen = Generation(task_id=task.task_id, prompt_format="completion", max_new_tokens=1, stop_rule="",
                         raw="", completion="", generated_ids=(), prompt_ids=tuple(ids))
        ctx = AttributionContext(lm=SimpleNamespace(tokenizer=fast_gpt2), task=task, prompt=prompt, generation=gen)
        ours = [(a, b) for a, b, _ in ctx.description_tokens()]
        lo, hi = prompt.description
        # Tokens straddling the region's edges are clipped by the tool and not the study's unit at all.
        inside = [(a, b) for a, b in enc["offset_mapping"] if lo <= a and b <= hi]
        theirs = study_units(prompt.text, lo, hi, fast_gpt2.convert_ids_to_tokens(ids), list(enc["offset_mapping"]))
        ours_inside = [u for u in ours if any(a <= u[0] and u[1] <= b for a, b in inside)]
        assert len(theirs) == len(ours_inside), task.task_id
        for mine, study in zip(ours_inside, theirs):
            if study is None:
                # The study could not find it: a byte-level piece of a non-ASCII character.
                assert any(ord(c) > 127 for c in prompt.text[mine[0]:mine[1]]), (task.task_id, mine)
                unfound += 1
            else:
                assert mine == study, (task.task_id, prompt.text[mine[0]:mine[1]], prompt.text[study[0]:study[1]])
                found += 1
    assert found > 30_000 and unfound < found / 100, (found, unfound)
