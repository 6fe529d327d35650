"""API models over real HTTP: a scripted OpenAI-compatible server on 127.0.0.1, the real openai client."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest
from openai_server import OpenAIStub

from pytest_attnalign.errors import AttnalignError
from pytest_attnalign.generation import CHAT_INSTRUCTION, generate
from pytest_attnalign.methods.base import Method, MethodNotApplicable
from pytest_attnalign.model_spec import resolve_model
from pytest_attnalign.models import load_model
from pytest_attnalign.openai_model import api_budget, load_openai_model
from pytest_attnalign.tasks import get_task

BODY = "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])\n"
REPLY = (
    "Here is the function:\n\n```python\nfrom typing import List\n\n\n"
    "def has_close_elements(numbers: List[float], threshold: float) -> bool:\n" + BODY + "```\nDone."
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ambient OpenAI settings or proxies: every test talks only to its own 127.0.0.1 server."""
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ATTNALIGN_OPENAI_MODEL", "ATTNALIGN_OPENAI_MAX_RETRIES",
                "ATTNALIGN_OPENAI_TIMEOUT", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID"):
        monkeypatch.delenv(var, raising=False)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)


def _reply(_: dict[str, Any]) -> str:
    return REPLY


def test_generation_over_http() -> None:
    task = get_task("HumanEval/0")
    with OpenAIStub(_reply, reported_model="gpt-4-0613") as srv:
        lm = load_openai_model(resolve_model("openai:gpt-4"), base_url=srv.base_url, max_retries=0, timeout=5)
        assert lm.device == "api" and not lm.has_internals and not hasattr(lm, "tokenizer")
        prompt, gen = generate(lm, task)  # the model's own generate; default format is chat
    assert len(srv.requests) == 1
    body = srv.requests[0].body
    assert body["temperature"] == 0 and body["seed"] == 0 and body["model"] == "gpt-4"
    assert body["max_tokens"] == gen.max_new_tokens == api_budget(task.prompt, task)
    (message,) = body["messages"]
    assert message["role"] == "user" and message["content"] == prompt.text
    assert prompt.text.startswith(CHAT_INSTRUCTION) and task.prompt in prompt.text
    assert prompt.text[prompt.task_offset:].startswith(task.prompt)
    a, b = prompt.description
    assert prompt.text[a:b] == task.description_text
    assert gen.raw == REPLY and gen.prompt_format == "chat"
    assert BODY in gen.completion and "Done." not in gen.completion and "```" not in gen.completion
    assert gen.generated_ids == () and gen.prompt_ids == ()
    ns: dict[str, Any] = {}
    exec(task.program(gen.completion), ns)  # the fenced code, run after the prompt, passes the tests
    assert gen.usage == lm.usage_for_last_call == {"prompt_tokens": len(prompt.text.split()),
                                                   "completion_tokens": len(REPLY.split()),
                                                   "served_model": "gpt-4-0613"}
    assert gen.as_dict()["usage"] == gen.usage
    assert lm.usage_total["calls"] == 1 and lm.usage_total["completion_tokens"] == len(REPLY.split())
    assert lm.identity == {"model": "openai:gpt-4", "source": "gpt-4", "revision": f"gpt-4@{srv.base_url}", "dtype": "n/a"}
    official = load_openai_model(resolve_model("openai:gpt-4"), api_key="k")  # no request
    assert official.identity["revision"] == "gpt-4"  # OpenAI's server: the key of generations cached before
    assert lm.info["system_fingerprint"] == "fp_stub"


def test_complete_task_prompt_and_load_model_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """load_model routes openai kinds here; env gives URL and model name; a local URL needs no key."""
    task = get_task("Mbpp/2")
    with OpenAIStub(lambda body: "echo:" + body["messages"][0]["content"]) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        monkeypatch.setenv("ATTNALIGN_OPENAI_MODEL", "gpt-4-turbo")
        lm = load_model("gpt4")
        perturbed = task.prompt.replace("similar", "[MASK]")
        reply = lm.complete_task_prompt(perturbed, task, 50)
    assert lm.spec.source == "gpt-4-turbo" and srv.requests[0].body["model"] == "gpt-4-turbo"
    assert reply.startswith("echo:" + CHAT_INSTRUCTION) and perturbed in reply
    assert srv.requests[0].body["max_tokens"] == 50
    assert srv.requests[0].headers["authorization"].startswith("Bearer ")
    assert lm.usage_for_last_call is not None and lm.usage_total["calls"] == 1


def test_retries_429_then_500_then_succeeds() -> None:
    task = get_task("HumanEval/0")
    with OpenAIStub(_reply, failures=[429, 500]) as srv:
        lm = load_openai_model(resolve_model("openai:gpt-4"), base_url=srv.base_url, max_retries=3, timeout=5)
        start = time.monotonic()
        _, gen = lm.generate(task, "chat", 64)
        elapsed = time.monotonic() - start
    assert len(srv.requests) == 3 and BODY in gen.completion
    assert elapsed < 3  # the server's retry-after-ms keeps the client's backoff short
    assert lm.usage_total["calls"] == 1


