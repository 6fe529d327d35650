"""Time each attribution method per task on the embedded model, against a baseline and a floor.

    python scripts/bench_methods.py --limit 3 [--methods perturbation] [--baseline study|previous|plain-replays]

For each of the first N tasks of a benchmark (HumanEval by default, ``--benchmark mbpp``): one
greedy generation (the model's default prompt format, timed apart), then, method by method in the study's order, the baseline and this code, interleaved
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
- ``--baseline plain-replays``: this code with a near-tie's replay stepping through the tokens
  before the tie one plain step each instead of one forced pass (:mod:`pytest_attnalign.teacher_forcing`):
  what forced replays save (the perturbation methods only differ).
- ``floor`` (perturbation methods): one forward pass per distinct perturbed prompt over only the
  tokens from its first difference with the original prompt plus all the original's generated
  tokens, on the original prompt's KV cache (computed once), with the shortcuts' attention (SDPA):
  the cost if every perturbed prompt confirmed the original completion with no decoding at all.

``--workers N`` measures the tasks in N processes side by side, each loading the model once and
pulling the next task when it is done; with ``--threads 1`` and N = the cores this is how the
README's table was measured (as two such processes by hand). After the per-method means comes a per-task
table (all methods, CODING, shap and bert_masking: baseline -> new (floor)); ``--json FILE`` keeps
the raw per-task records.

"scores" says whether baseline and new agree: perturbation and self-attention scores exactly,
gradient scores to float rounding (the largest relative difference is printed). CPU by default;
times are wall-clock seconds. ``--profile`` prints the top 10 costs (cProfile, internal time) of
the generations and new methods over all tasks (``--tasks 0 --baseline none --profile``: one task
end to end).
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import io
import json
import pstats
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def _parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--benchmark", choices=("humaneval", "mbpp"), default="humaneval",
                    help="the benchmark whose tasks are timed (default humaneval)")
    ap.add_argument("--limit", type=int, default=10, help="first N tasks of the benchmark (default 10)")
    ap.add_argument("--offset", type=int, default=0, help="skip this many tasks first (resume a long run)")
    ap.add_argument("--tasks", default="", help="comma-separated task indices in the benchmark (instead of offset/limit)")
    ap.add_argument("--methods", default="all", help="all, a category or comma-separated names")
    ap.add_argument("--baseline", choices=("study", "previous", "plain-replays", "none"), default="study")
    ap.add_argument("--no-floor", action="store_true", help="skip the floor of the perturbation methods")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--profile", action="store_true", help="cProfile the new methods: top 10 internal costs")
    ap.add_argument("--workers", type=int, default=1,
                    help="processes measuring the tasks side by side, each pulling the next task (use --threads 1)")
    ap.add_argument("--json", default="", help="also write the per-task records to this file")
    return ap.parse_args()


# ------------------------------------------------------------------------------------- baselines
def study_regenerate(ctx: Any, task_prompts: Any, **_: Any) -> list[str]:
    """One plain greedy decoding from scratch per perturbed prompt (the study: one ``generate`` each)."""
    import torch

    from pytest_attnalign.generation import completion_from_text, decode_text, greedy_decode
    from pytest_attnalign.regenerate import _ended, _prompt_ids

    lm, task, gen = ctx.lm, ctx.task, ctx.generation
    ended = _ended(task, gen.prompt_format, lm.tokenizer)
    out = []
    for p in task_prompts:
        ids = torch.tensor([_prompt_ids(lm, task, gen.prompt_format, p)], device=lm.device)
        new = greedy_decode(lm.model, ids, gen.max_new_tokens, lm.tokenizer.eos_token_id, ended)
        completion = completion_from_text(task, gen.prompt_format, decode_text(lm.tokenizer, new))
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


def previous_replay(model: Any, prompt_ids: Any, rule: Any, tie: Any, forced: Any = (), start: Any = None) -> Any:
    """A near-tie before issue 9: the prompt decoded plainly from its start to its end, step by step
    (no forced tokens, no checkpoint)."""
    from pytest_attnalign.decoding import NearTie

    return _REAL["replay"](model, prompt_ids, rule, NearTie(None))


def never_exact(model: Any) -> bool:
    """Forced replays refused: a replay steps through the tokens before its tie plainly."""
    return False


@contextmanager
def eager_attention(model: Any) -> Iterator[None]:
    """The shortcuts before issue 9 ran with the model's own (eager) attention."""
    yield


#: regenerate() keywords that reproduce its behaviour before issue 9.
PREVIOUS_REGENERATION: dict[str, Any] = {"pool_size": 16, "lookahead": 0}
#: Verification chunks before issue 9 only doubled: never planned from the rows seen.
PREVIOUS_CHUNKS_PLANNED_AFTER = 10**9


