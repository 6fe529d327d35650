"""Where a model's code is: the fenced block of a chat reply, and where the generated function ends.

The stop rule (``generation.STOP_RULE``) reads code as Python does where it matters: a comment at
column 0 is no statement, a line inside a multi-line string or open brackets is part of the statement
before it, and a top-level statement cut off by the token budget after the function (a test the
model began) is dropped rather than run as a syntax error. Decoding asks :func:`function_ended`
after every token; it is true only once the final cut can no longer move (the cut of any longer
output is the cut of this one), so stopping early never changes a completion.
"""

from __future__ import annotations

import io
import keyword
import re
import tokenize
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator

#: Top-level lines that continue a module after a function without ending "the generated function".
CONTINUES = ("def ", "async def ", "@", "import ", "from ", "class ")
#: A fence line: three or more backticks at the start of a line (after indentation), then the info string.
_FENCE_LINE = re.compile(r"^[ \t]*```+[ \t]*([^\n`]*?)[ \t]*$", re.M)
#: A line of a chat reply's plain text that begins code: a def, class, decorator or import at column 0
#: (an import only where the line compiles: "import the data" is prose).
_CODE_START = re.compile(r"^(?:(?:async[ \t]+)?def[ \t]+\w+[ \t]*\(|class[ \t]+\w+|@\w"
                         r"|(?P<imports>import[ \t]|from[ \t]+[\w.]+[ \t]+import[ \t]))", re.M)
#: A line of a chat reply that Python may read as code whether or not it compiles alone: it begins with a keyword
#: (``for x in xs:``, ``try:``, ``return``; soft ones: ``match x:``) or a decorator.
_KEYWORD_START = re.compile(rf"^(?:@|(?:{'|'.join(keyword.kwlist + keyword.softkwlist)})\b)")
#: The info string's first word of a block that holds Python code (``python3.10``, ``Python 3``, ``py``).
_PYTHON_TAG = re.compile(r"(python|py)(\d+(\.\d+)*)?", re.I)
#: A line that closes a block: one that begins with a fence.
_CLOSING = re.compile(r"^[ \t]*```", re.M)


@dataclass(frozen=True)
class Block:
    """A fenced block of a chat reply: its info string's kind, where its code starts, the code as
    written and how far its opening fence is indented (a block inside a Markdown list item)."""

    kind: str  # "python", "untagged" or "other"
    start: int
    code: str
    closed: bool
    indent: int  # characters before the opening fence

    @property
    def text(self) -> str:
        """The code as Markdown reads it: up to the opening fence's indentation removed from each
        line (CommonMark's rule), so a block in a list item is not run as an IndentationError."""
        return "".join(line[removed:] for line, removed in self._lines())

    def reply_offset(self, at: int) -> int:
        """Where ``text[at]`` is in the reply; a line's start maps to the line's start as written."""
        pos = self.start
        for line, removed in self._lines():
            if at < len(line) - removed or (at == len(line) - removed and not line.endswith("\n")):
                return pos + (removed + at if at else 0)
            at -= len(line) - removed
            pos += len(line)
        return pos

    def _lines(self) -> list[tuple[str, int]]:
        """Each line of ``code`` (with its newline) and how many indentation characters Markdown removes."""
        return [(line, min(self.indent, len(line) - len(line.lstrip(" \t"))))
                for line in re.findall(r"[^\n]*\n|[^\n]+", self.code)]


def code_blocks(reply: str) -> list[Block]:
    """The reply's fenced blocks in order. A block opens at a fence line and closes at the next line
    that begins with a fence (a fence inside a line, e.g. in a string, neither opens nor closes one);
    the last may be unclosed (the budget ran out) and then runs to the end."""
    blocks = []
    pos = 0
    while (opening := _FENCE_LINE.search(reply, pos)) is not None:
        start = opening.end() + 1
        if start > len(reply):  # the opening line is still being written
            break
        closing = _CLOSING.search(reply, start)
        info = opening.group(1).split()
        kind = "untagged" if not info else "python" if _PYTHON_TAG.fullmatch(info[0]) else "other"
        end = len(reply) if closing is None else closing.start()
        indent = len(opening.group(0)) - len(opening.group(0).lstrip(" \t"))
        blocks.append(Block(kind, start, reply[start:end], closing is not None, indent))
        if closing is None:
            break
        line_end = reply.find("\n", closing.end())
        pos = len(reply) if line_end == -1 else line_end + 1
    return blocks


