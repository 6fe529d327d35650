"""How much does crediting a chat reply's restated copy of the task change each method's top-K?

    python scripts/measure_restated_copy.py --tasks HumanEval/0,Mbpp/1 --k 10

A chat model restates the signature and docstring before the body. By default the attention and
gradients that the body's steps pay to that generated copy are not credited to the prompt's words
(the study never scored generated text); the setting ``restated_copy=credit`` of every
self-attention and gradient method credits them (pytest_attnalign/restated.py). This script runs
each of those ten methods both ways on the same generation and prints how many of the top-K units
change, and the share of the method's score mass that sits on the copy.
"""

from __future__ import annotations

import argparse
import sys


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--tasks", default="HumanEval/0,Mbpp/1")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--methods", default="self_attention,gradient")
    args = ap.parse_args()

    from pytest_attnalign.alignment import top_k
    from pytest_attnalign.methods import get_method, resolve_methods
    from pytest_attnalign.restated import copy_credit
    from pytest_attnalign.study import Study, StudyConfig
    from pytest_attnalign.tasks import get_task

    study = Study(StudyConfig(device="cpu", dtype="float32"))
    for task_id in args.tasks.split(","):
        ctx = study.context(args.model, get_task(task_id))
        first, end = ctx.generation.explained
        if end <= first:
            print(f"{task_id}: no body tokens explained; skipped")
            continue
        credit = copy_credit(ctx)
        print(f"{task_id}: {end - first} body steps; {len(credit)} of the {first} generated tokens before the body "
              "copy the description verbatim")
        for name in resolve_methods(args.methods):
            plain = get_method(name).attribute(ctx)
            both = get_method(name, restated_copy="credit").attribute(ctx)
            before, after = set(top_k(plain, args.k)), set(top_k(both, args.k))
            moved = sum(b[2] - a[2] for a, b in zip(plain, both))
            share = moved / max(sum(b[2] for b in both), 1e-30)
            print(f"  {name:24} top-{args.k} units changed: {len(before - after):2d}   "
                  f"share of the credited scores from the copy: {share:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