def concatenated(pasts: list[Any], lengths: list[int], width: int) -> Any:
    """Pooled caches before issue 9: the rows' caches concatenated into transformers' own layers
    (re-concatenated every step)."""
    from pytest_attnalign.growing_cache import stacked

    return stacked(pasts, lengths, width, copy.copy)


def index_selected(cache: Any, keep: list[int]) -> None:
    """Rows leaving a pool before issue 9: a fresh copy of the kept rows of every layer."""
    import torch

    idx = torch.tensor(keep, dtype=torch.long, device=cache.layers[0].keys.device)
    for layer in cache.layers:
        layer.keys, layer.values = layer.keys.index_select(0, idx), layer.values.index_select(0, idx)


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
    if args.profile and args.workers > 1:
        raise SystemExit("--profile needs --workers 1 (one process to profile)")
    from pytest_attnalign.methods import available, resolve_methods
    from pytest_attnalign.tasks import load_tasks

    methods = resolve_methods(args.methods)
    kinds = {n: available().get(n) for n in methods}
    all_tasks = load_tasks(args.benchmark)
    if args.tasks:
        try:
            indices = [int(i) for i in args.tasks.split(",")]
        except ValueError:
            raise SystemExit(f"--tasks {args.tasks!r}: give comma-separated task indices, e.g. --tasks 0,2") from None
    else:
        indices = list(range(args.offset, min(args.offset + args.limit, len(all_tasks))))
    if not indices or not all(0 <= i < len(all_tasks) for i in indices):
        raise SystemExit(f"no such {args.benchmark} tasks: {args.tasks or f'--offset {args.offset} --limit {args.limit}'} "
                         f"(indices run from 0 to {len(all_tasks) - 1})")
    if args.workers > 1 and len(indices) > 1:
        records = _in_workers(args, indices)
    else:
        records = measure(args, methods, kinds, [all_tasks[i] for i in indices])
    if args.json:
        Path(args.json).write_text(json.dumps(records))
    return report(args, methods, kinds, records)


