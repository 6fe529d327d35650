"""The code-to-words map (linemap.py): per code line, the units the CODING methods attribute to it.

A scripted reply (tests/test_generation.py's: a real greedy loop emitting a fixed multi-line body)
gives exact generations in completion and chat format; a tiny random GPT-2 then supplies the
attention and gradients those methods read, so the sums are over real, unequal per-step scores.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from test_generation import BODY, HE0, RESTATED, scripted
from tiny_models import build_tiny

from pytest_attnalign.generation import generate
from pytest_attnalign.linemap import LINE_TOP, code_lines, compact
from pytest_attnalign.methods import BUILTIN, COMPAT, AttributionContext, get_method
from pytest_attnalign.models import load_model
from pytest_attnalign.record import Record
from pytest_attnalign.runfile import Run, read_run, write_run
from pytest_attnalign.study import Study, StudyConfig
from pytest_attnalign.tasks import get_task
from synthetic import make_record, word_units

CODING = [n for n in [*BUILTIN, *COMPAT] if "coding" in n]
NOT_CODING = [n for n, (_, _, c) in BUILTIN.items() if c != "perturbation" and "coding" not in n]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny("gpt2", tmp_path_factory.mktemp("gpt2"))


@pytest.fixture(scope="module")
def tiny(tiny_dir: Path) -> object:
    return load_model(str(tiny_dir), device="cpu", dtype="float32").model


def context(tiny: object, fmt: str, reply: str) -> AttributionContext:
    """The scripted generation of ``reply`` in ``fmt``, attributed by the tiny model."""
    lm = scripted(reply, fmt)
    prompt, gen = generate(lm, HE0, fmt, max_new_tokens=400)
    return AttributionContext(lm=SimpleNamespace(model=tiny, tokenizer=lm.tokenizer), task=HE0, prompt=prompt,
                              generation=gen)


CASES = {"completion": BODY + "\n\n\ndef check(candidate):\n    pass\n", "chat": RESTATED}


@pytest.mark.parametrize("fmt", list(CASES))
def test_each_body_line_is_a_line_of_the_completion(tiny: object, fmt: str) -> None:
    ctx = context(tiny, fmt, CASES[fmt])
    comp = ctx.generation.completion
    lines = code_lines(ctx)
    assert [comp[s:e] for s, e in lines.spans] == BODY.split("\n")
    # every step lies on its line: the token's first non-space character is inside the line's span
    tok, gen = ctx.lm.tokenizer, ctx.generation
    first = gen.explained[0]
    for j, line in enumerate(lines.of_step):
        token = tok.decode([gen.generated_ids[first + j]])
        s, e = lines.spans[line]
        if token.strip():
            assert token.strip() in comp[s:e], (token, comp[s:e])
        else:  # whitespace only: a newline closes the line it ends, indentation opens its line
            assert token.endswith("\n") or comp[s:e].startswith(token.rsplit("\n", 1)[-1]), (token, comp[s:e])


def test_whitespace_on_a_blank_line_goes_with_the_token_before(tiny: object) -> None:
    """A tokenizer that writes a blank line as its own newline token: the map has no blank line."""
    ctx = context(tiny, "completion", CASES["completion"])
    tok = ctx.lm.tokenizer
    pieces = [("    x = 1", 0), ("\n", 0), ("\n", 0), ("    return", 1), (" x", 1), ("\n", 1)]  # text, map line
    encoded = [(tok(p, add_special_tokens=False)["input_ids"], line) for p, line in pieces]
    assert [len(e) for e, _ in encoded[1:3]] == [1, 1]  # the blank line is a token of its own
    ids = tuple(i for e, _ in encoded for i in e)
    raw = tok.decode(list(ids))
    gen = dataclasses.replace(ctx.generation, raw=raw, completion=raw, generated_ids=ids, raw_ids=ids,
                              explained=(0, len(ids)))
    lines = code_lines(AttributionContext(lm=ctx.lm, task=HE0, prompt=ctx.prompt, generation=gen))
    assert [raw[s:e] for s, e in lines.spans] == ["    x = 1", "    return x"]
    assert lines.of_step == tuple(line for e, line in encoded for _ in e)


class Pieces:
    """A tokenizer whose tokens are the given strings."""

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces

    def decode(self, ids: list[int], skip_special_tokens: bool = True, clean_up_tokenization_spaces: bool = False) -> str:
        return "".join(self.pieces[i] for i in ids)


def test_a_newline_merged_with_indentation_goes_to_the_line_it_indents(tiny: object) -> None:
    """SmolLM2 writes a body's first token as a newline plus the indentation: it belongs to the body's
    line (the one it indents), not to the line the newline ends (a signature outside the body)."""
    ctx = context(tiny, "completion", CASES["completion"])
    pieces = ["    x = 1", "\n    ", "return x", "\n"]
    ids = tuple(range(len(pieces)))
    raw = "".join(pieces)
    gen = dataclasses.replace(ctx.generation, raw=raw, completion=raw, generated_ids=ids, raw_ids=ids,
                              explained=(0, len(ids)))
    lines = code_lines(AttributionContext(lm=SimpleNamespace(tokenizer=Pieces(pieces)), task=HE0, prompt=ctx.prompt,
                                          generation=gen))
    assert [raw[s:e] for s, e in lines.spans] == ["    x = 1", "    return x"]
    assert lines.of_step == (0, 1, 1, 1)  # the closing newline stays with the line it ends


@pytest.mark.parametrize("fmt", list(CASES))
@pytest.mark.parametrize("mode", ["ignore", "credit"])
def test_lines_sum_to_the_methods_unit_scores(tiny: object, fmt: str, mode: str) -> None:
    """The invariant that makes the map trustworthy: every CODING method's lines add up to its scores."""
    ctx = context(tiny, fmt, CASES[fmt])
    n_lines = len(BODY.split("\n"))
    for name in CODING:
        method = get_method(name, restated_copy=mode)
        units = method.attribute(ctx)
        lines = method.line_units(ctx)
        assert len(lines) == n_lines, name
        rows = torch.tensor([scores for _, _, scores in lines], dtype=torch.float64)
        assert rows.shape[1] == len(units)
        torch.testing.assert_close(rows.sum(dim=0), torch.tensor([v for *_, v in units], dtype=torch.float64),
                                   rtol=1e-5, atol=1e-7, msg=name)
        assert (rows > 0).any(dim=1).all(), name  # every line leaned on something
        assert not torch.allclose(rows[0], rows[-1]), name  # lines differ
    for name in NOT_CODING:
        assert get_method(name).line_units(ctx) is None


