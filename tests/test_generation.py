"""Which generated tokens are explained: the function body, in every prompt format.

A scripted model (it emits a fixed reply token by token through the real greedy loop) and a GPT-2
tokenizer with a small chat template stand in for an instruct model, so every case is exact.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from tiny_models import VOCAB, gpt2_tokenizer

from pytest_attnalign.generation import (PREFILL, body_span, build_prompt, completion_of, explained_range, extract_code,
                                        generate, has_ended, token_budget)
from pytest_attnalign.model_spec import ModelSpec
from pytest_attnalign.models import LoadedModel
from pytest_attnalign.tasks import get_task, load_tasks

HE0 = get_task("HumanEval/0")
MBPP = get_task("Mbpp/11")  # remove_Occ
BODY = ("    for i, a in enumerate(numbers):\n"
        "        for b in numbers[i + 1:]:\n"
        "            if abs(a - b) < threshold:\n"
        "                return True\n"
        "    return False")
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
RESTATED = ("Here is the function:\n```python\nfrom typing import List\n\n\n"
            "def has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
            '    """ Check if in given list of numbers, are any two numbers closer to each other than\n'
            '    given threshold.\n    """\n' + BODY + "\n```\nThis loops over pairs.")


class ScriptedLM(torch.nn.Module):
    """Emits ``script`` after any prompt, then eos; a KV 'cache' that is just the length read so far."""

    def __init__(self, script: list[int], eos: int) -> None:
        super().__init__()
        self.script, self.eos, self.prompt_len = script, eos, None
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids: torch.Tensor, past_key_values: Any = None, use_cache: bool = True,
                logits_to_keep: int = 0) -> Any:
        seen = (past_key_values or 0) + input_ids.shape[1]
        if past_key_values is None:
            self.prompt_len = input_ids.shape[1]
        i = seen - self.prompt_len
        logits = torch.zeros(1, 1, VOCAB)
        logits[0, -1, self.script[i] if i < len(self.script) else self.eos] = 1.0
        return SimpleNamespace(logits=logits, past_key_values=seen, get=lambda key, default=None: default)


def scripted(reply: str, fmt: str) -> LoadedModel:
    tok = gpt2_tokenizer()
    tok.chat_template = TEMPLATE
    ids = tok(reply, add_special_tokens=False)["input_ids"]
    return LoadedModel(ModelSpec("scripted", "scripted", prompt_format=fmt), ScriptedLM(ids, tok.eos_token_id).eval(),
                       tok, "cpu", "float32", "scripted")


def explained_text(reply: str, fmt: str, task: Any = HE0) -> str:
    lm = scripted(reply, fmt)
    _, gen = generate(lm, task, fmt, max_new_tokens=400)
    assert "".join(gen.explained_tokens) == lm.tokenizer.decode(gen.generated_ids[gen.explained[0]:])
    return "".join(gen.explained_tokens)


def test_restating_chat_reply_explains_only_the_body() -> None:
    """No fence, prose, import, restated def line or docstring; nothing after the function."""
    assert explained_text(RESTATED, "chat") == BODY


def test_prefilled_chat_explains_from_the_first_generated_token() -> None:
    reply = BODY + "\n```\nThis loops over pairs."
    lm = scripted(reply, "chat-prefill")
    prompt, gen = generate(lm, HE0, "chat-prefill", max_new_tokens=400)
    assert prompt.text.endswith(PREFILL + HE0.prompt)
    a, b = prompt.description
    assert prompt.text[a:b] == HE0.description_text and a > prompt.text.find(HE0.prompt)  # the prefilled copy
    assert gen.explained[0] == 0 and "".join(gen.explained_tokens) == BODY
    assert gen.completion.rstrip() == BODY
    assert gen.prompt_format == "chat-prefill"


def test_completion_format_body_ends_with_the_function() -> None:
    reply = BODY + "\n\n\ndef check(candidate):\n    assert candidate([1.0], 0.5) is False\n"
    assert explained_text(reply, "completion") == BODY


def test_mbpp_body_follows_the_written_def_line() -> None:
    body = "    s = s.replace(ch, '', 1)\n    return s[::-1].replace(ch, '', 1)[::-1]"
    reply = "def remove_Occ(s, ch):\n" + body + "\n\nprint(remove_Occ('hello', 'l'))\n"
    assert explained_text(reply, "completion", MBPP) == body
    chat = "```python\nimport re\ndef remove_Occ(s,\n               ch):\n    '''Remove it.'''\n" + body + "\n```"
    assert explained_text(chat, "chat", MBPP) == body


