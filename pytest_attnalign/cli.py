"""The ``attnalign`` command: thin argument parsing over the library.

Every sub-command prints an :class:`AttnalignError` as one line on stderr and exits 2; an interrupt
(Ctrl-C) prints one line and exits 130.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .errors import AttnalignError
from .methods.perturbation import DEFAULT_FILL_MASK_MODEL, SHAP_EVALUATIONS

#: What ``attnalign --help`` says the command is (the module docstring is the developers').
DESCRIPTION = ("Attention alignment of code LLMs with human programmers (Kou et al., FSE 2024): score "
               "attributions computed elsewhere, generate for one task and show each attribution method's top-K "
               "units, run completions against a task's tests, and print, compare, gate or merge the run files of "
               "pytest --attn-* runs.")
EPILOG = ("exit status: 2 on a bad input or setting (one line on stderr; a malformed command line gets argparse's "
          "usage too), 130 when interrupted (Ctrl-C)")

#: ``check`` and ``verify-benchmarks``' wall-clock seconds per program (the plugin's --attn-timeout default).
TIMEOUT_S = 10.0

T = TypeVar("T")


def _given(value: str) -> str:
    """An option's value that is not empty: ``--html ""`` (an unset variable) was taken as no option."""
    if not value.strip():
        raise argparse.ArgumentTypeError("empty value: give one, or leave the option out")
    return value


def _parser() -> argparse.ArgumentParser:
    from . import __version__
    from .benchmarks import BENCHMARKS, NAMES
    from .execution import MAX_TIMEOUT_S

    task_ids = " or ".join(f"{b.prefix}/N" for b in BENCHMARKS)
    timeout = f"(default {TIMEOUT_S:g}, at most {MAX_TIMEOUT_S:g}: a day)"
    p = argparse.ArgumentParser(prog="attnalign", description=DESCRIPTION, epilog=EPILOG)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("score", help="score attributions computed elsewhere (JSON Lines)")
    s.add_argument("file", type=_given, help="JSON Lines: one task a line (see README); - reads standard input")
    s.add_argument("--k", type=int, nargs="+", default=[5, 10, 20], help="top-K sizes (default 5 10 20)")
    s.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    s.add_argument("--labels", choices=["corrected", "study"], default="corrected",
                   help="labels of task_id lines: corrected (default) or MBPP's off-by-one spans as the study scored them")
    s.set_defaults(func=cmd_score)

    v = sub.add_parser("verify-benchmarks", help="run every canonical solution through the sandbox")
    v.add_argument("--benchmark", choices=[*NAMES, "all"], default="all", help="the benchmark to verify (default all)")
    v.add_argument("-j", "--jobs", type=int, default=0, help="parallel programs (default: CPU count)")
    v.add_argument("--timeout", type=float, default=TIMEOUT_S, help=f"wall-clock seconds per program {timeout}")
    v.set_defaults(func=cmd_verify)

    c = sub.add_parser("check", help="run one completion against a task's tests (exit 0 pass, 1 fail/timeout/error, 2 bad input)")
    c.add_argument("task_id", help=task_ids)
    c.add_argument("completion_file", type=_given, help="text continuing the task's completion-mode prompt")
    c.add_argument("--timeout", type=float, default=TIMEOUT_S, help=f"wall-clock seconds the program may run {timeout}")
    c.add_argument("--json", action="store_true",
                   help="print one JSON object (task_id, outcome, seconds, stderr_tail) instead of a line")
    c.set_defaults(func=cmd_check)

    a = sub.add_parser("attribute", help="generate for one task and show each method's top-K units "
                                         "(exit 1 when a method failed on it)")
    a.add_argument("task_id", help=task_ids)
    a.add_argument("--model", type=_given, default="smollm2", help="alias, hub id, openai:MODEL or local directory (default smollm2)")
    a.add_argument("--method", default="all", help="all (the twelve plus entry-point methods), builtin, plugins, a category or "
                                                    "comma-separated method names (default all)")
    a.add_argument("--k", type=int, default=10, help="top-K units to show (default 10)")
    a.add_argument("--prompt-format", choices=["completion", "chat", "chat-prefill"], default=None,
                   help="default: the model's")
    a.add_argument("--max-new-tokens", type=int, default=None, metavar="N",
                   help="new-token budget (default: the study's rule, canonical-solution tokens + 20; in chat format, "
                        "where the reply restates the prompt, prompt + canonical solution tokens + 20)")
    a.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    a.add_argument("--cache-dir", type=_given, default=None, help="default: $ATTNALIGN_CACHE_DIR, else $XDG_CACHE_HOME/pytest-attnalign or ~/.cache/pytest-attnalign")
    a.add_argument("--shap-evaluations", type=int, default=None, metavar="N",
                   help=f"coalitions KernelSHAP samples per task (default: {SHAP_EVALUATIONS}, as in the study); the "
                        "all-masked and the whole prompt are regenerated too")
    a.add_argument("--fill-mask-model", type=_given, default=None, metavar="ID",
                   help="masked LM proposing bert_masking's substitutes (default $ATTNALIGN_FILL_MASK_MODEL or "
                        f"{DEFAULT_FILL_MASK_MODEL}; offline: pretrained embedding neighbours)")
    a.add_argument("--method-option", type=_given, action="append", default=[], metavar="METHOD.NAME=VALUE",
                   help="a method setting, repeatable: shap.signed=true, shap.l1_reg=num_features(10), bert_masking.force_different=true, "
                        "METHOD.restated_copy=credit (self-attention and gradient methods); CATEGORY.NAME=VALUE sets "
                        "every selected method of the category that takes NAME (gradient.restated_copy=credit)")
    a.add_argument("--json", action="store_true", help="print one JSON object")
    a.set_defaults(func=cmd_attribute)

    r = sub.add_parser("report", help="print the summary a run printed, from its run file; compare and gate it "
                                      "as the plugin does (exit 1 when a gate or compare-fail failed, or gates were "
                                      "given on part of a run)")
    r.add_argument("run", type=_given, help="a run file (written by --attn-json or --attn-save)")
    r.add_argument("--compare", type=_given, metavar="OTHER.json", help="a baseline run file: the change of every figure both have")
    r.add_argument("--gate", action="append", metavar="EXPR",
                   help="repeatable or comma list, e.g. mymethod.f1@10>=coding_last.f1@10, mymethod.alpha@10>=0.05 "
                        "(README: gate grammar)")
    r.add_argument("--compare-fail", action="append", metavar="EXPR",
                   help="repeatable or comma list, e.g. f1@10:2%% (2 percentage points), alpha@5:0.02, pass1:1%%")
    r.add_argument("--compare-force", action="store_true", help="compare even when the runs' settings differ or the baseline is "
                                                                    "part of a run (incomplete, or one shard's)")
    r.add_argument("--html", type=_given, metavar="PATH", help="also write the run as one self-contained web page (tables, charts "
                                                  "and each task's description with the top-K units marked, and the "
                                                  "CODING methods' code-to-words map)")
    r.set_defaults(func=cmd_report)

    m = sub.add_parser("merge", help="combine the run files of --attn-shard shards into the unsharded run's file "
                                     "and print its summary")
    m.add_argument("shards", type=_given, nargs="+", metavar="SHARD.json", help="each shard's --attn-json file")
    m.add_argument("-o", "--output", type=_given, required=True, metavar="RUN.json", help="the merged run file to write")
    m.add_argument("--allow-missing", action="store_true",
                   help="merge even when shards are absent or stopped early: the run is partial and its summary names "
                        "the items that did not run")
    m.set_defaults(func=cmd_merge)
    return p