def test_retries_exhausted_is_one_line_error() -> None:
    with OpenAIStub(_reply, failures=[429, 429, 429]) as srv:
        lm = load_openai_model(resolve_model("openai:gpt-4"), base_url=srv.base_url, max_retries=2, timeout=5)
        with pytest.raises(AttnalignError, match=r"429.*after 2 retries.*ATTNALIGN_OPENAI_MAX_RETRIES"):
            lm.generate(get_task("HumanEval/0"), "chat")
    assert len(srv.requests) == 3


def test_unreachable_server_fails_quickly_after_retries() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: connections are refused
    lm = load_openai_model(resolve_model("openai:gpt-4"), base_url=f"http://127.0.0.1:{port}/v1", max_retries=1, timeout=2)
    start = time.monotonic()
    with pytest.raises(AttnalignError, match=r"cannot connect to http://127.0.0.1:\d+/v1 after 1 retries.*OPENAI_BASE_URL") as info:
        lm.complete_task_prompt("def f():\n", get_task("HumanEval/0"), 8)
    assert time.monotonic() - start < 5
    assert "\n" not in str(info.value)


def test_auth_failure_and_unknown_model_name_the_fix() -> None:
    task = get_task("HumanEval/0")
    with OpenAIStub(_reply, api_key="sk-right") as srv:
        lm = load_openai_model(resolve_model("openai:gpt-4"), base_url=srv.base_url, api_key="sk-wrong", max_retries=0)
        with pytest.raises(AttnalignError, match="401.*OPENAI_API_KEY"):
            lm.generate(task, "chat")
    with OpenAIStub(_reply) as srv:
        lm = load_openai_model(resolve_model("openai:gpt-4"), base_url=srv.base_url + "/missing", max_retries=0)
        with pytest.raises(AttnalignError, match="404.*ATTNALIGN_OPENAI_MODEL"):
            lm.generate(task, "chat")


def test_missing_key_and_settings() -> None:
    spec = resolve_model("openai:gpt-4")
    with pytest.raises(AttnalignError, match="OPENAI_API_KEY"):
        load_openai_model(spec)  # the default base URL is api.openai.com: a key is required
    lm = load_openai_model(spec, base_url="http://localhost:9/v1")  # local server: any key works
    assert lm.max_retries == 6 and lm.timeout == 120
    with pytest.raises(AttnalignError, match="only chat"):
        lm.generate(get_task("HumanEval/0"), "completion")


def test_env_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("ATTNALIGN_OPENAI_MAX_RETRIES", "1")
    monkeypatch.setenv("ATTNALIGN_OPENAI_TIMEOUT", "7.5")
    lm = load_openai_model(resolve_model("openai:gpt-4"))
    assert (lm.max_retries, lm.timeout, lm.base_url) == (1, 7.5, "https://api.openai.com/v1")
    assert lm.client.max_retries == 1
    monkeypatch.setenv("ATTNALIGN_OPENAI_MAX_RETRIES", "many")
    with pytest.raises(AttnalignError, match="ATTNALIGN_OPENAI_MAX_RETRIES"):
        load_openai_model(resolve_model("openai:gpt-4"))


def test_internals_methods_not_applicable() -> None:
    lm = load_openai_model(resolve_model("openai:gpt-4"), base_url="http://127.0.0.1:9/v1")
    try:
        from pytest_attnalign.methods import get_method

        method: Method = get_method("saliency_reading")
    except ImportError:  # the gradient module may not exist yet; the check lives on the base class
        method = type("Gradient", (Method,), {"name": "saliency_reading", "category": "gradient"})()
    with pytest.raises(MethodNotApplicable, match="API model"):
        method.check_applicable(lm)
    perturbation = type("Perturb", (Method,), {"name": "p", "category": "perturbation", "needs_internals": False})()
    perturbation.check_applicable(lm)  # needs only generations: runs on API models