def test_bare_body_reply_and_one_line_docstring() -> None:
    assert explained_text("```python\n" + BODY + "\n```", "chat") == BODY
    one_line = ("```python\ndef has_close_elements(numbers, threshold):\n    \"\"\"Pairs closer than threshold.\"\"\"\n"
                + BODY + "\n```")
    assert explained_text(one_line, "chat") == BODY


@pytest.mark.parametrize(("function", "body"), [
    ("def remove_Occ(s, ch): return s.replace(ch, '')", "return s.replace(ch, '')"),  # the body on the def line
    ("def remove_Occ(s, ch):  # strip ch\n    if ch:\n        s = s.replace(ch, '')\n    return s",
     "    if ch:\n        s = s.replace(ch, '')\n    return s"),  # a comment after the signature's colon
    ("def remove_Occ(s: str = 'a:b',\n               ch: dict = {1: 2}) -> str:\n    return s",
     "    return s"),  # colons inside the signature's brackets and strings
])
def test_the_body_follows_the_signatures_colon(function: str, body: str) -> None:
    """A one-line function or a commented def line once read as "no code" (left out of the tables) or
    as a body starting at the first later line ending in a colon. (A token may carry the space before
    the body: explained steps are whole tokens.)"""
    assert explained_text(f"```python\n{function}\n```", "chat", MBPP).strip() == body.strip()


@pytest.mark.parametrize("docstring", ['"""Remove ch."""', '"Remove" " ch."', '"""Remove ch.""";'])
def test_a_docstring_on_the_def_line_is_no_body(docstring: str) -> None:
    a, b = body_span(MBPP, "chat", f'```python\ndef remove_Occ(s, ch): {docstring}\n```')
    assert a == b


@pytest.mark.parametrize(("line", "body"), [
    ('"""Remove ch."""; return s.replace(ch, "")', 'return s.replace(ch, "")'),  # the docstring, then code
    ('"Remove" " ch."; return s', "return s"),
    ('"Remove ch.".upper(); return s', '"Remove ch.".upper(); return s'),  # a string expression, not a docstring
])
def test_code_after_a_docstring_on_the_def_line_is_the_body(line: str, body: str) -> None:
    """The docstring statement before a ``;`` was counted in the body (explained and scored as code)."""
    assert explained_text(f"```python\ndef remove_Occ(s, ch): {line}\n```", "chat", MBPP).strip() == body


COMMENTED = BODY.replace("        for b", "# the pairs after a\n        for b")  # a column-0 comment inside


@pytest.mark.parametrize("fmt", ["completion", "chat", "chat-prefill"])
def test_a_column_0_comment_does_not_end_the_function(fmt: str) -> None:
    """Python reads indented lines after a column-0 comment as the same body: the comment ended the
    function (MBPP's own Mbpp/64 solution lost its body; a helper, a comment and the tested function
    lost the tested function). The next statement decides; comments before an ending one go with it."""
    wrap = {"completion": lambda code: code, "chat": lambda code: f"```python\n{code}\n```\nDone.",
            "chat-prefill": lambda code: f"{code}\n```\nDone."}[fmt]
    signature = "def has_close_elements(numbers, threshold):\n" if fmt == "chat" else ""  # others continue the prompt
    assert explained_text(wrap(signature + COMMENTED + "\n\n# Test\nprint(1)"), fmt) == COMMENTED
    m64 = get_task("Mbpp/64")  # a column-0 comment, then the body indented by one space
    code = m64.canonical_solution
    lm = scripted(wrap(code), fmt)
    _, gen = generate(lm, m64, fmt, max_new_tokens=400)
    assert gen.completion.strip() == code.strip()
    assert "".join(gen.explained_tokens).rstrip().endswith("return subjectmarks")
    m2 = get_task("Mbpp/2")  # a helper, a comment, then the tested function
    helper = ("def _common(a, b):\n    return set(a) & set(b)\n\n# Solution\n"
              "def similar_elements(test_tup1, test_tup2):\n    return tuple(_common(test_tup1, test_tup2))")
    _, gen = generate(scripted(wrap(helper + "\n\n# Example\nprint(similar_elements((1,), (1,)))"), fmt), m2, fmt,
                      max_new_tokens=400)
    assert gen.completion.strip() == helper
    assert "".join(gen.explained_tokens).strip() == "return tuple(_common(test_tup1, test_tup2))"