def chosen_block(reply: str, entry_point: str | None) -> Block | None:
    """The block that holds the code: the first Python or untagged block that defines ``entry_point``;
    None when none does and the reply defines it outside its blocks (the function written as plain text,
    then a usage example in a block); else the first Python block, else the first untagged one, else the
    first block; None without any."""
    blocks = code_blocks(reply)
    candidates = [b for b in blocks if b.kind != "other"]
    defining = next((b for b in candidates if entry_point and defines(b.code, entry_point)), None)
    if defining is not None or (entry_point and _outside(reply, blocks, (m.start() for m in _defs(reply, entry_point)))
                                is not None):
        return defining
    return (next((b for b in blocks if b.kind == "python"), None)
            or next(iter(candidates), None) or next(iter(blocks), None))


def extract_code(reply: str, entry_point: str | None = None, prompt: str | None = None) -> str:
    """The code of a chat reply: its :func:`chosen_block` as Markdown reads it; without one, the reply from
    its first line outside a block that begins code (a def, class, decorator or import at column 0: the
    prose before it is no code); else, given the ``prompt`` of a task whose prompt ends inside its function,
    its :func:`bare_body` after prose; else the whole reply."""
    block = chosen_block(reply, entry_point)
    if block is not None:
        return block.text
    start = _outside(reply, code_blocks(reply), _code_starts(reply))
    if start is None and prompt is not None:
        start = bare_body(reply, prompt)
    return reply if start is None else reply[start:]


def _code_starts(reply: str) -> Iterator[int]:
    """Where lines that begin code (:data:`_CODE_START`) start in ``reply``."""
    return (m.start() for m in _CODE_START.finditer(reply)
            if not m.group("imports") or _syntax_error_at(_line_at(reply, m.start())) is None)


def bare_body(reply: str, prompt: str) -> int | None:
    """Where the body starts in a reply that continues ``prompt``'s function without writing its ``def``
    (no block, no line that begins code): at its first indented line, when every line before it is blank,
    a comment (a Markdown heading) or prose (:func:`_prose`) and the body from there, cut where the
    function ends (a closing sentence at column 0 ends it), compiles after ``prompt``. None for any other
    reply: prose alone (an indented list does not compile), or code that is no bare body."""
    if code_blocks(reply) or next(_code_starts(reply), None) is not None:
        return None
    for line in re.finditer(r"[^\n]*\n|[^\n]+", reply):
        text = line.group().strip()
        if text and line.group()[0] in " \t":
            code = cut_function(reply[line.start():], starts_inside=True)
            return line.start() if _syntax_error_at(prompt + code) is None else None
        if text and not text.startswith("#") and not _prose(text):
            return None
    return None


def _prose(line: str) -> bool:
    """Whether a line at column 0 is text, not code: Python reads it neither as a statement (``x = 1``, and
    ``Sure``) nor as a block's header (``for x in xs:``): ``Here is the implementation:``."""
    return _KEYWORD_START.match(line) is None and _syntax_error_at(line + "\n") is not None


def _outside(reply: str, blocks: list[Block], positions: Iterator[int]) -> int | None:
    """The first of ``positions`` (ascending) that lies outside every block of ``reply`` and its fence lines."""
    spans = [(reply.rfind("\n", 0, b.start - 1) + 1, b.start + len(b.code)) for b in blocks]
    return next((p for p in positions if not any(a <= p < e for a, e in spans)), None)


def _line_at(text: str, start: int) -> str:
    end = text.find("\n", start)
    return text[start:] + "\n" if end == -1 else text[start:end + 1]


def block_settled(reply: str, entry_point: str | None) -> bool:
    """Whether decoding a chat reply may stop: a closed Python or untagged block defines the entry
    point, so :func:`chosen_block` of any longer reply is that block."""
    return any(b.closed and b.kind != "other" and entry_point is not None and defines(b.code, entry_point)
               for b in code_blocks(reply))


def before_fence(text: str) -> str:
    """A prefilled reply's code: everything before the line that closes the prefilled block."""
    closing = _CLOSING.search(text)
    return text if closing is None else text[:closing.start()]


def find_def(code: str, name: str) -> re.Match[str] | None:
    """The first line of ``code`` that begins a ``def`` of ``name`` (at any indent)."""
    return next(_defs(code, name), None)


def _defs(code: str, name: str) -> Iterator[re.Match[str]]:
    return re.finditer(rf"^[ \t]*(async\s+)?def\s+{re.escape(name)}\s*\(", code, re.M)


def defines(code: str, name: str) -> bool:
    """Whether ``code`` has a ``def`` of ``name`` (at any indent)."""
    return find_def(code, name) is not None


