"""Measure how far the regeneration shortcuts' logits stray from plain greedy decoding's (the tie margin).

    python scripts/measure_tie_noise.py --tasks 0,2,4 [--prompts 16] [--steps 24] [--attention fast|eager] [--device cuda]

Regeneration (:mod:`pytest_attnalign.regenerate`) takes an argmax from a shortcut (a verification
pass over a perturbed prompt plus known tokens on a reused prefix cache, or a step of a left-padded
pool of rows) only where its top two logits differ by more than ``TIE_EPS_FACTOR x eps x
max(1, max |logit|)``; closer calls are decoded plainly. That is exact only if the shortcuts' logits
differ from plain decoding's by less than that margin. This script measures the difference on the
embedded model: for each task, the prompts with one description word deleted (SHAP's masking) are
decoded plainly for ``--steps`` steps (eager attention, one row, the reference), then the same
tokens are fed (teacher forcing) to

- ``verify``: one pass over the prompt's suffix plus the plain tokens on the original prompt's cache
  over the prefix they share (as a CPU verification pass runs);
- ``pooled``: all prompts' rows in one left-padded batch, one token a step (as pooled decoding runs);

under the attention the shortcuts use (``fast``: SDPA where the model can switch; ``eager``), and
prints the largest ``|shortcut - plain| / (eps x max(1, max |logit|))`` per kind and the safety
factor it leaves under the margin.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext
from typing import Any


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--tasks", default="0,2,4", help="comma-separated HumanEval indices")
    ap.add_argument("--prompts", type=int, default=16, help="perturbed prompts per task (first words deleted)")
    ap.add_argument("--steps", type=int, default=24, help="decoding steps compared per prompt")
    ap.add_argument("--attention", choices=("fast", "eager"), default="fast")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the margin was measured on CPU)")
    args = ap.parse_args()
    import torch

    from pytest_attnalign.decoding import row_cache
    from pytest_attnalign.forward import cache_kwarg, cache_of, fast_attention, step
    from pytest_attnalign.generation import generate
    from pytest_attnalign.growing_cache import pooled
    from pytest_attnalign.methods import AttributionContext
    from pytest_attnalign.methods.perturbation import mask_words
    from pytest_attnalign.models import load_model
    from pytest_attnalign.regenerate import TIE_EPS_FACTOR, _prompt_ids
    from pytest_attnalign.tasks import load_tasks

    torch.set_num_threads(args.threads)
    lm = load_model(args.model, device=args.device, dtype="float32")
    dev = lm.device
    model, eps = lm.model, torch.finfo(torch.float32).eps
    shortcut = (lambda: fast_attention(model)) if args.attention == "fast" else nullcontext
    worst = {"verify": 0.0, "pooled": 0.0}

    def stray(fast: Any, plain: Any) -> float:
        scale = max(1.0, float(plain.abs().max()))
        return float((fast.float() - plain.float()).abs().max()) / (eps * scale)

    tasks = load_tasks("humaneval")
    for index in args.tasks.split(","):
        task = tasks[int(index)]
        prompt, gen = generate(lm, task)
        ctx = AttributionContext(lm=lm, task=task, prompt=prompt, generation=gen)
        words = ctx.description_words()[: args.prompts]
        prompts = [_prompt_ids(lm, task, gen.prompt_format, mask_words(task.prompt, words, [j != i for j in range(len(words))]))
                   for i in range(len(words))]
        original = list(gen.prompt_ids)
        plain_tokens, plain_logits = [], []
        with torch.no_grad():
            for ids in prompts:  # the reference: plain decoding, eager, one row
                past, feed, toks, logs = None, torch.tensor([ids], device=dev), [], []
                for _ in range(args.steps):
                    res = step(model, feed, past)
                    past = cache_of(res)
                    logs.append(res.logits[0, -1])
                    toks.append(int(res.logits[0, -1].argmax()))
                    feed = torch.tensor([[toks[-1]]], device=dev)
                plain_tokens.append(toks)
                plain_logits.append(torch.stack(logs))
            with shortcut():
                full = cache_of(step(model, torch.tensor([original], device=dev), None))
                task_verify = task_pooled = 0.0
                rows, lengths = [], []
                for ids, toks, logs in zip(prompts, plain_tokens, plain_logits):
                    n = 0
                    while n < min(len(ids), len(original)) - 1 and ids[n] == original[n]:
                        n += 1
                    res = model(input_ids=torch.tensor([ids[n:] + toks[:-1]], device=dev), use_cache=True,
                                **{cache_kwarg(model): row_cache(full, 0, 0, n)})
                    task_verify = max(task_verify, stray(res.logits[0, -args.steps:], logs))
                    rows.append(row_cache(cache_of(res), 0, 0, len(ids)))  # the prompt only
                    lengths.append(len(ids))
                width = max(lengths)
                cache = pooled(rows, lengths, width)
                mask = torch.zeros((len(rows), width), dtype=torch.long, device=dev)
                for j, n in enumerate(lengths):
                    mask[j, width - n :] = 1
                pos = torch.tensor([[n - 1] for n in lengths], device=dev)
                feed = torch.tensor([[ids[-1]] for ids in prompts], device=dev)
                cache = _drop_last(cache)  # the prompts' last tokens are fed as the first pooled step
                for s in range(args.steps):
                    res = model(input_ids=feed, attention_mask=mask, position_ids=pos, use_cache=True,
                                **{cache_kwarg(model): cache}, logits_to_keep=1)
                    cache = cache_of(res)
                    for j in range(len(rows)):
                        task_pooled = max(task_pooled, stray(res.logits[j, -1], plain_logits[j][s]))
                    feed = torch.tensor([[toks[s]] for toks in plain_tokens], device=dev)
                    mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
                    pos = pos + 1
        worst["verify"] = max(worst["verify"], task_verify)
        worst["pooled"] = max(worst["pooled"], task_pooled)
        print(f"{task.task_id}: {len(prompts)} prompts x {args.steps} steps, largest stray (eps x scale): "
              f"verify {task_verify:.1f}, pooled {task_pooled:.1f}", flush=True)
    margin = TIE_EPS_FACTOR["float32"]
    top = max(worst.values())
    print(f"attention {args.attention} ({model.config._attn_implementation} outside the shortcuts): largest stray "
          f"verify {worst['verify']:.1f}, pooled {worst['pooled']:.1f} eps x scale; margin {margin:.0f}: "
          f"safety factor {margin / max(top, 1e-9):.0f}x")
    return 0


def _drop_last(cache: Any) -> Any:
    """The batched cache without its last column (that token is fed again by the first pooled step)."""
    for layer in cache.layers:
        layer.keys, layer.values = layer.keys[:, :, :-1, :], layer.values[:, :, :-1, :]
    return cache


if __name__ == "__main__":
    sys.exit(main())