def test_credit_moves_scores_between_lines_consistently(tiny: object) -> None:
    """In chat format the reply restates the description: crediting it changes the lines and the units alike."""
    ctx = context(tiny, "chat", RESTATED)
    plain = get_method("coding_all").line_units(ctx)
    credit = get_method("coding_all", restated_copy="credit").line_units(ctx)
    assert [(s, e) for s, e, _ in plain] == [(s, e) for s, e, _ in credit]
    assert all(c >= p for (*_, ps), (*_, cs) in zip(plain, credit) for p, c in zip(ps, cs))
    assert credit != plain


def test_a_completion_not_found_in_the_reply_has_no_map(tiny: object) -> None:
    ctx = context(tiny, "completion", CASES["completion"])
    other = AttributionContext(lm=ctx.lm, task=HE0, prompt=ctx.prompt,
                               generation=dataclasses.replace(ctx.generation, completion="    return 0\n"))
    assert get_method("coding_last").line_units(other) == []
    assert len(get_method("coding_last").attribute(other)) == len(other.description_tokens())


def test_compact_keeps_the_top_units_rounded() -> None:
    scores = [0.0, 3.14159265, float("nan"), *[1.0 + i / 100 for i in range(LINE_TOP + 2)], -1.0]
    (line,) = compact([(4, 9, scores)])
    assert line[:2] == (4, 9)
    kept = line[2]
    assert len(kept) == LINE_TOP and kept[0] == (1, 3.142)
    ramp = range(3, LINE_TOP + 5)  # the indices of 1.00, 1.01, ...: the highest of them follow, best first
    assert [u for u, _ in kept[1:]] == sorted(ramp, reverse=True)[: LINE_TOP - 1]
    assert compact([(0, 1, [0.0, -2.0])]) == []  # a line that leaned on nothing is dropped


