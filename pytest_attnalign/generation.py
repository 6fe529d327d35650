"""Prompting and greedy generation as the study did it, with everything that explains a score recorded.

Rules (recorded with every :class:`Generation`):
- ``completion`` format: the task's prompt as given; the model continues it.
- ``chat`` format: the task's prompt inside a user message of the model's chat template; the code is
  taken from the first fenced block of the reply (or the whole reply when it has no fence).
- Budget: tokens of the canonical solution + 20 (the study's rule). In chat format the reply restates
  the signature and often the docstring, so the budget there is tokens of prompt + canonical + 20.
- Stop rule: decoding stops at end-of-sequence, or once the generated function has ended (a new
  top-level statement that is not part of it), or after the closing fence in chat format; the
  completion is then cut at the end of the function.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import AttnalignError
from .tasks import Task

PROMPT_FORMATS = ("completion", "chat")
CHAT_INSTRUCTION = "Complete the following Python function. Reply with the whole function in one ```python code block.\n\n"
BUDGET_SLACK = 20
STOP_RULE = "eos | end of the first top-level function (next top-level statement) | closing ``` fence (chat)"

_FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|\Z)", re.S)
# Top-level lines that continue a module after a function without ending "the generated function".
_CONTINUES = ("def ", "async def ", "@", "import ", "from ", "class ")


@dataclass(frozen=True)
class Prompt:
    """The exact text given to the model and where the task lies inside it."""

    text: str
    format: str
    task_offset: int  # where task.prompt starts inside ``text``
    description: tuple[int, int]  # scored region inside ``text``


@dataclass(frozen=True)
class Generation:
    """One greedy generation; ``completion`` continues ``task.prompt`` and is what gets executed."""

    task_id: str
    prompt_format: str
    max_new_tokens: int
    stop_rule: str
    raw: str  # decoded text of ``generated_ids``
    completion: str
    generated_ids: tuple[int, ...]  # tokens kept after the cut (what attribution explains)
    prompt_ids: tuple[int, ...]
    usage: dict[str, int] | None = field(default=None, compare=False)  # API models' token counts (keeps hashing)
    raw_ids: tuple[int, ...] = field(default=(), compare=False)  # every generated token, before the cut (regeneration replays them)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("prompt_ids")
        d.pop("raw_ids")
        if d["usage"] is None:
            d.pop("usage")  # local models: records stay as they were
        d["generated_ids"] = list(self.generated_ids)
        return d


def chat_user_message(task_prompt: str) -> str:
    """The user message of chat format, one wording for local chat templates and API models."""
    return CHAT_INSTRUCTION + "```python\n" + task_prompt + "```"


def build_prompt(task: Task, tokenizer: Any, prompt_format: str) -> Prompt:
    """Wrap the task for the model; the scored region is shifted with it."""
    if prompt_format == "completion":
        return Prompt(task.prompt, "completion", 0, task.description)
    if prompt_format != "chat":
        raise AttnalignError(f"unknown prompt format {prompt_format!r}: use completion or chat")
    if not getattr(tokenizer, "chat_template", None):
        raise AttnalignError("this model has no chat template: use --attn-prompt-format=completion")
    user = chat_user_message(task.prompt)
    text = tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)
    offset = text.find(task.prompt)
    if offset == -1:
        raise AttnalignError("the chat template altered the task prompt: use --attn-prompt-format=completion")
    a, b = task.description
    return Prompt(text, "chat", offset, (offset + a, offset + b))


def token_budget(task: Task, tokenizer: Any, prompt_format: str, slack: int = BUDGET_SLACK) -> int:
    """The study's budget: canonical-solution tokens + 20 (plus the restated prompt in chat format)."""
    target = task.canonical_solution if prompt_format == "completion" else task.prompt + task.canonical_solution
    return len(tokenizer(target, add_special_tokens=False)["input_ids"]) + slack


def cut_function(text: str, starts_inside: bool) -> str:
    """Cut code at the end of its first top-level function.

    ``starts_inside`` is true when ``text`` continues a function whose ``def`` is in the prompt
    (HumanEval completion); then the first top-level line of any kind ends it. Otherwise imports and
    decorators may precede the ``def``, and helper functions may follow it.
    """
    lines = text.split("\n")
    seen_def = starts_inside
    for i, line in enumerate(lines):
        if not line.strip() or line[0] in " \t)]}":
            continue
        if i == 0 and starts_inside:
            continue  # the rest of the prompt's last line
        if starts_inside:
            return "\n".join(lines[:i]).rstrip() + "\n"
        if line.startswith(("def ", "async def ")):
            seen_def = True
            continue
        if line.startswith(_CONTINUES) or line.startswith("#") and not seen_def:
            continue
        if seen_def:
            return "\n".join(lines[:i]).rstrip() + "\n"
    return text


