"""Docker's word processing: quotes, escapes and ``$VAR`` substitution.

The rules of Docker's shell lexer (``moby/buildkit/frontend/dockerfile/shell``):

* outside quotes the escape character (``\\`` or the ``# escape=`` one) makes
  the next character literal and is removed;
* ``'...'`` is literal (no escapes, no substitution), quotes removed;
* ``"..."``: the escape character only escapes ``"``, ``$`` and itself (it is
  kept before anything else); variables are substituted; quotes removed;
* ``$NAME``, ``${NAME}``, ``${NAME:-word}`` (word if unset or empty),
  ``${NAME-word}`` (word if unset), ``${NAME:+word}`` (word if set and not
  empty), ``${NAME+word}`` (word if set), ``${NAME:?msg}``/``${NAME?msg}``
  (error); ``word`` is itself processed. An unset variable is empty; a ``$``
  not followed by a name is literal.

:func:`expand_words` also splits on unquoted whitespace, including whitespace
that an unquoted substitution produced (as a shell does).
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["SubstitutionError", "expand_word", "expand_words", "split_words"]


class SubstitutionError(ValueError):
    """A malformed or failing substitution (the message says which)."""


def _is_name_char(ch: str) -> bool:
    return ch.isascii() and (ch.isalnum() or ch == "_")


class _Lexer:
    def __init__(self, text: str, env: Mapping[str, str], escape: str, split: bool) -> None:
        self.text = text
        self.pos = 0
        self.env = env
        self.escape = escape
        self.split = split
        self.words: list[str] = []
        self.current: list[str] = []
        self.has_word = False  # "" is a word too

    # -- scanning ------------------------------------------------------------
    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def next(self) -> str:
        ch = self.peek()
        self.pos += 1
        return ch

    def add(self, value: str) -> None:
        self.current.append(value)
        self.has_word = True

    def add_split(self, value: str) -> None:
        """Add an unquoted substitution's value: whitespace in it splits words."""
        if not self.split:
            self.add(value)
            return
        parts = value.split()
        if not parts:
            return
        if value[:1].isspace():
            self.end_word()
        for i, part in enumerate(parts):
            if i:
                self.end_word()
            self.add(part)
        if value[-1:].isspace():
            self.end_word()

    def end_word(self) -> None:
        if self.has_word:
            self.words.append("".join(self.current))
        self.current = []
        self.has_word = False

    # -- the grammar -------------------------------------------------------
    def run(self, stop: str = "") -> None:
        while self.pos < len(self.text):
            ch = self.peek()
            if stop and ch == stop:
                return
            self.pos += 1
            if ch == self.escape:
                if self.pos < len(self.text):
                    self.add(self.next())
                else:
                    self.add(ch)  # a trailing escape stays
            elif ch == "'":
                self.single_quoted()
            elif ch == '"':
                self.double_quoted()
            elif ch == "$":
                value, quoted = self.dollar()
                if quoted:
                    self.add(value)
                else:
                    self.add_split(value)
            elif self.split and ch.isspace():
                self.end_word()
            else:
                self.add(ch)
        if stop:
            raise SubstitutionError(f"missing {stop!r} in substitution")

    def single_quoted(self) -> None:
        end = self.text.find("'", self.pos)
        if end < 0:
            raise SubstitutionError("unexpected end of statement while looking for matching '")
        self.add(self.text[self.pos : end])
        self.pos = end + 1

    def double_quoted(self) -> None:
        self.has_word = True
        while True:
            if self.pos >= len(self.text):
                raise SubstitutionError('unexpected end of statement while looking for matching "')
            ch = self.next()
            if ch == '"':
                return
            if ch == self.escape and self.peek() in ('"', "$", self.escape) and self.peek():
                self.add(self.next())
            elif ch == "$":
                self.add(self.dollar()[0])
            else:
                self.add(ch)

    def dollar(self) -> tuple[str, bool]:
        """After a ``$``: (the substituted value, whether it counts as quoted)."""
        ch = self.peek()
        if ch == "{":
            self.pos += 1
            return self.braced(), False
        if ch.isascii() and ch.isdigit():
            self.pos += 1
            return self.env.get(ch, ""), False  # $1 ...: positional, always empty here
        name = self.name()
        if not name:
            return "$", True
        return self.env.get(name, ""), False

    def name(self) -> str:
        start = self.pos
        while self.pos < len(self.text) and _is_name_char(self.text[self.pos]):
            self.pos += 1
        return self.text[start : self.pos]

    def braced(self) -> str:
        name = self.name()
        if not name:
            raise SubstitutionError(f"bad substitution in {self.text!r}")
        ch = self.next()
        if ch == "}":
            return self.env.get(name, "")
        colon = ch == ":"
        if colon:
            ch = self.next()
        if ch not in ("-", "+", "?"):
            shown = (":" if colon else "") + ch
            raise SubstitutionError(
                f"unsupported modifier {shown!r} in substitution ${{{name}{shown}...}}"
                if ch
                else f"missing '}}' in substitution of {name}"
            )
        word = self.sub_word()
        value = self.env.get(name)
        is_set = value is not None and (value != "" or not colon)
        if ch == "-":
            return value if is_set and value is not None else word
        if ch == "+":
            return word if is_set else ""
        if not is_set or value is None:
            raise SubstitutionError(f"{name}: {word or 'is not allowed to be unset'}")
        return value

    def sub_word(self) -> str:
        """The ``word`` of ``${NAME:-word}`` up to the closing brace, processed."""
        inner = _Lexer(self.text, self.env, self.escape, split=False)
        inner.pos = self.pos
        inner.run(stop="}")
        self.pos = inner.pos + 1
        return "".join(inner.current)


def expand_word(text: str, env: Mapping[str, str], escape: str = "\\") -> str:
    """``text`` as one word: quotes and escapes removed, variables substituted."""
    lexer = _Lexer(text, env, escape, split=False)
    lexer.run()
    return "".join(lexer.current)


def expand_words(text: str, env: Mapping[str, str], escape: str = "\\") -> list[str]:
    """``text`` split into words (unquoted whitespace), each one processed."""
    lexer = _Lexer(text, env, escape, split=True)
    lexer.run()
    lexer.end_word()
    return lexer.words


def split_words(text: str, escape: str = "\\") -> list[str]:
    """Split on unquoted whitespace, keeping quotes and escapes (Docker's
    ``parseWords``, used for ``ENV``/``LABEL``/``ARG`` name=value pairs)."""
    words: list[str] = []
    current: list[str] = []
    quote = ""
    i = 0
    while i < len(text):
        ch = text[i]
        if not quote and ch.isspace():
            if current:
                words.append("".join(current))
                current = []
            i += 1
            continue
        current.append(ch)
        if ch == escape and quote != "'" and i + 1 < len(text):
            current.append(text[i + 1])
            i += 2
            continue
        if quote and ch == quote:
            quote = ""
        elif not quote and ch in ("'", '"'):
            quote = ch
        i += 1
    if current:
        words.append("".join(current))
    return words
