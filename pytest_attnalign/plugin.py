"""pytest entry point (``pytest11``): parametrization, the item fixture, hooks; nothing heavy.

The options live in :mod:`.options`, the fixtures for users' own tests in :mod:`.fixtures`.

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

from .benchmarks import BENCHMARKS, NAMES
from .errors import AttnalignError, ModelUnavailable
from .options import (Options, add_options, check_k_words, check_rootdir, collects_study, given, parse_options,
                      study_config, tx_specs)

pytest_plugins = ["pytest_attnalign.fixtures"]  # attn_model, attn_task, ... for users' own tests

if TYPE_CHECKING:  # numpy and the report load only when a study runs
    from .progress import Progress
    from .record import Record
    from .runfile import Run

PROPERTY = "attnalign"
RUN_PROPERTY = "attnalign-run"  # an item's facts about the run (threads, cache), see runinfo.RunInfo
STUDY_OUTPUT = "attnalign-study"  # an xdist worker's workeroutput: the study's size; a shard's whole-study ids and those -k/-m selected
CODE_INPUT = "attnalign-code"  # an xdist worker's workerinput: the controller's code fingerprint (check_code)
REFUSED = "attnalign: refused"  # the node id of a worker's refusal, a failed collect report (AttnSession.refuse)


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


class AttnSession:
    """Per-process state: options, the lazily built Study, and (on the controller) the records."""

    def __init__(self, config: pytest.Config, options: Options) -> None:
        from .runinfo import RunInfo
        from .registry import registry_of
        from .threads import CoreShare

        self.config = config
        self.options = options
        self.records: list[Record] = []
        self.baseline: Run | None = None  # the --attn-compare run (controller only)
        self.verdicts: list[str] = []  # compare and gate lines, decided at session finish
        self.written: list[str] = []  # a line per file written at session finish (or not written)
        self._sigterm: Any = None  # SIGTERM's handler before this run's (see interrupt_on_sigterm)
        self.run = RunInfo(shard=options.shard)
        self.cores = CoreShare(registry_of(options.cache_dir), options.threads)
        self.unavailable_since: dict[str, str] = {}  # model -> the item that showed why
        self.output_shown: dict[tuple[str, str], str] = {}  # (model, task) -> the item showing its test output
        self._study: Any = None
        self.progress: Progress | None = None  # the controller's, once the items are known
        self.item_seconds: dict[str, float] = {}  # setup + call + teardown so far, per item
        self.item_computed: dict[str, bool] = {}  # whether an item's record says it computed (see Record.computed)
        self.workers: set[str] = set()  # xdist workers up
        # the study's item ids per module, as parametrized: --lf drops items (and whole modules) before
        # pytest_collection_modifyitems sees them, and puts its modules first (see whole_study)
        self.study_ids: dict[Path, list[str]] = {}
        self.checked: set[str] = set()  # "task ID" whose labels were read, "model NAME" checked (check_items)
        self.refused = False  # a usage error once the items were known (check_items, check_k, check_code)
        self.files_removed = False  # an earlier run's files, at the first item (pytest_runtest_logstart)

    @pytest.hookimpl(wrapper=True)
    def pytest_make_collect_report(self, collector: pytest.Collector) -> Any:
        """A study module that --lf skipped whole (no failure in it) still holds its items in the study."""
        report = yield
        path = Path(str(collector.path))
        if isinstance(collector, pytest.File) and path not in self.study_ids:
            names = study_module_benchmarks(path, self.options)
            if names:
                params = study_params(self.options, names)
                self.study_ids[path] = item_ids(f"{collector.nodeid}::{ITEM_FUNCTION}", params, self.config)
        return report

    def whole_study(self) -> list[str]:
        """The study's item ids as a run without --lf collects them: modules in path order, since --lf
        collects those holding last failures first."""
        return [i for path in sorted(self.study_ids) for i in self.study_ids[path] if _ITEM_ID.search(i)]

    @pytest.hookimpl(wrapper=True)
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> Any:
        """The study's items, as parametrized before --lf, -k, -m or --deselect chose (the summary says
        when a run covers part of it). --attn-shard: deselect other shards' model x task groups. The groups are
        shared out over the whole study before --lf, -k or -m select (every collecting process computes the
        same assignment, and a selection moves no item between shards); the whole study's ids go into the run
        file for ``attnalign merge``, and how many items the selection kept into the summary's shard line."""
        self.run.collected = sum(map(len, self.study_ids.values()))
        output: dict[str, Any] = getattr(config, "workeroutput", {})  # the controller collects nothing: see
        output[STUDY_OUTPUT] = {"collected": self.run.collected}  # pytest_testnodedown
        self.check_code(config, items)
        self.check_k(config, items)
        if self.options.shard is None:
            return (yield)
        from .sharding import in_shard

        self.run.study = self.whole_study()
        groups = [(m["model"], m["task"]) for m in map(_ITEM_ID.search, self.run.study) if m]
        keep = in_shard(groups, self.options.shard, self.options.max_new_tokens)
        here = {i for i, kept in zip(self.run.study, keep) if kept}
        result = yield  # -k, -m and other plugins select
        selected = [item for item in items if _ITEM_ID.search(item.nodeid)]
        chosen = {item.nodeid for item in selected}  # in the study's order: a shuffling plugin (pytest-randomly)
        self.run.selected = [i for i in self.run.study if i in chosen]  # orders each shard's items its own way
        output[STUDY_OUTPUT].update(study=self.run.study, selected=self.run.selected)
        dropped = [item for item in selected if item.nodeid not in here]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            gone = set(map(id, dropped))
            items[:] = [item for item in items if id(item) not in gone]
        return result

    def refuse(self, config: pytest.Config, items: list[pytest.Item], message: str) -> None:
        """A usage error only the collected items show: raised here, or, on an xdist worker (which would
        crash, and be restarted to crash again), sent to the controller as a failed collect report, which
        xdist forwards at once, before any worker's items are handed out (:meth:`pytest_collectreport`);
        the worker keeps no item to run."""
        if hasattr(config, "workerinput"):
            config.hook.pytest_collectreport(report=pytest.CollectReport(REFUSED, "failed", message, []))
            items[:] = []
            return
        self.refused = True
        raise pytest.UsageError(message)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        """The controller gives a worker's refusal (:meth:`refuse`) as the run's one usage error."""
        if report.nodeid == REFUSED and not self.refused and self._controller():
            self.refused = True
            raise pytest.UsageError(str(report.longrepr))

    def check_k(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        """A ``-k`` word that matches no item refuses a run of the study before any model loads
        (:func:`.options.check_k_words`); a user's own test files keep ``-k`` theirs."""
        keyword = config.getoption("keyword")
        if not keyword or not collects_study(config):
            return
        collected = {item.nodeid for item in items}
        left_out = [i for i in self.whole_study() if i not in collected]  # by --lf
        lf = bool(config.getoption("lf", False))
        if lf and getattr(config, "cache", None) is not None:  # a user's own tests --lf left out, as recorded
            left_out += [i for i in config.cache.get("cache/nodeids", []) if i not in collected]
        try:
            check_k_words(keyword, items, left_out, self.options.models, self.options.methods, lf)
        except AttnalignError as exc:
            self.refuse(config, items, f"-k {keyword!r}: {exc}")

    @pytest.hookimpl(wrapper=True)
    def pytest_sessionstart(self, session: pytest.Session) -> Any:
        """A ``--tx`` host that cannot be reached (down, refusing, no such name) failed xdist's start of
        the workers with a 40-line INTERNALERROR traceback of execnet's: one line naming the hosts."""
        try:
            return (yield)
        except Exception as exc:
            import traceback

            from execnet import HostNotFound

            # execnet's gateway to the host, not xdist's other start-up work (rsync of --rsyncdir)
            connecting = any(f.name == "makegateway" for f in traceback.extract_tb(exc.__traceback__))
            if not connecting or not isinstance(exc, (OSError, EOFError, HostNotFound)):
                raise
            specs = " ".join(f"--tx {spec}" for spec in self.config.getoption("tx", None) or [])
            pytest.exit(f"pytest-attnalign: cannot start the xdist workers of {specs} ({type(exc).__name__}: "
                        f"{str(exc) or 'no answer'}): check that each host is up and reachable (ssh HOST true), "
                        "or leave it out", returncode=pytest.ExitCode.INTERNAL_ERROR)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        """Under -n, the study's size (and a shard's whole-study ids) come from a worker that collected them."""
        self.workers.discard(node.gateway.id)
        output = getattr(node, "workeroutput", {}).get(STUDY_OUTPUT, {})
        self.run.collected = self.run.collected or output.get("collected", 0)
        if not self.run.study:
            self.run.study, self.run.selected = list(output.get("study", [])), list(output.get("selected", []))

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        if self.refused:  # pytest calls this after a usage error of collection too (check_k): its error stands
            return
        expected = [i.nodeid for i in session.items if _ITEM_ID.search(i.nodeid)]
        if self._controller():
            self.check_items(expected)
        self.run.expected = expected
        self.start_progress()

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        """Under -n the controller collects nothing; every worker reports the same ids."""
        expected = [i for i in ids if _ITEM_ID.search(i)]
        self.check_items(expected)
        self.run.expected = expected
        self.start_progress()

    def check_items(self, nodeids: list[str]) -> None:
        """Before any item runs, each collected task's labels are read and each collected model that can
        fail without loading (an API model's missing key: :func:`models.preflight`) is checked, once: a
        missing, malformed or stale labels file or a missing key failed every item on its own."""
        from .labels import human_spans
        from .model_spec import resolve_model
        from .models import preflight
        from .options import _items_run_here
        from .tasks import get_task

        found = [m for i in nodeids if (m := _ITEM_ID.search(i))]
        checks = [(f"task {m['task']}", lambda t=m["task"]: human_spans(get_task(t), self.options.labels)) for m in found]
        if _items_run_here(self.config):  # workers on --tx ssh hosts have their own environment (API keys)
            checks += [(f"model {m['model']}", lambda n=m["model"]: preflight(resolve_model(n))) for m in found]
        for key, check in dict(checks).items():
            if key in self.checked:
                continue
            try:
                check()
            except AttnalignError as exc:
                self.refused = True
                raise pytest.UsageError(f"--attn-model: {exc}" if key.startswith("model ") else str(exc)) from None
            self.checked.add(key)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodeready(self, node: Any) -> None:
        """Under xdist the ETA divides by the workers running items."""
        self.workers.add(node.gateway.id)

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        """Each xdist worker gets the controller's code fingerprint to compare with its own (check_code)."""
        from .versions import CODE

        node.workerinput[CODE_INPUT] = CODE

    def check_code(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        """A worker whose pytest-attnalign code is not the controller's (a ``--tx`` host with another
        checkout) would put two programs' figures into one run file, which ``attnalign merge`` refuses
        for shards: the run is refused before any item runs. (The controller cannot ask: xdist's workers
        refuse a second remote_exec while they run.)"""
        from .versions import CODE

        theirs = getattr(config, "workerinput", {}).get(CODE_INPUT)
        if theirs is not None and theirs != CODE:
            import socket

            self.refuse(config, items, f"xdist worker {config.workerinput['workerid']} (host {socket.gethostname()}, "
                                       f"{Path(__file__).parent}) runs pytest-attnalign code {CODE}, the controller "
                                       f"{theirs}: give every --tx host the controller's checkout")

    def start_progress(self) -> None:
        """The controller's progress over the study's items, once they are known."""
        from .progress import Progress

        if self.progress is None and self._controller():
            self.progress = Progress({i: m["method"] for i in self.run.expected if (m := _ITEM_ID.search(i))})

    def pytest_runtest_logstart(self, nodeid: str, location: Any) -> None:
        """The first item starts: an earlier run's files go (:meth:`remove_files`), only now, after every
        check that refuses a run (a worker's code, -k, labels): under xdist one worker's collection
        arrives before another worker is checked, and removing them then lost the files of a run refused."""
        if not self.files_removed and self._controller() and self._has_study():
            self.files_removed = True
            self.remove_files()

    def show_progress(self, nodeid: str) -> None:
        """The progress line: redrawn in place in a terminal, a plain line when due elsewhere or under -v
        (none under -q: the final line only)."""
        seconds = self.item_seconds.pop(nodeid, 0.0)
        if self.progress is None:
            return
        self.progress.workers = max(1, len(self.workers))
        due = self.progress.finish(nodeid, seconds, self.item_computed.pop(nodeid, False))
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        verbosity = self.config.get_verbosity()
        if reporter is None or verbosity < 0:
            return
        if verbosity == 0 and reporter.isatty():
            if len(self.progress.done) < len(self.progress.method_of):
                line = self.progress.line()[: reporter._tw.fullwidth - 1]
                reporter.rewrite(line, erase=True)  # over the result letters of the items that just finished
                reporter._tw._current_line = line  # rewrite() leaves the writer counting the old line too
            return
        if due:
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

            new = [Record.from_dict(value) for name, value in report.user_properties if name == PROPERTY]
            if self._controller():
                self.item_computed[report.nodeid] = any(r.computed for r in new)
            self.records += new
        elif report.when == "setup":
            for name, value in report.user_properties:
                if name == RUN_PROPERTY:
                    self.run.add(value)
            if report.failed and _ITEM_ID.search(report.nodeid):  # the item's record is made in set-up
                self.run.errors.add(report.nodeid)
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
        from .gates import check_baseline_ks

        try:
            check_baseline_ks(o.compare_fails, self.baseline, str(o.compare))
        except AttnalignError as exc:
            raise pytest.UsageError(f"--attn-compare-fail: {exc}") from None

    def result(self) -> Run:
        from .runfile import Run

        return Run(self.records, self.options.ks, self.run.as_dict())

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """A run whose items all ran without one result is a failed run, even if all were skipped; a
        failed gate or compare-fail (or a refused comparison they needed) fails it too."""
        if not self._controller():
            return
        self.restore_sigterm()
        # pytest's own refusals before any item started (a -k or -m it cannot parse, a collection error,
        # Ctrl-C) are refusals too: the earlier run's files were not removed and must not be replaced
        pytest_refused = session.exitstatus in (pytest.ExitCode.USAGE_ERROR, pytest.ExitCode.INTERRUPTED,
                                                pytest.ExitCode.INTERNAL_ERROR)
        if self.refused or (pytest_refused and not self.files_removed):  # before any item ran: no files, no summary
            self.refused = True
            return
        from .gates import judge
        from .storage import baseline_name, same_settings

        o = self.options
        run, name = self.result(), ""
        if o.compare is not None and self.baseline is not None:
            path, differ = o.compare, []
            if o.compare_newest and run.records:  # this run's settings are known now
                path, self.baseline, differ = same_settings(o.compare, self.baseline, run.settings(),
                                                            [p for p in (o.json_path, o.html_path) if p])
            name = baseline_name(path, o.compare_passed, differ)
        held, self.verdicts = judge(run, o.gates, self.baseline, o.compare_fails, o.compare_force, name,
                                    "--attn-compare-force")
        if session.exitstatus == pytest.ExitCode.OK and ((self.run.finished and not self.records) or not held):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if session.exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED and self.run.selected and not self.run.expected:
            session.exitstatus = pytest.ExitCode.OK  # a shard left empty while others run the selection
        if self._has_study():  # written here, not in the terminal summary, so that -p no:terminal
            self.written = self.write_files()  # (or no reporter) still writes them

    def write_files(self) -> list[str]:
        """Write the run file, the page and the saved run; one line each for the summary."""
        from .html import write_html
        from .runfile import write_run
        from .storage import save_run

        o, run, lines = self.options, self.result(), []
        targets = [("--attn-json", o.json_path, "records written to", write_run),
                   ("--attn-html", o.html_path, "page written to", write_html)]
        if o.storage is not None and o.save_name is not None:  # its file's name is found as it is written
            targets.append(("--attn-save", o.storage, "run saved as", lambda where, run: save_run(where, o.save_name, run)))
        for flag, where, done, write in targets:
            if where is None:
                continue
            try:
                path = write(where, run)
            except OSError as exc:  # checked at start-up, so the directory changed during the run
                lines.append(f"{flag}: cannot write {where} ({exc.strerror or exc}): "
                             "not saved; the cache keeps the records for a re-run")
            else:
                lines.append(f"{done} {path}")
        return lines

    def interrupt_on_sigterm(self) -> None:
        """SIGTERM (a job's time limit, a cancelled CI job) becomes an interrupt until the session
        finishes, so the run still writes its files, marked partial, as after Ctrl-C."""
        import signal
        import threading

        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            def interrupt(signum: int, frame: Any) -> None:
                raise KeyboardInterrupt("SIGTERM")

            self._sigterm = signal.signal(signal.SIGTERM, interrupt)

    def restore_sigterm(self) -> None:
        """A second SIGTERM while the files are written ends the process, as it would without this plugin."""
        if self._sigterm is not None:
            import signal

            signal.signal(signal.SIGTERM, self._sigterm)
            self._sigterm = None

    def remove_files(self) -> None:
        """When the first item starts (the run will write its files): remove the run file and page of an
        earlier run, so that one killed before its end leaves none that looks like its own (a stale
        shard file merged silently). The --attn-compare baseline is kept (it is read already, and
        replaced at the end); a file that cannot be removed is reported when it cannot be written."""
        keep = self.options.compare.resolve() if self.options.compare is not None else None
        for path in (self.options.json_path, self.options.html_path):
            if path is not None and path.resolve() != keep:
                try:
                    path.unlink(missing_ok=True)
                except OSError:
                    pass

    def pytest_unconfigure(self) -> None:
        self.cores.leave()
        self.restore_sigterm()

    def runs_items(self) -> bool:
        """A serial run or an xdist worker (an xdist controller only schedules, under -n as under
        -d/--dist with --tx: counting it left each worker fewer torch threads)."""
        o = self.config.option
        return not o.collectonly and (hasattr(self.config, "workerinput") or (
            not getattr(o, "numprocesses", None) and not getattr(o, "tx", None) and getattr(o, "dist", "no") == "no"))

    def _has_study(self) -> bool:
        """Whether this run holds study items (a shard's may all be elsewhere): it then writes its
        files and prints the summary; users' own tests of the attn_* fixtures alone do neither."""
        return bool(self.run.expected or self.records or self.run.study)

    def _controller(self) -> bool:
        """The process that prints (workers only ship records; nothing ran under --collect-only)."""
        return not hasattr(self.config, "workerinput") and not self.config.option.collectonly

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self._controller() or not self._has_study() or self.refused:
            return  # e.g. only users' own tests that use the attn_* fixtures: no study to summarise
        if self.progress is not None:
            terminalreporter.write_line(self.progress.final_line())
        terminalreporter.write_sep("=", "attention alignment (pytest-attnalign)")
        terminalreporter.write_line(self.result().summary())
        for line in self.verdicts:
            terminalreporter.write_line(line, red=" FAILED" in line or line.startswith("comparison refused"))
        for line in self.written:
            terminalreporter.write_line(line, red="cannot write" in line)

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
    if not given(config):
        return
    o = config.option
    if (getattr(o, "numprocesses", None) and o.dist == "no") or (getattr(o, "distload", False) and o.dist in ("no", "load")):
        o.dist, o.distload = "loadgroup", False
    if getattr(o, "tx", None) and not getattr(o, "numprocesses", None) and getattr(o, "maxworkerrestart", "") is None:
        # xdist bounds restarts only under -n (4 per worker): a --tx worker that cannot start (no
        # such python, a host without the plugin) was restarted forever and the run never ended
        o.maxworkerrestart = str(4 * len(tx_specs(o.tx)))


_PREFIXES = "|".join(re.escape(b.prefix) for b in BENCHMARKS)
ITEM_FUNCTION = "test_alignment"  # the study's test function, in items/test_study.py
_ITEM_ID = re.compile(rf"::{ITEM_FUNCTION}\[(?P<model>.+)-(?P<method>[^-\]]+)-(?P<task>(?:{_PREFIXES})/\d+)\]")


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
    if not given(config):
        return
    check_rootdir(config)
    session = AttnSession(config, parse_options(config))
    if session._controller():
        session.load_baseline()
    config.stash[_SESSION] = session
    config.pluginmanager.register(session, "attnalign-session")
    if session._controller():
        session.interrupt_on_sigterm()
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

    # a benchmark's module names it; the shipped module holds every benchmark selected
    names = [metafunc.module.BENCHMARK] if hasattr(metafunc.module, "BENCHMARK") else s.options.benchmarks
    params = study_params(s.options, names)
    # recorded before --lf, -k, -m or --deselect choose
    s.study_ids[Path(str(metafunc.definition.path))] = item_ids(metafunc.definition.nodeid, params, metafunc.config)
    metafunc.parametrize("attn_case", params)


def study_params(options: Options, names: list[str]) -> list[Any]:
    """The study's items of benchmarks ``names``: model x task x method."""
    from .tasks import load_tasks

    return [
        pytest.param((model, method, task.task_id), id=f"{model}-{method}-{task.task_id}",
                     marks=[pytest.mark.attnalign])
        for tasks in [load_tasks(name)[: options.limit] for name in names]
        for model in options.models for task in tasks for method in options.methods
    ]


def item_ids(function: str, params: list[Any], config: pytest.Config) -> list[str]:
    """The node ids of the items that ``params`` make of the test function whose node id is ``function``,
    escaped as pytest escapes explicit ids (a model directory ``modèle`` is ``mod\\xe8le`` in an item's id:
    unescaped, no item of a shard matched its study's ids and every shard ran nothing)."""
    try:
        from _pytest.python import _ascii_escaped_by_config as escaped
    except ImportError:  # pytest moved it: ASCII ids, the usual case, need no escaping
        def escaped(value: str, config: pytest.Config | None) -> str:
            return value
    return [f"{function}[{escaped(param.id, config)}]" for param in params]


def study_module_benchmarks(path: Path, options: Options) -> list[str]:
    """The benchmarks whose items the study module at ``path`` holds (none: not a study module):
    the shipped ``items/test_study.py`` every one selected, ``benchmarks/NAME/test_NAME.py`` its own."""
    if path == Path(__file__).resolve().parent / "items" / "test_study.py":
        return list(options.benchmarks)
    name = path.parent.name
    return [name] if name in options.benchmarks and path.name == f"test_{name}.py" else []


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
