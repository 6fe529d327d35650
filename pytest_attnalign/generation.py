"""Prompting and greedy generation as the study did it, with everything that explains a score recorded.

Rules (recorded with every :class:`Generation`):
- ``completion`` format: the task's prompt as given; the model continues it.
- ``chat`` format: the task's prompt inside a user message of the model's chat template; the code is
  taken from the reply's fenced block that defines the function (:mod:`.code_cut`), or the whole
  reply when it has no fence (from its first line that begins code; a bare body after prose: from the
  body's first line).
- ``chat-prefill`` format: as ``chat``, and the assistant turn is prefilled with the fenced task
  prompt, so the model continues the code as a base model does (for instruct models that continue).
- Budget: tokens of the canonical solution + 20 (the study's rule). In chat format the reply restates
  the signature and often the docstring, so the budget there is tokens of prompt + canonical + 20.
- Stop rule: decoding stops at end-of-sequence, or once the generated function has ended (a new
  top-level statement; where the model writes the ``def``, one after the tested function's that is not
  a ``def``, ``class``, import or decorator, so helper functions stay), or after the closing fence in
  the chat formats; the completion is then cut there (:mod:`.code_cut`).
- Explained steps: the generated tokens of the function's BODY (:func:`body_span`), never a fence,
  prose, the restated ``def`` line or docstring, nor anything after the function. Step ``j``
  explains generated token ``y_j``, predicted at position ``P - 1 + j`` (``P`` prompt tokens).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from .benchmarks import get_benchmark
from .code_cut import (bare_body, before_fence, block_settled, chosen_block, cut_function, defines, extract_code,
                       find_def, function_ended, inside_statement)
from .errors import AttnalignError
from .tasks import Task

if TYPE_CHECKING:
    from .lm import LanguageModel

PROMPT_FORMATS = ("completion", "chat", "chat-prefill")
CHAT_FORMATS = ("chat", "chat-prefill")
CHAT_INSTRUCTION = "Complete the following Python function. Reply with the whole function in one ```python code block.\n\n"
PREFILL = "```python\n"
BUDGET_SLACK = 20
STOP_RULE = ("eos | end of the tested function (its first later top-level statement as Python reads it; where the "
             "model writes the def, one that is not a def, class, import or decorator: helper functions stay; a "
             "cut-off statement after it dropped) | closing ``` fence of the block that defines it (chat)")
#: Earlier wordings of one rule, read as its last wording: records and cached generations keep the text they
#: were made with, and a rewording must not make two runs of one rule look different (compare, merge). The rule
#: before 2026-12-03 (line-based, first fence) is another rule: its records keep its own text.
_STOP_RULE_WORDINGS = {"eos | end of the first top-level function (next top-level statement) | closing ``` fence (chat)":
                       "eos | end of the generated function (its first later top-level line; where the model writes the def, "
                       "one that is not a def, class, import or decorator: helper functions stay) | closing ``` fence (chat)"}


def stop_rule_text(text: str) -> str:
    """``text`` in its rule's last wording when it is an earlier wording of that rule."""
    return _STOP_RULE_WORDINGS.get(text, text)


#: Part of a cached generation's key: bump when a rule that a generation entry embodies changes (stop rule,
#: body span, prompt encoding), so that old entries are regenerated. Attribution entries are keyed by the
#: prompt and generated ids and the explained steps themselves, so those of unchanged generations stay
#: valid; methods that regenerate (``Method.decodes``) key this version too.
GENERATION_RULES = 8  # 2: a body on the def line, a comment after the signature; 3: code after a def-line docstring;
# 4: a column-0 comment does not end a function, a code block tagged python3 (or after a shell block) is the code;
# 5: the tested function's end, statements read as Python does, a cut-off trailing statement dropped (2026-12-03);
# 6: a chat block indented under a list item read as Markdown reads it; a function written outside the blocks;
# 7: prose before a chat reply's bare body (no block, no def) is no code, and the bare body is explained;
# 8: a completion prompt keeps the special tokens its tokenizer adds (InCoder's <|endoftext|>), the budget counts them;
#    the code is decoded without transformers' clean-up of spaces

_DOCSTRING = re.compile(r"""^\s*[rRuU]?("{3}|'{3})""")


@dataclass(frozen=True)
class Prompt:
    """The exact text given to the model and where the task lies inside it."""

    text: str
    format: str
    task_offset: int  # where the scored copy of task.prompt starts inside ``text``
    description: tuple[int, int]  # scored region inside ``text``


