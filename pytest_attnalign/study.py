"""One study item end to end: generate (cached), attribute, score against the labels, execute.

:class:`Study` is what the plugin, the CLI and the tests call; it holds the loaded models of one
process and the recent generations, so the twelve methods of a task share one generation (and the
six self-attention methods one forward pass). Every result is a :class:`record.Record`, which
travels from xdist workers to the controller as its JSON dict.
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .alignment import DEFAULT_KS, TaskUnits, check_score, check_span, in_prompt_order, in_region, score_tasks, top_k
from .cache import ResultCache
from .errors import AttnalignError, ModelUnavailable
from .execution import Limits, run_completion
from .generation import GENERATION_RULES, STOP_RULE, Generation, Prompt, body_span, completion_of, generate, stop_rule_text
from .jsonshape import check, from_json
from .labels import human_spans, prompt_labels
from .linemap import LineUnits, compact
from .methods import AttributionContext, Method, code_identity, get_method, registry
from .lm import LanguageModel
from .models import load_model
from .patterns import error_patterns, missed_labels
from .record import Record
from .tasks import Task, get_task
from .versions import installed_versions


NO_CODE = "the model emitted no code (no function body after the stop rule)"
#: Bump when the attribution cache entry's shape or content changes: old entries then miss (are
#: recomputed) instead of being read without the new part. 2: the code-to-words map (``lines``);
#: 3: a newline merged with indentation maps to the line it indents.
ATTRIBUTION_ENTRY = 3
#: The libraries whose code computes cached values: another version may give other numbers (an upgrade,
#: a cache shared by two environments), so entries are keyed by their versions. Not an API model's
#: generation: its reply depends on the server (and a paid one stays cached).
COMPUTING_LIBRARIES = ("torch", "transformers", "tokenizers", "numpy", "scikit-learn", "shap", "sacrebleu", "nltk")


@dataclass(frozen=True)
class StudyConfig:
    """Everything besides model, method and task that determines a result."""

    prompt_format: str | None = None  # None: the model's default
    max_new_tokens: int | None = None  # None: the study's budget rule
    ks: tuple[int, ...] = DEFAULT_KS
    error_k: int = 10
    limits: Limits = field(default_factory=Limits)
    cache_dir: Path | None = None
    device: str = "auto"
    dtype: str = "auto"
    #: method name -> constructor settings (e.g. ``{"shap": {"evaluations": 100}}``); part of the cache key
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    labels: str = "corrected"  # labels.LABEL_MODES: corrected, or MBPP scored as the study did


class Study:
    """Runs items in one process; models load once, generations are reused across methods."""

    def __init__(self, config: StudyConfig, cache: ResultCache | None = None) -> None:
        self.config = config
        self.cache = cache or ResultCache(config.cache_dir / "results" if config.cache_dir else None)
        self._models: dict[str, LanguageModel] = {}
        self._load_errors: dict[str, str] = {}
        self._contexts: OrderedDict[tuple[str, str], AttributionContext] = OrderedDict()
        self._libraries = installed_versions(COMPUTING_LIBRARIES)  # part of every cache key; fixed in a process

    def model(self, name: str) -> LanguageModel:
        """The loaded model; a model that failed to load is tried once per process, never again."""
        if name in self._load_errors:
            raise ModelUnavailable(f"model {name!r} failed to load ({self._load_errors[name]}): not retried")
        if name not in self._models:
            try:
                self._models[name] = load_model(name, self.config.device, self.config.dtype, self.config.cache_dir)
            except Exception as exc:  # the first item shows the reason (a traceback when unexpected)
                self._load_errors[name] = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
                raise
        return self._models[name]

    def unavailable(self, name: str) -> bool:
        """Whether the model's remaining items cannot produce results (load failed, API gave up)."""
        return name in self._load_errors or (name in self._models and self._models[name].unavailable)

    def context(self, model_name: str, task: Task) -> AttributionContext:
        """The task's generation under this model, from memory, the disk cache or the model."""
        key = (model_name, task.task_id)
        if key in self._contexts:
            self._contexts.move_to_end(key)
            return self._contexts[key]
        lm = self.model(model_name)
        fmt = self.config.prompt_format or lm.spec.prompt_format
        gen_key = {**lm.identity, "device_type": lm.device.split(":")[0], "task": task.task_id, "prompt": task.prompt, "format": fmt,
                   "max_new_tokens": self.config.max_new_tokens,
                   # an API model's paid reply stays: it is re-cut by today's rules when read
                   **({"rules": GENERATION_RULES, "libraries": self._libraries} if lm.has_internals else {})}
        cached = self.cache.get("generation", gen_key, _decode_generation)
        started = time.perf_counter()
        if cached is not None:
            prompt, generation = cached
            generation = dataclasses.replace(generation, stop_rule=stop_rule_text(generation.stop_rule))
            if not lm.has_internals:  # a kept reply (its key holds no rules) is cut by today's rules
                generation = dataclasses.replace(generation, stop_rule=STOP_RULE,
                                                 completion=completion_of(task, generation.prompt_format, generation.raw))
        else:
            prompt, generation = generate(lm, task, fmt, self.config.max_new_tokens)
            self.cache.put("generation", gen_key, {"prompt": dataclasses.asdict(prompt),
                                                   "generation": dataclasses.asdict(generation)})
        ctx = AttributionContext(lm=lm, task=task, prompt=prompt, generation=generation,
                                 settings={"generation_seconds": time.perf_counter() - started,
                                           "generation_cached": cached is not None})
        self._contexts[key] = ctx
        while len(self._contexts) > 4:  # bound memory: memoised attention/gradients are large
            self._contexts.popitem(last=False)
        return ctx

    def method(self, name: str) -> Method:
        """The named method with this study's settings for it."""
        return get_method(name, **self.config.method_options.get(name, {}))

    def attribute(self, ctx: AttributionContext, method: str | Method) -> tuple[list[list[float]], dict[str, Any]]:
        """Units ``[start, end, score]`` (task.prompt coordinates) and facts about the run.

        ``method``: a registered name (with this study's settings for it) or an instance. A method
        defined outside this package is cached under a digest of its module's source as well.
        """
        units, _, info = self.attribute_lines(ctx, method)
        return units, info

    def attribute_lines(self, ctx: AttributionContext, method: str | Method
                        ) -> tuple[list[list[float]], list[LineUnits], dict[str, Any]]:
        """:meth:`attribute` with the method's code-to-words map as the record keeps it (:func:`linemap.compact`)."""
        method = self.method(method) if isinstance(method, str) else method
        method.check_applicable(ctx.lm)
        code = code_identity(method)
        key = {**ctx.lm.identity, "device_type": ctx.lm.device.split(":")[0], "task": ctx.task.task_id, "prompt": ctx.task.prompt,
               "format": ctx.prompt.format, "completion": ctx.generation.completion,
               "prompt_ids": list(ctx.generation.prompt_ids),  # special tokens too: what the model attended to
               "generated_ids": list(ctx.generation.generated_ids), "explained": list(ctx.generation.explained),
               "method": method.name, "entry": ATTRIBUTION_ENTRY, "libraries": self._libraries,
               "settings": method.settings(), **({"code": code} if code else {}),
               # a perturbed prompt decodes under the generation's budget and rules: the original may stop
               # early under two budgets (same ids), its perturbed prompts not; an API model's perturbed
               # replies are kept (OpenAIModel.replies), so a rules bump re-cuts them without asking again
               **({"budget": ctx.generation.max_new_tokens, "rules": GENERATION_RULES} if method.decodes else {})}
        cacheable = code.get("module_sha256", "") is not None  # no source to hash: a stale result could be served
        cached = self.cache.get("attribution", key, lambda v: _decode_attribution(v, ctx.task)) if cacheable else None
        if cached is not None:
            units, lines, info = cached
            return units, lines, {**info, "cached": True}
        started = time.perf_counter()
        found = method.attribute(ctx)  # its own errors pass unchanged
        try:
            units, order = _scored(checked_units(found, len(ctx.task.prompt)), ctx.task)
        except AttnalignError as exc:
            raise AttnalignError(f"method {method.name} returned a bad unit: {exc}") from None
        # the per-line scores follow the units (one per unit, in attribute()'s order): reorder them alike
        lines = compact([(s, e, [scores[i] for i in order]) for s, e, scores in method.line_units(ctx) or []])
        info = {"seconds": time.perf_counter() - started, "settings": method.settings()}
        if cacheable:
            self.cache.put("attribution", key, {"units": units, "lines": lines, "info": info})
        return units, lines, {**info, "cached": False}

    def run_item(self, model_name: str, method_name: str, task_id: str) -> Record:
        """Generate, attribute, score and execute one model x method x task; returns its record."""
        task = get_task(task_id)
        method = self.method(method_name)
        method.check_applicable(self.model(model_name))  # skip before generating (API calls cost)
        ctx = self.context(model_name, task)
        gen = ctx.generation
        no_code = has_no_code(task, gen)
        if not no_code:
            units, lines, info = self.attribute_lines(ctx, method_name)
        else:  # left out of the alignment tables; its tests still run for Pass@1
            units, lines, info = [], [], {"seconds": 0.0, "settings": method.settings(), "cached": False, "note": NO_CODE}
        labels = prompt_labels(task)
        human = [list(span) for span in human_spans(task, self.config.labels)]
        located = [(s, e, v) for s, e, v in units]
        task_units = TaskUnits(task.prompt, tuple(located), tuple((a, b) for a, b in human), 0, task.task_id)
        ks = sorted(set(self.config.ks) | {self.config.error_k})
        per_k = {str(k): s.as_dict() for k, s in score_tasks([task_units], ks).items()}
        if gen.completion.strip():
            # One run per generation, shared by the task's items: the code and tests are the same,
            # and a result near a limit (a timeout under load) must not differ between its methods.
            # (A context belongs to this study, so its limits are the only ones it meets.)
            result = ctx.memo("execution", lambda: run_completion(task, gen.completion, self.config.limits).as_dict())
        else:
            result = {"outcome": "error", "seconds": 0.0, "returncode": None, "stderr_tail": NO_CODE}
        passed = result["outcome"] == "pass"
        error_top = top_k(located, self.config.error_k)
        return Record(
            model=model_name,
            model_identity=ctx.lm.identity,
            method=method_name,
            task_id=task.task_id,
            benchmark=task.benchmark,
            prompt_format=gen.prompt_format,
            max_new_tokens=gen.max_new_tokens,
            budget_rule=(f"fixed {self.config.max_new_tokens}" if self.config.max_new_tokens is not None
                         else ctx.lm.budget_rule(gen.prompt_format)),
            stop_rule=gen.stop_rule,
            device=ctx.lm.device,
            completion=gen.completion,
            no_code=no_code,
            generated_tokens=len(gen.raw_ids),
            explained_tokens=list(gen.explained_tokens),
            labels=self.config.labels,
            generation_cached=ctx.settings["generation_cached"],
            usage=getattr(gen, "usage", None),
            # the sandbox's absolute rlimits depend on how many processes the machine runs at
            # the moment (RLIMIT_NPROC counts them all), so only the configured limits are recorded
            execution={**{k: v for k, v in result.items() if k != "sandbox"},
                       "sandbox": {k: v for k, v in result.get("sandbox", {}).items() if k != "rlimits"},
                       "limits": self.config.limits.as_dict()},
            passed=passed,
            units=located,
            human=[(a, b) for a, b in human],
            top_k={str(k): [list(t) for t in top_k(located, k)] for k in ks},
            metrics=per_k,
            error_k=self.config.error_k,
            # no code, no attention: its labels were not "missed" (the pattern table leaves it out too)
            error_patterns=[] if no_code else error_patterns(passed, labels, error_top, task.description),
            missed_keywords=[] if no_code else [dataclasses.asdict(lab)
                                                for lab in missed_labels(labels, error_top, task.description)],
            attribution={**info, "method": registry()[method_name].provenance.as_dict()},  # for reports elsewhere
            line_units=lines,
        )


