"""pytest entry point (``pytest11``): options, parametrization, fixtures, hooks; nothing heavy.

Items are ``test_alignment[MODEL-METHOD-TASK]``, collected from the package's ``items/test_study.py``
in any directory, or from ``benchmarks/NAME/test_NAME.py`` in this repository (:func:`study_paths`).
Each item's record rides on its report's ``user_properties`` (serialised by xdist), so the
controller aggregates the same records with or without ``-n``. torch and transformers load only when an item runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .benchmarks import BENCHMARKS, NAMES, choices
from .errors import AttnalignError, ModelUnavailable
from .methods import method_options
from .methods.perturbation import DEFAULT_FILL_MASK_MODEL, SHAP_EVALUATIONS

pytest_plugins = ["pytest_attnalign.fixtures"]  # attn_model, attn_task, ... for users' own tests

if TYPE_CHECKING:  # numpy and the report load only when a study runs
    from .gates import CompareFail, Gate
    from .progress import Progress
    from .record import Record
    from .runfile import Run

PROPERTY = "attnalign"
RUN_PROPERTY = "attnalign-run"  # an item's facts about the run (threads, cache), see runinfo.RunInfo
STUDY_OUTPUT = "attnalign-study"  # an xdist worker's workeroutput: a shard's whole-study item ids


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


#: Option defaults, also used to tell whether a run asked for the study (see :func:`_given`).
_DEFAULTS: dict[str, Any] = {
    "attn_model": None, "attn_method": "all", "attn_benchmark": "all", "attn_k": "5,10,20", "attn_limit": None,
    "attn_device": "auto", "attn_dtype": "auto", "attn_prompt_format": None, "attn_max_new_tokens": None,
    "attn_cache_dir": None, "attn_timeout": 10.0, "attn_error_k": 10, "attn_json": None, "attn_html": None,
    "attn_shap_evaluations": None, "attn_fill_mask_model": None, "attn_threads": None, "attn_method_option": None,
    "attn_labels": "corrected", "attn_pass1": "fail", "attn_save": None, "attn_autosave": False,
    "attn_storage": None, "attn_compare": None, "attn_compare_fail": None, "attn_compare_force": False,
    "attn_gate": None, "attn_shard": None,
}


def pytest_addoption(parser: pytest.Parser) -> None:
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
                help="auto (float32 on CPU, bfloat16 on GPU), float32, float16 or bfloat16")
    g.addoption("--attn-prompt-format", default=_DEFAULTS["attn_prompt_format"], metavar="FMT",
                help="completion, chat or chat-prefill (assistant turn prefilled with the task's code; default: "
                     "chat for instruct models, completion for base models)")
    g.addoption("--attn-max-new-tokens", type=int, default=_DEFAULTS["attn_max_new_tokens"], metavar="N",
                help="new-token budget (default: the study's rule, canonical-solution tokens + 20)")
    g.addoption("--attn-cache-dir", default=_DEFAULTS["attn_cache_dir"], metavar="DIR",
                help="cache of converted models, generations and attributions "
                     "(default: $ATTNALIGN_CACHE_DIR or ~/.cache/pytest-attnalign)")
    g.addoption("--attn-timeout", type=float, default=_DEFAULTS["attn_timeout"], metavar="S",
                help="wall-clock seconds for running one generated program (default: 10)")
    g.addoption("--attn-error-k", type=int, default=_DEFAULTS["attn_error_k"], metavar="K",
                help="top-K used to classify error patterns of failing items (default: 10)")
    g.addoption("--attn-json", default=_DEFAULTS["attn_json"], metavar="PATH",
                help="write the run file: versioned JSON of the settings, every item's record and the tables "
                     "(attnalign report PATH prints the summary again)")
    g.addoption("--attn-html", default=_DEFAULTS["attn_html"], metavar="PATH",
                help="write one self-contained web page of the run (no network needed): the tables, a chart per K "
                     "and per task the description with the labelled keywords and each method's top-K units marked")
    g.addoption("--attn-shap-evaluations", type=int, default=_DEFAULTS["attn_shap_evaluations"], metavar="N",
                help=f"model evaluations per task for shap (default: {SHAP_EVALUATIONS}, as in the study)")
    g.addoption("--attn-fill-mask-model", default=_DEFAULTS["attn_fill_mask_model"], metavar="ID",
                help="masked LM (hub id or local directory) proposing bert_masking's substitutes (default: "
                     f"$ATTNALIGN_FILL_MASK_MODEL or {DEFAULT_FILL_MASK_MODEL}; offline: pretrained embedding neighbours)")
    g.addoption("--attn-method-option", action="append", default=_DEFAULTS["attn_method_option"], metavar="METHOD.NAME=VALUE",
                help="a method setting, repeatable, for built-in and entry-point methods alike: shap.signed=true "
                     "(signed values of BLEU instead of the study's |value| of 1 - BLEU), bert_masking.force_different=true "
                     "(a substitute other than the word), coding_all.restated_copy=credit (any self-attention or "
                     "gradient method: credit a chat reply's verbatim copy of the description to the words it copies); "
                     "CATEGORY.NAME=VALUE sets every selected method of the category that takes NAME "
                     "(gradient.restated_copy=credit)")
    g.addoption("--attn-labels", default=_DEFAULTS["attn_labels"], metavar="MODE",
                help="corrected (default) or study: MBPP's off-by-one spans as the study scored them, "
                     "to compare with the published tables")
    g.addoption("--attn-threads", type=int, default=_DEFAULTS["attn_threads"], metavar="N",
                help="torch CPU threads per process (default: the cores divided by the attnalign processes "
                     "running items at the moment: xdist workers and other runs sharing the cache directory)")
    g.addoption("--attn-pass1", default=_DEFAULTS["attn_pass1"], metavar="MODE",
                help="fail (default): an item fails when its generated code fails the benchmark's tests; "
                     "report: Pass@1 is only reported, so the exit status reflects errors and gates alone")
    g.addoption("--attn-save", default=_DEFAULTS["attn_save"], metavar="NAME",
                help="save the run as NNNN_NAME.json in the storage directory")
    g.addoption("--attn-autosave", action="store_true", default=_DEFAULTS["attn_autosave"],
                help="save the run as NNNN_<start time>.json in the storage directory")
    g.addoption("--attn-storage", default=_DEFAULTS["attn_storage"], metavar="DIR",
                help="directory of saved runs (default: attnalign under pytest's cache directory, "
                     ".pytest_cache/d/attnalign in the rootdir)")
    g.addoption("--attn-compare", nargs="?", const="", default=_DEFAULTS["attn_compare"], metavar="NAME|PATH",
                help="compare with a saved run (its name, counter or path; no value: the newest saved run): "
                     "the change of P/R/F1/alpha per model x method x K and of Pass@1 per model")
    g.addoption("--attn-compare-fail", action="append", default=_DEFAULTS["attn_compare_fail"], metavar="EXPR",
                help="fail the session when a figure dropped from the --attn-compare run by more than allowed, "
                     "repeatable or comma list: f1@10:2%% (2 percentage points), alpha@5:0.02, pass1:1%%, "
                     "METHOD.f1@10:2%%; a trailing ! fails only a significant drop (95%% CI)")
    g.addoption("--attn-compare-force", action="store_true", default=_DEFAULTS["attn_compare_force"],
                help="compare even when settings differ from the baseline (model revision, prompt format, "
                     "labels, method settings, K, execution limits)")
    g.addoption("--attn-gate", action="append", default=_DEFAULTS["attn_gate"], metavar="EXPR",
                help="fail the session unless the run meets it, repeatable or comma list: "
                     "mymethod.f1@10>=coding_last.f1@10, mymethod.alpha@10>=0.05, coding_last.p@5<40%%; "
                     "a trailing ! requires the whole 95%% CI (paired bootstrap over tasks) to meet it")
    g.addoption("--attn-shard", default=_DEFAULTS["attn_shard"], metavar="I/N",
                help="run shard I of N (0 <= I < N) of the study's items, balanced by the tasks' token budgets, all "
                     "methods of a model x task in one shard (job arrays: --attn-shard $SLURM_ARRAY_TASK_ID/N); "
                     "attnalign merge combines the shards' --attn-json files into the unsharded run's file")


def _given(config: pytest.Config) -> bool:
    """Whether this run asked for the study: any --attn-* option or a path into benchmarks/.

    Options may also come from ``addopts`` or ``PYTEST_ADDOPTS``, so a value that differs from its
    default counts too.
    """
    explicit = any(a.startswith("--attn-") for a in config.invocation_params.args) or any(
        config.getoption(name) != default for name, default in _DEFAULTS.items())
    # positional paths only: an option's value (``-k benchmarks``, ``--basetemp=...``) is no request
    paths = config.args if config.args_source == pytest.Config.ArgsSource.ARGS else []
    return explicit or any("benchmarks" in Path(str(a)).parts for a in paths)


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
    from .gates import check_names, parse_compare_fails, parse_gates
    from .generation import PROMPT_FORMATS
    from .methods import resolve_methods
    from .models import check_dtype, default_cache_dir, resolve_model
    from .preflight import cache_directory, local_directory, output_file
    from .sharding import parse_shard
    from .storage import autosave_name, check_name, find_run, usable_storage

    get = config.getoption
    models = [m.strip() for v in (get("attn_model") or ["smollm2"]) for m in v.split(",") if m.strip()]
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
    fmt = get("attn_prompt_format")
    if fmt is not None and fmt not in PROMPT_FORMATS:
        raise pytest.UsageError(f"--attn-prompt-format: unknown {fmt!r}; use {' or '.join(PROMPT_FORMATS)}")
    for flag, value in (("--attn-limit", get("attn_limit")), ("--attn-max-new-tokens", get("attn_max_new_tokens")),
                        ("--attn-error-k", get("attn_error_k")), ("--attn-shap-evaluations", get("attn_shap_evaluations")),
                        ("--attn-threads", get("attn_threads"))):
        if value is not None and value < 1:
            raise pytest.UsageError(f"{flag}: must be a positive integer, got {value}")
    if not get("attn_timeout") > 0:
        raise pytest.UsageError(f"--attn-timeout: must be positive seconds, got {get('attn_timeout')}")
    if get("attn_labels") not in ("corrected", "study"):
        raise pytest.UsageError(f"--attn-labels: unknown {get('attn_labels')!r}; use corrected or study")
    settings = usage("--attn-method-option", method_options, get("attn_shap_evaluations"), get("attn_fill_mask_model"),
                     get("attn_method_option"), methods)
    from .methods import get_method

    for name, opts in settings.items():  # a bad value fails now, not at the first item
        usage("--attn-method-option", lambda: get_method(name, **opts))
    if get("attn_fill_mask_model"):
        usage("--attn-fill-mask-model", local_directory, get("attn_fill_mask_model"))
    ks = _positive_ints(get("attn_k"), "--attn-k")
    if get("attn_pass1") not in ("fail", "report"):
        raise pytest.UsageError(f"--attn-pass1: unknown {get('attn_pass1')!r}; use fail or report")
    gates = usage("--attn-gate", parse_gates, get("attn_gate"))
    usage("--attn-gate", check_names, gates, [], methods, ks)
    fails = usage("--attn-compare-fail", parse_compare_fails, get("attn_compare_fail"))
    usage("--attn-compare-fail", check_names, [], fails, methods, ks)
    if fails and get("attn_compare") is None:
        raise pytest.UsageError("--attn-compare-fail: no baseline: add --attn-compare (the newest saved run) "
                                "or --attn-compare=NAME|PATH")
    if get("attn_save") and get("attn_autosave"):
        raise pytest.UsageError("--attn-save: give either --attn-save NAME or --attn-autosave, not both")
    save_name = usage("--attn-save", check_name, get("attn_save")) if get("attn_save") else (
        autosave_name() if get("attn_autosave") else None)
    # paths last: the end of a long run must not be where a typo shows
    json_path = usage("--attn-json", output_file, Path(get("attn_json")).expanduser()) if get("attn_json") else None
    html_path = usage("--attn-html", output_file, Path(get("attn_html")).expanduser()) if get("attn_html") else None
    cache = get("attn_cache_dir")
    cache_dir = usage("--attn-cache-dir", cache_directory, Path(cache).expanduser() if cache else default_cache_dir())
    save_dir = compare = None
    if save_name or get("attn_compare") is not None:
        storage = Path(get("attn_storage")).expanduser() if get("attn_storage") else _default_storage(config)
        save_dir = usage("--attn-storage", usable_storage, storage) if save_name else None
        if get("attn_compare") is not None:
            compare = usage("--attn-compare", find_run, storage, get("attn_compare"))
    return Options(
        models=list(dict.fromkeys(models)), methods=methods,
        benchmarks=list(NAMES) if bench == "all" else [bench],
        ks=ks, limit=get("attn_limit"), device=device,
        dtype=get("attn_dtype"), prompt_format=fmt, max_new_tokens=get("attn_max_new_tokens"),
        cache_dir=cache_dir, timeout=get("attn_timeout"), error_k=get("attn_error_k"), json_path=json_path,
        method_options=settings, labels=get("attn_labels"),
        threads=get("attn_threads"), pass1=get("attn_pass1"), gates=gates, compare_fails=fails, compare=compare,
        compare_force=get("attn_compare_force"), storage=save_dir, save_name=save_name, html_path=html_path,
        shard=usage("--attn-shard", parse_shard, get("attn_shard")) if get("attn_shard") is not None else None,
    )


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


class AttnSession:
    """Per-process state: options, the lazily built Study, and (on the controller) the records."""

    def __init__(self, config: pytest.Config, options: Options) -> None:
        from .runinfo import RunInfo
        from .threads import CoreShare

        self.config = config
        self.options = options
        self.records: list[Record] = []
        self.baseline: Run | None = None  # the --attn-compare run (controller only)
        self.verdicts: list[str] = []  # compare and gate lines, decided at session finish
        self.run = RunInfo(shard=options.shard)
        self.cores = CoreShare(options.cache_dir / "runs", options.threads)
        self.unavailable_since: dict[str, str] = {}  # model -> the item that showed why
        self.output_shown: dict[tuple[str, str], str] = {}  # (model, task) -> the item showing its test output
        self._study: Any = None
        self.progress: Progress | None = None  # the controller's, once the items are known
        self.item_seconds: dict[str, float] = {}  # setup + call + teardown so far, per item
        self.workers: set[str] = set()  # xdist workers up

    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        """--attn-shard: deselect other shards' model x task groups (each collecting process computes
        the same assignment); the whole study's ids go into the run file for ``attnalign merge``."""
        if self.options.shard is None:
            return
        from .sharding import in_shard

        found = [(item, m) for item in items if (m := _ITEM_ID.search(item.nodeid))]
        keep = in_shard([(m["model"], m["task"]) for _, m in found], self.options.shard, self.options.max_new_tokens)
        dropped = [item for (item, _), kept in zip(found, keep) if not kept]
        self.run.study = [item.nodeid for item, _ in found]
        if hasattr(config, "workeroutput"):  # the controller collects nothing: see pytest_testnodedown
            config.workeroutput[STUDY_OUTPUT] = self.run.study
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            gone = set(map(id, dropped))
            items[:] = [item for item in items if id(item) not in gone]

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        """Under -n, a shard's whole-study ids come from a worker that collected them."""
        self.workers.discard(node.gateway.id)
        if not self.run.study:
            self.run.study = list(getattr(node, "workeroutput", {}).get(STUDY_OUTPUT, []))

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.run.expected = [i.nodeid for i in session.items if _ITEM_ID.search(i.nodeid)]
        self.start_progress()

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        """Under -n the controller collects nothing; every worker reports the same ids."""
        self.run.expected = [i for i in ids if _ITEM_ID.search(i)]
        self.start_progress()

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodeready(self, node: Any) -> None:
        """Under xdist the ETA divides by the workers running items."""
        self.workers.add(node.gateway.id)

    def start_progress(self) -> None:
        """The controller's progress over the study's items (once they are known)."""
        from .progress import Progress

        if self.progress is None and self._controller():
            self.progress = Progress({i: m["method"] for i in self.run.expected if (m := _ITEM_ID.search(i))})

    def show_progress(self, nodeid: str) -> None:
        """A progress line when one is due (none under -q: the final line only)."""
        seconds = self.item_seconds.pop(nodeid, 0.0)
        if self.progress is None:
            return
        self.progress.workers = max(1, len(self.workers))
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if self.progress.finish(nodeid, seconds) and self.config.get_verbosity() >= 0 and reporter is not None:
            reporter.ensure_newline()  # ends a module's line of dots
            if reporter._tw.width_of_current_line:  # xdist's dots belong to no module line
                reporter.write_line("")
            reporter.write_line(self.progress.line())

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Collect records from call reports (xdist replays workers' reports here)."""
        if self._controller():
            self.item_seconds[report.nodeid] = self.item_seconds.get(report.nodeid, 0.0) + report.duration
            if report.when == "teardown":
                self.show_progress(report.nodeid)
        if report.when == "call":
            from .record import Record

            self.records += [Record.from_dict(value) for name, value in report.user_properties if name == PROPERTY]
        elif report.when == "setup":
            for name, value in report.user_properties:
                if name == RUN_PROPERTY:
                    self.run.add(value)
        elif report.when == "teardown" and _ITEM_ID.search(report.nodeid):
            self.run.finished.add(report.nodeid)

    def load_baseline(self) -> None:
        """Read the --attn-compare run before any item runs (a bad file is a usage error now)."""
        from .runfile import read_run

        o = self.options
        if o.compare is None:
            return
        try:
            self.baseline = read_run(o.compare)
        except AttnalignError as exc:
            raise pytest.UsageError(f"--attn-compare: {exc}") from None
        missing = sorted({f.k for f in o.compare_fails if f.k is not None and f.k not in self.baseline.ks})
        if missing:
            raise pytest.UsageError(f"--attn-compare-fail: K={', '.join(map(str, missing))} is not in the baseline "
                                    f"{o.compare} (K: {', '.join(map(str, self.baseline.ks))})")

    def result(self) -> Run:
        from .runfile import Run

        return Run(self.records, self.options.ks, self.run.as_dict())

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """A run whose items all ran without one result is a failed run, even if all were skipped; a
        failed gate or compare-fail (or a refused comparison they needed) fails it too."""
        if not self._controller():
            return
        from .gates import judge

        o = self.options
        held, self.verdicts = judge(self.result(), o.gates, self.baseline, o.compare_fails, o.compare_force,
                                    str(o.compare), "--attn-compare-force")
        if session.exitstatus == pytest.ExitCode.OK and ((self.run.finished and not self.records) or not held):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if session.exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED and self.run.study and not self.run.expected:
            session.exitstatus = pytest.ExitCode.OK  # a shard left empty (more shards than models x tasks)

    def pytest_unconfigure(self) -> None:
        self.cores.leave()

    def runs_items(self) -> bool:
        """A serial run or an xdist worker (an xdist controller only schedules)."""
        return not self.config.option.collectonly and (
            hasattr(self.config, "workerinput") or not getattr(self.config.option, "numprocesses", None))

    def _controller(self) -> bool:
        """The process that prints (workers only ship records; nothing ran under --collect-only)."""
        return not hasattr(self.config, "workerinput") and not self.config.option.collectonly

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self._controller() or not (self.run.expected or self.records or self.run.study):
            return  # e.g. only users' own tests that use the attn_* fixtures: no study to summarise
        from .html import write_html
        from .runfile import write_run
        from .storage import save_path

        o = self.options
        run = self.result()
        if self.progress is not None:
            terminalreporter.write_line(self.progress.final_line())
        terminalreporter.write_sep("=", "attention alignment (pytest-attnalign)")
        terminalreporter.write_line(run.summary())
        for line in self.verdicts:
            terminalreporter.write_line(line, red=" FAILED" in line or line.startswith("comparison refused"))
        targets = [("--attn-json", o.json_path, "records written to", write_run),
                   ("--attn-html", o.html_path, "page written to", write_html)]
        if o.storage is not None and o.save_name is not None:
            targets.append(("--attn-save", save_path(o.storage, o.save_name), "run saved as", write_run))
        for flag, path, done, write in targets:
            if path is None:
                continue
            try:
                write(path, run)
            except OSError as exc:  # checked at start-up, so the directory changed during the run
                terminalreporter.write_line(f"{flag}: cannot write {path} ({exc.strerror or exc}): "
                                            "not saved; the cache keeps the records for a re-run", red=True)
            else:
                terminalreporter.write_line(f"{done} {path}")

    @property
    def study(self) -> Any:
        if self._study is None:
            from .study import Study

            self._study = Study(study_config(self.options))
        return self._study

    def run_item(self, model: str, method: str, task_id: str, item: pytest.Item) -> Record:
        """The item's record, with its share of the cores applied and its run facts attached to ``item``."""
        share = self.cores.apply()
        cache = self.study.cache
        invalid, failures = cache.invalid, cache.write_failures
        try:
            return self.study.run_item(model, method, task_id)
        finally:
            if self.study.unavailable(model):
                self.unavailable_since.setdefault(model, item.name)
            item.user_properties.append((RUN_PROPERTY, {
                "share": share.as_dict(), "cache_invalid": cache.invalid - invalid,
                "cache_write_failures": cache.write_failures - failures}))


_SESSION = pytest.StashKey[AttnSession]()


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """Under ``-n`` or ``-d --tx ...`` (other hosts), keep a model x task's items on one worker
    (before xdist picks ``load``; ``-d`` is xdist's shortcut for ``--dist load``)."""
    if not _given(config):
        return
    o = config.option
    if (getattr(o, "numprocesses", None) and o.dist == "no") or (getattr(o, "distload", False) and o.dist in ("no", "load")):
        o.dist, o.distload = "loadgroup", False


_PREFIXES = "|".join(re.escape(b.prefix) for b in BENCHMARKS)
_ITEM_ID = re.compile(rf"::test_alignment\[(?P<model>.+)-(?P<method>[^-\]]+)-(?P<task>(?:{_PREFIXES})/\d+)\]")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``loadgroup`` whose groups are read from the item ids (model x task), on the controller.

    xdist's own loadgroup relies on workers appending ``@group`` to node ids; its workers only do
    that when ``--dist loadgroup`` is on their command line (not when :func:`pytest_cmdline_main`
    switched it), and pytest 9 ignores the ``_nodeid`` it assigns. The id carries model and task.
    """
    if _session(config) is None or config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class ModelTaskScheduling(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            m = _ITEM_ID.search(nodeid)
            return f"{m['model']}@{m['task']}" if m else super()._split_scope(nodeid)

        def remove_node(self, node: Any) -> str | None:
            """As xdist's, except that the item a crashed worker was running is not run again: xdist's
            scope schedulers queue it anew, so a crash that repeats (out of memory, a native library)
            took down every restarted worker. It is reported as that item's error; its group goes on."""
            workload = self.assigned_work.pop(node)
            pending = [(unit, nodeid) for unit in workload.values() for nodeid, done in unit.items() if not done]
            if not pending:
                return None
            unit, crashed = pending[0]
            unit[crashed] = True
            self.workqueue.update({scope: u for scope, u in workload.items() if not all(u.values())})
            for other in self.assigned_work:
                self._reschedule(other)
            return crashed

    return ModelTaskScheduling(config, log)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "attnalign: an item of the attention-alignment study")
    if not _given(config):
        return
    session = AttnSession(config, parse_options(config))
    if session._controller():
        session.load_baseline()
    config.stash[_SESSION] = session
    config.pluginmanager.register(session, "attnalign-session")
    if session.runs_items():
        session.cores.join()  # counted from start-up, so xdist workers see each other before their first item
    if config.args_source != pytest.Config.ArgsSource.ARGS:
        config.args[:] = study_paths(Path(str(config.rootpath)))  # not the project's testpaths or cwd


