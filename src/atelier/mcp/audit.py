"""The record of every tool call: one JSON line per call.

Besides the entry each sandbox-bound call adds to that sandbox's audit trail
(``Toolbox._trail``, through ``POST /v1/sandboxes/{id}/events``), the MCP
server keeps its own record of every call, sandbox or not: JSON lines on
stderr (logger ``atelier.mcp.audit``) and, with ``--audit-log FILE``,
appended to that file. Each line names the sandbox, so
it can be joined with the server's trail. Arguments are summarised, never
copied whole: file contents and code are reduced to their size, environment
variables to their names.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["AuditLog", "summarize_arguments"]

logger = logging.getLogger("atelier.mcp.audit")

_SIZED = frozenset({"content", "code", "stdin"})
_KEYS_ONLY = frozenset({"env"})
_MAX_STR = 500


def summarize_arguments(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """What of a call's arguments goes into the record."""
    out: dict[str, Any] = {}
    for key, value in arguments.items():
        if value is None:
            continue
        if key in _SIZED and isinstance(value, str):
            out[key] = f"<{len(value.encode('utf-8', 'replace'))} bytes>"
        elif key in _KEYS_ONLY and isinstance(value, Mapping):
            out[key] = sorted(str(k) for k in value)
        elif isinstance(value, str) and len(value) > _MAX_STR:
            out[key] = value[:_MAX_STR] + f"… <{len(value)} chars>"
        else:
            out[key] = value
    return out


class AuditLog:
    """Writes one line per tool call; never raises into the tool call."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()

    def record(
        self,
        *,
        tool: str,
        session: str,
        sandbox_id: str | None,
        arguments: Mapping[str, Any],
        ok: bool,
        started: float,
        error_code: str | None = None,
    ) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "kind": "mcp_tool_call",
            "tool": tool,
            "session": session,
            "sandbox_id": sandbox_id,
            "ok": ok,
            "duration_ms": round((time.monotonic() - started) * 1000),
            "arguments": summarize_arguments(arguments),
        }
        if error_code is not None:
            entry["error"] = error_code
        line = json.dumps(entry, default=str, ensure_ascii=False)
        logger.info("%s", line)
        if self.path is not None:
            try:
                with self._lock, self.path.open("a", encoding="utf-8") as out:
                    out.write(line + "\n")
            except OSError as exc:
                logger.warning("cannot write the audit log %s: %s", self.path, exc)
        return entry