def test_a_comment_the_output_ends_on_is_cut_and_does_not_stop_decoding() -> None:
    assert explained_text(COMMENTED + "\n# done", "completion") == COMMENTED
    assert not has_ended(HE0, "completion", COMMENTED + "\n\n# Test")  # the next statement may be the body's
    assert has_ended(HE0, "completion", COMMENTED + "\n\n# Test\nprint")
    assert completion_of(HE0, "completion", COMMENTED + "\n\n# Test\nprint(1)") == COMMENTED + "\n"


def test_a_line_that_may_become_a_def_does_not_stop_decoding() -> None:
    """The token after ``def`` carries the space: ``\ndef`` ended the function, so decoding stopped before
    every helper function that the rule keeps."""
    written = "def remove_Occ(s, ch):\n    return s\n\n"
    for partial in ("d", "def", "async", "i", "from", "@", "cl", "# a helper\nde"):
        assert not has_ended(MBPP, "completion", written + partial), partial
    for ending in ("print", "if", "x = 1", "assert", "# a test\nprint"):
        assert has_ended(MBPP, "completion", written + ending), ending


@pytest.mark.parametrize(("reply", "code"), [
    ("```python3\nx = 1\n```\nIt sets x.", "x = 1\n"),  # the closing fence was read as an opener: "It sets x."
    ("```Python\nx = 1\n```", "x = 1\n"),
    ("```\nx = 1\n```", "x = 1\n"),
    ("Install it:\n```bash\npip install numpy\n```\nThen:\n```python\nx = 1\n```", "x = 1\n"),
    ("```python\r\nx = 1\r\n```", "x = 1\r\n"),
    ("```bash\nls\n```\nNo Python here.", "ls\n"),  # no Python block: the first block
    ("```python\nx = 1\n", "x = 1\n"),  # unclosed (the budget ran out)
    ("```python\nx = '```'\n```", "x = '```'\n"),  # a fence inside a line closes nothing
    ("x = 1", "x = 1"),  # no fence: the whole reply
    ("1. The code:\n   ```python\n   x = 1\n   if x:\n       y = 2\n   ```", "x = 1\nif x:\n    y = 2\n"),  # a list item's block
    ("  ```python\n x = 1\n\n  ```", "x = 1\n\n"),  # up to the fence's indentation is removed
])
def test_the_code_is_the_first_python_block(reply: str, code: str) -> None:
    assert extract_code(reply) == code


def test_a_chat_reply_stops_at_the_block_that_defines_the_function() -> None:
    """Not at a shell block, an example's output or a usage example before it (the code was then the
    example, and decoding stopped before the function was written)."""
    function = "```python3\n" + RESTATED.split("```python\n")[1]
    closing = function.index("```\n", 10)
    for before in ("Install it:\n```bash\npip install numpy\n```\n", "It prints:\n```\nTrue\n```\n",
                   "Usage:\n```python\nprint(has_close_elements([1.0], 0.5))\n```\n"):
        assert not has_ended(HE0, "chat", before + "Then:")
        assert not has_ended(HE0, "chat", before + function[:closing])  # still open
        assert has_ended(HE0, "chat", before + function[:closing + 3])
        assert explained_text(before + function, "chat") == BODY


@pytest.mark.parametrize("tag", ["python title=a.py", "Python 3", "python3.10", "py", "PY3"])
def test_a_python_tag_may_carry_a_version_or_attributes(tag: str) -> None:
    reply = f"```{tag}\n" + RESTATED.split("```python\n")[1]
    assert has_ended(HE0, "chat", reply[:reply.index("```\n", 10) + 3])
    assert explained_text(reply, "chat") == BODY


def test_a_block_in_a_list_item_runs_as_markdown_reads_it() -> None:
    """Its lines carry the list item's indentation, which ran as an IndentationError (Pass@1 0 for a correct
    function); the explained body is the same tokens as in a block at column 0."""
    code = "def remove_Occ(s, ch):\n    s = s.replace(ch, '', 1)\n    return s[::-1].replace(ch, '', 1)[::-1]\n"
    reply = "Steps:\n\n1. Write it:\n   ```python\n" + "".join("   " + line for line in code.splitlines(True)) + "   ```\n2. Done."
    assert completion_of(MBPP, "chat", reply) == "\n" + code
    assert explained_text(reply, "chat", MBPP).split() == explained_text(f"```python\n{code}```", "chat", MBPP).split()