def study_paths(rootdir: Path) -> list[str]:
    """What ``pytest --attn-...`` without paths collects: the study's items.

    A project laid out like this repository (``benchmarks/NAME/test_NAME.py``) runs its own modules;
    any other directory runs the module shipped in the package, so an installed plugin needs no clone.
    """
    bench = rootdir / "benchmarks"
    if any((bench / name / f"test_{name}.py").is_file() for name in NAMES):
        return [str(bench)]
    return [str(Path(__file__).resolve().parent / "items")]


def _session(config: pytest.Config) -> AttnSession | None:
    return config.stash.get(_SESSION, None)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Skip a benchmark's module (``benchmarks/NAME/test_NAME.py``) when --attn-benchmark leaves it out."""
    s = _session(config)
    name = collection_path.parent.name
    if s and name in NAMES and collection_path.name == f"test_{name}.py":
        return name not in s.options.benchmarks or None
    return None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """One item per model x task x method, ids MODEL-METHOD-TASK, grouped under -n by :func:`pytest_xdist_make_scheduler`."""
    if "attn_case" not in metafunc.fixturenames:
        return
    s = _session(metafunc.config)
    if s is None:
        raise pytest.UsageError("pytest-attnalign items need the plugin active: pass --attn-* options")
    from .tasks import load_tasks

    # a benchmark's module names it; the shipped module holds every benchmark selected
    names = [metafunc.module.BENCHMARK] if hasattr(metafunc.module, "BENCHMARK") else s.options.benchmarks
    params = [
        pytest.param((model, method, task.task_id), id=f"{model}-{method}-{task.task_id}",
                     marks=[pytest.mark.attnalign])
        for tasks in [load_tasks(name)[: s.options.limit] for name in names]
        for model in s.options.models for task in tasks for method in s.options.methods
    ]
    metafunc.parametrize("attn_case", params)