def cmd_score(args: argparse.Namespace) -> int:
    from .scorefile import score_file_command

    return score_file_command(args.file, args.k, args.json, args.labels)


def cmd_verify(args: argparse.Namespace) -> int:
    from .execution import check_timeout, verify_benchmarks_command

    return verify_benchmarks_command(args.benchmark, args.jobs, _flag("--timeout", check_timeout, args.timeout))


def cmd_check(args: argparse.Namespace) -> int:
    from .execution import check_command, check_timeout

    return check_command(args.task_id, args.completion_file, _flag("--timeout", check_timeout, args.timeout), args.json)


def cmd_attribute(args: argparse.Namespace) -> int:
    from .methods import method_options, resolve_methods
    from .model_spec import resolve_model
    from .models import default_cache_dir
    from .preflight import cache_directory, local_directory
    from .tasks import get_task

    methods = resolve_methods(args.method)  # names, paths and task are checked before any model loads
    resolve_model(args.model)
    task = get_task(args.task_id)
    if args.fill_mask_model is not None:
        _flag("--fill-mask-model", local_directory, args.fill_mask_model)
    cache = _flag("--cache-dir", cache_directory,
                  Path(args.cache_dir).expanduser() if args.cache_dir is not None else default_cache_dir())
    if args.k < 1:
        raise AttnalignError(f"--k must be positive, got {args.k}")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise AttnalignError(f"--max-new-tokens must be positive, got {args.max_new_tokens}")
    if args.shap_evaluations is not None and args.shap_evaluations < 1:
        raise AttnalignError(f"--shap-evaluations must be positive (the study used {SHAP_EVALUATIONS}), "
                             f"got {args.shap_evaluations}")
    from .report import render_attribution
    from .study import Study, StudyConfig, attribute_task
    from .registry import registry_of
    from .threads import CoreShare

    options = method_options(args.shap_evaluations, args.fill_mask_model, args.method_option, methods,
                             ("--shap-evaluations", "--fill-mask-model"))
    cores = CoreShare(registry_of(cache))  # its share of the cores while pytest runs use the rest, re-read per method
    cores.apply()
    study = Study(StudyConfig(prompt_format=args.prompt_format, cache_dir=cache, device=args.device,
                              max_new_tokens=args.max_new_tokens, method_options=options))
    try:
        for name in set(options) & set(methods):  # settings and a named fill-mask model, before generating
            study.method(name).settings()
        result = attribute_task(study, args.model, task.task_id, methods, args.k, cores.apply)
    finally:
        cores.leave()
    print(json.dumps(result) if args.json else render_attribution(result, args.k))
    return 1 if any("error" in m for m in result["methods"].values()) else 0