@pytest.mark.parametrize("reply", [
    "Here is the function:\n\n{code}\nIt removes every ch.",  # no block: the prose before the def was run
    "Import nothing; just:\n{code}",  # a prose line that begins with "Import" is no import
    "{code}\nUsage:\n```python\nprint(remove_Occ('hello', 'l'))\n```\n",  # the usage block was the code
    "```python\nimport os\nprint(remove_Occ('hello', 'l'))\n```\nwhere\n{code}",
])
def test_a_function_written_outside_the_blocks_is_the_code(reply: str) -> None:
    code = "def remove_Occ(s, ch):\n    return s.replace(ch, '')\n"
    reply = reply.format(code=code)
    assert completion_of(MBPP, "chat", reply) == "\n" + code
    assert explained_text(reply, "chat", MBPP) == "    return s.replace(ch, '')"


PROSE = "Here is the implementation:\n\n"
#: HumanEval/0's body as the study's chat reply wrote it: no def, no block
PAIRS = ("    for i, a in enumerate(numbers):\n        for j, b in enumerate(numbers):\n"
         "            if i != j and abs(a - b) < threshold:\n                return True\n    return False")


@pytest.mark.parametrize(("reply", "body"), [
    (PROSE + PAIRS + "\n", PAIRS),  # the prose ran as code: a SyntaxError, Pass@1 0 for a correct body
    (PROSE + PAIRS + "\n\nThis compares every pair; it is O(n^2).\n", PAIRS),  # a closing sentence is cut too
    ("Sure! The numbers are compared pairwise.\nSolution:\n\n## Code\n" + PAIRS, PAIRS),  # prose, a heading
    (PROSE + "    # every pair\n" + PAIRS, "    # every pair\n" + PAIRS),  # a body that begins with a comment
    (PROSE + '    """Pairs closer than\nthreshold."""\n' + PAIRS, '    """Pairs closer than\nthreshold."""\n' + PAIRS),
])
def test_prose_before_a_bare_body_is_no_code(reply: str, body: str) -> None:
    """A completion-style reply: prose, then the function's body alone. The body continues the prompt's
    function (it compiles there and is what runs), and it, not the prose, is explained."""
    completion = completion_of(HE0, "chat", reply)
    assert completion.rstrip() == body
    exec(compile(HE0.program(completion), "<program>", "exec"), {})  # HumanEval/0's own tests pass
    a, b = body_span(HE0, "chat", reply)
    assert reply[a:b] == body and a == reply.index(body)
    assert explained_text(reply, "chat") == body


def test_a_bare_body_alone_continues_the_prompt() -> None:
    """As before, appended to the prompt's signature; its body is now explained (it was "no code")."""
    for reply in (PAIRS, PAIRS + "\n", "\n" + PAIRS + "\n"):
        assert completion_of(HE0, "chat", reply).strip("\n") == PAIRS
        a, b = body_span(HE0, "chat", reply)
        assert reply[a:b] == PAIRS
    assert explained_text(PAIRS, "chat") == PAIRS


@pytest.mark.parametrize("reply", [
    "Sorry, I cannot help with that.",
    "Steps:\n  1. Compare each pair.\n  2. Return True if any are close.\n",  # an indented list is no body
    PROSE + "    for each pair, compare them\n",  # indented prose does not compile
])
def test_a_prose_reply_is_still_no_code(reply: str) -> None:
    assert body_span(HE0, "chat", reply) == (0, 0)
    assert completion_of(HE0, "chat", reply) == "\n" + reply.strip("\n") + "\n"  # run as it is, as before


@pytest.mark.parametrize("reply", [
    "for i, a in enumerate(numbers):\n    if a < threshold:\n        return True\n",  # the indented lines are its block
    "try:\n    return numbers[0] < threshold\nexcept IndexError:\n    return False\n",
    "result = False\n" + PAIRS,  # a statement
    "Sure\n" + PAIRS,  # one word Python reads as a statement
    "import math\n" + PAIRS,
])
def test_code_before_an_indented_line_is_never_dropped(reply: str) -> None:
    """Only prose goes: a line Python reads as a statement or a block's header keeps the reply as it was."""
    assert completion_of(HE0, "chat", reply).lstrip("\n").startswith(reply.split("\n")[0] + "\n")
    assert body_span(HE0, "chat", reply) == (0, 0)