@dataclass(frozen=True)
class ItemResult:
    """What an item's test function judges: the record, where its task's test output is shown, the
    ``--attn-pass1`` mode."""

    record: Record
    output_shown_at: str | None  # the item of the same model x task showing the test output; None: this one
    pass1: str


@pytest.fixture
def attn_result(attn_case: tuple[str, str, str], request: pytest.FixtureRequest) -> ItemResult:
    """Run the item in set-up, so a crash in a model or method is an error of this item only."""
    from .methods import MethodNotApplicable

    s = _session(request.config)
    assert s is not None
    model, method, task_id = attn_case
    first = s.unavailable_since.get(model)
    error = ""
    try:
        record = s.run_item(model, method, task_id, request.node)
    except MethodNotApplicable as exc:
        pytest.skip(str(exc))
    except ModelUnavailable as exc:  # the first such item says why; the others point at it
        error = f"{model}/{method}/{task_id}: {exc}" if first is None else f"{model}: unavailable, not tried (why: see {first})"
    except AttnalignError as exc:  # a known failure (model not loadable, API down): one line, no traceback
        error = f"{model}/{method}/{task_id}: {exc}"
    if error:  # failed outside the except block, so pytest shows no chained exception
        pytest.fail(error, pytrace=False)
    request.node.user_properties.append((PROPERTY, record.to_dict()))
    shown = s.output_shown.setdefault((model, task_id), request.node.name) if not record.passed else None
    return ItemResult(record, None if shown == request.node.name else shown, s.options.pass1)


def check_item(result: ItemResult) -> None:
    """The item's verdict: the study's Pass@1 criterion, with the alignment view on failure
    (``--attn-pass1=report``: Pass@1 is only reported, the item passes)."""
    if not result.record.passed and result.pass1 == "fail":
        from .report import failure_message

        pytest.fail(failure_message(result.record, result.output_shown_at), pytrace=False)
