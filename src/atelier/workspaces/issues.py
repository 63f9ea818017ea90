"""Problems found in a configuration file, reported all at once.

Every check of a ``devcontainer.json`` (syntax, schema, files it refers to)
produces :class:`ConfigIssue` values; :func:`issues_error` turns a list of them
into one :class:`~atelier.errors.ValidationFailed` whose ``details`` are::

    {"file": ".devcontainer/devcontainer.json",
     "errors": [{"path": "build.dockerfile", "message": "42 is not of type 'string'",
                 "line": 5, "column": 19}, ...]}

so an API client gets every problem in one round trip, and a human gets a
message naming the property and the line.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from atelier.errors import ValidationFailed

__all__ = ["ConfigIssue", "format_path", "issues_error"]

_PLAIN_KEY = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$-]*$")
_MAX_LISTED = 20


def format_path(path: Sequence[str | int]) -> str:
    """``("build", "dockerfile")`` → ``build.dockerfile``; ``("forwardPorts", 2)`` →
    ``forwardPorts[2]``; keys that are not identifiers are quoted: ``features["./x"]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY.match(part):
            out += f".{part}" if out else part
        else:
            out += '["' + part.replace("\\", "\\\\").replace('"', '\\"') + '"]'
    return out


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem: where (property path, line, column) and what."""

    path: tuple[str | int, ...]
    message: str
    line: int | None = None
    column: int | None = None

    def describe(self) -> str:
        where = f"line {self.line}: " if self.line is not None else ""
        prop = format_path(self.path)
        return f"{where}{prop}: {self.message}" if prop else f"{where}{self.message}"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": format_path(self.path), "message": self.message}
        if self.line is not None:
            out["line"] = self.line
            out["column"] = self.column
        return out


def _sort_key(issue: ConfigIssue) -> tuple[int, int, str]:
    return (issue.line or 0, issue.column or 0, format_path(issue.path))


def issues_error(
    source: str, issues: Sequence[ConfigIssue], *, what: str = "", message: str | None = None
) -> ValidationFailed:
    """One :class:`ValidationFailed` carrying every issue, sorted by position.

    ``message`` replaces the generated summary (``"<source>: <what> (N problems): ..."``).
    """
    ordered = sorted(issues, key=_sort_key)
    if message is None:
        head = f"{source}: {what or 'invalid configuration'}"
        listed = "; ".join(i.describe() for i in ordered[:_MAX_LISTED])
        more = f"; and {len(ordered) - _MAX_LISTED} more" if len(ordered) > _MAX_LISTED else ""
        noun = "problem" if len(ordered) == 1 else "problems"
        message = f"{head} ({len(ordered)} {noun}): {listed}{more}"
    return ValidationFailed(
        message, details={"file": source, "errors": [i.to_dict() for i in ordered]}
    )
