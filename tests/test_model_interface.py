"""One model interface (``lm.LanguageModel``): no module asks which backend a model is.

A third backend defined only here plugs in through ``models.LOADERS`` and runs the study's
perturbation methods end to end; methods needing internals are not applicable to it nor to an API
model; and the model modules import each other without a cycle.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

import pytest

from pytest_attnalign import model_spec, models
from pytest_attnalign.generation import STOP_RULE, Generation, Prompt
from pytest_attnalign.lm import LanguageModel
from pytest_attnalign.methods import MethodNotApplicable
from pytest_attnalign.model_spec import ModelSpec
from pytest_attnalign.openai_model import load_openai_model
from pytest_attnalign.study import Study, StudyConfig
from pytest_attnalign.tasks import Task, get_task

PACKAGE = Path(models.__file__).parent
KEYWORDS = ("threshold", "closer")  # HumanEval/0's description: the words the fake's code depends on


class KeywordModel:
    """A backend no module knows: its "code" counts the keywords its task prompt contains, so a
    perturbation changes the code exactly when it removes or replaces a keyword."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec, self.device = spec, "test"
        self.prompts: list[str] = []  # every task prompt it was asked for, original and perturbed

    @property
    def identity(self) -> dict[str, str]:
        return {"model": self.spec.name, "source": self.spec.source, "revision": "1", "dtype": "n/a"}

    @property
    def unavailable(self) -> bool:
        return False

    @property
    def has_internals(self) -> bool:
        return False

    def _code(self, task_prompt: str) -> str:
        self.prompts.append(task_prompt)
        counts = {w: len(re.findall(rf"\b{w}\b", task_prompt)) for w in KEYWORDS}
        return "".join(f"    {w} = {n}\n" for w, n in counts.items()) + "    return closer > threshold\n"

    def budget_rule(self, fmt: str) -> str:
        return "64 tokens"

    def generate(self, task: Task, fmt: str, max_new_tokens: int | None = None) -> tuple[Prompt, Generation]:
        code = self._code(task.prompt)
        return (Prompt(task.prompt, fmt, 0, task.description),
                Generation(task.task_id, fmt, max_new_tokens or 64, STOP_RULE, code, code, (), ()))

    def regenerate(self, task: Task, generation: Generation, task_prompts: Sequence[str], **speed: Any) -> list[str]:
        return [self._code(p) for p in task_prompts]


@pytest.fixture
def keyword_model(monkeypatch: pytest.MonkeyPatch) -> list[KeywordModel]:
    """``--attn-model=keywords`` loads a KeywordModel: a name and a loader, as a new backend plugs in."""
    loaded: list[KeywordModel] = []

    def load(spec: ModelSpec, name: str, device: str, dtype: str, cache_dir: Path | None) -> KeywordModel:
        loaded.append(KeywordModel(spec))
        return loaded[-1]

    monkeypatch.setitem(model_spec.ALIASES, "keywords", ModelSpec("keywords", "test:keywords", "keywords", "completion"))
    monkeypatch.setitem(models.LOADERS, "keywords", load)
    return loaded


def test_both_backends_and_a_third_implement_the_interface() -> None:
    local = models.LoadedModel(ModelSpec("m", "m"), None, None, "cpu", "float32", "r")
    api = load_openai_model(model_spec.resolve_model("openai:gpt-4"), base_url="http://127.0.0.1:9/v1")  # no request
    for lm, internals in ((local, True), (api, False), (KeywordModel(ModelSpec("k", "k")), False)):
        assert isinstance(lm, LanguageModel) and lm.has_internals is internals
        assert set(lm.identity) == {"model", "source", "revision", "dtype"}  # the cache keys' shape
    # the budget rule each backend records is the one its generate() applies
    assert (local.budget_rule("chat"), local.budget_rule("completion")) == ("prompt + canonical solution + 20",
                                                                           "canonical solution + 20")
    assert api.budget_rule("chat") == "(characters of prompt + canonical solution) / 3, rounded up, + 20"
    assert not isinstance(object(), LanguageModel)


def test_a_third_backend_runs_the_perturbation_methods(keyword_model: list[KeywordModel], tmp_path: Path,
                                                       offline: None) -> None:
    study = Study(StudyConfig(cache_dir=tmp_path))
    task = get_task("HumanEval/0")
    for method in ("shap", "bert_masking"):
        record = study.run_item("keywords", method, task.task_id)
        assert record.device == "test" and record.model_identity["source"] == "test:keywords"
        assert record.budget_rule == "64 tokens"  # the backend's own rule, recorded
        assert record.completion.startswith("    threshold = 2\n    closer = 1\n") and not record.no_code
        ranked = sorted(((v, task.prompt[a:b]) for a, b, v in record.units), reverse=True)
        assert sorted(w for _, w in ranked[:3]) == ["closer", "threshold", "threshold"], method  # they change the code
        assert ranked[2][0] > 0
        if method == "bert_masking":  # one word replaced at a time: any other word changes nothing
            assert all(v == 0 for v, _ in ranked[3:])
    (lm,) = keyword_model  # loaded once per process
    asked = len(lm.prompts)
    assert asked > 2 and study.run_item("keywords", "shap", task.task_id).attribution["cached"]
    assert len(lm.prompts) == asked  # the cache hit: keyed by the model's identity, whatever its backend


