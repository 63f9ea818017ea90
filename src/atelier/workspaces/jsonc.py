"""A small JSON-with-comments parser that remembers where every value is.

``devcontainer.json`` and ``devcontainer-feature.json`` are "JSONC": JSON plus
``//`` and ``/* */`` comments and trailing commas (VS Code's dialect). The
standard library cannot read that, and a stripper + :func:`json.loads` would
lose the one thing we need for good errors: the line and column of each value.
So this is a recursive-descent parser over the text itself:

* strings are decoded by :func:`json.decoder.scanstring` (the stdlib's own
  decoder, so escapes behave exactly as in :mod:`json`);
* every value's start is recorded under its path (``("build", "dockerfile")``,
  ``("forwardPorts", 2)``) in :attr:`JsoncDocument.values`, every object key's
  start in :attr:`JsoncDocument.keys`;
* a syntax error raises :class:`~atelier.errors.ValidationFailed` whose
  ``details`` name the file, the 1-based line and column and the reason.

Duplicate keys keep the last value, as ``JSON.parse`` does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from atelier.workspaces.issues import ConfigIssue, issues_error

__all__ = ["JsonPath", "JsoncDocument", "Position", "parse_jsonc"]

JsonPath = tuple[str | int, ...]

_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?")
_WHITESPACE = " \t\r\n"
_MAX_DEPTH = 200
# the stdlib's own JSON string decoder (not in the type stubs)
_scanstring = cast(
    Callable[[str, int, bool], tuple[str, int]],
    json.decoder.scanstring,  # type: ignore[attr-defined]
)


@dataclass(frozen=True, slots=True)
class Position:
    """A 1-based line and column in the source text."""

    line: int
    column: int


class _SyntaxError(Exception):
    """Internal: a syntax error at ``line``/``column``; becomes ValidationFailed."""

    def __init__(self, reason: str, line: int, column: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.line = line
        self.column = column


@dataclass(frozen=True)
class JsoncDocument:
    """A parsed document: the plain Python value and where each part of it is."""

    value: Any
    values: dict[JsonPath, Position]
    keys: dict[JsonPath, Position]

    def position(self, path: JsonPath, *, key: bool = False) -> Position | None:
        """Where ``path`` is (its key if ``key`` and it has one), else its nearest ancestor."""
        if key and path in self.keys:
            return self.keys[path]
        probe = path
        while True:
            if probe in self.values:
                return self.values[probe]
            if not probe:
                return None
            probe = probe[:-1]


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.values: dict[JsonPath, Position] = {}
        self.keys: dict[JsonPath, Position] = {}
        # offsets of line starts, for offset -> (line, column)
        self._line_starts = [0] + [m.end() for m in re.finditer(r"\r\n|\r|\n", text)]

    # --- positions -------------------------------------------------------------
    def where(self, offset: int) -> Position:
        lo, hi = 0, len(self._line_starts) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self._line_starts[mid] <= offset:
                lo = mid
            else:
                hi = mid - 1
        return Position(lo + 1, offset - self._line_starts[lo] + 1)

    def fail(self, message: str, offset: int | None = None) -> _SyntaxError:
        at = self.where(self.pos if offset is None else offset)
        return _SyntaxError(message, at.line, at.column)

    # --- lexing ----------------------------------------------------------------
    def skip(self) -> None:
        """Skip whitespace and comments."""
        text, n = self.text, len(self.text)
        while self.pos < n:
            ch = text[self.pos]
            if ch in _WHITESPACE:
                self.pos += 1
            elif text.startswith("//", self.pos):
                end = min(
                    (i for i in (text.find("\n", self.pos), text.find("\r", self.pos)) if i >= 0),
                    default=n,
                )
                self.pos = end
            elif text.startswith("/*", self.pos):
                end = text.find("*/", self.pos + 2)
                if end < 0:
                    raise self.fail("unterminated /* comment")
                self.pos = end + 2
            else:
                return

    def peek(self) -> str:
        self.skip()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def describe(self, ch: str) -> str:
        return "end of input" if not ch else repr(ch)

    # --- grammar ---------------------------------------------------------------
    def document(self) -> Any:
        if self.text.startswith("\ufeff"):
            self.pos = 1
        if not self.peek():
            raise self.fail("empty document: expected a JSON value")
        value = self.value((), 0)
        ch = self.peek()
        if ch:
            raise self.fail(f"unexpected {self.describe(ch)} after the top-level value")
        return value

    def value(self, path: JsonPath, depth: int) -> Any:
        ch = self.peek()
        self.values[path] = self.where(self.pos)
        if depth > _MAX_DEPTH:
            raise self.fail(f"nesting deeper than {_MAX_DEPTH} levels")
        if ch == "{":
            return self.obj(path, depth)
        if ch == "[":
            return self.array(path, depth)
        if ch == '"':
            return self.string()
        for word, literal in (("true", True), ("false", False), ("null", None)):
            if self.text.startswith(word, self.pos):
                self.pos += len(word)
                return literal
        match = _NUMBER.match(self.text, self.pos)
        if match and match.end() > self.pos:
            self.pos = match.end()
            number = match.group(0)
            return float(number) if match.group(1) or match.group(2) else int(number)
        if ch == "'":
            raise self.fail("strings must use double quotes")
        raise self.fail(f"unexpected {self.describe(ch)}: expected a JSON value")

    def string(self) -> str:
        start = self.pos
        try:
            value, self.pos = _scanstring(self.text, self.pos + 1, True)
        except json.JSONDecodeError as exc:
            at = exc.pos
            if exc.msg.startswith("Unterminated") or self.text[at : at + 1] in ("\n", "\r"):
                raise self.fail("unterminated string", start) from None
            if exc.msg.startswith("Invalid control character"):
                raise self.fail("control character in string (escape it)", at) from None
            raise self.fail(exc.msg.lower(), at) from None
        return value

    def obj(self, path: JsonPath, depth: int) -> dict[str, Any]:
        self.pos += 1  # "{"
        out: dict[str, Any] = {}
        while True:
            ch = self.peek()
            if ch == "}":
                self.pos += 1
                return out
            if ch != '"':
                expected = "a property name in double quotes or '}'"
                raise self.fail(f"unexpected {self.describe(ch)}: expected {expected}")
            key_at = self.where(self.pos)
            key = self.string()
            if self.peek() != ":":
                raise self.fail(f"unexpected {self.describe(self.peek())}: expected ':'")
            self.pos += 1
            child = (*path, key)
            self.keys[child] = key_at
            out[key] = self.value(child, depth + 1)
            ch = self.peek()
            if ch == ",":
                self.pos += 1  # a trailing comma before "}" is allowed
            elif ch != "}":
                raise self.fail(f"unexpected {self.describe(ch)}: expected ',' or '}}'")

    def array(self, path: JsonPath, depth: int) -> list[Any]:
        self.pos += 1  # "["
        out: list[Any] = []
        while True:
            ch = self.peek()
            if ch == "]":
                self.pos += 1
                return out
            if ch == ",":
                raise self.fail("unexpected ',': expected a JSON value or ']'")
            out.append(self.value((*path, len(out)), depth + 1))
            ch = self.peek()
            if ch == ",":
                self.pos += 1  # a trailing comma before "]" is allowed
            elif ch != "]":
                raise self.fail(f"unexpected {self.describe(ch)}: expected ',' or ']'")


def parse_jsonc(text: str, *, source: str = "<string>") -> JsoncDocument:
    """Parse JSON with comments and trailing commas.

    Raises :class:`~atelier.errors.ValidationFailed` naming ``source`` and the
    line and column of the first syntax error.
    """
    parser = _Parser(text)
    try:
        value = parser.document()
    except _SyntaxError as exc:
        issue = ConfigIssue((), exc.reason, exc.line, exc.column)
        where = f"line {exc.line}, column {exc.column}"
        message = f"{source}: syntax error at {where}: {exc.reason}"
        raise issues_error(source, [issue], message=message) from None
    return JsoncDocument(value=value, values=parser.values, keys=parser.keys)