def test_an_mbpp_reply_has_no_function_to_continue() -> None:
    """An MBPP prompt ends before the function: an indented body after prose is no completion there."""
    reply = PROSE + "    return s.replace(ch, '')\n"
    assert completion_of(MBPP, "chat", reply) == "\n" + reply.strip("\n") + "\n"
    assert body_span(MBPP, "chat", reply) == (0, 0)


def test_every_prefix_of_prose_and_a_bare_body_runs_the_body_or_the_reply_as_before() -> None:
    """While a reply is written, its code is either the reply as it stands (no body yet) or the body from its
    first line, never the prose with it; the explained span and the code agree."""
    reply = PROSE + PAIRS + "\n\nThis compares every pair.\n"
    body_at, found = len(PROSE), 0
    for k in range(len(reply) + 1):
        part = reply[:k]
        completion = completion_of(HE0, "chat", part)
        a, b = body_span(HE0, "chat", part)
        if a == b:
            assert completion == ("\n" + part.strip("\n") + "\n" if part.strip() else ""), k
            continue
        found += 1
        assert a == body_at and completion.rstrip() == part[a:b].rstrip(), k
        compile(HE0.prompt + completion, "<completion>", "exec")
    assert found and completion.rstrip() == PAIRS


def test_a_fence_inside_a_line_of_code_closes_nothing() -> None:
    body = "    fence = '```'\n    return s.replace(fence, '')"
    reply = "```python\ndef remove_Occ(s, ch):\n" + body + "\n```\nDone."
    assert not has_ended(MBPP, "chat", reply[:reply.index("'```'") + 5])
    assert explained_text(reply, "chat", MBPP) == body


@pytest.mark.parametrize("tail", [
    "\n\ndef test_remove_Occ():\n    assert remove_Occ(\"hello\",\"l\") == ",
    "\n\nimport unittest\n\nclass TestRemoveOcc(unittest.TestCase):\n    def test_1(self):\n        self.assertEqual(remove_Occ(",
    "\n\n@",
])
@pytest.mark.parametrize("fmt", ["completion", "chat", "chat-prefill"])
def test_a_statement_the_budget_cut_off_after_the_function_is_dropped(fmt: str, tail: str) -> None:
    """Helpers after the function stay; a test the model began and the budget cut (a SyntaxError) ran
    with it and failed a correct function."""
    code = "def remove_Occ(s, ch):\n    return s.replace(ch, '')"
    raw = {"completion": code + tail, "chat": "```python\n" + code + tail, "chat-prefill": code + tail}[fmt]
    completion = completion_of(MBPP, fmt, raw)
    compile(completion, "<completion>", "exec")  # what compiles stays (an `import unittest`)
    assert completion.strip().startswith(code) and "test" not in completion.lower().replace("unittest", "")
    helper = "\n\ndef helper(s):\n    return s"
    assert completion_of(MBPP, fmt, raw.replace(tail, helper + tail)).strip().startswith(code + helper)


def test_a_helper_and_an_assignment_before_the_function_stay() -> None:
    """The function is the tested one: a module constant between a helper and it cut the tested function off."""
    code = ("def _first(s, ch):\n    return s.replace(ch, '', 1)\n\n_MEMO = {}\n\n"
            "def remove_Occ(s, ch):\n    return _first(s, ch)")
    for fmt, raw in (("completion", code + "\n\nprint(1)"), ("chat", f"```python\n{code}\n```")):
        assert completion_of(MBPP, fmt, raw).strip() == code
        assert explained_text(raw, fmt, MBPP) == "    return _first(s, ch)"
    assert not has_ended(MBPP, "completion", code.split("def remove_Occ")[0] + "print")  # the function may follow


@pytest.mark.parametrize("body", [
    '    """Remove the first and last occurrence\nof ch from s."""\n    i = s.find(ch)\n    return s[:i] + s[i + 1:]',
    "    sql = '''\nSELECT 1\n'''\n    return s",
    "    x = [1,\n2]\n    return s",
])
def test_a_line_of_a_string_or_brackets_at_column_0_does_not_end_the_function(body: str) -> None:
    raw = "def remove_Occ(s, ch):\n" + body + "\n\nprint(1)"
    assert completion_of(MBPP, "completion", raw).strip() == raw[:raw.index("\n\nprint")]
    assert not has_ended(MBPP, "completion", raw[:raw.index("\n\nprint")])
    assert explained_text(raw, "completion", MBPP).endswith(body.rsplit("\n", 1)[1])


