"""``${...}`` variables in ``devcontainer.json``, as the spec defines them.

Two passes, because some values only exist once the container runs:

* :func:`substitute` (before anything is built) replaces
  ``${localEnv:VAR}`` / ``${localEnv:VAR:default}`` (alias ``${env:...}``),
  ``${localWorkspaceFolder}``, ``${localWorkspaceFolderBasename}``,
  ``${containerWorkspaceFolder}``, ``${containerWorkspaceFolderBasename}`` and
  ``${devcontainerId}``; it leaves ``${containerEnv:...}`` for the second pass;
* :func:`substitute_container_env` (once the container's environment is known)
  replaces ``${containerEnv:VAR}`` / ``${containerEnv:VAR:default}``.

An unset variable without a default becomes the empty string (the spec's
rule). Anything else in ``${...}`` is left exactly as written and reported, so
the caller can warn. Only string values are substituted, never object keys.

"Local" means the machine that runs Atelier's workspace code, so ``local_env``
is whatever the caller passes: Atelier passes the *user's* variables, never
the server's own environment (a repository must not be able to read the
server's secrets through ``${localEnv:...}``).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

__all__ = [
    "SubstitutionContext",
    "compute_devcontainer_id",
    "substitute",
    "substitute_container_env",
]

_VARIABLE = re.compile(r"\$\{([^}]*)\}")
_BASE32 = "0123456789abcdefghijklmnopqrstuv"


def compute_devcontainer_id(labels: Mapping[str, str]) -> str:
    """The spec's label-based ``${devcontainerId}``: stable, 52 alphanumerics.

    SHA-256 of the labels as compact JSON with sorted keys, written in base 32
    (digits then ``a``-``v``, as JavaScript's ``BigInt.toString(32)``) and
    left-padded with ``0``, so the same labels give the same id as the
    reference implementation.
    """
    text = json.dumps(dict(sorted(labels.items())), separators=(",", ":"), ensure_ascii=False)
    number = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest(), "big")
    digits = ""
    while number:
        number, rest = divmod(number, 32)
        digits = _BASE32[rest] + digits
    return digits.rjust(52, "0")


def _basename(path: str) -> str:
    if "\\" in path and "/" not in path:
        return PureWindowsPath(path).name
    return PurePosixPath(path).name


@dataclass(frozen=True)
class SubstitutionContext:
    """What the first pass knows. ``None`` leaves the variable unresolved (reported)."""

    local_env: Mapping[str, str] = field(default_factory=dict)
    local_workspace_folder: str | None = None
    container_workspace_folder: str | None = None
    devcontainer_id: str | None = None

    def lookup(self, expression: str) -> str | None:
        """The value of one ``${expression}``, or ``None`` when it is not ours to resolve."""
        kind, _, rest = expression.partition(":")
        if kind in ("localEnv", "env") and rest:
            name, has_default, default = rest.partition(":")
            if not name:
                return None
            value = self.local_env.get(name)
            return value if value is not None else (default if has_default else "")
        if rest:
            return None
        simple = {
            "localWorkspaceFolder": self.local_workspace_folder,
            "containerWorkspaceFolder": self.container_workspace_folder,
            "devcontainerId": self.devcontainer_id,
        }
        if kind in simple:
            return simple[kind]
        if kind == "localWorkspaceFolderBasename" and self.local_workspace_folder is not None:
            return _basename(self.local_workspace_folder)
        if (
            kind == "containerWorkspaceFolderBasename"
            and self.container_workspace_folder is not None
        ):
            return _basename(self.container_workspace_folder)
        return None


def _walk(value: Any, replace: Any) -> Any:
    if isinstance(value, str):
        return replace(value)
    if isinstance(value, list):
        return [_walk(item, replace) for item in value]
    if isinstance(value, dict):
        return {key: _walk(item, replace) for key, item in value.items()}
    return value


def substitute(
    value: Any, context: SubstitutionContext, unresolved: list[str] | None = None
) -> Any:
    """A copy of ``value`` (any JSON value) with the first-pass variables replaced.

    Every ``${...}`` left as written, other than ``${containerEnv:...}``, is
    appended (once) to ``unresolved``.
    """

    def one(match: re.Match[str]) -> str:
        expression = match.group(1)
        resolved = context.lookup(expression)
        if resolved is not None:
            return resolved
        if (
            not expression.startswith("containerEnv:")
            and unresolved is not None
            and match.group(0) not in unresolved
        ):
            unresolved.append(match.group(0))
        return match.group(0)

    return _walk(value, lambda text: _VARIABLE.sub(one, text))


def substitute_container_env(
    value: Any, container_env: Mapping[str, str], unresolved: list[str] | None = None
) -> Any:
    """A copy of ``value`` with ``${containerEnv:VAR[:default]}`` replaced from ``container_env``.

    A malformed ``${containerEnv}`` (no variable name) is left as written and
    appended to ``unresolved``.
    """

    def one(match: re.Match[str]) -> str:
        kind, _, rest = match.group(1).partition(":")
        if kind != "containerEnv":
            return match.group(0)
        name, has_default, default = rest.partition(":")
        if not name:
            if unresolved is not None and match.group(0) not in unresolved:
                unresolved.append(match.group(0))
            return match.group(0)
        found = container_env.get(name)
        return found if found is not None else (default if has_default else "")

    return _walk(value, lambda text: _VARIABLE.sub(one, text))
