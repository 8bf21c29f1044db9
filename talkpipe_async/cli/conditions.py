"""The ``--where`` condition grammar: a tiny, safe language over JSON fields.

User text is tokenized and parsed here into a small tree of Python objects;
nothing is ever passed to ``eval``/``exec``/``compile``.  Grammar::

    condition  := or
    or         := and ("or" and)*
    and        := not ("and" not)*
    not        := "not" not | "(" condition ")" | test
    test       := path "exists" | path "missing" | path OP literal
    OP         := "==" | "!=" | "<" | "<=" | ">" | ">=" | "~" | "!~"
    path       := NAME ("." (NAME | INTEGER))*          e.g.  user.name   items.0.id
    literal    := "string" | 'string' | number | true | false | null

Semantics: a path that does not exist makes every comparison false (use
``exists``/``missing`` to test for it).  ``==``/``!=`` compare JSON values
(``true`` is not ``1``); ordering operators compare numbers with numbers and
strings with strings, anything else is false.  ``~`` and ``!~`` search a
string with a regular expression (compiled once, at parse time); a value
that is not a string does not match ``~`` (and does not satisfy ``!~``).
Conditions are limited to :data:`MAX_LENGTH` characters and
:data:`MAX_DEPTH` levels of nesting.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .._core._errors import TalkpipeAsyncError

__all__ = ["MAX_DEPTH", "MAX_LENGTH", "Condition", "ConditionError", "parse_condition"]

MAX_LENGTH = 2000
MAX_DEPTH = 32

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<op>==|!=|<=|>=|!~|<|>|~)
  | (?P<paren>[()])
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<number>-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?(?![A-Za-z0-9_.]))
  | (?P<path>[A-Za-z_][A-Za-z0-9_-]*(?:\.(?:[A-Za-z_][A-Za-z0-9_-]*|[0-9]+))*)
    """,
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not", "exists", "missing", "true", "false", "null"}
_MISSING = object()


class ConditionError(ValueError, TalkpipeAsyncError):
    """A ``--where`` condition that does not parse; the message points at the column."""


@dataclass(frozen=True)
class _Tok:
    kind: str
    text: str
    pos: int


def _tokenize(text: str) -> list[_Tok]:
    if len(text) > MAX_LENGTH:
        raise ConditionError(f"condition longer than {MAX_LENGTH} characters")
    out: list[_Tok] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ConditionError(f"unexpected character {text[pos]!r} at column {pos + 1}")
        kind = m.lastgroup or ""
        if kind != "ws":
            word = m.group()
            if kind == "path" and word in _KEYWORDS:
                kind = word
            out.append(_Tok(kind, word, pos))
        pos = m.end()
    out.append(_Tok("end", "", len(text)))
    return out


def _unquote(token: _Tok) -> str:
    body = token.text
    if body[0] == "'":  # turn a single-quoted string into a JSON one
        body = '"' + body[1:-1].replace("\\'", "'").replace('"', '\\"') + '"'
    try:
        value = json.loads(body)
    except ValueError as exc:
        raise ConditionError(f"bad string at column {token.pos + 1}: {exc}") from None
    if not isinstance(value, str):  # pragma: no cover - the token pattern guarantees a string
        raise ConditionError(f"bad string at column {token.pos + 1}")
    return value


def _lookup(item: Any, parts: tuple[str, ...]) -> Any:
    value = item
    for part in parts:
        if isinstance(value, Mapping):
            value = value.get(part, _MISSING)
        elif isinstance(value, Sequence) and not isinstance(value, (str, bytes)) and part.isdigit():
            index = int(part)
            value = value[index] if index < len(value) else _MISSING
        else:
            return _MISSING
        if value is _MISSING:
            return _MISSING
    return value


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _same_kind(a: Any, b: Any) -> bool:
    return (_is_number(a) and _is_number(b)) or (isinstance(a, str) and isinstance(b, str))


def _equal(a: Any, b: Any) -> bool:
    if _is_number(a) and _is_number(b):
        return bool(a == b)
    return type(a) is type(b) and bool(a == b)


Test = Callable[[Any], bool]