def test_a_tasks_items_share_one_run_of_its_tests(keyword_model: list[KeywordModel], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch, offline: None) -> None:
    """The unit tests run once per generation: a task's methods cannot disagree on Pass@1 (a run near
    the timeout under load), and 11 of 12 sandbox starts a task are saved."""
    from pytest_attnalign import study as study_module

    runs: list[str] = []
    real = study_module.run_completion

    def counted(task: Task, completion: str, limits: Any) -> Any:
        runs.append(completion)
        return real(task, completion, limits)

    monkeypatch.setattr(study_module, "run_completion", counted)
    study = Study(StudyConfig(cache_dir=tmp_path))
    first, second = (study.run_item("keywords", m, "HumanEval/0") for m in ("shap", "bert_masking"))
    assert len(runs) == 1 and first.execution == second.execution and first.passed == second.passed
    assert first.execution["outcome"] == "fail"  # the fake's code runs and fails HumanEval/0's tests
    study.run_item("keywords", "shap", "HumanEval/1")
    assert len(runs) == 2  # another task's generation runs its own tests


def test_methods_needing_internals_are_not_applicable(keyword_model: list[KeywordModel], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Skipped before generating: the API model's server (nothing listens on port 9) is never asked."""
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    study = Study(StudyConfig(cache_dir=tmp_path))
    for model, method in (("openai:gpt-4", "saliency_reading"), ("openai:gpt-4", "coding_last"),
                          ("keywords", "reading_all")):
        with pytest.raises(MethodNotApplicable) as info:
            study.run_item(model, method, "HumanEval/0")
        assert str(info.value) == (f"{method} needs model internals; {model} exposes none (an API model): "
                                   "use the perturbation methods (shap, bert_masking) with it")
    assert keyword_model[0].prompts == []


# ------------------------------------------------------------------------------------- import graph
MODEL_MODULES = ("lm", "model_spec", "models", "openai_model")


def _imports(path: Path) -> set[str]:
    """Package modules ``path`` imports anywhere (functions too), except under ``if TYPE_CHECKING``."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    package = parts[:-1]  # the importing module's package, relative to pytest_attnalign
    tree = ast.parse(path.read_text())
    hidden = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
              for stmt in node.body for n in ast.walk(stmt)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in hidden:
            continue
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1] + (node.module.split(".") if node.module else [])
            found.update(".".join(base + [a.name]) for a in node.names)
            found.add(".".join(base))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            found.update(n.removeprefix("pytest_attnalign.") for n in names if n.startswith("pytest_attnalign."))
    return found


def _graph() -> dict[str, set[str]]:
    modules = {".".join(p.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__"): p
               for p in PACKAGE.rglob("*.py") if "data" not in p.relative_to(PACKAGE).parts}
    return {name: _imports(path) & set(modules) - {name} for name, path in modules.items()}


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), list(graph[start])
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(graph[name])
    return seen


def test_model_modules_import_without_a_cycle() -> None:
    graph = _graph()
    assert "openai_model" in graph["models"] and "model_spec" in graph["openai_model"]  # the graph sees imports
    for name in MODEL_MODULES:
        assert name not in _reachable(graph, name), f"{name} imports itself back"
    for name in ("lm", "model_spec"):  # naming a model loads no backend
        assert not {"models", "openai_model"} & _reachable(graph, name), name


@pytest.mark.parametrize("name", MODEL_MODULES)
def test_each_model_module_imports_alone(name: str) -> None:
    subprocess.run([sys.executable, "-c", f"import pytest_attnalign.{name}"], check=True, timeout=120)


def test_an_item_whose_model_wrote_no_code_has_no_error_pattern(keyword_model: list[KeywordModel], tmp_path: Path,
                                                                offline: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its labels were once all "missed by the top-10" (a top-10 that does not exist), in the record,
    the failure message and the page's pattern filter, while the pattern table left it out."""
    from pytest_attnalign.report import failure_message

    monkeypatch.setattr(KeywordModel, "_code", lambda self, prompt: "")
    record = Study(StudyConfig(cache_dir=tmp_path)).run_item("keywords", "shap", "HumanEval/0")
    assert record.no_code and not record.passed and record.units == []
    assert record.error_patterns == [] and record.missed_keywords == []
    message = failure_message(record)
    assert "the model wrote no code: shap attributed nothing (no top-10, no error pattern)" in message
    assert "missed" not in message and "[[" not in message


def test_a_perturbation_result_is_not_reused_under_another_budget(keyword_model: list[KeywordModel], tmp_path: Path,
                                                                  offline: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The original completion may stop early under two budgets (the same ids), its perturbed prompts not:
    bert_masking's scores under budget 400 were once served from the cache entry of budget 40."""
    def regenerate(self: KeywordModel, task: Task, generation: Generation, task_prompts: Sequence[str],
                   **speed: Any) -> list[str]:
        return [self._code(p)[: generation.max_new_tokens] for p in task_prompts]  # cut at the budget

    monkeypatch.setattr(KeywordModel, "regenerate", regenerate)

    def run(budget: int, cache: Path) -> Any:
        return Study(StudyConfig(cache_dir=cache, max_new_tokens=budget)).run_item("keywords", "bert_masking", "HumanEval/0")

    short, long = run(40, tmp_path / "shared"), run(400, tmp_path / "shared")
    assert short.completion == long.completion and not long.attribution["cached"]
    assert [u[2] for u in long.units] == [u[2] for u in run(400, tmp_path / "fresh").units] != [u[2] for u in short.units]
    assert run(400, tmp_path / "shared").attribution["cached"]  # the same budget still hits
