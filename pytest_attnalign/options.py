"""The ``--attn-*`` options: their declarations, defaults and validation, and the StudyConfig they make.

Everything is checked in :func:`parse_options` before any model loads, so a typo is one usage error
naming the flag, never a failure at the end of a long run. Kept apart from :mod:`.plugin`, which
holds only pytest's hooks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .benchmarks import BENCHMARKS, NAMES, benchmark_of, choices
from .errors import AttnalignError
from .methods import method_options
from .methods.perturbation import DEFAULT_FILL_MASK_MODEL, SHAP_EVALUATIONS

if TYPE_CHECKING:
    from collections.abc import Callable

    from .gates import CompareFail, Gate


@dataclass(frozen=True)
class Options:
    """Validated ``--attn-*`` values."""

    models: list[str]
    methods: list[str]
    benchmarks: list[str]
    ks: tuple[int, ...]
    limit: int | None
    device: str
    dtype: str
    prompt_format: str | None
    max_new_tokens: int | None
    cache_dir: Path
    timeout: float
    error_k: int
    json_path: Path | None
    method_options: dict[str, dict[str, Any]]
    labels: str
    threads: int | None
    pass1: str  # fail: an item fails when its code fails its tests; report: Pass@1 is only reported
    gates: list[Gate]
    compare_fails: list[CompareFail]
    compare: Path | None  # the baseline run file
    compare_force: bool
    storage: Path | None  # where this run is saved (None: not saved)
    save_name: str | None
    shard: tuple[int, int] | None  # --attn-shard (index, count)
    html_path: Path | None = None  # the page of --attn-html
    compare_newest: bool = False  # --attn-compare with no value: at the end, the newest with this run's settings
    compare_passed: tuple[str, ...] = ()  # the newer saved runs it passed over (storage.passed_over)


#: Option defaults, also used to tell whether a run asked for the study (see :func:`given`).
_DEFAULTS: dict[str, Any] = {
    "attn_model": None, "attn_method": "all", "attn_benchmark": "all", "attn_k": "5,10,20", "attn_limit": None,
    "attn_device": "auto", "attn_dtype": "auto", "attn_prompt_format": None, "attn_max_new_tokens": None,
    "attn_cache_dir": None, "attn_timeout": 10.0, "attn_error_k": 10, "attn_json": None, "attn_html": None,
    "attn_shap_evaluations": None, "attn_fill_mask_model": None, "attn_threads": None, "attn_method_option": None,
    "attn_labels": "corrected", "attn_pass1": "fail", "attn_save": None, "attn_autosave": False,
    "attn_storage": None, "attn_compare": None, "attn_compare_fail": None, "attn_compare_force": False,
    "attn_gate": None, "attn_shard": None,
}


def add_options(parser: pytest.Parser) -> None:
    """Declare the options (called from the plugin's ``pytest_addoption``)."""
    g = parser.getgroup("attnalign", "attention alignment with human programmers (pytest-attnalign)")
    g.addoption("--attn-model", action="append", default=_DEFAULTS["attn_model"], metavar="NAME",
                help="model alias (smollm2, incoder, codegen, codeparrot, polycoder, gptj, gpt4), hub id, "
                     "openai:MODEL or local directory; repeatable or comma list (default: smollm2)")
    g.addoption("--attn-method", default=_DEFAULTS["attn_method"], metavar="NAMES",
                help="attribution methods: all (the study's twelve plus installed entry-point methods), builtin "
                     "(the twelve), plugins (entry-point methods), a category (self_attention, gradient, perturbation "
                     "or one a plugin declares) or comma-separated names (default: all)")
    g.addoption("--attn-benchmark", default=_DEFAULTS["attn_benchmark"], metavar="NAME", help=f"{choices('all')} (default: all)")
    g.addoption("--attn-k", default=_DEFAULTS["attn_k"], metavar="K,...", help="top-K sizes of the tables (default: 5,10,20)")
    g.addoption("--attn-limit", type=int, default=_DEFAULTS["attn_limit"], metavar="N",
                help="only the first N tasks of each benchmark (quick runs)")
    g.addoption("--attn-device", default=_DEFAULTS["attn_device"], metavar="DEV",
                help="auto (CUDA when present, one GPU per xdist worker), cpu, cuda or cuda:N")
    g.addoption("--attn-dtype", default=_DEFAULTS["attn_dtype"], metavar="DTYPE",
                help="auto (float32 on every device, the study's precision), float32, float16 or bfloat16")
    g.addoption("--attn-prompt-format", default=_DEFAULTS["attn_prompt_format"], metavar="FMT",
                help="completion, chat or chat-prefill (assistant turn prefilled with the task's code; default: "
                     "chat for smollm2, gpt4, openai:* and a local model directory whose tokenizer has a chat "
                     "template, completion otherwise: give chat for an instruct model's hub id)")
    g.addoption("--attn-max-new-tokens", type=int, default=_DEFAULTS["attn_max_new_tokens"], metavar="N",
                help="new-token budget (default: the study's rule, canonical-solution tokens + 20; in chat format, "
                     "where the reply restates the prompt, prompt + canonical solution tokens + 20)")
    g.addoption("--attn-cache-dir", default=_DEFAULTS["attn_cache_dir"], metavar="DIR",
                help="cache of converted models, generations and attributions "
                     "(default: $ATTNALIGN_CACHE_DIR, else $XDG_CACHE_HOME/pytest-attnalign or ~/.cache/pytest-attnalign)")
    g.addoption("--attn-timeout", type=float, default=_DEFAULTS["attn_timeout"], metavar="S",
                help="wall-clock seconds for running one generated program (default: 10)")
    g.addoption("--attn-error-k", type=int, default=_DEFAULTS["attn_error_k"], metavar="K",
                help="top-K used to classify error patterns of failing items (default: 10)")
    g.addoption("--attn-json", default=_DEFAULTS["attn_json"], metavar="PATH",
                help="write the run file: versioned JSON of the settings, every item's record and the tables "
                     "(attnalign report PATH prints the summary again)")
    g.addoption("--attn-html", default=_DEFAULTS["attn_html"], metavar="PATH",
                help="write one self-contained web page of the run (no network needed): the tables, a chart per K "
                     "and per task the description with the labelled keywords and each method's top-K units marked, "
                     "and the CODING methods' code-to-words map (a code line lights the words it leaned on)")
    g.addoption("--attn-shap-evaluations", type=int, default=_DEFAULTS["attn_shap_evaluations"], metavar="N",
                help=f"coalitions KernelSHAP samples per task (default: {SHAP_EVALUATIONS}, as in the study); the "
                     "all-masked and the whole prompt are regenerated too")
    g.addoption("--attn-fill-mask-model", default=_DEFAULTS["attn_fill_mask_model"], metavar="ID",
                help="masked LM (hub id or local directory) proposing bert_masking's substitutes (default: "
                     f"$ATTNALIGN_FILL_MASK_MODEL or {DEFAULT_FILL_MASK_MODEL}; offline: pretrained embedding neighbours)")
    g.addoption("--attn-method-option", action="append", default=_DEFAULTS["attn_method_option"], metavar="METHOD.NAME=VALUE",
                help="a method setting, repeatable, for built-in and entry-point methods alike: shap.signed=true "
                     "(signed values of BLEU instead of the study's |value| of 1 - BLEU), shap.l1_reg=num_features(10) (shap's "
                     "feature selection: auto, the study's AIC rule, by default), bert_masking.force_different=true "
                     "(a substitute other than the word), coding_all.restated_copy=credit (any self-attention or "
                     "gradient method: credit a chat reply's verbatim copy of the description to the words it copies); "
                     "CATEGORY.NAME=VALUE sets every selected method of the category that takes NAME "
                     "(gradient.restated_copy=credit)")
    g.addoption("--attn-labels", default=_DEFAULTS["attn_labels"], metavar="MODE",
                help="corrected (default) or study: MBPP's off-by-one spans as the study scored them, "
                     "to compare with the published tables")
    g.addoption("--attn-threads", type=int, default=_DEFAULTS["attn_threads"], metavar="N",
                help="torch CPU threads per process (default: $OMP_NUM_THREADS when set, else the cores divided by "
                     "the attnalign processes running items at the moment: xdist workers and other runs sharing the "
                     "cache directory)")
    g.addoption("--attn-pass1", default=_DEFAULTS["attn_pass1"], metavar="MODE",
                help="fail (default): an item fails when its generated code fails the benchmark's tests; "
                     "report: Pass@1 is only reported, so the exit status reflects errors, gates and compare-fails alone")
    g.addoption("--attn-save", default=_DEFAULTS["attn_save"], metavar="NAME",
                help="save the run as NNNN_NAME.json in the storage directory")
    g.addoption("--attn-autosave", action="store_true", default=_DEFAULTS["attn_autosave"],
                help="save the run as NNNN_<start time>.json in the storage directory")
    g.addoption("--attn-storage", default=_DEFAULTS["attn_storage"], metavar="DIR",
                help="directory of saved runs (default: attnalign under pytest's cache directory, "
                     ".pytest_cache/d/attnalign in the rootdir)")
    g.addoption("--attn-compare", nargs="?", const="", default=_DEFAULTS["attn_compare"], metavar="NAME|PATH",
                help="compare with a saved run (its name, counter or path; no value: the newest whole saved run, "
                     "the newest with this run's settings if there is one): the change of P/R/F1/alpha per model "
                     "x method x K and of Pass@1 per model")
    g.addoption("--attn-compare-fail", action="append", default=_DEFAULTS["attn_compare_fail"], metavar="EXPR",
                help="fail the session when a figure dropped from the --attn-compare run by more than allowed, "
                     "repeatable or comma list: f1@10:2%% (2 percentage points), alpha@5:0.02, pass1:1%%, "
                     "METHOD.f1@10:2%%; a trailing ! fails only a significant drop (95%% CI)")
    g.addoption("--attn-compare-force", action="store_true", default=_DEFAULTS["attn_compare_force"],
                help="compare even when settings differ from the baseline (a model's source, revision, dtype, "
                     "prompt format or budget rule; labels; the stop rule; method settings; K; execution limits) "
                     "or the baseline is part of a run (incomplete, or one shard's)")
    g.addoption("--attn-gate", action="append", default=_DEFAULTS["attn_gate"], metavar="EXPR",
                help="fail the session unless the run meets it, repeatable or comma list: "
                     "mymethod.f1@10>=coding_last.f1@10, mymethod.alpha@10>=0.05, coding_last.p@5<40%%; "
                     "a trailing ! requires the whole 95%% CI (bootstrap over tasks, paired when both sides are figures) to meet it")
    g.addoption("--attn-shard", default=_DEFAULTS["attn_shard"], metavar="I/N",
                help="run shard I of N (0 <= I < N) of the study's items, balanced by the tasks' token budgets, all "
                     "methods of a model x task in one shard, split before -k/-m select "
                     "(job arrays: --attn-shard $SLURM_ARRAY_TASK_ID/N); "
                     "attnalign merge combines the shards' --attn-json files into the unsharded run's file")


def given(config: pytest.Config) -> bool:
    """Whether this run asked for the study: any --attn-* option or a path into benchmarks/.

    Options may also come from ``addopts`` or ``PYTEST_ADDOPTS``, so a value that differs from its
    default counts too.
    """
    explicit = any(a.startswith("--attn-") for a in config.invocation_params.args) or any(
        config.getoption(name) != default for name, default in _DEFAULTS.items())
    # positional paths only: an option's value (``-k benchmarks``, ``--basetemp=...``) is no request
    paths = config.args if config.args_source == pytest.Config.ArgsSource.ARGS else []
    return explicit or any("benchmarks" in Path(str(a)).parts for a in paths)


#: The ``--attn-*`` options that take no value (``store_true``: a bool default): a token after them is pytest's own.
_FLAGS = tuple("--" + name.replace("_", "-") for name, default in _DEFAULTS.items() if isinstance(default, bool))


def check_rootdir(config: pytest.Config) -> None:
    """Stop a run whose rootdir came from an ``--attn-*`` option's value.

    pytest finds its rootdir before plugins declare their options, so in ``--attn-cache-dir /data``
    (two tokens) it takes ``/data`` for a test path (pytest's docs, "rootdir", and its issue #1435):
    the rootdir, and with it the ini file, conftest.py, ``.pytest_cache`` and the saved runs,
    would move to ``/data``. Written ``--attn-cache-dir=/data`` the value is never a path to pytest.
    """
    import os
    import shlex

    tokens = shlex.split(os.environ.get("PYTEST_ADDOPTS", "")) + [str(a) for a in config.invocation_params.args]
    here = config.invocation_params.dir
    taken = [(flag, value) for flag, value in zip(tokens, tokens[1:])
             if flag.startswith("--attn-") and "=" not in flag and flag not in _FLAGS
             and not value.startswith("-") and (here / value).exists()]
    if not taken:
        return
    proper = _rootdir_without_option_values(config)
    if proper is None or proper == Path(str(config.rootpath)):
        return
    flag, value = taken[0]
    raise pytest.UsageError(
        f"{flag} {value}: pytest took the value for a test path, so the rootdir became {config.rootpath} "
        f"instead of {proper} (its config, conftest.py, .pytest_cache, saved runs): write {flag}={value}")


def _rootdir_without_option_values(config: pytest.Config) -> Path | None:
    """The rootdir pytest finds from the run's real arguments (``None``: cannot tell).

    ``_pytest.config.findpaths.determine_setup`` is pytest's own rule; it has no public API and its
    parameters changed between 7.4 and 9 (so only those it declares are passed). Should it move,
    the check is skipped rather than guessed.
    """
    import inspect

    try:
        from _pytest.config.findpaths import determine_setup
    except ImportError:
        return None
    ns = config.known_args_namespace
    kwargs = {"inifile": ns.inifilename, "override_ini": ns.override_ini, "args": [str(a) for a in ns.file_or_dir],
              "rootdir_cmd_arg": ns.rootdir or None, "invocation_dir": config.invocation_params.dir}
    try:
        declared = inspect.signature(determine_setup).parameters
        return Path(str(determine_setup(**{k: v for k, v in kwargs.items() if k in declared})[0]))
    except (TypeError, ValueError, AttributeError, OSError):
        return None


def collects_study(config: pytest.Config) -> bool:
    """Whether the run collects the study's items: no paths given (the plugin collects the study), or a
    path into a ``benchmarks`` directory, the package's ``items`` module or a directory holding them."""
    if config.args_source != pytest.Config.ArgsSource.ARGS:
        return True
    items = Path(__file__).resolve().parent / "items"
    for arg in config.args:
        path = (config.invocation_params.dir / arg.split("::")[0]).resolve()
        if "benchmarks" in path.parts or path == items or items in path.parents or (path / "benchmarks").is_dir():
            return True
    return False


_TASK_IN_K = re.compile(r"\b([A-Za-z]+)/(-?\d+)(\])?")


def check_task_filter(keyword: str, benchmarks: list[str], limit: int | None) -> None:
    """``-k`` naming a task this run does not hold selects nothing, silently: say which and why.

    A task written with its closing bracket (``HumanEval/12]``, as the README shows) is one task, so
    one of no benchmark (``Foo/1]``) or a negative number (``HumanEval/-1``) is refused too;
    without it, pytest's substring match takes every id that starts with it (``HumanEval/1``: 1,
    10-19, 100-163). pytest matches ``-k`` case-insensitively, so this does too. An expression with
    ``not`` selects by exclusion and is left alone.
    """
    if not keyword or re.search(r"\bnot\b", keyword, re.IGNORECASE):
        return
    for found in _TASK_IN_K.finditer(keyword):
        bench, exact = benchmark_of(f"{found[1]}/"), found[3] is not None
        if bench is None:
            if exact:  # "Foo/1]" can only end an item id, where the task id stands
                raise AttnalignError(f"no task {found[1]}/{found[2]}: ids are {', '.join(b.ids for b in BENCHMARKS)}")
            continue  # a model's hub id ("org/name") may hold such a word
        token = f"{bench.prefix}/{found[2]}"

        def hits(ids: Any) -> list[str]:
            return [i for i in ids if (i == token if exact else i.startswith(token))]

        ids = list(bench.load())  # in task order, as the items are collected
        if not hits(ids):
            raise AttnalignError(f"{'no task ' if exact else 'no task id starts with '}{token}: ids are {bench.ids}")
        if bench.name not in benchmarks:
            raise AttnalignError(f"{token} is in {bench.name}, which --attn-benchmark={benchmarks[0]} leaves out: "
                                 f"use --attn-benchmark={bench.name} or all")
        held = ids[:limit]
        if not hits(held):
            raise AttnalignError(f"{token} is past --attn-limit={limit} ({bench.name}: {held[0]} to {held[-1]}): "
                                 f"raise --attn-limit")


def k_words(keyword: str) -> list[str]:
    """The words of a ``-k`` expression that select: not ``and``/``or``/``not``, nor a word under an
    odd number of ``not`` (``not x``, ``not (x or y)``, ``a and not (b or not not c)``: an exclusion
    of something the run lacks drops nothing); under an even number (``not (not x)``, ``not not x``)
    a word selects again. pytest's own parser reads the expression first (private API, the same
    since 7.4): should it refuse the expression, no word is checked and pytest's own error for ``-k``
    (``Wrong expression passed to '-k'``) says why. Should the parser or scanner move, or the
    expression hold call parameters (pytest refuses them for ``-k``), no word is checked either."""
    try:
        from _pytest.mark.expression import Expression, Scanner

        Expression.compile(keyword)
        scanner = Scanner(keyword)
        tokens = [scanner.current, *scanner.tokens]
        kinds = [token.type.name for token in tokens]
    except Exception:  # noqa: BLE001 - pytest's SyntaxError or ParseError, a moved or changed parser
        return []
    if not set(kinds) <= {"LPAREN", "RPAREN", "OR", "AND", "NOT", "IDENT", "EOF"}:
        return []
    # a word's parity: the parity of the nots on its enclosing groups (the stack) and right before it
    groups, pending, words = [0], 0, []
    for token, kind in zip(tokens, kinds):
        if kind == "NOT":
            pending ^= 1
        elif kind == "LPAREN":
            groups.append(groups[-1] ^ pending)
            pending = 0
        elif kind == "RPAREN" and len(groups) > 1:
            groups.pop()
        elif kind == "IDENT":
            if not groups[-1] ^ pending:
                words.append(token.value)
            pending = 0
    return list(dict.fromkeys(words))


def check_k_words(keyword: str, items: list[pytest.Item], left_out: list[str], models: list[str],
                  methods: list[str], lf: bool = False) -> None:
    """``-k`` with a word that matches no item (a misspelt method or model) deselects its part of the
    run silently, or all of it: say which word and what the items are named by. A word matches as
    pytest's ``-k`` matches it (:class:`_pytest.mark.KeywordMatcher`: a case-insensitive substring of
    the item's and its parents' names, markers and extra keywords); in ``left_out``, the ids of the
    items that ``--lf`` did not collect (the study's, and a user's own that pytest's cache recorded),
    any substring counts (their names are not at hand). Under ``--lf`` (``lf``) the error says that a
    word may name a test that passed last time, which the cache does not record after an xdist run."""
    words = k_words(keyword)
    try:
        from _pytest.mark import KeywordMatcher
    except ImportError:  # pytest moved it: the check is skipped rather than guessed
        return
    matchers = [KeywordMatcher.from_item(item) for item in items] if words else []
    ids = [i.lower() for i in left_out]
    unknown = [w for w in words if not any(m(w) for m in matchers) and not any(w.lower() in i for i in ids)]
    if unknown:
        raise AttnalignError(f"{', '.join(unknown)} {'matches' if len(unknown) == 1 else 'match'} no item of this "
                             f"run: items are named MODEL-METHOD-TASK with models {', '.join(models)} and methods "
                             f"{', '.join(methods)}"
                             + ("; or a test --lf left out (it passed last time): to select it, run without --lf"
                                if lf else ""))


#: Options whose value is a path or a name, with what they expect: given empty (``--attn-json=``),
#: the value would read as "not given" and the option would be silently ignored.
_NON_EMPTY = {"attn_json": "a file path (e.g. run.json)", "attn_html": "a file path (e.g. report.html)",
              "attn_save": "a run name (e.g. main)", "attn_cache_dir": "a directory", "attn_storage": "a directory",
              "attn_fill_mask_model": "a hub id or a local directory"}


def _positive_ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise pytest.UsageError(f"{flag}: {text!r} is not a comma list of integers (e.g. 5,10,20)") from None
    if not values or min(values) < 1:
        raise pytest.UsageError(f"{flag}: values must be positive integers, got {text!r}")
    return tuple(dict.fromkeys(values))


def parse_options(config: pytest.Config) -> Options:
    """Validate every option before any model loads; errors are usage errors naming the fix."""
    from .execution import check_timeout
    from .gates import check_names, parse_compare_fails, parse_gates
    from .generation import PROMPT_FORMATS
    from .methods import resolve_methods
    from .model_spec import resolve_model
    from .models import check_dtype, default_cache_dir
    from .preflight import cache_directory
    from .sharding import parse_shard
    from .storage import autosave_name, check_name, passed_over

    get = config.getoption
    for dest, expected in _NON_EMPTY.items():
        if get(dest) is not None and not get(dest).strip():
            raise pytest.UsageError(f"--{dest.replace('_', '-')}: empty value: give {expected}, or leave the option out")
    models = [m.strip() for v in (get("attn_model") or ["smollm2"]) for m in v.split(",") if m.strip()]
    if not models:
        raise pytest.UsageError(f"--attn-model: no model given in {','.join(get('attn_model'))!r}: "
                                "give an alias (e.g. smollm2), a hub id, openai:MODEL or a local directory")

    def usage(flag: str, check: Any, *args: Any) -> Any:
        try:
            return check(*args)
        except AttnalignError as exc:
            raise pytest.UsageError(f"{flag}: {exc}") from None

    for m in models:
        usage("--attn-model", resolve_model, m)
    methods = usage("--attn-method", resolve_methods, get("attn_method"))
    usage("--attn-dtype", check_dtype, get("attn_dtype"))
    bench = get("attn_benchmark")
    if bench not in (*NAMES, "all"):
        raise pytest.UsageError(f"--attn-benchmark: unknown {bench!r}; use {choices('all')}")
    device = get("attn_device")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise pytest.UsageError(f"--attn-device: unknown {device!r}; use auto, cpu, cuda or cuda:N")
    if device.startswith("cuda") and _items_run_here(config):
        from .models import check_device

        usage("--attn-device", check_device, device)
    fmt = get("attn_prompt_format")
    if fmt is not None and fmt not in PROMPT_FORMATS:
        raise pytest.UsageError(f"--attn-prompt-format: unknown {fmt!r}; use {' or '.join(PROMPT_FORMATS)}")
    for flag, value in (("--attn-limit", get("attn_limit")), ("--attn-max-new-tokens", get("attn_max_new_tokens")),
                        ("--attn-error-k", get("attn_error_k")), ("--attn-shap-evaluations", get("attn_shap_evaluations")),
                        ("--attn-threads", get("attn_threads"))):
        if value is not None and value < 1:
            raise pytest.UsageError(f"{flag}: must be a positive integer, got {value}")
    usage("--attn-timeout", check_timeout, get("attn_timeout"))
    if get("attn_labels") not in ("corrected", "study"):
        raise pytest.UsageError(f"--attn-labels: unknown {get('attn_labels')!r}; use corrected or study")
    benchmarks = list(NAMES) if bench == "all" else [bench]
    if collects_study(config):  # a user's own test files keep -k for their own ids
        usage(f"-k {get('keyword')!r}", check_task_filter, get("keyword"), benchmarks, get("attn_limit"))
    settings = usage("--attn-method-option", method_options, get("attn_shap_evaluations"), get("attn_fill_mask_model"),
                     get("attn_method_option"), methods if collects_study(config) else None)  # fixtures call any method
    from .methods import get_method

    for name, opts in settings.items():  # a bad value fails now, not at the first item
        usage("--attn-method-option", lambda: get_method(name, **opts))
    _check_fill_mask_model(get("attn_fill_mask_model"), settings, methods, usage)
    ks = _positive_ints(get("attn_k"), "--attn-k")
    if get("attn_pass1") not in ("fail", "report"):
        raise pytest.UsageError(f"--attn-pass1: unknown {get('attn_pass1')!r}; use fail or report")
    gates = usage("--attn-gate", parse_gates, get("attn_gate"))
    usage("--attn-gate", check_names, gates, [], methods, ks)
    fails = usage("--attn-compare-fail", parse_compare_fails, get("attn_compare_fail"))
    usage("--attn-compare-fail", check_names, [], fails, methods, ks)
    if get("attn_shard") is not None:
        judged = [flag for flag, given in (("--attn-gate", gates), ("--attn-compare-fail", fails),
                                           ("--attn-compare", get("attn_compare") is not None)) if given]
        if judged:
            raise pytest.UsageError(f"{judged[0]}: a shard's figures are part of the run's: merge the shards' "
                                    "--attn-json files (attnalign merge) and compare or gate the merged run with "
                                    "attnalign report MERGED.json --gate/--compare/--compare-fail")
    if fails and get("attn_compare") is None:
        raise pytest.UsageError("--attn-compare-fail: no baseline: add --attn-compare (the newest usable saved run) "
                                "or --attn-compare=NAME|PATH")
    if get("attn_save") and get("attn_autosave"):
        raise pytest.UsageError("--attn-save: give either --attn-save NAME or --attn-autosave, not both")
    save_name = usage("--attn-save", check_name, get("attn_save")) if get("attn_save") else (
        autosave_name() if get("attn_autosave") else None)
    # paths last: the end of a long run must not be where a typo shows
    cache = get("attn_cache_dir")
    cache_dir = usage("--attn-cache-dir", cache_directory, Path(cache).expanduser() if cache else default_cache_dir())
    json_path = html_path = save_dir = compare = None
    if not hasattr(config, "workerinput"):  # only the controller reads the baseline and writes the files: a
        json_path, html_path, save_dir, compare = _controller_paths(config, usage, save_name)  # worker's host may lack them
    return Options(
        models=list(dict.fromkeys(models)), methods=methods,
        benchmarks=benchmarks,
        ks=ks, limit=get("attn_limit"), device=device,
        dtype=get("attn_dtype"), prompt_format=fmt, max_new_tokens=get("attn_max_new_tokens"),
        cache_dir=cache_dir, timeout=get("attn_timeout"), error_k=get("attn_error_k"), json_path=json_path,
        method_options=settings, labels=get("attn_labels"),
        threads=get("attn_threads"), pass1=get("attn_pass1"), gates=gates, compare_fails=fails, compare=compare,
        compare_force=get("attn_compare_force"), storage=save_dir, save_name=save_name, html_path=html_path,
        compare_newest=get("attn_compare") == "",
        compare_passed=passed_over(compare, get("attn_compare")) if compare else (),
        shard=usage("--attn-shard", parse_shard, get("attn_shard")) if get("attn_shard") is not None else None,
    )


def tx_specs(specs: list[str]) -> list[Any]:
    """``--tx`` values one per worker, as xdist expands them (``2*popen`` is two), each parsed by
    execnet's ``XSpec`` (``popen``, ``ssh``, ``socket``, ``python``, ``chdir`` ... in any order)."""
    from execnet import XSpec

    out = []
    for spec in specs:
        times, star, rest = spec.partition("*")
        out += [XSpec(rest)] * int(times) if star and times.isdigit() else [XSpec(spec)]
    return out


def _items_run_here(config: pytest.Config) -> bool:
    """Whether the items run on this machine: a serial run, or the controller of local workers (``-n``,
    ``--tx popen``); not a worker (its controller checked) nor the controller of ``--tx ssh=...`` hosts,
    whose GPUs are theirs."""
    specs = tx_specs(config.getoption("tx", None) or [])
    return not hasattr(config, "workerinput") and all(spec.popen for spec in specs)


def _controller_paths(config: pytest.Config, usage: Callable[..., Any],
                      save_name: str | None) -> tuple[Path | None, Path | None, Path | None, Path | None]:
    """The run file, the page, the storage a run saves into and the baseline, each checked: (json, html,
    storage, baseline)."""
    from .preflight import not_an_input, output_file
    from .storage import find_run, usable_storage

    get = config.getoption
    json_path = usage("--attn-json", output_file, Path(get("attn_json")).expanduser()) if get("attn_json") else None
    html_path = usage("--attn-html", output_file, Path(get("attn_html")).expanduser(),
                      "report.html") if get("attn_html") else None
    save_dir = compare = None
    if save_name or get("attn_compare") is not None:
        storage = Path(get("attn_storage")).expanduser() if get("attn_storage") else _default_storage(config)
        # created (and checked) only by a run that will save: --collect-only saves nothing
        save_dir = usage("--attn-storage", usable_storage, storage) if save_name and not config.option.collectonly else None
        if get("attn_compare") is not None:
            compare = usage("--attn-compare", find_run, storage, get("attn_compare"))
    if html_path:  # the page is written last: over either file it would replace a run
        usage("--attn-html", not_an_input, html_path,
              [(what, path) for what, path in (("the --attn-json file", json_path), ("the --attn-compare baseline", compare))
               if path], "the page")
    return json_path, html_path, save_dir, compare


def _check_fill_mask_model(option: str | None, settings: dict[str, dict[str, Any]], methods: list[str],
                           usage: Callable[..., Any]) -> None:
    """The fill-mask model bert_masking would use, when named by the user, must exist if written as a path.

    It may come from ``--attn-fill-mask-model``, ``--attn-method-option bert_masking.fill_mask_model``
    or ``$ATTNALIGN_FILL_MASK_MODEL``; the method itself resolves which (so the rule lives in one
    place), and the check names where the value came from. The environment's value, set for other
    runs too, is checked only when bert_masking runs.
    """
    from .methods import get_method
    from .preflight import local_directory

    chosen = settings.get("bert_masking", {}).get("fill_mask_model")
    method = get_method("bert_masking", **settings.get("bert_masking", {}))
    if not method.explicit or not (chosen or "bert_masking" in methods):
        return
    source = ("ATTNALIGN_FILL_MASK_MODEL" if not chosen else "--attn-fill-mask-model" if chosen == option
              else "--attn-method-option")
    usage(source, local_directory, str(method.fill_mask_model))


def study_config(o: Options) -> Any:
    """The ``study.StudyConfig`` of validated options (the study's items and the fixtures share it)."""
    from .execution import Limits
    from .study import StudyConfig

    return StudyConfig(
        prompt_format=o.prompt_format, max_new_tokens=o.max_new_tokens, ks=o.ks, error_k=o.error_k,
        limits=Limits(timeout_s=o.timeout), cache_dir=o.cache_dir, device=o.device, dtype=o.dtype,
        method_options=o.method_options, labels=o.labels)


def _default_storage(config: pytest.Config) -> Path:
    """``attnalign`` in pytest's cache directory; without the cacheprovider plugin, where it would be."""
    cache = getattr(config, "cache", None)
    if cache is not None:
        return Path(cache.mkdir("attnalign"))
    return Path(str(config.rootpath)) / ".pytest_cache" / "d" / "attnalign"