def has_no_code(task: Task, gen: Generation) -> bool:
    """No code to score: an empty completion, or no function body (a local model: no body token to
    explain; an API model, whose reply has no tokens here: no body in its text, by the same rule)."""
    if not gen.completion.strip():
        return True
    if gen.prompt_ids:
        return not gen.explained_steps
    a, b = body_span(task, gen.prompt_format, gen.raw)
    return not gen.raw[a:b].strip()


def _decode_generation(value: Any) -> tuple[Prompt, Generation]:
    """A cached generation entry, shape-checked (see :class:`cache.ResultCache`)."""
    value = check(value, dict[str, Any], "generation entry")
    return from_json(Prompt, value["prompt"], "prompt"), from_json(Generation, value["generation"], "generation")


def checked_units(units: Any, length: int) -> list[list[float]]:
    """``[start, end, score]`` lists of units inside a prompt of ``length`` characters with finite scores,
    checked as ``attnalign score`` checks its triples: a span past the prompt, a NaN score or an offset
    that is a string or a fraction would be scored (and cached) as if it were a result."""
    if not isinstance(units, Iterable) or isinstance(units, (str, bytes, dict)):
        raise AttnalignError(f"units must be a list of [start, end, score], got {type(units).__name__}")
    checked = []
    for unit in units:
        try:
            s, e, v = unit
        except (TypeError, ValueError):
            raise AttnalignError(f"unit {unit!r:.60} is not [start, end, score]") from None
        checked.append([*check_span(s, e, length, "unit"), check_score(v)])
    return checked