@dataclass(frozen=True)
class Generation:
    """One greedy generation; ``completion`` continues ``task.prompt`` and is what gets executed."""

    task_id: str
    prompt_format: str
    max_new_tokens: int
    stop_rule: str
    raw: str  # decoded text of every generated token
    completion: str
    generated_ids: tuple[int, ...]  # generated tokens up to the last explained one
    prompt_ids: tuple[int, ...]
    usage: dict[str, int] | None = field(default=None, compare=False)  # API models' token counts (keeps hashing)
    raw_ids: tuple[int, ...] = field(default=(), compare=False)  # every generated token, before the cut (regeneration replays them)
    #: steps ``[first, end)`` of ``generated_ids`` that attribution explains: the function body's tokens
    explained: tuple[int, int] = (0, 0)
    explained_tokens: tuple[str, ...] = ()  # the text of each explained token, for the record

    @property
    def explained_steps(self) -> range:
        return range(*self.explained)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("prompt_ids")
        d.pop("raw_ids")
        if d["usage"] is None:
            d.pop("usage")  # local models: records stay as they were
        for name in ("generated_ids", "explained", "explained_tokens"):
            d[name] = list(d[name])
        return d


def chat_user_message(task_prompt: str) -> str:
    """The user message of chat format, one wording for local chat templates and API models."""
    return CHAT_INSTRUCTION + "```python\n" + task_prompt + "```"


def build_prompt(task: Task, tokenizer: Any, prompt_format: str) -> Prompt:
    """Wrap the task for the model; the scored region is shifted with it."""
    if prompt_format == "completion":
        return Prompt(task.prompt, "completion", 0, task.description)
    if prompt_format not in CHAT_FORMATS:
        raise AttnalignError(f"unknown prompt format {prompt_format!r}: use {', '.join(PROMPT_FORMATS)}")
    if not getattr(tokenizer, "chat_template", None):
        raise AttnalignError("this model has no chat template: use --attn-prompt-format=completion "
                             "(attnalign attribute: --prompt-format completion)")
    user = chat_user_message(task.prompt)
    text = tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)
    offset = text.find(task.prompt)
    if offset == -1:
        raise AttnalignError("the chat template altered the task prompt: use --attn-prompt-format=completion "
                             "(attnalign attribute: --prompt-format completion)")
    if prompt_format == "chat-prefill":
        # The task appears twice; the scored copy is the prefilled one, which the model continues
        # exactly as a base model continues the prompt in the study's completion protocol.
        offset = len(text) + len(PREFILL)
        text = text + PREFILL + task.prompt
    a, b = task.description
    return Prompt(text, prompt_format, offset, (offset + a, offset + b))


def encode(tokenizer: Any, text: str, prompt_format: str, **kwargs: Any) -> Any:
    """``tokenizer(text)`` with the special tokens the format calls for.

    Completion: the tokenizer's own, as the study's ``tokenizer(text)`` calls added them (InCoder's
    prepends ``<|endoftext|>``, which "marks the start of a document to our model", its README says;
    GPT-2-style tokenizers add none). Chat formats: none, the rendered template holds the model's.
    """
    return tokenizer(text, add_special_tokens=prompt_format == "completion", **kwargs)


def decode_text(tokenizer: Any, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
    """The text of ``ids`` exactly: never transformers' ``clean_up_tokenization_spaces``, which deletes the
    space before ``.``, ``,``, ``!``, ``?`` and ``'s`` (transformers 5 skips it for byte-level BPE
    only; a tokenizer config may turn it on for others)."""
    return tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False)


def token_budget(task: Task, tokenizer: Any, prompt_format: str, slack: int = BUDGET_SLACK) -> int:
    """The study's budget: canonical-solution tokens + 20 (plus the restated prompt in chat format),
    counted by :func:`encode` (the study's count included InCoder's prepended token too)."""
    restates = prompt_format == "chat"  # a chat reply restates the prompt; completion and prefill continue it
    target = task.prompt + task.canonical_solution if restates else task.canonical_solution
    return len(encode(tokenizer, target, prompt_format)["input_ids"]) + slack


def token_budget_rule(prompt_format: str) -> str:
    """:func:`token_budget`'s rule in words."""
    return "prompt + canonical solution + 20" if prompt_format == "chat" else "canonical solution + 20"


def _continues(task: Task) -> bool:
    """Whether the task's completion-mode prompt ends inside its function (HumanEval), not before it."""
    return get_benchmark(task.benchmark).continues_function


def completion_from_reply(task: Task, reply: str) -> str:
    """Turn a chat reply into a continuation of ``task.prompt`` (what :meth:`Task.program` runs).

    A reply that restates the function defines it again after the prompt's docstring-only stub,
    which Python accepts and which overrides the stub; a bare body continues the prompt directly.
    """
    code = extract_code(reply, task.entry_point, task.prompt if _continues(task) else None)
    if _continues(task) and not defines(code, task.entry_point) and code.lstrip("\r\n").startswith((" ", "\t")):
        return cut_function(code, starts_inside=True)
    return "\n" + cut_function(code.strip("\n") + "\n", starts_inside=False, entry_point=task.entry_point)