def _in_workers(args: argparse.Namespace, indices: list[int]) -> list[dict[str, Any]]:
    """Measure the tasks in ``args.workers`` processes, each loading the model once and pulling the
    next task when it is done (a long task does not hold the others back); records in ``indices``' order."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(args.workers, initializer=_start_worker, initargs=(args,)) as pool:
        return list(pool.imap(_worker_task, indices, chunksize=1))


_WORKER: dict[str, Any] = {}  # a worker process's Bench and tasks


def _start_worker(args: argparse.Namespace) -> None:
    from pytest_attnalign.methods import available, resolve_methods
    from pytest_attnalign.tasks import load_tasks

    methods = resolve_methods(args.methods)
    _WORKER.update(bench=Bench(args, methods, {n: available().get(n) for n in methods}), tasks=load_tasks(args.benchmark))


def _worker_task(index: int) -> dict[str, Any]:
    return _WORKER["bench"].run(_WORKER["tasks"][index])


def measure(args: argparse.Namespace, methods: list[str], kinds: dict[str, Any], tasks: list[Any]) -> list[dict[str, Any]]:
    """Time every method on every task in this process; one record per task."""
    bench = Bench(args, methods, kinds)
    records = [bench.run(task) for task in tasks]
    if bench.prof:
        buf = io.StringIO()
        pstats.Stats(bench.prof, stream=buf).sort_stats("tottime").print_stats(10)
        print(buf.getvalue())
    return records


class Bench:
    """The loaded model and the baseline's swaps; :meth:`run` times every method on one task."""

    def __init__(self, args: argparse.Namespace, methods: list[str], kinds: dict[str, Any]) -> None:
        import torch

        import pytest_attnalign.decoding as decoding_mod
        import pytest_attnalign.growing_cache as growing_mod
        import pytest_attnalign.methods.gradient as gradient_mod
        import pytest_attnalign.methods.perturbation as perturbation_mod
        import pytest_attnalign.regenerate as regenerate_mod
        from pytest_attnalign.models import load_model

        _REAL.update(gradient_norms=gradient_mod.gradient_norms, regenerate=perturbation_mod.regenerate,
                     replay=decoding_mod.replay)
        if args.threads:
            torch.set_num_threads(args.threads)
        started = time.perf_counter()
        self.lm = load_model(args.model, device=args.device, dtype="float32")
        print(f"model {args.model} ({self.lm.revision}) loaded in {time.perf_counter() - started:.1f}s on {self.lm.device}, "
              f"{torch.get_num_threads()} threads, baseline {args.baseline}", flush=True)
        self.args, self.methods, self.kinds = args, methods, kinds
        self.perturbation = perturbation_mod
        self.swap = {
            "study": [(gradient_mod, "gradient_norms", study_gradient_norms),
                      (perturbation_mod, "regenerate", study_regenerate)],
            "previous": [(gradient_mod, "gradient_norms", previous_gradient_norms),
                         (perturbation_mod, "regenerate", previous_regenerate), (decoding_mod, "replay", previous_replay),
                         (regenerate_mod, "fast_attention", eager_attention),
                         (regenerate_mod._Chunks, "MIN_SEEN", PREVIOUS_CHUNKS_PLANNED_AFTER),
                         (growing_mod, "pooled", concatenated), (growing_mod, "keep_rows", index_selected)],
            "plain-replays": [(decoding_mod, "exact", never_exact)],
        }.get(args.baseline)
        self.prof = cProfile.Profile() if args.profile else None
        # The first backward pass of a process pays one-time setup (seconds under load), which
        # would be charged to whichever method runs first: pay it here, untimed.
        with torch.enable_grad():
            x = self.lm.model.get_input_embeddings()(torch.tensor([[1, 2, 3]], device=self.lm.device))
            x = x.detach().requires_grad_(True)
            torch.autograd.grad(self.lm.model(inputs_embeds=x).logits[0, -1, 0], x)

    def run(self, task: Any) -> dict[str, Any]:
        """Generation, then per method the baseline and the new code (and the floor); prints a line per method."""
        from pytest_attnalign.generation import generate
        from pytest_attnalign.methods import AttributionContext, get_method

        args, lm, prof = self.args, self.lm, self.prof
        if prof:
            prof.enable()
        t0 = time.perf_counter()
        prompt, gen = generate(lm, task)
        rec: dict[str, Any] = {"task_id": task.task_id, "generated": len(gen.raw_ids),
                               "explained": len(gen.explained_steps), "generation_s": time.perf_counter() - t0,
                               "methods": {}}
        if prof:
            prof.disable()
        shared_ctx = AttributionContext(lm=lm, task=task, prompt=prompt, generation=gen)
        base_ctx = AttributionContext(lm=lm, task=task, prompt=prompt, generation=gen)
        for name in self.methods:
            m: dict[str, Any] = {"baseline_s": None, "new_s": None, "floor_s": None}
            # baseline first: the study's code shared nothing (a fresh context per method); the
            # previous code shared passes through the context's memo as this code does
            base_scores = None
            if self.swap is not None:
                ctx = AttributionContext(lm=lm, task=task, prompt=prompt, generation=gen) if args.baseline == "study" else base_ctx
                with _Swap(self.swap):
                    t0 = time.perf_counter()
                    base_scores = _scores(get_method(name), ctx)
                    m["baseline_s"] = time.perf_counter() - t0
            asked: list[str] = []
            original = self.perturbation.regenerate

            def recording(ctx: Any, prompts: Any, **kw: Any) -> Any:
                asked.extend(prompts)
                return original(ctx, prompts, **kw)

            with _Swap([(self.perturbation, "regenerate", recording)]):
                if prof:
                    prof.enable()
                t0 = time.perf_counter()
                new_scores = _scores(get_method(name), shared_ctx)
                m["new_s"] = time.perf_counter() - t0
                if prof:
                    prof.disable()
            if asked and not args.no_floor:
                m["floor_s"] = floor_seconds(shared_ctx, asked)
            m["verdict"] = _compare(self.kinds[name], base_scores, new_scores)
            rec["methods"][name] = m
            line = f"{task.task_id:14} {name:24} new {m['new_s']:8.2f}s"
            if m["baseline_s"] is not None:
                line += f"  {args.baseline} {m['baseline_s']:8.2f}s ({m['baseline_s'] / max(m['new_s'], 1e-9):5.1f}x)"
            if m["floor_s"] is not None:
                line += f"  floor {m['floor_s']:7.2f}s (new/floor {m['new_s'] / m['floor_s']:4.2f})"
            print(f"{line}  {m['verdict']}  [{rec['generated']} generated, {rec['explained']} explained]", flush=True)
        return rec


#: The per-task table's method groups (methods that share one pass are timed together).
GROUPS = {"CODING": ("saliency_coding", "inputxgradient_coding"), "shap": ("shap",), "bert_masking": ("bert_masking",)}