def test_stopping_early_never_changes_the_completion() -> None:
    """For outputs of many shapes, wherever decoding may stop (the first character prefix where has_ended
    holds), the prefix's completion and body are the whole output's."""
    bodies = ["    return s.replace(ch, '')\n", "    s = s.replace(ch, '', 1)\n# col0\n    return s\n",
              "    '''Doc\nat col 0.'''\n    return s  # t\n", "    x = [1,\n2]\n    return s\n"]
    tails = ["", "\n\n# Test\nprint(remove_Occ('hello', 'l'))\n", "\nif __name__ == '__main__':\n    print(1)\n",
             "\n\ndef helper(x):\n    return x\n", "\n\n# done\n", "\n\nclass T:\n    pass\n\nx = T()\n",
             "\n@decorate\ndef g():\n    pass\nprint(g())\n", "\ndef\n", "\n\ndef test_it():\n    assert remove_Occ("]
    heads = ["", "import re\n\n", "def _h(s):\n    return s\n\nLIMIT = 3\n# Solution\n"]
    cases = []
    for head, body, tail in ((h, b, t) for h in heads for b in bodies for t in tails):
        code = head + "def remove_Occ(s, ch):\n" + body + tail
        cases += [("completion", code), ("chat-prefill", code + "```\nDone."),
                  ("chat", "Here:\n```bash\nls\n```\n```python\n" + code + "```\nMore:\n```python\nprint(3)\n```\n"),
                  ("chat", "1. Code:\n  ```python\n" + code.replace("\n", "\n  ") + "```\n2. Done.\n")]
    cases += [(fmt, raw.replace("\n", "\r\n")) for fmt, raw in cases[::5]]
    for fmt, whole in cases:
        expected = completion_of(MBPP, fmt, whole).rstrip(), body_span(MBPP, fmt, whole)
        for k in range(1, len(whole)):
            if has_ended(MBPP, fmt, whole[:k]):
                assert (completion_of(MBPP, fmt, whole[:k]).rstrip(), body_span(MBPP, fmt, whole[:k])) == expected, \
                    (fmt, whole, k)
                break


def test_every_canonical_solution_survives_the_stop_rule() -> None:
    """Written out by a model in any format, the benchmark's own solution is cut nowhere (Mbpp/64 was)."""
    lost = []
    for task in load_tasks("all"):
        whole = task.prompt + task.canonical_solution if task.benchmark == "humaneval" else task.canonical_solution
        for fmt, raw in (("completion", task.canonical_solution), ("chat", f"```python\n{whole}\n```\n"),
                         ("chat-prefill", task.canonical_solution + "\n```")):
            if not completion_of(task, fmt, raw).rstrip().endswith(task.canonical_solution.rstrip()):
                lost.append((task.task_id, fmt))
    assert lost == []


def test_no_body_explains_nothing() -> None:
    lm = scripted("Sorry, I cannot help with that.", "chat")
    _, gen = generate(lm, HE0, "chat", max_new_tokens=50)
    assert gen.explained == (0, 0) and gen.explained_tokens == ()


def test_span_to_token_mapping_covers_partial_tokens() -> None:
    tok = gpt2_tokenizer()
    ids = tok("abc defgh ijk", add_special_tokens=False)["input_ids"]  # 'abc', ' def', 'gh', ' ij', 'k'
    text = tok.decode(ids)
    first, end = explained_range(tok, ids, (text.index("fg"), text.index("ij") + 1))
    assert tok.decode(ids[first:end]).startswith(" def") and tok.decode(ids[first:end]).strip().startswith("def")
    assert explained_range(tok, ids, (3, 3)) == (0, 0)
    assert body_span(HE0, "chat", "no code here") == (0, 0)
    assert body_span(HE0, "completion", "no code here") == (0, len("no code here"))


def test_prefill_budget_is_the_completion_rule() -> None:
    tok = gpt2_tokenizer()
    assert token_budget(HE0, tok, "chat-prefill") == token_budget(HE0, tok, "completion")
    assert token_budget(HE0, tok, "chat") > token_budget(HE0, tok, "completion")
    tok.chat_template = None
    with pytest.raises(Exception, match="no chat template"):
        build_prompt(HE0, tok, "chat-prefill")