def completion_from_text(task: Task, prompt_format: str, raw: str) -> str:
    """Apply the stop rule to decoded model output."""
    if prompt_format == "chat":
        return completion_from_reply(task, raw)
    if prompt_format == "chat-prefill":
        raw = before_fence(raw)
    return cut_function(raw, starts_inside=_continues(task), entry_point=task.entry_point)


def completion_of(task: Task, prompt_format: str, raw: str) -> str:
    """The completion the study executes: the stop rule applied, and ``""`` when no code is left."""
    completion = completion_from_text(task, prompt_format, raw)
    return completion if completion.strip() else ""


def has_ended(task: Task, prompt_format: str, raw: str) -> bool:
    """Whether decoding may stop: the function (or the fenced block) is complete."""
    if prompt_format == "chat":
        return block_settled(raw, task.entry_point)
    if prompt_format == "chat-prefill" and before_fence(raw) != raw:
        return True
    return function_ended(raw, _continues(task), task.entry_point)


def _function_body(code: str, name: str) -> tuple[int, int]:
    """Characters of the body of function ``name`` (else the first function) in ``code``.

    The body follows the ``def`` line(s) (a signature may span lines) and the docstring, and ends
    with the function's last non-blank line (a comment at or left of the ``def``'s indent is no line
    of it unless code of the body follows). Code without any ``def`` is all body.
    """
    m = find_def(code, name) or re.search(r"^[ \t]*(async\s+)?def\s+\w+\s*\(", code, re.M)
    if m is None:
        lead = len(code) - len(code.lstrip())
        return lead, lead + len(cut_function(code[lead:], starts_inside=False).rstrip())
    indent = len(m.group(0)) - len(m.group(0).lstrip())
    after = _signature_end(code, m.start() + indent)
    if after is None:  # the signature never closes (a cut-off generation): no body
        return len(code), len(code)
    if isinstance(after, tuple):  # ``def f(x): return x``: the body is the rest of the def line
        return after
    lines = code[after:].split("\n")
    pos, i = after, 0

    def skip() -> None:  # consume line i
        nonlocal pos, i
        pos += len(lines[i]) + 1
        i += 1

    while i < len(lines) and not lines[i].strip():
        skip()
    doc = _DOCSTRING.match(lines[i]) if i < len(lines) else None
    if doc:
        rest = lines[i][doc.end():]
        while doc.group(1) not in rest and i < len(lines) - 1:
            skip()
            rest = lines[i]
        skip()
    start = end = min(pos, len(code))
    for line in lines[i:]:
        outdented = line.strip() and len(line) - len(line.lstrip()) <= indent
        if outdented and line.lstrip()[0] == "#":  # no statement: the body goes on if indented code follows
            pos += len(line) + 1
            continue
        if outdented and inside_statement(code[:pos]):  # a line of a string or brackets opened in the body
            outdented = False
        if outdented and line.lstrip()[0] not in ")]}":
            break
        if line.strip():
            end = min(pos + len(line.rstrip()), len(code))
        pos += len(line) + 1
    return start, end


def _signature_end(code: str, at: int) -> int | tuple[int, int] | None:
    """Where the body of the ``def`` at ``code[at:]`` begins: the start of the line after the
    signature's ``:``, or the body's span when it follows the ``:`` on the same line; None when the
    signature does not close.

    Python's own tokenizer reads the signature, so a signature over several lines, a ``:`` inside
    brackets (annotations, defaults), strings and a comment after the ``:`` are read as Python does:
    a ``def`` line's trailing comment once sent the search for a line ending in ``:`` to the body's
    first ``if ...:``, and a one-line function read as having no body at all.
    """
    import io
    import tokenize

    starts = [at]  # offset of each line of code[at:], for tokenize's (row, column) positions
    starts += [at + k + 1 for k, c in enumerate(code[at:]) if c == "\n"]

    def offset(position: tuple[int, int]) -> int:
        return starts[position[0] - 1] + position[1]

    depth, colon, body, docstring, after_doc = 0, False, None, False, False
    try:
        for tok in tokenize.generate_tokens(io.StringIO(code[at:]).readline):
            if not colon:
                if tok.type == tokenize.OP and tok.string in "([{":
                    depth += 1
                elif tok.type == tokenize.OP and tok.string in ")]}":
                    depth -= 1
                elif tok.type == tokenize.OP and tok.string == ":" and depth == 0:
                    colon = True
                elif tok.type == tokenize.ENDMARKER:
                    return None
            elif body is None:
                if tok.type in (tokenize.NEWLINE, tokenize.NL, tokenize.COMMENT, tokenize.ENDMARKER):
                    line = tok.start[0]  # the body starts on the next line
                    return starts[line] if line < len(starts) else len(code)
                body, docstring = [offset(tok.start), offset(tok.end)], tok.type == tokenize.STRING
            elif tok.type in (tokenize.NEWLINE, tokenize.ENDMARKER):
                break
            elif tok.type in (tokenize.COMMENT, tokenize.NL):
                continue
            elif docstring and tok.type == tokenize.OP and tok.string == ";":
                after_doc = True  # ``def f(): """doc"""; return 1``: the docstring is no body
            elif after_doc:
                body, docstring, after_doc = [offset(tok.start), offset(tok.end)], False, False
            else:  # ``"a" "b"`` is still a docstring; ``"a".upper()`` is code
                body[1], docstring = offset(tok.end), docstring and tok.type == tokenize.STRING
    except (tokenize.TokenError, SyntaxError):  # code cut off inside a bracket or a string
        pass
    if body is None:
        return None
    return (body[1], body[1]) if docstring else (body[0], body[1])  # ``def f(): """doc"""`` has no body


