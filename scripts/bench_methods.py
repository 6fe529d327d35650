"""Time each attribution method per task on the embedded model, against a baseline and a floor.

    python scripts/bench_methods.py --limit 3 [--methods perturbation] [--baseline study|previous]

For each of the first N HumanEval tasks: one greedy generation (the model's default prompt format,
timed apart), then, method by method in the study's order, the baseline and this code, interleaved
per method so both see the same machine load:

- ``new``: the methods as a run of the plugin calls them, on one context per task: the first
  self-attention method pays the forward pass all six share, ``saliency_reading`` and
  ``saliency_coding`` pay the gradient passes the ``inputxgradient`` methods reuse (marked shared).
- ``--baseline study`` (default): the twelve results computed the way the study's code did it: a
  fresh context per method (the attention pass redone by every self-attention method, the gradient
  pass by every gradient method), one full forward and backward pass per explained step for the
  gradient methods, and one plain greedy decoding from scratch per perturbed prompt
  (:func:`generation.greedy_decode`: no verification, pooling or prefix reuse).
- ``--baseline previous``: this code's algorithms before the throughput work (issue 9): the
  gradient pass over the whole sequence in one chunk with no detached prefix, and regeneration
  with 16-row groups and pools, no lookahead for a pool's last row (the keywords in
  :data:`PREVIOUS_REGENERATION`), the model's eager attention in the shortcuts, a prompt that
  meets a near-tie redone plainly from its start to its end, verification chunks that only double
  and pooled KV caches re-concatenated every step.
- ``floor`` (perturbation methods): one forward pass per distinct perturbed prompt over only the
  tokens from its first difference with the original prompt plus all the original's generated
  tokens, on the original prompt's KV cache (computed once), with the shortcuts' attention (SDPA):
  the cost if every perturbed prompt confirmed the original completion with no decoding at all.

"scores" says whether baseline and new agree: perturbation and self-attention scores exactly,
gradient scores to float rounding (the largest relative difference is printed). CPU by default;
times are wall-clock seconds. ``--profile`` prints the top 10 costs (cProfile, internal time) of
the generations and new methods over all tasks (``--tasks 0 --baseline none --profile``: one task
end to end).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from contextlib import contextmanager
from typing import Any, Iterator


def _parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--limit", type=int, default=10, help="first N HumanEval tasks (default 10)")
    ap.add_argument("--offset", type=int, default=0, help="skip this many tasks first (resume a long run)")
    ap.add_argument("--tasks", default="", help="comma-separated HumanEval indices (instead of offset/limit)")
    ap.add_argument("--methods", default="all", help="all, a category or comma-separated names")
    ap.add_argument("--baseline", choices=("study", "previous", "none"), default="study")
    ap.add_argument("--no-floor", action="store_true", help="skip the floor of the perturbation methods")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--profile", action="store_true", help="cProfile the new methods: top 10 internal costs")
    return ap.parse_args()


# ------------------------------------------------------------------------------------- baselines
def study_regenerate(ctx: Any, task_prompts: Any, **_: Any) -> list[str]:
    """One plain greedy decoding from scratch per perturbed prompt (the study: one ``generate`` each)."""
    import torch

    from pytest_attnalign.generation import completion_from_text, greedy_decode
    from pytest_attnalign.regenerate import _ended, _prompt_ids

    lm, task, gen = ctx.lm, ctx.task, ctx.generation
    ended = _ended(task, gen.prompt_format, lm.tokenizer)
    out = []
    for p in task_prompts:
        ids = torch.tensor([_prompt_ids(lm, task, gen.prompt_format, p)], device=lm.device)
        new = greedy_decode(lm.model, ids, gen.max_new_tokens, lm.tokenizer.eos_token_id, ended)
        completion = completion_from_text(task, gen.prompt_format, lm.tokenizer.decode(new, skip_special_tokens=True))
        out.append(completion if completion.strip() else "")
    return out


def study_gradient_norms(model: Any, prompt_ids: Any, generated_ids: Any, steps: range, **_: Any) -> Any:
    """One full forward and one backward pass per explained step (captum's attribute() per step)."""
    import torch

    from pytest_attnalign.methods.gradient import GradientNorms, _wide

    C = len(prompt_ids) + steps.start  # the prompt and the generated tokens before the first step, as the library
    sal, ixg = [], []
    for j in steps:
        ids = torch.tensor([list(prompt_ids) + list(generated_ids[:j])])
        with torch.enable_grad():
            embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
            logits = model(inputs_embeds=embeds, use_cache=False).logits[0, -1]
            target = torch.log_softmax(_wide(logits), dim=-1)[generated_ids[j]]
            (g,) = torch.autograd.grad(target, embeds)
        g, x = _wide(g[0, :C]), _wide(embeds.detach()[0, :C])
        sal.append(g.norm(dim=-1))
        ixg.append((x * g).norm(dim=-1))
    return GradientNorms(torch.stack(sal), torch.stack(ixg))


_REAL: dict[str, Any] = {}  # the library's own functions, kept before any swap


def previous_gradient_norms(model: Any, prompt_ids: Any, generated_ids: Any, steps: range, **_: Any) -> Any:
    """The gradient pass before issue 9: one chunk over the whole sequence, no detached prefix."""
    return _REAL["gradient_norms"](model, prompt_ids, generated_ids, steps, from_token=0, chunk=10**9)


def previous_regenerate(ctx: Any, task_prompts: Any, **kw: Any) -> list[str]:
    """Regeneration before issue 9: verification groups and pools of 16 rows, no lookahead."""
    return _REAL["regenerate"](ctx, task_prompts, **kw, **PREVIOUS_REGENERATION)


def previous_replay(model: Any, prompt_ids: Any, rule: Any, tie: Any) -> Any:
    """A near-tie before issue 9: the prompt decoded plainly from its start to its end."""
    from pytest_attnalign.decoding import NearTie

    return _REAL["replay"](model, prompt_ids, rule, NearTie(None))


@contextmanager
def eager_attention(model: Any) -> Iterator[None]:
    """The shortcuts before issue 9 ran with the model's own (eager) attention."""
    yield


#: regenerate() keywords that reproduce its behaviour before issue 9.
PREVIOUS_REGENERATION: dict[str, Any] = {"pool_size": 16, "lookahead": 0}
#: Verification chunks before issue 9 only doubled: never planned from the rows seen.
PREVIOUS_CHUNKS_PLANNED_AFTER = 10**9


def concatenating(cache: Any) -> Any:
    """Pooled caches before issue 9: transformers' own layers, re-concatenated every step."""
    return cache


class _Swap:
    """Swap module attributes (the baseline's functions) for the duration of a with-block."""

    def __init__(self, pairs: list[tuple[Any, str, Any]]) -> None:
        self.pairs, self.saved = pairs, []

    def __enter__(self) -> None:
        self.saved = [(m, n, getattr(m, n)) for m, n, _ in self.pairs]
        for m, n, v in self.pairs:
            setattr(m, n, v)

    def __exit__(self, *exc: Any) -> None:
        for m, n, v in self.saved:
            setattr(m, n, v)


# ----------------------------------------------------------------------------------------- floor
def floor_seconds(ctx: Any, task_prompts: list[str]) -> float:
    """The perturbation floor (see the module docstring) for these prompts, in seconds."""
    import torch

    from pytest_attnalign.forward import cache_kwarg, cache_of, fast_attention, step
    from pytest_attnalign.decoding import row_cache as _row_cache
    from pytest_attnalign.regenerate import _prompt_ids

    lm, gen = ctx.lm, ctx.generation
    ref = list(gen.raw_ids)[: gen.max_new_tokens]
    original = list(gen.prompt_ids)
    rows = [_prompt_ids(lm, ctx.task, gen.prompt_format, p) for p in dict.fromkeys(task_prompts)]
    t0 = time.perf_counter()
    with torch.no_grad(), fast_attention(lm.model):
        full = cache_of(step(lm.model, torch.tensor([original], device=lm.device), None))
        for ids in rows:
            n = 0
            while n < min(len(ids), len(original)) - 1 and ids[n] == original[n]:
                n += 1
            kwargs: dict[str, Any] = {"use_cache": True, "logits_to_keep": len(ref) + 1}
            if n:
                kwargs[cache_kwarg(lm.model)] = _row_cache(full, 0, 0, n)
            lm.model(input_ids=torch.tensor([ids[n:] + ref], device=lm.device), **kwargs)
    return time.perf_counter() - t0


def main() -> int:
    args = _parse()
    import torch
    from tabulate import tabulate

    import pytest_attnalign.decoding as decoding_mod
    import pytest_attnalign.growing_cache as growing_mod
    import pytest_attnalign.methods.gradient as gradient_mod
    import pytest_attnalign.methods.perturbation as perturbation_mod
    import pytest_attnalign.regenerate as regenerate_mod
    from pytest_attnalign.generation import generate
    from pytest_attnalign.methods import AttributionContext, available, get_method, resolve_methods
    from pytest_attnalign.models import load_model
    from pytest_attnalign.tasks import load_tasks

    _REAL.update(gradient_norms=gradient_mod.gradient_norms, regenerate=perturbation_mod.regenerate,
                 replay=decoding_mod.replay)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    lm = load_model(args.model, device=args.device, dtype="float32")
    print(f"model {args.model} ({lm.revision}) loaded in {time.perf_counter() - started:.1f}s on {lm.device}, "
          f"{torch.get_num_threads()} threads, baseline {args.baseline}", flush=True)
    methods = resolve_methods(args.methods)
    kinds = {n: available().get(n) for n in methods}
    shared: set[str] = set()
    for i, name in enumerate(methods):
        if kinds[name] == "self_attention" and any(kinds[m] == "self_attention" for m in methods[:i]):
            shared.add(name)
        if name.startswith("inputxgradient_") and name.replace("inputxgradient", "saliency") in methods[:i]:
            shared.add(name)
    swap = {
        "study": [(gradient_mod, "gradient_norms", study_gradient_norms), (perturbation_mod, "regenerate", study_regenerate)],
        "previous": [(gradient_mod, "gradient_norms", previous_gradient_norms),
                     (perturbation_mod, "regenerate", previous_regenerate), (decoding_mod, "replay", previous_replay),
                     (regenerate_mod, "fast_attention", eager_attention),
                     (regenerate_mod._Chunks, "MIN_SEEN", PREVIOUS_CHUNKS_PLANNED_AFTER),
                     (growing_mod, "growing", concatenating)],
    }.get(args.baseline)

    all_tasks = load_tasks("humaneval")
    if args.tasks:
        tasks = [all_tasks[int(i)] for i in args.tasks.split(",")]
    else:
        tasks = all_tasks[args.offset : args.offset + args.limit]
    new_t: dict[str, list[float]] = {m: [] for m in methods}
    base_t: dict[str, list[float]] = {m: [] for m in methods}
    floor_t: dict[str, list[float]] = {m: [] for m in methods}
    verdict: dict[str, list[str]] = {m: [] for m in methods}
    gen_times: list[float] = []
    prof = cProfile.Profile() if args.profile else None
    for task in tasks:
        if prof:
            prof.enable()
        t0 = time.perf_counter()
        prompt, gen = generate(lm, task)
        gen_times.append(time.perf_counter() - t0)
        if prof:
            prof.disable()
        shared_ctx = AttributionContext(lm=lm, task=task, prompt=prompt, generation=gen)
        base_ctx = AttributionContext(lm=lm, task=task, prompt=prompt, generation=gen)
        for name in methods:
            # baseline first: the study's code shared nothing (a fresh context per method); the
            # previous code shared passes through the context's memo as this code does
            base_scores = None
            if swap is not None:
                ctx = AttributionContext(lm=lm, task=task, prompt=prompt, generation=gen) if args.baseline == "study" else base_ctx
                with _Swap(swap):
                    t0 = time.perf_counter()
                    base_scores = _scores(get_method(name), ctx)
                    base_t[name].append(time.perf_counter() - t0)
            asked: list[str] = []
            original = perturbation_mod.regenerate

            def recording(ctx: Any, prompts: Any, **kw: Any) -> Any:
                asked.extend(prompts)
                return original(ctx, prompts, **kw)

            with _Swap([(perturbation_mod, "regenerate", recording)]):
                if prof:
                    prof.enable()
                t0 = time.perf_counter()
                new_scores = _scores(get_method(name), shared_ctx)
                new_t[name].append(time.perf_counter() - t0)
                if prof:
                    prof.disable()
            if asked and not args.no_floor:
                floor_t[name].append(floor_seconds(shared_ctx, asked))
            verdict[name].append(_compare(kinds[name], base_scores, new_scores))
            line = f"{task.task_id:14} {name:24} new {new_t[name][-1]:8.2f}s"
            if base_t[name]:
                line += f"  {args.baseline} {base_t[name][-1]:8.2f}s ({base_t[name][-1] / max(new_t[name][-1], 1e-9):5.1f}x)"
            if floor_t[name]:
                line += f"  floor {floor_t[name][-1]:7.2f}s (new/floor {new_t[name][-1] / floor_t[name][-1]:4.2f})"
            print(f"{line}  {verdict[name][-1]}  [{len(gen.raw_ids)} generated, {len(gen.explained_steps)} explained]",
                  flush=True)

    n = len(tasks)
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    rows = [["generation", None, mean(gen_times), None, None, None, ""]]
    for name in methods:
        b, w, f = mean(base_t[name]), mean(new_t[name]), mean(floor_t[name])
        same = sum(v.startswith("identical") or v.startswith("equal") for v in verdict[name])
        rows.append([name + (" (shared)" if name in shared else ""), b, w, f,
                     b / w if b and w else None, w / f if f and w else None,
                     f"{same}/{n}" + ("" if swap else " (no baseline)")])
    tb, tw = sum(sum(base_t[m]) for m in methods), sum(sum(new_t[m]) for m in methods)
    rows.append(["all methods", tb / n if swap else None, tw / n, None, tb / tw if swap and tw else None, None, ""])
    print()
    print(tabulate(rows, headers=["method", f"{args.baseline} s/task", "new s/task", "floor s/task", f"{args.baseline}/new",
                                  "new/floor", "scores identical"], floatfmt=".2f", missingval="-"))
    bad = [f"{t.task_id} {m}: {verdict[m][i]}" for m in methods for i, t in enumerate(tasks)
           if not verdict[m][i].startswith(("identical", "equal", "no baseline"))]
    print(f"{n} tasks; scores: " + ("identical (gradients: equal to float rounding)" if not bad else "DIFFER: " + "; ".join(bad)))
    if prof:
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(10)
        print(buf.getvalue())
    return 1 if bad else 0


def _scores(method: Any, ctx: Any) -> list[float] | str:
    from pytest_attnalign.errors import AttnalignError

    try:
        return [v for _, _, v in method.attribute(ctx)]
    except AttnalignError as exc:  # e.g. no code to explain: both must say so
        return f"error: {exc}"


def _compare(kind: str | None, base: Any, new: Any) -> str:
    if base is None:
        return "no baseline"
    if isinstance(base, str) or isinstance(new, str):
        return "identical (both: error)" if base == new else f"DIFFER: {base!r} vs {new!r}"
    if kind == "gradient":
        if len(base) != len(new):
            return "DIFFER in length"
        scale = max([abs(x) for x in base] + [1e-30])
        worst = max((abs(a - b) / scale for a, b in zip(base, new)), default=0.0)
        return f"equal (max rel diff {worst:.1e})" if worst <= 1e-4 else f"DIFFER (max rel diff {worst:.1e})"
    return "identical" if base == new else "DIFFER"


if __name__ == "__main__":
    sys.exit(main())