def test_a_rules_bump_regenerates_local_generations_not_paid_ones(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """GENERATION_RULES keys cached generations whose explained steps the rules decide (local models);
    an API model's paid reply stays cached and is cut by today's rules when read (a completion cut by
    an earlier rule is not served)."""
    import json
    from tiny_models import build_tiny

    from pytest_attnalign.generation import STOP_RULE
    from pytest_attnalign.study import Study, StudyConfig

    task = get_task("HumanEval/0")
    tiny = str(build_tiny("gpt2", tmp_path / "tiny-gpt2"))
    with OpenAIStub(_reply) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        for _ in range(2):
            study = Study(StudyConfig(cache_dir=tmp_path / "cache", device="cpu", max_new_tokens=8))
            api, local = study.context("openai:stub", task), study.context(tiny, task)
        assert len(srv.requests) == 1 and api.settings["generation_cached"] and local.settings["generation_cached"]
        assert api.generation.stop_rule == STOP_RULE
        monkeypatch.setattr("pytest_attnalign.study.GENERATION_RULES", 99)
        today = api.generation.completion
        for entry in (tmp_path / "cache" / "results" / "generation").rglob("*.json"):  # as an older rule cut it
            doc = json.loads(entry.read_text())
            if doc["value"]["generation"]["raw"] == REPLY:
                doc["value"]["generation"].update(completion="\nstale\n", stop_rule="an older rule")
                entry.write_text(json.dumps(doc))
        study = Study(StudyConfig(cache_dir=tmp_path / "cache", device="cpu", max_new_tokens=8))
        api, local = study.context("openai:stub", task), study.context(tiny, task)
    assert len(srv.requests) == 1 and api.settings["generation_cached"] and not local.settings["generation_cached"]
    assert api.generation.completion == today and api.generation.stop_rule == STOP_RULE


def test_two_servers_serving_one_model_name_are_two_models(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """The second server's generation was once served from the first one's cache entry."""
    from pytest_attnalign.study import Study, StudyConfig

    task = get_task("HumanEval/0")
    with OpenAIStub(_reply) as first, OpenAIStub(lambda _: REPLY.replace("return any", "return all")) as second:
        completions = []
        for srv in (first, second):
            monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
            ctx = Study(StudyConfig(cache_dir=tmp_path)).context("openai:coder", task)
            completions.append(ctx.generation.completion)
            assert len(srv.requests) == 1 and not ctx.settings["generation_cached"]
    assert completions[0] != completions[1]


def test_a_lone_surrogate_in_a_reply_is_replaced(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """Valid in the server's JSON, not in UTF-8: the item once failed with a UnicodeEncodeError traceback
    when its generation was written to the cache."""
    from pytest_attnalign.study import Study, StudyConfig

    with OpenAIStub(lambda _: REPLY.replace("    return any", "    # \ud800\n    return any")) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        record = Study(StudyConfig(cache_dir=tmp_path)).run_item("openai:coder", "bert_masking", "HumanEval/0")
    assert "    # \ufffd\n" in record.completion and record.passed
    assert not [p for p in tmp_path.rglob("*.tmp*")]


def test_another_library_version_recomputes_all_but_paid_generations(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """Entries were reused across torch/transformers/shap... versions (an upgrade, a cache two
    environments share) while the run's header named the new versions."""
    from tiny_models import build_tiny

    from pytest_attnalign.study import Study, StudyConfig

    task = get_task("HumanEval/0")
    tiny = str(build_tiny("gpt2", tmp_path / "tiny-gpt2"))

    def run() -> list[bool]:
        study = Study(StudyConfig(cache_dir=tmp_path / "cache", device="cpu", max_new_tokens=8))
        api, local = study.context("openai:stub", task), study.context(tiny, task)
        return [api.settings["generation_cached"], local.settings["generation_cached"],
                study.attribute(api, "bert_masking")[1]["cached"], study.attribute(local, "reading_all")[1]["cached"]]

    with OpenAIStub(_reply) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        assert run() == [False, False, False, False] and run() == [True, True, True, True]
        monkeypatch.setattr("pytest_attnalign.study.installed_versions", lambda names: dict.fromkeys(names, "99.0"))
        assert run() == [True, False, False, False]


@pytest.mark.parametrize(("reply", "no_code"), [
    ("I'm sorry, I can't help with that.", True),  # prose: a completion, but no function body
    ('```python\ndef has_close_elements(numbers, threshold):\n    """Check it."""\n```', True),  # signature only
    (REPLY, False),
])
def test_an_api_reply_without_a_body_is_no_code(monkeypatch: pytest.MonkeyPatch, tmp_path, reply: str,
                                                 no_code: bool) -> None:
    """An API model's item with no body was attributed and pooled into the tables (only an empty
    completion counted), where a local model's identical reply is left out."""
    from pytest_attnalign.study import Study, StudyConfig

    with OpenAIStub(lambda _: reply) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        record = Study(StudyConfig(cache_dir=tmp_path, method_options={"shap": {"evaluations": 2}})).run_item("openai:stub", "shap", "HumanEval/0")
    assert record.no_code is no_code and (record.units == []) is no_code
    assert len(srv.requests) == (1 if no_code else 4)  # the generation, then SHAP's other prompts (the whole one is kept)


def test_a_rules_bump_recomputes_perturbations_from_kept_replies(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """SHAP on an API model compares replies cut by the rules: a rules bump recomputes its values (a
    perturbed reply may be cut otherwise), from the replies kept, without asking the server again."""
    from pytest_attnalign.study import Study, StudyConfig

    config = StudyConfig(cache_dir=tmp_path, method_options={"shap": {"evaluations": 2}})
    with OpenAIStub(_reply) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        first = Study(config).run_item("openai:stub", "shap", "HumanEval/0")
        asked = len(srv.requests)
        monkeypatch.setattr("pytest_attnalign.study.GENERATION_RULES", 99)
        again = Study(config).run_item("openai:stub", "shap", "HumanEval/0")
    assert asked > 1 and len(srv.requests) == asked  # nothing asked twice
    assert not first.attribution["cached"] and not again.attribution["cached"] and again.units == first.units
