"""Tool results: successes with text + structured content, failures as ``isError`` results.

An Atelier error (or a bad argument this package catches itself) is never
raised through the MCP SDK: it becomes a ``CallToolResult`` with
``isError: true``, the text ``error: <message> (<code>)`` and
``structuredContent: {"error": {"code", "message", "details"?}}``, so the
model can read it and the server keeps serving.
"""

from __future__ import annotations

import json
from typing import Any

from mcp.types import CallToolResult, TextContent

from atelier.errors import AtelierError, InvalidRequest

__all__ = ["ToolFailure", "error_result", "ok_result"]


class ToolFailure(InvalidRequest):
    """A tool could not do what was asked for a reason this package found itself.

    Its result names the specific ``tool_code`` (``invalid_path``...); the class
    code only keeps codes unique across the error tree."""

    code = "mcp_tool_failure"

    def __init__(self, message: str, code: str = "invalid_request", **details: Any) -> None:
        super().__init__(message, details=details or None)
        self._code = code

    @property
    def tool_code(self) -> str:
        return self._code


def error_code(exc: AtelierError) -> str:
    return exc.tool_code if isinstance(exc, ToolFailure) else exc.code


def error_result(exc: AtelierError) -> CallToolResult:
    code = error_code(exc)
    payload: dict[str, Any] = {"code": code, "message": exc.message}
    if exc.details:
        payload["details"] = exc.details
    return CallToolResult(
        content=[TextContent(type="text", text=f"error: {exc.message} ({code})")],
        structured_content={"error": payload},
        is_error=True,
    )


def ok_result(text: str, data: dict[str, Any] | None = None) -> CallToolResult:
    """``text`` is what a model reads; ``data`` the same facts as JSON (structuredContent)."""
    return CallToolResult(
        content=[TextContent(type="text", text=text)],
        structured_content=data,
    )


def as_json(data: Any) -> str:
    return json.dumps(data, indent=2, default=str, ensure_ascii=False)