@dataclass(frozen=True)
class _Outline:
    """Generated code's top-level statements as the stop rule reads them."""

    end: int | None  # the statement that ends the function (or the comments just before it); None: not yet
    trailing: int | None  # where the comments the text ends on start
    kept: tuple[int, ...]  # starts of the top-level statements kept after the function's def (helpers, imports)


def _outline(text: str, starts_inside: bool, entry_point: str | None, final: bool) -> _Outline:
    """Read ``text`` line by line. The function is the entry point's (else, in the final text, the first
    ``def``'s): helpers, imports and assignments before its ``def`` stay, and after it the first
    top-level statement that is no ``def``, ``class``, import or decorator ends it. ``starts_inside``:
    ``text`` continues a function whose ``def`` is in the prompt, and any top-level statement ends it.

    While decoding (not ``final``) a last line that may still become a ``def``, ``import`` ... (``de``:
    the token after ``def`` carries the space) decides nothing yet."""
    in_entry = in_first = starts_inside  # after the entry point's def / after the first def
    first: _Outline | None = None  # the first def's end, for a text that never defines the entry point
    kept_entry: list[int] = []
    kept_first: list[int] = []
    pending: int | None = None
    lines = text.split("\n")
    pos = 0
    for i, line in enumerate(lines):
        at, pos = pos, pos + len(line) + 1
        if (i == 0 and starts_inside) or not line.strip():
            continue  # the rest of the prompt's last line; a blank line
        if line[0] in " \t)]}" or (at > 0 and inside_statement(text[:at])):
            pending = None  # the body goes on (comments just before were inside it)
            continue
        if line.startswith("#"):
            pending = at if pending is None else pending
            continue
        if not final and i == len(lines) - 1 and not starts_inside and any(k.startswith(line) for k in CONTINUES):
            return _Outline(None, None, ())
        start = at if pending is None else pending
        pending = None
        continues = not starts_inside and line.startswith(CONTINUES)
        if in_entry and not continues:
            return _Outline(start, None, tuple(kept_entry))
        if in_first and not continues and first is None:
            first = _Outline(start, None, tuple(kept_first))
        if in_entry:
            kept_entry.append(start)
        if in_first and first is None:
            kept_first.append(start)
        if line.startswith(("def ", "async def ")):
            in_first = True
            in_entry = in_entry or entry_point is None or defines(line, entry_point)
    if in_entry or not final:
        return _Outline(None, pending, tuple(kept_entry))
    return first or _Outline(None, pending, tuple(kept_first))


@lru_cache(maxsize=4096)
def inside_statement(before: str) -> bool:
    """Whether a line after ``before`` continues a statement: ``before`` ends inside a multi-line string,
    open brackets or after a backslash (Python's tokenizer; called only for lines at column 0, and the
    same prefixes recur at every decoding step)."""
    try:
        for _ in tokenize.generate_tokens(io.StringIO(before).readline):
            pass
    except tokenize.TokenError:
        return True
    except SyntaxError:  # an indentation Python refuses: read line by line
        return False
    return False


def cut_function(text: str, starts_inside: bool, entry_point: str | None = None) -> str:
    """``text`` cut where its generated function ends (:func:`_outline`): before the statement that ends
    it and the comments just before that statement, or before the comments the text ends on. A
    statement kept after the function that does not compile (cut off by the budget) is dropped, with
    any after it."""
    outline = _outline(text, starts_inside, entry_point, final=True)
    cut = outline.end if outline.end is not None else outline.trailing
    code = text if cut is None else text[:cut].rstrip() + "\n"
    kept = [k for k in outline.kept if k < len(code)]
    while kept and (error := _syntax_error_at(code)) is not None and error >= kept[-1]:
        code = code[:kept.pop()].rstrip() + "\n"
    return code


def function_ended(text: str, starts_inside: bool, entry_point: str | None) -> bool:
    """Whether decoding may stop: a statement has ended the function, whatever follows."""
    return _outline(text, starts_inside, entry_point, final=False).end is not None


def _syntax_error_at(code: str) -> int | None:
    """Where ``code`` stops compiling (the start of the line Python names), or None when it compiles."""
    try:
        with warnings.catch_warnings():  # an invalid escape sequence in a string is no reason to print
            warnings.simplefilter("ignore")
            compile(code, "<completion>", "exec", dont_inherit=True)
    except SyntaxError as exc:
        if not exc.lineno:
            return len(code)
        starts = [0] + [k + 1 for k, c in enumerate(code) if c == "\n"]
        return starts[min(exc.lineno, len(starts)) - 1]
    except (ValueError, RecursionError, MemoryError, OverflowError):  # a NUL byte; nesting past the parser
        return len(code)
    return None
