"""The connector stages' signatures shown in docs/scale-out.md are the ones in the code.

The page shows a stage's parameters as an inline code span that starts with the stage's name and ``(``, possibly
over several lines.  A span with a ``...`` entry is partial (it names some parameters only); any other span is the
full signature.  Every span is one test, named ``scale-out.md:L<line>-<stage>``:

* each documented ``name=value``: the parameter exists and its default is that value (a literal, compared by type
  and value; a dotted name such as ``json.loads``, resolved by import and compared by identity; a described value
  such as ``<compact JSON>``, checked by its behaviour in ``DESCRIBED``; ``name=...``, a value the caller supplies:
  the parameter exists);
* each documented bare ``name``: the parameter exists and has no default;
* a full signature also lists every parameter of the code, in the same order, positional ones before ``*`` and
  keyword-only ones after it.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from talkpipe_async.connectors.nats import jetstream_messages, to_jetstream
from talkpipe_async.connectors.redis import redis_stream_messages, to_redis_stream
from tests.helpers.docs import DOCS

PAGE = DOCS / "scale-out.md"

#: the stages whose signatures the page shows, by the name the page uses
STAGES: dict[str, Callable[..., Any]] = {
    "redis_stream_messages": redis_stream_messages,
    "to_redis_stream": to_redis_stream,
    "jetstream_messages": jetstream_messages,
    "to_jetstream": to_jetstream,
}

_COMPACT_SAMPLE: Any = {"a": 1, "b": [1, 2]}
_COMPACT_TEXT = '{"a":1,"b":[1,2]}'


def _is_compact_json(default: Any) -> str | None:
    """The sinks' encoder: JSON without spaces, as text (Redis) or its UTF-8 bytes (NATS, whose payloads are bytes)."""
    if not callable(default):
        return f"not callable: {default!r}"
    encoded = default(_COMPACT_SAMPLE)
    text = encoded.decode("utf-8") if isinstance(encoded, bytes) else encoded
    if text != _COMPACT_TEXT:
        return f"encodes {_COMPACT_SAMPLE!r} as {encoded!r}, not {_COMPACT_TEXT!r}"
    return None


#: ``<description>`` values: a default that is not a public name, checked by what it does (None: it does)
DESCRIBED: dict[str, Callable[[Any], str | None]] = {
    "<compact JSON>": _is_compact_json,
}

_FENCE = re.compile(r"^\s*(```|~~~)")
_SPAN = re.compile(r"`([^`]+)`")
_NAMED = re.compile(r"([A-Za-z_]\w*)\s*=\s*(.+)", re.S)
_NAME = re.compile(r"\*{0,2}[A-Za-z_]\w*")
_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
_KIND_NAMES = {
    inspect.Parameter.POSITIONAL_ONLY: "positional",
    inspect.Parameter.POSITIONAL_OR_KEYWORD: "positional",
    inspect.Parameter.VAR_POSITIONAL: "*args",
    inspect.Parameter.KEYWORD_ONLY: "keyword-only",
    inspect.Parameter.VAR_KEYWORD: "**kwargs",
}


@dataclass(frozen=True)
class Documented:
    """One signature span of the page."""

    stage: str
    line: int  # 1-based line of the span's opening backtick
    entries: tuple[str, ...]  # the comma-separated entries between the parentheses

    @property
    def full(self) -> bool:
        return "..." not in self.entries

    @property
    def test_id(self) -> str:
        """``scale-out.md:L<line>-<stage>``: the page and line first, as the ids of the docs examples' tests."""
        return f"{PAGE.name}:L{self.line}-{self.stage}"


def _split_entries(text: str) -> tuple[str, ...]:
    """*text* split at the commas outside brackets and quotes, each entry stripped."""
    entries: list[str] = []
    depth, quote, start = 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch in "([{<":
            depth += 1
        elif ch in ")]}>":
            depth -= 1
        elif ch == "," and depth == 0:
            entries.append(text[start:i].strip())
            start = i + 1
    entries.append(text[start:].strip())
    return tuple(e for e in entries if e)


def signatures_in(markdown: str, stages: list[str]) -> list[Documented]:
    """The inline code spans of *markdown* (outside fenced blocks) that open with one of *stages* and ``(``."""
    lines = markdown.splitlines()
    in_fence = False
    prose: list[str] = []
    for line in lines:
        if _FENCE.match(line):
            in_fence = not in_fence
            prose.append("")
        else:
            prose.append("" if in_fence else line)
    text = "\n".join(prose)
    opening = re.compile(rf"({'|'.join(map(re.escape, stages))})\((.*)\)", re.S)
    found: list[Documented] = []
    for span in _SPAN.finditer(text):
        joined = " ".join(part.strip() for part in span.group(1).splitlines())
        m = opening.fullmatch(joined)
        if m:
            line = text.count("\n", 0, span.start()) + 1
            found.append(Documented(m.group(1), line, _split_entries(m.group(2))))
    return found