def report(args: argparse.Namespace, methods: list[str], kinds: dict[str, Any], records: list[dict[str, Any]]) -> int:
    """Print the per-method means, the per-task table and the verdict; exit status 1 if scores differ."""
    from tabulate import tabulate

    shared: set[str] = set()
    for i, name in enumerate(methods):
        if kinds[name] == "self_attention" and any(kinds[m] == "self_attention" for m in methods[:i]):
            shared.add(name)
        if name.startswith("inputxgradient_") and name.replace("inputxgradient", "saliency") in methods[:i]:
            shared.add(name)
    n, has_base = len(records), args.baseline != "none"
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    col = lambda name, key: [r["methods"][name][key] for r in records if r["methods"][name][key] is not None]  # noqa: E731
    rows = [["generation", None, mean([r["generation_s"] for r in records]), None, None, None, ""]]
    for name in methods:
        b, w, f = mean(col(name, "baseline_s")), mean(col(name, "new_s")), mean(col(name, "floor_s"))
        same = sum(r["methods"][name]["verdict"].startswith(("identical", "equal")) for r in records)
        rows.append([name + (" (shared)" if name in shared else ""), b, w, f,
                     b / w if b and w else None, w / f if f and w else None,
                     f"{same}/{n}" + ("" if has_base else " (no baseline)")])
    tb = sum(sum(col(m, "baseline_s")) for m in methods)
    tw = sum(sum(col(m, "new_s")) for m in methods)
    rows.append(["all methods", tb / n if has_base else None, tw / n, None, tb / tw if has_base and tw else None, None, ""])
    print()
    print(tabulate(rows, headers=["method", f"{args.baseline} s/task", "new s/task", "floor s/task", f"{args.baseline}/new",
                                  "new/floor", "scores identical"], floatfmt=".2f", missingval="-"))
    print()
    headers, per_task = _per_task(records, methods, args.baseline)
    print(tabulate(per_task, headers=headers, tablefmt="github", disable_numparse=True))
    bad = [f"{r['task_id']} {m}: {r['methods'][m]['verdict']}" for r in records for m in methods
           if not r["methods"][m]["verdict"].startswith(("identical", "equal", "no baseline"))]
    print(f"{n} tasks; scores: " + ("identical (gradients: equal to float rounding)" if not bad else "DIFFER: " + "; ".join(bad)))
    return 1 if bad else 0


def _per_task(records: list[dict[str, Any]], methods: list[str], baseline: str) -> tuple[list[str], list[list[str]]]:
    """Headers and rows, one per task and a mean row: all methods, then each group of :data:`GROUPS`
    that ran, as ``baseline -> new (floor)`` (just ``new (floor)`` without a baseline)."""
    groups = [g for g in GROUPS if set(GROUPS[g]) & set(methods)]
    has_base = baseline != "none"
    fmt = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731

    def total(rec: dict[str, Any], names: Any, key: str) -> float | None:
        vals = [rec["methods"][m][key] for m in names if m in rec["methods"]]
        return None if not vals or any(v is None for v in vals) else sum(vals)

    def cells(recs: list[dict[str, Any]]) -> list[str]:
        def avg(names: Any, key: str) -> float | None:
            vals = [total(r, names, key) for r in recs]
            return None if None in vals else sum(vals) / len(vals)  # type: ignore[arg-type]

        b, w = avg(methods, "baseline_s"), avg(methods, "new_s")
        out = [fmt(b), fmt(w), fmt(b / w if b and w else None)] if has_base else [fmt(w)]
        for g in groups:
            gb, gw, gf = avg(GROUPS[g], "baseline_s"), avg(GROUPS[g], "new_s"), avg(GROUPS[g], "floor_s")
            out.append((f"{fmt(gb)} -> " if has_base else "") + fmt(gw) + (f" ({fmt(gf)})" if gf is not None else ""))
        return out

    rows = []
    for r in records:
        ok = all(m["verdict"].startswith(("identical", "equal")) for m in r["methods"].values())
        rows.append([f"{r['task_id']} ({r['generated']} / {r['explained']})", *cells([r])] + (["yes" if ok else "NO"] if has_base else []))
    same = sum(row[-1] == "yes" for row in rows)
    rows.append([f"mean of {len(records)}", *cells(records)] + ([f"{same}/{len(records)}"] if has_base else []))
    arrow = f"{baseline} -> new" if has_base else "new"
    headers = ["task (generated / explained)"]
    headers += [f"{baseline} s", "new s", f"{baseline}/new"] if has_base else ["new s"]
    floored = {g for g in groups if any(total(r, GROUPS[g], "floor_s") is not None for r in records)}
    headers += [f"{g} {arrow}" + (" (floor)" if g in floored else "") for g in groups]
    headers += ["scores identical"] if has_base else []
    return headers, rows


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