def _scored(units: list[list[float]], task: Task) -> tuple[list[list[float]], list[int]]:
    """What is scored, as ``attnalign score`` scores it: units in prompt order, cut to the scored region
    (METRICS.md s2, s6), with the index in ``units`` of each (for the per-line scores). The built-in
    methods' units are so already; an entry-point method's may not be."""
    # the alignment helpers carry each unit's index in the score's place, so the scores follow by index
    placed = in_region(in_prompt_order([(s, e, i) for i, (s, e, _) in enumerate(units)]), task.description)
    return [[s, e, units[i][2]] for s, e, i in placed], [int(i) for *_, i in placed]


def _decode_attribution(value: Any, task: Task) -> tuple[list[list[float]], list[LineUnits], dict[str, Any]]:
    """A cached attribution entry for ``task``: units ``[start, end, score]``, the code-to-words map and
    the run's facts."""
    value = check(value, dict[str, Any], "attribution entry")
    try:
        units = checked_units(check(value["units"], list[tuple[int, int, float]], "units"), len(task.prompt))
    except AttnalignError as exc:  # a damaged entry: recomputed like a truncated one
        raise ValueError(str(exc)) from None
    if _scored(units, task)[0] != units:  # an entry-point method's entry from before a0cc799: its map indexes
        raise ValueError("units not in prompt order inside the scored region")  # the units as listed: recompute
    lines = check(value["lines"], list[LineUnits], "lines")
    return units, lines, check(value["info"], dict[str, Any], "info")