def _resolve(dotted: str) -> Any:
    """The object a dotted name such as ``json.loads`` names: the longest importable module, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(f"no module in {dotted!r}")


def _default_problem(value: str, real: Any) -> str | None:
    """Why the documented default *value* is not the real default *real* (None: it is)."""
    if value == "...":
        return None  # the caller supplies it: the page only says the parameter exists
    if value.startswith("<") and value.endswith(">"):
        check = DESCRIBED.get(value)
        if check is None:
            return f"no check for the described value {value} (add one to DESCRIBED)"
        return check(real)
    if _DOTTED.fullmatch(value):
        try:
            named = _resolve(value)
        except (ImportError, AttributeError) as err:
            return f"cannot resolve {value}: {err}"
        return None if named is real else f"{value} is {named!r}, another object"
    try:
        literal = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return f"{value} is neither a literal, a dotted name nor a <described> value"
    if type(literal) is type(real) and literal == real:
        return None
    return "a different value"


def problems_of(doc: Documented, stage: Callable[..., Any], page: str) -> list[str]:
    """Every difference between the documented signature *doc* and the real signature of *stage*."""
    real = inspect.signature(stage).parameters
    where = f"{page}:{doc.line}: {doc.stage}"
    problems: list[str] = []
    order: list[str] = []
    kinds: dict[str, Any] = {}  # name -> inspect.Parameter kind
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    for entry in doc.entries:
        if entry == "...":
            continue
        if entry == "*":
            kind = inspect.Parameter.KEYWORD_ONLY
            continue
        named = _NAMED.fullmatch(entry)
        name, value = (named.group(1), named.group(2).strip()) if named else (entry, None)
        if value is None and not _NAME.fullmatch(name):
            problems.append(f"{where}: cannot read the entry {entry!r}")
            continue
        if name.startswith("**"):
            name, entry_kind = name[2:], inspect.Parameter.VAR_KEYWORD
        elif name.startswith("*"):
            name, entry_kind = name[1:], inspect.Parameter.VAR_POSITIONAL
            kind = inspect.Parameter.KEYWORD_ONLY
        else:
            entry_kind = kind
        order.append(name)
        kinds[name] = entry_kind
        if name not in real:
            problems.append(f"{where}: {name}: documented as {entry!r}, but the stage has no such parameter")
            continue
        default = real[name].default
        if value is None:
            if default is not inspect.Parameter.empty:
                problems.append(f"{where}: {name}: documented without a default, real default {default!r}")
        elif default is inspect.Parameter.empty:
            problems.append(f"{where}: {name}: documented {value}, real: no default (required)")
        else:
            why = _default_problem(value, default)
            if why is not None:
                problems.append(f"{where}: {name}: documented {value}, real default {default!r}: {why}")
    if not doc.full:
        return problems
    for name, param in real.items():
        if name not in kinds:
            problems.append(f"{where}: {name}: not documented, real parameter {param}")
            continue
        documented, actual = kinds[name], param.kind
        same = documented == actual or (documented in _POSITIONAL and actual in _POSITIONAL)
        if not same:
            problems.append(f"{where}: {name}: documented {_KIND_NAMES[documented]}, real {_KIND_NAMES[actual]}")
    common = [n for n in order if n in real]
    real_order = [n for n in real if n in kinds]
    if common != real_order:
        problems.append(f"{where}: parameters documented in the order {common}, real order {real_order}")
    return problems


_DOCUMENTED = signatures_in(PAGE.read_text(encoding="utf-8"), list(STAGES))


def test_every_stage_shows_its_full_signature_once() -> None:
    full = sorted(d.stage for d in _DOCUMENTED if d.full)
    assert full == sorted(STAGES), (
        f"docs/{PAGE.name}: full signatures found for {full}, expected one each for {sorted(STAGES)}")


@pytest.mark.parametrize("doc", _DOCUMENTED, ids=[d.test_id for d in _DOCUMENTED])
def test_the_documented_signature_is_the_real_one(doc: Documented) -> None:
    problems = problems_of(doc, STAGES[doc.stage], f"docs/{PAGE.name}")
    assert not problems, "\n".join(problems)


#: parameters a stage keeps under another attribute name
_STORED_AS = {"block": "wait", "fetch_wait": "wait"}
#: parameters whose None default stands for a value derived from others (each rule is tested with its stage)
_DERIVED = {"ack_batch", "claim_interval", "dead_letter", "name"}


def stored_problems(doc: Documented, stage: Callable[..., Any]) -> tuple[int, list[str]]:
    """How many documented defaults a stage made with only its required arguments keeps, and where it differs.

    The signature alone can say one thing while the constructor stores another: this reads what the stage holds.
    """
    required = [p for p in inspect.signature(stage).parameters.values() if p.default is inspect.Parameter.empty]
    made = stage(*[f"x{i}" for i in range(len(required))])
    checked, problems = 0, []
    for entry in doc.entries:
        named = _NAMED.fullmatch(entry)
        if not named or named.group(1) in _DERIVED:
            continue
        name, value = named.group(1), named.group(2).strip()
        attribute = _STORED_AS.get(name, name)
        if value == "..." or not hasattr(made, attribute):
            continue
        held = getattr(made, attribute)
        why = _default_problem(value, held)
        checked += 1
        if why is not None:
            problems.append(f"{doc.stage}(): {attribute} is {held!r}, documented {name}={value}: {why}")
    return checked, problems


@pytest.mark.parametrize("doc", [d for d in _DOCUMENTED if d.full], ids=[d.test_id for d in _DOCUMENTED if d.full])
def test_a_stage_made_with_its_defaults_holds_the_documented_values(doc: Documented) -> None:
    checked, problems = stored_problems(doc, STAGES[doc.stage])
    assert not problems, "\n".join(problems)
    assert checked >= 8, f"only {checked} documented defaults could be read back from {doc.stage}()"


# The checks above would pass on a page they cannot read; these run them on a made-up stage and page.

def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class _made_up:
    def __init__(self, source: str, *, url: str = "x://host", batch: int = 100, decode: Callable[..., Any] = repr,
                 encode: Callable[[Any], str] = _compact, name: str | None = None) -> None:
        pass


def _problems(markdown: str) -> list[str]:
    docs = signatures_in(markdown, ["made_up"])
    assert len(docs) == 1, docs
    return problems_of(docs[0], _made_up, "page.md")


def test_a_true_signature_over_several_lines_has_no_problems() -> None:
    page = ("Text.\n\n```python\nmade_up(1)\n```\n\n"
            '`made_up(source, *, url="x://host", batch=100,\n'
            'decode=builtins.repr, encode=<compact JSON>, name=None)`\n')
    assert signatures_in(page, ["made_up"])[0].line == 7
    assert _problems(page) == []


def test_each_difference_names_the_stage_the_parameter_and_both_values() -> None:
    page = ('`made_up(source, *, url, batch=101, decode=json.loads, encode=<compact JSON>,\n'
            'name=None, extra=1)`\n')
    assert _problems(page) == [
        "page.md:1: made_up: url: documented without a default, real default 'x://host'",
        "page.md:1: made_up: batch: documented 101, real default 100: a different value",
        f"page.md:1: made_up: decode: documented json.loads, real default {repr!r}: json.loads is {json.loads!r}, "
        "another object",
        "page.md:1: made_up: extra: documented as 'extra=1', but the stage has no such parameter",
    ]


def test_a_full_signature_must_list_every_parameter_in_order_and_kind() -> None:
    page = '`made_up(source, url="x://host", *, decode=builtins.repr, batch=100, encode=<compact JSON>)`'
    assert _problems(page) == [
        "page.md:1: made_up: url: documented positional, real keyword-only",
        "page.md:1: made_up: name: not documented, real parameter name: 'str | None' = None",
        "page.md:1: made_up: parameters documented in the order ['source', 'url', 'decode', 'batch', 'encode'], "
        "real order ['source', 'url', 'batch', 'decode', 'encode']",
    ]


def test_a_partial_signature_checks_only_what_it_names() -> None:
    assert _problems("`made_up(..., batch=100, name=...)`") == []
    assert _problems("`made_up(..., batch=100.0)`") == [
        "page.md:1: made_up: batch: documented 100.0, real default 100: a different value",
    ]


def test_a_described_default_is_checked_by_behaviour() -> None:
    assert _problems('`made_up(..., encode=<compact JSON>, url=<compact JSON>, decode=<pretty>)`') == [
        "page.md:1: made_up: url: documented <compact JSON>, real default 'x://host': not callable: 'x://host'",
        "page.md:1: made_up: decode: documented <pretty>, real default <built-in function repr>: "
        "no check for the described value <pretty> (add one to DESCRIBED)",
    ]
    spaced = json.dumps(_COMPACT_SAMPLE)
    assert _is_compact_json(json.dumps) == f"encodes {_COMPACT_SAMPLE!r} as {spaced!r}, not {_COMPACT_TEXT!r}"
    assert _is_compact_json(lambda v: _compact(v).encode()) is None


def test_fenced_blocks_are_not_read_as_signatures() -> None:
    assert signatures_in("```text\n`made_up(source)`\n```\n", ["made_up"]) == []