def test_a_tiny_chat_model_runs_the_prefilled_format_end_to_end(tmp_path) -> None:
    """A real (random) Llama with a chat template: prefilled generation, and attribution units on the
    prefilled copy of the description."""
    from tiny_models import build_tiny

    from pytest_attnalign.methods import AttributionContext, get_method
    from pytest_attnalign.models import load_model

    lm = load_model(str(build_tiny("llama", tmp_path / "llama")), device="cpu", dtype="float32")
    lm.tokenizer.chat_template = TEMPLATE
    prompt, gen = generate(lm, HE0, "chat-prefill", max_new_tokens=8)
    assert gen.prompt_format == "chat-prefill" and prompt.text.endswith(PREFILL + HE0.prompt)
    first, end = gen.explained
    assert 0 <= first <= end <= len(gen.raw_ids) and gen.generated_ids == gen.raw_ids[:end]
    ctx = AttributionContext(lm=lm, task=HE0, prompt=prompt, generation=gen)
    tokens = ctx.description_tokens()
    assert tokens and min(i for _, _, i in tokens) > len(lm.tokenizer(prompt.text[: prompt.task_offset])["input_ids"]) - 2
    assert len(get_method("reading_last").attribute(ctx)) == len(tokens)


def test_an_earlier_rule_keeps_its_own_wording() -> None:
    """A rewording of one rule reads as its last wording (runs compare as one rule); the rule before
    2026-12-03 is another rule, and its records must not claim today's."""
    from pytest_attnalign.generation import STOP_RULE, stop_rule_text

    oldest = "eos | end of the first top-level function (next top-level statement) | closing ``` fence (chat)"
    assert stop_rule_text(oldest).startswith("eos | end of the generated function (its first later top-level line;")
    assert stop_rule_text(oldest) != STOP_RULE and stop_rule_text(STOP_RULE) == STOP_RULE


def test_a_completion_prompt_keeps_the_start_token_its_tokenizer_prepends(tmp_path: Any) -> None:
    """InCoder's tokenizer prepends ``<|endoftext|>``, the start of a document it was trained with, and the
    study's ``tokenizer(text)`` calls kept it (in the budget's count too). The prompt ids dropped it."""
    from tiny_models import build_tiny

    from pytest_attnalign.generation import generate, token_budget
    from pytest_attnalign.methods import AttributionContext
    from pytest_attnalign.models import load_model
    from pytest_attnalign.regenerate import regenerate

    lm = load_model(str(build_tiny("xglm", tmp_path / "incoder-like", bos=True)), "cpu", "float32")
    tok, task = lm.tokenizer, get_task("HumanEval/0")
    default = tok(task.prompt)["input_ids"]
    assert default[0] == tok.bos_token_id and default[1:] == tok(task.prompt, add_special_tokens=False)["input_ids"]
    prompt, gen = generate(lm, task, "completion", max_new_tokens=12)
    assert list(gen.prompt_ids) == default
    study = lm.model.generate(torch.tensor([default]), max_new_tokens=12, do_sample=False,
                              pad_token_id=tok.eos_token_id)[0, len(default):].tolist()
    assert list(gen.raw_ids) == study[: len(gen.raw_ids)]
    assert token_budget(task, tok, "completion") == len(tok(task.canonical_solution)["input_ids"]) + 20
    ctx = AttributionContext(lm=lm, task=task, prompt=prompt, generation=gen)
    plain = [(a, b) for a, b, _ in ctx.description_tokens()]
    assert plain and min(i for _, _, i in ctx.description_tokens()) > 0  # the start token is no unit
    assert regenerate(ctx, [task.prompt], verify=True) == regenerate(ctx, [task.prompt], verify=False) == [gen.completion]


def test_generated_code_is_decoded_without_the_clean_up_of_spaces() -> None:
    """transformers' ``clean_up_tokenization_spaces`` deletes the space before ``.`` and ``,``: a tokenizer
    whose config turns it on (transformers 5 skips it for byte-level BPE unless forced) changed the code."""
    from pytest_attnalign.generation import decode_text

    tok = gpt2_tokenizer()
    tok.clean_up_tokenization_spaces = True
    tok.clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output = True
    code = "from . import a\nprint(a , 's')\n"
    ids = tok(code, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) != code  # the clean-up this guards against
    assert decode_text(tok, ids) == code