def test_the_map_round_trips_through_the_record_and_the_run_file(tmp_path: Path) -> None:
    units = word_units("HumanEval/2", 1.0, 0)
    lines = [(0, 12, [(3, 0.5), (0, 0.25)]), (13, 30, [(1, 1.5)])]
    rec = make_record("HumanEval/2", units, method="coding_last", line_units=lines)
    assert Record.from_dict(rec.to_dict()) == rec
    write_run(tmp_path / "run.json", Run([rec], (5, 10)))
    assert read_run(tmp_path / "run.json").records == [rec]


def test_a_record_without_the_map_still_reads() -> None:
    """Run files written before the map existed: the field is optional and empty."""
    rec = make_record("HumanEval/2", word_units("HumanEval/2", 1.0, 0))
    old = rec.to_dict()
    del old["line_units"]
    assert Record.from_dict(old).line_units == []


def test_the_study_records_and_caches_the_map(tiny_dir: Path, tmp_path: Path, one_thread: None) -> None:
    """End to end on the tiny model's own generation: the record of a CODING method carries the
    compacted map of the method's lines (the other methods none), and a cached attribution the same map."""
    study = Study(StudyConfig(cache_dir=tmp_path, device="cpu", max_new_tokens=8))
    task = "HumanEval/1"  # the tiny model writes a body here
    rec = study.run_item(str(tiny_dir), "saliency_coding", task)
    ctx = study.context(str(tiny_dir), get_task(task))
    assert rec.line_units and rec.line_units == compact(get_method("saliency_coding").line_units(ctx))
    for start, end, kept in rec.line_units:
        assert 0 <= start <= end <= len(rec.completion) and "\n" not in rec.completion[start:end]
        assert all(0 <= u < len(rec.units) for u, _ in kept)
    assert study.run_item(str(tiny_dir), "saliency_reading", task).line_units == []
    again = Study(StudyConfig(cache_dir=tmp_path, device="cpu", max_new_tokens=8))
    cached = again.run_item(str(tiny_dir), "saliency_coding", task)
    assert cached.attribution["cached"] and cached.line_units == rec.line_units
    # an entry of the shape before the map (no "lines") is not read without one: it is recomputed
    entries = {json.loads(p.read_text())["key"]["method"]: p for p in (tmp_path / "results").rglob("attribution/*/*.json")}
    entry = entries["saliency_coding"]
    old = json.loads(entry.read_text())
    del old["value"]["lines"]
    entry.write_text(json.dumps(old))
    third = Study(StudyConfig(cache_dir=tmp_path, device="cpu", max_new_tokens=8))
    recomputed = third.run_item(str(tiny_dir), "saliency_coding", task)
    assert not recomputed.attribution["cached"] and recomputed.line_units == rec.line_units
    assert third.cache.invalid == 1
    # one of the right shape with damaged values (a span past the prompt, a NaN score) is recomputed too
    damaged = json.loads(entry.read_text())
    damaged["value"]["units"] = [[0, 99999, 1.0], [5, 6, float("nan")]]
    entry.write_text(json.dumps(damaged))
    fourth = Study(StudyConfig(cache_dir=tmp_path, device="cpu", max_new_tokens=8))
    redone = fourth.run_item(str(tiny_dir), "saliency_coding", task)
    assert not redone.attribution["cached"] and redone.units == rec.units and fourth.cache.invalid == 1