def cmd_report(args: argparse.Namespace) -> int:
    from .gates import Term, _part_of_a_run, check_baseline_ks, check_names, judge, parse_compare_fails, parse_gates
    from .html import write_html
    from .preflight import not_an_input, output_file
    from .runfile import read_run

    run = read_run(Path(args.run))
    gates = _flag("--gate", parse_gates, args.gate)
    fails = _flag("--compare-fail", parse_compare_fails, args.compare_fail)
    methods = sorted({r.method for r in run.records})
    if _part_of_a_run(run):  # its records may lack a method whose every item errored: judge() says "gates not
        # judged" (as the plugin does) instead of calling a method the run selected absent; K is still checked
        methods = sorted({*methods, *(t.method for g in gates for t in (g.left, g.right) if isinstance(t, Term)),
                          *(f.method for f in fails if f.method is not None)})
    _flag("--gate", check_names, gates, [], methods, run.ks)
    _flag("--compare-fail", check_names, [], fails, methods, run.ks)
    if fails and not args.compare:
        raise AttnalignError("--compare-fail: no baseline: add --compare OTHER.json")
    base = _flag("--compare", read_run, Path(args.compare)) if args.compare else None
    if base is not None:
        _flag("--compare-fail", check_baseline_ks, fails, base, args.compare)
    page = _flag("--html", output_file, Path(args.html).expanduser(), "report.html") if args.html else None
    if page is not None:
        _flag("--html", not_an_input, page, [("the run file", Path(args.run)),
                                             *([("the --compare baseline", Path(args.compare))] if args.compare else [])],
              "the page")
    held, lines = judge(run, gates, base, fails, args.compare_force, args.compare or "", "--compare-force")
    if page is not None:  # before printing: a reader that leaves early (| head) must not cost the page
        write_html(page, run)
    print("\n".join([run.summary(), *lines, *([f"page written to {page}"] if page is not None else [])]))
    return 0 if held else 1


def cmd_merge(args: argparse.Namespace) -> int:
    from .merge import merge_runs
    from .preflight import not_an_input, output_file
    from .runfile import write_run

    output = _flag("--output", output_file, Path(args.output))
    _flag("--output", not_an_input, output, [("the shard file", Path(p)) for p in args.shards], "the merged run")
    run = merge_runs([Path(p) for p in args.shards], args.allow_missing)
    write_run(output, run)
    print(f"{run.summary()}\nmerged {len(args.shards)} shard files into {output}")
    return 0


def _flag(flag: str, check: Callable[..., T], *args: Any) -> T:
    """``check(*args)``, its error prefixed with the flag to change."""
    try:
        return check(*args)
    except AttnalignError as exc:
        raise AttnalignError(f"{flag}: {exc}") from None


#: Exit status when interrupted (Ctrl-C): a shell's status for a process killed by SIGINT.
INTERRUPTED = 128 + 2

#: Exit status when the reader of the output left (``attnalign report run.json | head``): a shell's
#: status for a process killed by SIGPIPE, which Python turns into an exception instead.
BROKEN_PIPE = 128 + 13


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        status = args.func(args)
        sys.stdout.flush()  # inside the try: the pipe may break only here
        return status
    except AttnalignError as exc:
        print(f"attnalign: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: one line, not the traceback of wherever it landed
        print("attnalign: interrupted", file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:  # not a traceback; stdout to devnull so the flush at exit does not fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