def _compare(parts: tuple[str, ...], op: str, literal: Any, regex: re.Pattern[str] | None) -> Test:
    def get(item: Any) -> Any:
        return _lookup(item, parts)

    if op == "==":
        return lambda item: (v := get(item)) is not _MISSING and _equal(v, literal)
    if op == "!=":
        return lambda item: (v := get(item)) is not _MISSING and not _equal(v, literal)
    if op in ("~", "!~"):
        assert regex is not None
        search = regex.search
        if op == "~":
            return lambda item: isinstance(v := get(item), str) and search(v) is not None
        return lambda item: isinstance(v := get(item), str) and search(v) is None
    ordering: dict[str, Callable[[Any, Any], bool]] = {
        "<": lambda a, b: bool(a < b),
        "<=": lambda a, b: bool(a <= b),
        ">": lambda a, b: bool(a > b),
        ">=": lambda a, b: bool(a >= b),
    }
    cmp = ordering[op]
    return lambda item: _same_kind(v := get(item), literal) and cmp(v, literal)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokenize(text)
        self.i = 0
        self.depth = 0

    def peek(self) -> _Tok:
        return self.toks[self.i]

    def take(self) -> _Tok:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def fail(self, tok: _Tok, wanted: str) -> ConditionError:
        found = "the end" if tok.kind == "end" else repr(tok.text)
        return ConditionError(f"expected {wanted} at column {tok.pos + 1}, found {found}")

    def parse(self) -> Test:
        if self.peek().kind == "end":
            raise ConditionError("empty condition")
        test = self.or_()
        if self.peek().kind != "end":
            raise self.fail(self.peek(), "'and', 'or' or the end")
        return test

    def or_(self) -> Test:
        tests = [self.and_()]
        while self.peek().kind == "or":
            self.take()
            tests.append(self.and_())
        if len(tests) == 1:
            return tests[0]
        return lambda item: any(t(item) for t in tests)

    def and_(self) -> Test:
        tests = [self.not_()]
        while self.peek().kind == "and":
            self.take()
            tests.append(self.not_())
        if len(tests) == 1:
            return tests[0]
        return lambda item: all(t(item) for t in tests)

    def not_(self) -> Test:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ConditionError(f"condition nested deeper than {MAX_DEPTH} levels")
        try:
            tok = self.peek()
            if tok.kind == "not":
                self.take()
                inner = self.not_()
                return lambda item: not inner(item)
            if tok.kind == "paren" and tok.text == "(":
                self.take()
                inner = self.or_()
                close = self.take()
                if close.kind != "paren" or close.text != ")":
                    raise self.fail(close, "')'")
                return inner
            return self.test()
        finally:
            self.depth -= 1

    def test(self) -> Test:
        tok = self.take()
        if tok.kind != "path":
            raise self.fail(tok, "a field name")
        parts = tuple(tok.text.split("."))
        nxt = self.take()
        if nxt.kind == "exists":
            return lambda item: _lookup(item, parts) is not _MISSING
        if nxt.kind == "missing":
            return lambda item: _lookup(item, parts) is _MISSING
        if nxt.kind != "op":
            raise self.fail(nxt, "an operator (== != < <= > >= ~ !~), 'exists' or 'missing'")
        lit_tok = self.take()
        literal = self.literal(lit_tok)
        regex: re.Pattern[str] | None = None
        if nxt.text in ("~", "!~"):
            if not isinstance(literal, str):
                raise self.fail(lit_tok, f"a quoted regular expression after {nxt.text!r}")
            try:
                regex = re.compile(literal)
            except re.error as exc:
                raise ConditionError(f"bad regular expression at column {lit_tok.pos + 1}: {exc}") from None
        elif nxt.text in ("<", "<=", ">", ">=") and not (_is_number(literal) or isinstance(literal, str)):
            raise self.fail(lit_tok, f"a number or a string after {nxt.text!r}")
        return _compare(parts, nxt.text, literal, regex)

    def literal(self, tok: _Tok) -> Any:
        if tok.kind == "string":
            return _unquote(tok)
        if tok.kind == "number":
            return float(tok.text) if any(c in tok.text for c in ".eE") else int(tok.text)
        if tok.kind in ("true", "false"):
            return tok.kind == "true"
        if tok.kind == "null":
            return None
        raise self.fail(tok, "a value (a quoted string, a number, true, false or null)")


class Condition:
    """A parsed ``--where`` condition: call it with a JSON value to test it.

    ``Condition('level == "error" and latency_ms > 200')({"level": "error",
    "latency_ms": 250})`` is true.  Parsing raises :class:`ConditionError`
    with the column of the problem; evaluation never raises for any JSON
    value.
    """

    __slots__ = ("_test", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self._test = _Parser(text).parse()

    def __call__(self, value: Any) -> bool:
        """True when *value* satisfies the condition."""
        return self._test(value)

    def __repr__(self) -> str:
        return f"Condition({self.text!r})"


def parse_condition(text: str) -> Condition:
    """Parse *text* (see the module documentation); raise :class:`ConditionError` if it is not valid."""
    return Condition(text)