def extract_code(reply: str) -> str:
    """The first fenced code block of a chat reply, or the whole reply without a fence."""
    m = _FENCE.search(reply)
    return m.group(1) if m else reply


def completion_from_reply(task: Task, reply: str) -> str:
    """Turn a chat reply into a continuation of ``task.prompt`` (what :meth:`Task.program` runs).

    A reply that restates the function defines it again after the prompt's docstring-only stub,
    which Python accepts and which overrides the stub; a bare body continues the prompt directly.
    """
    code = extract_code(reply)
    if re.search(rf"^\s*(async\s+)?def\s+{re.escape(task.entry_point)}\s*\(", code, re.M):
        return "\n" + cut_function(code.strip("\n") + "\n", starts_inside=False)
    if task.benchmark == "humaneval" and code.startswith((" ", "\t")):
        return cut_function(code, starts_inside=True)
    return "\n" + cut_function(code.strip("\n") + "\n", starts_inside=False)


def completion_from_text(task: Task, prompt_format: str, raw: str) -> str:
    """Apply the stop rule to decoded model output."""
    if prompt_format == "chat":
        return completion_from_reply(task, raw)
    return cut_function(raw, starts_inside=task.benchmark == "humaneval")


def has_ended(task: Task, prompt_format: str, raw: str) -> bool:
    """Whether decoding may stop: the function (or the fenced block) is complete."""
    if prompt_format == "chat":
        return bool(re.search(r"```[^\n]*\n.*?```", raw, re.S))
    cut = cut_function(raw, starts_inside=task.benchmark == "humaneval")
    return len(cut) < len(raw) and raw[len(cut.rstrip("\n")) :].strip() != ""


def kept_token_count(tokenizer: Any, ids: list[int], prompt_format: str, completion: str, raw: str) -> int:
    """How many generated tokens produced the kept text (the tokens attribution explains)."""
    if not completion.strip():
        return 0  # no code: nothing for the coding methods to explain
    if prompt_format == "chat":
        return len(ids)  # the whole reply up to the fence's end is what the model "coded"
    keep = len(completion.rstrip("\n"))
    n = 0
    for n in range(1, len(ids) + 1):
        if len(tokenizer.decode(ids[:n], skip_special_tokens=True)) >= keep:
            return n
    return n


def generate(lm: Any, task: Task, prompt_format: str | None = None, max_new_tokens: int | None = None) -> tuple[Prompt, Generation]:
    """Greedy generation for one task, cut by the stop rule."""
    fmt = prompt_format or lm.spec.prompt_format
    if lm.spec.kind == "openai":
        return lm.generate(task, fmt, max_new_tokens)
    tok = lm.tokenizer
    prompt = build_prompt(task, tok, fmt)
    budget = max_new_tokens or token_budget(task, tok, fmt)
    prompt_ids = tok(prompt.text, add_special_tokens=False, return_tensors="pt")["input_ids"].to(lm.device)
    ids = greedy_decode(lm.model, prompt_ids, budget, tok.eos_token_id, lambda new: has_ended(task, fmt, tok.decode(new, skip_special_tokens=True)))
    raw = tok.decode(ids, skip_special_tokens=True)
    completion = completion_from_text(task, fmt, raw)
    if not completion.strip():
        completion = ""
    kept = ids[: kept_token_count(tok, ids, fmt, completion, raw)]
    return prompt, Generation(task.task_id, fmt, budget, STOP_RULE, raw, completion, tuple(kept), tuple(prompt_ids[0].tolist()),
                              raw_ids=tuple(ids))


def greedy_decode(model: Any, prompt_ids: Any, budget: int, eos_id: int | None, ended: Any, check_every: int = 4) -> list[int]:
    """Plain greedy decoding with a KV cache; ``ended(ids)`` is consulted every few tokens."""
    import torch

    from .forward import cache_of, step

    out: list[int] = []
    past = None
    inputs = prompt_ids
    with torch.no_grad():
        for i in range(budget):
            res = step(model, inputs, past)
            past = cache_of(res)
            nxt = int(res.logits[0, -1].argmax())
            if eos_id is not None and nxt == eos_id:
                break
            out.append(nxt)
            if (i + 1) % check_every == 0 and ended(out):
                break
            inputs = torch.tensor([[nxt]], device=prompt_ids.device)
    return out