def body_span(task: Task, prompt_format: str, raw: str) -> tuple[int, int]:
    """Characters of ``raw`` (the decoded generated text) that are the generated function's body.

    HumanEval in completion and prefill formats continues the prompt's function, so the body starts
    at the first generated character. A restated or newly written function (chat replies, MBPP)
    has its body after its ``def`` line(s) and docstring. The body ends with the function's last line.
    A chat reply with neither a code block, a ``def`` nor a bare body (:func:`code_cut.bare_body`, the
    prose before it left out) has no body; a block's code is read as Markdown reads it
    (:attr:`code_cut.Block.text`) and its span mapped back to ``raw``.
    """
    if prompt_format == "chat":
        block = chosen_block(raw, task.entry_point)
        bare = bare_body(raw, task.prompt) if block is None and _continues(task) else None
        if block is None and bare is None and not re.search(r"^\s*(async\s+)?def\s", raw, re.M):
            return 0, 0  # a reply with neither a code block, a def nor a bare body is prose: no body
        if block is not None:
            code, place = block.text, block.reply_offset
        else:
            start = bare or 0
            code, place = raw[start:], lambda at: start + at
        continues = (_continues(task) and not defines(code, task.entry_point)
                     and code.lstrip("\r\n").startswith((" ", "\t")))
    else:
        code, place = before_fence(raw) if prompt_format == "chat-prefill" else raw, _same
        continues = _continues(task)
    if continues:
        return place(0), place(len(cut_function(code, starts_inside=True).rstrip()))
    a, b = _function_body(code, task.entry_point)
    return place(a), place(b)


def _same(at: int) -> int:
    return at


def decoded_ends(tokenizer: Any, ids: Sequence[int]) -> Iterator[int]:
    """Where each token's text ends in the decoded text of ``ids``: token ``n`` spans characters
    ``[end(n-1), end(n))``. Decoding prefixes (not single tokens) keeps multi-token characters and
    merged spaces right; ``max`` keeps the ends monotone when a prefix decodes to a replacement char."""
    prev = 0
    for n in range(1, len(ids) + 1):
        prev = max(prev, len(decode_text(tokenizer, ids[:n])))
        yield prev


def explained_range(tokenizer: Any, ids: list[int], span: tuple[int, int]) -> tuple[int, int]:
    """Steps ``[first, end)``: the generated tokens whose decoded text overlaps characters ``span``."""
    a, b = span
    if a >= b:
        return 0, 0
    first, prev = None, 0
    for n, length in enumerate(decoded_ends(tokenizer, ids), start=1):
        if first is None and length > a and length > prev:
            first = n - 1
        if length >= b:
            return (first if first is not None else n - 1), n
        prev = length
    return (first, len(ids)) if first is not None else (0, 0)


def generate(lm: LanguageModel, task: Task, prompt_format: str | None = None, max_new_tokens: int | None = None) -> tuple[Prompt, Generation]:
    """Greedy generation for one task by any :class:`lm.LanguageModel`, in the model's default format
    unless ``prompt_format`` is given."""
    return lm.generate(task, prompt_format or lm.spec.prompt_format, max_new_tokens)


def greedy_decode(model: Any, prompt_ids: Any, budget: int, eos_id: int | None, ended: Any, check_every: int = 4) -> list[int]:
    """Plain greedy decoding with a KV cache; ``ended(ids)`` is consulted every few tokens.

    The loop and the stop rule are the decoding core's (:mod:`.decoding`), shared with regeneration.
    """
    from .decoding import StopRule, decode

    return decode(model, prompt_ids, StopRule(budget, eos_id, ended, check_every))
