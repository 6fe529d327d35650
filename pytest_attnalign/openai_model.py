"""OpenAI-compatible chat models (the study's GPT-4), a backend of :class:`lm.LanguageModel`.

An API model has no weights, tokenizer or attention, so only generation and the perturbation
methods (which need nothing but generations) run on it. Rules, recorded like a local model's:

- Prompt: chat format only; the user message is :func:`generation.chat_user_message`, the same
  wording local chat models get. ``Prompt.text`` is that message (the server applies its template).
- Greedy: ``temperature=0`` and ``seed=0`` (servers that ignore ``seed`` are still near-greedy).
- Budget without a tokenizer: ``max_tokens = ceil(len(task.prompt + canonical_solution) / 3) + 20``
  (:data:`generation.BUDGET_SLACK`). It mirrors the chat-format rule for local models (tokens of
  prompt + canonical + 20) with ~3 characters per token, fewer than GPT tokenizers average on
  code, so the budget errs on the generous side rather than cutting a function short.
- Retries: 429, 408/409, 5xx, timeouts and refused connections are retried by the ``openai``
  client itself (exponential backoff from 0.5 s to 8 s with jitter, honouring ``Retry-After``);
  we only set its ``max_retries`` and ``timeout``, so there is no retry loop here.
- Giving up: after :data:`FAILURE_LIMIT` consecutive failed requests (each after the client's
  retries) the model is unavailable for the rest of the process, so a dead endpoint costs three
  requests' retries, not every item's.

Configuration (argument, else environment): ``model`` (``ATTNALIGN_OPENAI_MODEL`` for the ``gpt4``
alias, else ``spec.source``), ``api_key`` (``OPENAI_API_KEY``; optional for a loopback
``base_url``), ``base_url`` (``OPENAI_BASE_URL``), ``max_retries`` (``ATTNALIGN_OPENAI_MAX_RETRIES``,
default 6) and ``timeout`` seconds per request (``ATTNALIGN_OPENAI_TIMEOUT``, default 120).
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlsplit

from .cache import ResultCache
from .errors import AttnalignError, ModelUnavailable
from .generation import BUDGET_SLACK, STOP_RULE, Generation, Prompt, chat_user_message, completion_of
from .model_spec import ModelSpec
from .tasks import Task

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MAX_RETRIES = 6
DEFAULT_TIMEOUT = 120.0
#: Consecutive failed requests after which an API model is given up for the rest of the process.
FAILURE_LIMIT = 3
CHARS_PER_TOKEN = 3
#: Sent when no key is configured and the server is on this machine (local servers ignore keys).
LOCAL_PLACEHOLDER_KEY = "sk-local-no-key"


def api_budget(task_prompt: str, task: Task) -> int:
    """Token budget without a tokenizer: ceil(chars of prompt + canonical / 3) + BUDGET_SLACK."""
    return math.ceil(len(task_prompt + task.canonical_solution) / CHARS_PER_TOKEN) + BUDGET_SLACK


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _env_number(name: str, default: float, kind: type) -> Any:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return kind(default)
    try:
        value = kind(raw)
    except ValueError:
        raise AttnalignError(f"{name}={raw!r} is not a number: set it to a {kind.__name__}") from None
    if value < 0:
        raise AttnalignError(f"{name}={raw!r} is negative: set it to 0 or more")
    return value


def _unicode(text: str) -> str:
    """``text`` with lone surrogates (valid in the server's JSON, ``"\\ud800"``, but not in UTF-8) made
    U+FFFD: kept as they are, they failed the item when its generation was cached, and no run file
    or page could hold them."""
    return re.sub("[\ud800-\udfff]", "\ufffd", text)


@dataclass
class OpenAIModel:
    """An API chat model (a :class:`lm.LanguageModel` without internals: no weights, no tokenizer)."""

    spec: ModelSpec
    client: Any  # openai.OpenAI
    base_url: str
    max_retries: int
    timeout: float
    device: str = "api"
    dtype: str = "n/a"
    revision: str = ""  # the requested model name (and server): stable, so cache keys do not change mid-run
    info: dict[str, Any] = field(default_factory=dict)
    usage_total: dict[str, int] = field(default_factory=lambda: {"prompt_tokens": 0, "completion_tokens": 0, "calls": 0})
    usage_for_last_call: dict[str, Any] | None = None
    consecutive_failures: int = 0
    #: Every reply as the server sent it, before any cut: a change of the stop rule or of the code
    #: extraction re-cuts kept replies instead of asking (and paying) again. None: not kept.
    replies: ResultCache | None = None

    def __post_init__(self) -> None:
        # Two servers may serve different models under one name, so the server is part of the identity;
        # OpenAI's own keeps the bare name, so its paid generations cached before stay valid.
        self.revision = self.revision or (self.spec.source if self.base_url == DEFAULT_BASE_URL
                                          else f"{self.spec.source}@{self.base_url}")

    @property
    def identity(self) -> dict[str, str]:
        """Same keys as a local model's. The model the server actually served (e.g. gpt-4-0613) can
        change between calls, so it is recorded per result (``usage["served_model"]``), not here."""
        return {"model": self.spec.name, "source": self.spec.source, "revision": self.revision, "dtype": self.dtype}

    @property
    def unavailable(self) -> bool:
        """Given up after :data:`FAILURE_LIMIT` consecutive failed requests."""
        return self.consecutive_failures >= FAILURE_LIMIT

    @property
    def has_internals(self) -> bool:
        return False

    def budget_rule(self, fmt: str) -> str:
        return f"(characters of prompt + canonical solution) / {CHARS_PER_TOKEN}, rounded up, + {BUDGET_SLACK}"

    def generate(self, task: Task, fmt: str, max_new_tokens: int | None = None) -> tuple[Prompt, Generation]:
        """One greedy reply for ``task``, its fenced code turned into a continuation of the prompt."""
        if fmt != "chat":
            raise AttnalignError(f"API models support only chat format, not {fmt!r}: use --attn-prompt-format=chat")
        text = chat_user_message(task.prompt)
        offset = text.find(task.prompt)
        a, b = task.description
        prompt = Prompt(text, "chat", offset, (offset + a, offset + b))
        budget = max_new_tokens or api_budget(task.prompt, task)
        raw = self.complete_task_prompt(task.prompt, task, budget)
        gen = Generation(task.task_id, "chat", budget, STOP_RULE, raw, completion_of(task, "chat", raw), (), (),
                         usage=self.usage_for_last_call)
        return prompt, gen

    def regenerate(self, task: Task, generation: Generation, task_prompts: Sequence[str], **_speed: Any) -> list[str]:
        """One request per prompt (the speed options concern token verification: there are no tokens here)."""
        return [completion_of(task, generation.prompt_format, self.complete_task_prompt(p, task, generation.max_new_tokens))
                for p in task_prompts]

    def complete_task_prompt(self, task_prompt: str, task: Task, max_new_tokens: int | None = None) -> str:
        """The raw reply for a (possibly perturbed) task prompt: what perturbation methods regenerate."""
        budget = max_new_tokens or api_budget(task_prompt, task)
        return self._chat(chat_user_message(task_prompt), budget)

    def _chat(self, user: str, max_tokens: int) -> str:
        """One chat completion (a kept reply to the same request, else the server's); usage and the served
        model name are recorded, API errors made one line."""
        key = {**self.identity, "user": user, "max_tokens": max_tokens, "temperature": 0, "seed": 0}
        kept = self.replies.get("api-reply", key, _decode_reply) if self.replies is not None else None
        if kept is not None:
            self.usage_for_last_call = kept[1]
            return kept[0]
        text = self._ask(user, max_tokens)
        if self.replies is not None:
            self.replies.put("api-reply", key, {"text": text, "usage": self.usage_for_last_call})
        return text

    def _ask(self, user: str, max_tokens: int) -> str:
        """One request to the server (the arguments :meth:`_chat` keys its kept replies by)."""
        import openai

        if self.unavailable:
            raise ModelUnavailable(f"{self.base_url} failed {FAILURE_LIMIT} requests in a row: not asked again in this run")
        try:
            resp = self.client.chat.completions.create(
                model=self.spec.source,
                messages=[{"role": "user", "content": user}],
                temperature=0,
                seed=0,
                max_tokens=max_tokens,  # not max_completion_tokens: compatible servers know this one
                n=1,
            )
        except openai.OpenAIError as exc:
            self.consecutive_failures += 1
            error = self._error(exc)
            if self.unavailable:
                error = ModelUnavailable(f"{error} ({FAILURE_LIMIT} failures in a row: the model's remaining items are not tried)")
            raise error from None
        self.consecutive_failures = 0
        if getattr(resp, "system_fingerprint", None):
            self.info["system_fingerprint"] = resp.system_fingerprint
        usage: dict[str, Any] = {"prompt_tokens": 0, "completion_tokens": 0}
        if resp.usage is not None:
            usage = {"prompt_tokens": int(resp.usage.prompt_tokens or 0), "completion_tokens": int(resp.usage.completion_tokens or 0)}
        usage["served_model"] = _unicode(resp.model or self.spec.source)
        self.usage_for_last_call = usage
        self.usage_total["prompt_tokens"] += usage["prompt_tokens"]
        self.usage_total["completion_tokens"] += usage["completion_tokens"]
        self.usage_total["calls"] += 1
        if not resp.choices:
            raise AttnalignError(f"{self.base_url} returned no choices for model {self.spec.source!r}: check the server")
        return _unicode(resp.choices[0].message.content or "")

    def _error(self, exc: Exception) -> AttnalignError:
        """Map an openai exception to an AttnalignError naming the fix."""
        import openai

        where = f"{self.base_url} (model {self.spec.source!r})"
        tries = f"after {self.max_retries} retries"
        detail = (str(getattr(exc, "message", "") or exc).splitlines() or [type(exc).__name__])[0][:160]
        if isinstance(exc, openai.AuthenticationError):
            return AttnalignError(f"{where} rejected the API key (401): set OPENAI_API_KEY to a valid key")
        if isinstance(exc, openai.PermissionDeniedError):
            return AttnalignError(f"{where}: no access (403, {detail}): use a key whose project may use this model")
        if isinstance(exc, openai.NotFoundError):
            return AttnalignError(
                f"{where}: not found (404, {detail}): set ATTNALIGN_OPENAI_MODEL or --attn-model=openai:MODEL to a model "
                "your key can use, and check OPENAI_BASE_URL"
            )
        if isinstance(exc, openai.RateLimitError):
            return AttnalignError(
                f"{where}: rate limited or out of quota (429) {tries}: wait and rerun, check the account's quota, "
                "or raise ATTNALIGN_OPENAI_MAX_RETRIES"
            )
        if isinstance(exc, openai.APITimeoutError):
            return AttnalignError(f"{where}: no reply within {self.timeout:g} s {tries}: raise ATTNALIGN_OPENAI_TIMEOUT or rerun later")
        if isinstance(exc, openai.APIConnectionError):
            return AttnalignError(f"cannot connect to {self.base_url} {tries}: check OPENAI_BASE_URL and that the server is up")
        if isinstance(exc, openai.InternalServerError):
            return AttnalignError(f"{where}: server error ({getattr(exc, 'status_code', '5xx')}) {tries}: rerun later")
        if isinstance(exc, openai.BadRequestError):
            return AttnalignError(f"{where} refused the request (400, {detail}): use a chat model that accepts temperature=0")
        if isinstance(exc, openai.APIStatusError):
            return AttnalignError(f"{where}: HTTP {exc.status_code} ({detail}): check OPENAI_BASE_URL and the model name")
        return AttnalignError(f"{where}: {detail}: check the OpenAI settings (OPENAI_API_KEY, OPENAI_BASE_URL)")


def load_openai_model(
    spec: ModelSpec,
    *,
    model: str | None = None,
    api_key: str | None = None,
    base_url: str | None = None,
    max_retries: int | None = None,
    timeout: float | None = None,
    cache_dir: Path | None = None,
) -> OpenAIModel:
    """Configure the client (no request is made); a missing key fails here, at start-up. Replies are
    kept in ``cache_dir``'s results (:attr:`OpenAIModel.replies`) where one is given."""
    try:
        import openai
    except ImportError:
        raise AttnalignError("API models need the openai package: run `pip install openai`") from None
    if model is None and spec.name == "gpt4":
        model = os.environ.get("ATTNALIGN_OPENAI_MODEL") or None  # read at load time, not import time
    if model and model != spec.source:
        spec = replace(spec, source=model)
    base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
    api_key = api_key or os.environ.get("OPENAI_API_KEY")
    if not api_key:
        if not _is_loopback(base_url):
            raise AttnalignError(
                f"no API key for {base_url}: set OPENAI_API_KEY (or OPENAI_BASE_URL to a local OpenAI-compatible server)"
            )
        api_key = LOCAL_PLACEHOLDER_KEY
    retries = int(max_retries if max_retries is not None else _env_number("ATTNALIGN_OPENAI_MAX_RETRIES", DEFAULT_MAX_RETRIES, int))
    secs = float(timeout if timeout is not None else _env_number("ATTNALIGN_OPENAI_TIMEOUT", DEFAULT_TIMEOUT, float))
    client = openai.OpenAI(api_key=api_key, base_url=base_url, max_retries=retries, timeout=secs)
    lm = OpenAIModel(spec, client, base_url, retries, secs,
                     replies=ResultCache(cache_dir / "results") if cache_dir is not None else None)
    lm.info.update({"base_url": base_url, "max_retries": retries, "timeout_s": secs})
    return lm


def _decode_reply(value: Any) -> tuple[str, dict[str, Any]]:
    """A kept reply and its call's usage, shape-checked (see :class:`cache.ResultCache`)."""
    from .jsonshape import check

    value = check(value, dict[str, Any], "reply entry")
    return check(value["text"], str, "reply"), check(value["usage"], dict[str, Any], "usage")
