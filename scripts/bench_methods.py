"""Time each attribution method per task on the embedded model, and what verified regeneration saves.

    python scripts/bench_methods.py --limit 3 --methods perturbation

For each of the first N HumanEval tasks: one greedy generation (the model's default prompt format,
timed apart), then the self-attention and gradient methods in the study's order on one context, as
a run of the plugin does, so each time is that method's cost in a real run: the first
self-attention method pays the forward pass all six share, ``saliency_reading`` and
``saliency_coding`` pay the gradient passes the ``inputxgradient`` methods reuse (marked
"shared"). The perturbation methods run twice, each on a fresh context, with verified regeneration
off and on; their scores must agree exactly (verification changes speed, never tokens). CPU by
default; times are wall-clock seconds.
"""

from __future__ import annotations

import argparse
import sys
import time


def _parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--limit", type=int, default=10, help="first N HumanEval tasks (default 10)")
    ap.add_argument("--offset", type=int, default=0, help="skip this many tasks first (resume a long run)")
    ap.add_argument("--methods", default="all", help="all, a category or comma-separated names")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--no-plain", action="store_true", help="skip the verify-off runs of perturbation methods")
    return ap.parse_args()


def main() -> int:
    args = _parse()
    import torch
    from tabulate import tabulate

    from pytest_attnalign.generation import generate
    from pytest_attnalign.methods import AttributionContext, available, get_method, resolve_methods
    from pytest_attnalign.models import load_model
    from pytest_attnalign.tasks import load_tasks

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    lm = load_model(args.model, device=args.device, dtype="float32")
    print(f"model {args.model} ({lm.revision}) loaded in {time.perf_counter() - started:.1f}s on {lm.device}, "
          f"{torch.get_num_threads()} threads", flush=True)
    methods = resolve_methods(args.methods)
    variants: list[tuple[str, str, bool | None]] = []  # (label, method, verify)
    shared: set[str] = set()  # methods that reuse a pass an earlier method paid for
    for name in methods:
        if available().get(name) == "self_attention" and any(available().get(v[1]) == "self_attention" for v in variants):
            shared.add(name)
        if name.startswith("inputxgradient_") and name.replace("inputxgradient", "saliency") in methods:
            shared.add(name)
        if available().get(name) == "perturbation":
            if not args.no_plain:
                variants.append((f"{name} (verify off)", name, False))
            variants.append((f"{name} (verify on)", name, True))
        else:
            variants.append((f"{name} (shared)" if name in shared else name, name, None))

    tasks = load_tasks("humaneval")[args.offset : args.offset + args.limit]
    times: dict[str, list[float]] = {label: [] for label, _, _ in variants}
    gen_times: list[float] = []
    mismatches: list[str] = []
    for task in tasks:
        t0 = time.perf_counter()
        prompt, gen = generate(lm, task)
        gen_times.append(time.perf_counter() - t0)
        scores: dict[str, list[float]] = {}
        shared_ctx = AttributionContext(lm=lm, task=task, prompt=prompt, generation=gen)
        for label, name, verify in variants:
            method = get_method(name)
            if verify is not None:
                method.verify = verify
                ctx = AttributionContext(lm=lm, task=task, prompt=prompt, generation=gen)
            else:
                ctx = shared_ctx
            t0 = time.perf_counter()
            units = method.attribute(ctx)
            times[label].append(time.perf_counter() - t0)
            values = [v for _, _, v in units]
            same = ""
            if verify is not None and name in scores:
                same = "  scores identical to verify off" if scores[name] == values else "  SCORES DIFFER from verify off"
                if scores[name] != values:
                    mismatches.append(f"{task.task_id} {name}")
            scores.setdefault(name, values)
            print(f"{task.task_id:14} {label:32} {times[label][-1]:8.2f}s  ({len(units)} units, "
                  f"{len(gen.raw_ids)} generated tokens){same}", flush=True)

    rows = [["generation", sum(gen_times) / len(gen_times), sum(gen_times)]]
    rows += [[label, sum(t) / len(t), sum(t)] for label, t in times.items() if t]
    print()
    print(tabulate(rows, headers=["method", "mean s/task", "total s"], floatfmt=".2f"))
    for name in methods:
        off, on = times.get(f"{name} (verify off)"), times.get(f"{name} (verify on)")
        if off and on:
            print(f"verify speed-up {name}: {sum(off) / sum(on):.2f}x over {len(on)} tasks")
    print(f"{len(tasks)} tasks; verified vs plain scores: "
          + ("identical" if not mismatches else "DIFFER on " + ", ".join(mismatches)))
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