def attribute_task(study: Study, model_name: str, task_id: str, methods: list[str], k: int = 10,
                   before_each: Callable[[], Any] = lambda: None) -> dict[str, Any]:
    """Generate once and run every named method on one task: the library's one-call view.

    Methods that cannot apply to the model are reported with their reason (``skipped``), and a
    method that fails on this generation with its error (``error``), instead of units: one method's
    failure does not hide the others' results. Where the model wrote no code every method reports
    that error, as a run leaves such a task out of the tables.
    ``before_each`` runs before the generation and each method (``attnalign attribute``: re-reading
    its share of the cores, as a pytest run does before each item).
    """
    from .methods import MethodNotApplicable

    task = get_task(task_id)
    before_each()
    ctx = study.context(model_name, task)
    no_code = has_no_code(task, ctx.generation)
    out: dict[str, Any] = {}
    for name in methods:
        before_each()
        try:
            if no_code:  # nothing was written to explain (READING's row would be the prompt's last)
                study.method(name).check_applicable(ctx.lm)
                raise AttnalignError(f"{NO_CODE}: nothing to attribute; a run leaves this task out of the tables")
            units, info = study.attribute(ctx, name)
        except MethodNotApplicable as exc:
            out[name] = {"skipped": str(exc)}
            continue
        except AttnalignError as exc:
            out[name] = {"error": str(exc)}
            continue
        out[name] = {"units": units, "top_k": [list(t) for t in top_k([tuple(u) for u in units], k)],
                     "seconds": info["seconds"], "cached": info["cached"], "settings": info["settings"]}
    gen = ctx.generation
    return {"task_id": task.task_id, "model": model_name, "model_identity": ctx.lm.identity,
            "prompt_format": gen.prompt_format, "max_new_tokens": gen.max_new_tokens,
            "completion": gen.completion, "explained_steps": list(gen.explained),
            "explained_tokens": list(gen.explained_tokens), "methods": out}
