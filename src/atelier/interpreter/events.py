"""The events of a code cell, as the gateway sends them and as the API streams them.

Pure functions (no I/O), shared by the service and its tests:

* :func:`api_event` checks one gateway event and returns the API's version of
  it (``stdout``, ``stderr``, ``result``, ``error``, ``end``), or ``None`` for
  events the API does not forward;
* :func:`mime_bundle` normalizes a result's MIME bundle (base64 images without
  line breaks, text as text, JSON as JSON, unknown binary types dropped);
* :func:`deadlines` maps a request's ``timeout`` to what the gateway enforces
  and how long the server waits for it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidRequest

__all__ = [
    "BASE64_TYPES",
    "DEFAULT_TIMEOUT",
    "HOST_GRACE",
    "LANGUAGES",
    "MAX_TIMEOUT",
    "START_WAIT",
    "Deadlines",
    "api_event",
    "deadlines",
    "mime_bundle",
]

LANGUAGES = ("python", "javascript", "bash")
DEFAULT_TIMEOUT = 60.0
MAX_TIMEOUT = 24 * 3600.0
# What the server adds to a cell's timeout before it gives up on the gateway:
# the gateway's own interrupt grace (5 s) plus a kernel restart (up to 120 s).
HOST_GRACE = 150.0
# How long the server waits for the first answer (a kernel may be starting).
START_WAIT = 180.0

# image types whose value is base64 text in a Jupyter bundle
BASE64_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp", "application/pdf"})
_TEXT_PREFIXES = ("text/", "image/svg+xml", "application/javascript")
_WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class Deadlines:
    gateway: float | None  # seconds the gateway lets the cell run before interrupting it
    host: float | None  # seconds the server waits for the cell's end, from its start


def deadlines(timeout: float | None) -> Deadlines:
    """``timeout`` (seconds, ``None`` = no limit) → what gateway and server enforce."""
    if timeout is None:
        return Deadlines(None, None)
    if not timeout > 0 or timeout > MAX_TIMEOUT:
        raise InvalidRequest(f"timeout must be in (0, {MAX_TIMEOUT:g}] seconds, got {timeout!r}")
    return Deadlines(float(timeout), float(timeout) + HOST_GRACE)


def mime_bundle(data: Any) -> dict[str, Any]:
    """A result's MIME bundle with every value in its wire form.

    Base64 types lose the line breaks some kernels insert; text types must be
    strings (a list of lines is joined, as in notebook files); ``*json`` types
    keep any JSON value; anything else that is not a string is dropped.
    """
    if not isinstance(data, dict):
        return {}
    out: dict[str, Any] = {}
    for key, value in data.items():
        if not isinstance(key, str) or "/" not in key:
            continue
        if key.endswith("json"):
            out[key] = value
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            out[key] = "".join(value)
        elif isinstance(value, str):
            out[key] = value
        else:
            continue
        if key in BASE64_TYPES:
            out[key] = _WHITESPACE.sub("", out[key])
    return out


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(str(v) for v in value)
    return "" if value is None else str(value)


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def api_event(event: dict[str, Any]) -> dict[str, Any] | None:
    """The API event for one gateway event; ``None`` for events not forwarded."""
    kind = event.get("type")
    if kind in ("stdout", "stderr"):
        data = _text(event.get("data"))
        return {"type": kind, "data": data} if data else None
    if kind == "result":
        bundle = mime_bundle(event.get("data"))
        if not bundle:
            return None
        out: dict[str, Any] = {
            "type": "result",
            "data": bundle,
            "is_main_result": bool(event.get("is_main_result", False)),
        }
        if isinstance(event.get("metadata"), dict) and event["metadata"]:
            out["metadata"] = event["metadata"]
        return out
    if kind == "error" and "name" in event:
        return {
            "type": "error",
            "name": _text(event.get("name")) or "Error",
            "value": _text(event.get("value")),
            "traceback": _text(event.get("traceback")),
        }
    if kind == "end":
        end: dict[str, Any] = {
            "type": "end",
            "execution_count": _int_or_none(event.get("execution_count")),
            "context": _text(event.get("context")),
        }
        if isinstance(event.get("duration_ms"), int | float):
            end["duration_ms"] = float(event["duration_ms"])
        if "exit_code" in event:
            end["exit_code"] = _int_or_none(event.get("exit_code"))
        return end
    return None
