"""How much would crediting a chat reply's restated copy of the task change each method's top-K?

    python scripts/measure_restated_copy.py --tasks HumanEval/0,Mbpp/1 --k 10

A chat model restates the signature and docstring before the body. Attention and gradients that the
body's steps pay to that generated copy are not credited to the prompt's words (the study never
scored generated text). This script measures what crediting them back would change: each generated
token inside a verbatim copy of the scored description (difflib blocks of at least --min-chars) adds
its column's score to the description unit(s) it copies; it prints, per method, how many of the
top-K units change. The self-attention and gradient definitions are those of the library (body
steps, rows P-1+j, heads summed, L2 norms of log-probability gradients).
"""

from __future__ import annotations

import argparse
import difflib
import sys


def copy_map(prompt_text: str, region: tuple[int, int], raw: str, upto: int, min_chars: int) -> dict[int, int]:
    """Character of ``raw[:upto]`` -> character of ``prompt_text`` it copies verbatim (inside ``region``)."""
    a, b = region
    matcher = difflib.SequenceMatcher(None, prompt_text[a:b], raw[:upto], autojunk=False)
    out = {}
    for block in matcher.get_matching_blocks():
        if block.size >= min_chars:
            out.update({block.b + i: a + block.a + i for i in range(block.size)})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--tasks", default="HumanEval/0,Mbpp/1")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--min-chars", type=int, default=8)
    args = ap.parse_args()
    import torch

    from pytest_attnalign.alignment import top_k
    from pytest_attnalign.study import Study, StudyConfig
    from pytest_attnalign.tasks import get_task

    study = Study(StudyConfig(device="cpu", dtype="float32"))
    for task_id in args.tasks.split(","):
        task = get_task(task_id)
        ctx = study.context(args.model, task)
        lm, gen, prompt = ctx.lm, ctx.generation, ctx.prompt
        first, end = gen.explained
        if end <= first:
            print(f"{task_id}: no body tokens explained; skipped")
            continue
        tok, P = lm.tokenizer, len(gen.prompt_ids)
        ids = list(gen.prompt_ids) + list(gen.generated_ids[: end - 1])
        # character span of each generated token inside raw, and the copy it belongs to
        spans, pos = [], 0
        for n in range(1, end):
            length = max(pos, len(tok.decode(gen.generated_ids[:n], skip_special_tokens=True)))
            spans.append((pos, length))
            pos = length
        body_start = spans[first][0] if first < len(spans) else pos
        chars = copy_map(prompt.text, prompt.description, gen.raw, body_start, args.min_chars)
        units = ctx.description_tokens()  # (start, end, prompt token index) in task.prompt coordinates
        shift = prompt.task_offset
        credit: dict[int, list[int]] = {}  # generated position -> unit indices it copies
        for i, (s, e) in enumerate(spans):
            targets = {chars[c] - shift for c in range(s, e) if c in chars}
            hit = [u for u, (us, ue, _) in enumerate(units) if any(us <= c < ue for c in targets)]
            if hit:
                credit[P + i] = hit
        copied = sum(len(v) > 0 for v in credit.values())
        model = lm.model
        with torch.no_grad():
            atts = model(torch.tensor([ids]), output_attentions=True, use_cache=False).attentions
        full = torch.stack([a[0].sum(0).float() for a in atts])  # [L, T, T], heads summed
        views = {"first": full[:1].sum(0), "last": full[-1:].sum(0), "all": full.sum(0)}
        tables = {}
        for view, m in views.items():
            tables[f"reading_{view}"] = m[P - 1 + first]
            tables[f"coding_{view}"] = m[P - 1 + first : P - 1 + end].sum(0)
        embeds = model.get_input_embeddings()(torch.tensor([ids])).detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(inputs_embeds=embeds, use_cache=False).logits[0, P - 1 + first : P - 1 + end].float()
            logp = torch.log_softmax(logits, -1)[torch.arange(end - first), torch.tensor(gen.generated_ids[first:end])]
            sal = torch.zeros(len(ids))
            ixg = torch.zeros(len(ids))
            for j in range(end - first):
                (g,) = torch.autograd.grad(logp[j], embeds, retain_graph=j + 1 < end - first)
                s_j, x_j = g[0].norm(dim=-1), (embeds.detach()[0] * g[0]).norm(dim=-1)
                if j == 0:
                    tables["saliency_reading"], tables["inputxgradient_reading"] = s_j.clone(), x_j.clone()
                sal += s_j
                ixg += x_j
        tables["saliency_coding"], tables["inputxgradient_coding"] = sal, ixg
        print(f"{task_id}: {end - first} body steps; {copied} of {first} generated tokens before the body copy "
              f"the description verbatim (blocks >= {args.min_chars} chars)")
        for name, col in tables.items():
            col = col.detach()
            plain = [(s, e, float(col[i])) for s, e, i in units]
            boosted = [list(u) for u in plain]
            for position, hit in credit.items():
                if position < len(col):
                    for u in hit:
                        boosted[u][2] += float(col[position]) / len(hit)
            before = set(top_k(plain, args.k))
            after = set(top_k([tuple(u) for u in boosted], args.k))
            share = sum(float(col[p]) for p in credit if p < len(col)) / max(float(col[:len(ids)].sum()), 1e-30)
            print(f"  {name:24} top-{args.k} units changed: {len(before - after):2d}   "
                  f"score mass on the copy: {share:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
