"""``sandbox.run_code``: stateful code cells (python, javascript, bash) in a sandbox.

::

    with Sandbox.create(template="code-interpreter") as sb:
        sb.run_code("x = 41")
        print(sb.run_code("x + 1").text)                  # "42"
        png = sb.run_code("import matplotlib.pyplot as plt; plt.plot([1, 2]); plt.show()")
        open("plot.png", "wb").write(png.results[0].png_bytes())

Variables live in a *context* (a kernel); each language has a default context
named after it, and any other name makes a new one on first use. An exception
in the code is *not* raised: it is ``execution.error`` (name, value,
traceback). A cell that runs out of ``timeout`` is interrupted and reports a
``TimeoutError`` there; the context keeps its state. Failures of the platform
(sandbox gone, interpreter could not start) raise
:class:`atelier.errors.AtelierError` subclasses. See docs/interpreter.md.
"""

from __future__ import annotations

import base64
import builtins
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeAlias
from urllib.parse import quote

import httpx

from atelier.errors import from_payload
from atelier.sdk._base import Call, NdjsonDecoder, StreamCall, parse_none
from atelier.sdk._http import AsyncHttp, SyncHttp

__all__ = [
    "AsyncCodeInterpreter",
    "CodeContext",
    "CodeInterpreter",
    "ErrorHandler",
    "Execution",
    "ExecutionError",
    "Logs",
    "Result",
    "ResultHandler",
    "TextHandler",
    "code_event",
]

DEFAULT_CODE_TIMEOUT = 60.0

ResultHandler: TypeAlias = Callable[["Result"], Any]
ErrorHandler: TypeAlias = Callable[["ExecutionError"], Any]
TextHandler: TypeAlias = Callable[[str], Any]


# -- models -----------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    """One rich output of a cell: a MIME bundle (``data``) with typed accessors.

    ``is_main_result`` is true for the value of the cell's last expression;
    displays (``plt.show()``, ``display(...)``) are results too.
    """

    data: dict[str, Any]
    is_main_result: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)

    def _str(self, mime: str) -> str | None:
        value = self.data.get(mime)
        return value if isinstance(value, str) else None

    @property
    def text(self) -> str | None:
        return self._str("text/plain")

    @property
    def html(self) -> str | None:
        return self._str("text/html")

    @property
    def markdown(self) -> str | None:
        return self._str("text/markdown")

    @property
    def svg(self) -> str | None:
        return self._str("image/svg+xml")

    @property
    def png(self) -> str | None:
        """The PNG image, base64-encoded (see :meth:`png_bytes`)."""
        return self._str("image/png")

    @property
    def jpeg(self) -> str | None:
        """The JPEG image, base64-encoded."""
        return self._str("image/jpeg")

    @property
    def latex(self) -> str | None:
        return self._str("text/latex")

    @property
    def javascript(self) -> str | None:
        return self._str("application/javascript")

    @property
    def json(self) -> Any:
        """The ``application/json`` value (any JSON value), or None."""
        return self.data.get("application/json")

    def png_bytes(self) -> bytes | None:
        png = self.png
        return None if png is None else base64.b64decode(png)

    def jpeg_bytes(self) -> bytes | None:
        jpeg = self.jpeg
        return None if jpeg is None else base64.b64decode(jpeg)

    def formats(self) -> builtins.list[str]:
        """The MIME types this result carries."""
        return builtins.list(self.data)

    def __str__(self) -> str:
        return self.text or ""


@dataclass(frozen=True)
class ExecutionError:
    """An exception raised by the code (or ``TimeoutError``, ``ExitStatus`` for bash)."""

    name: str
    value: str
    traceback: str = ""

    def __str__(self) -> str:
        return f"{self.name}: {self.value}"


@dataclass
class Logs:
    stdout: builtins.list[str] = field(default_factory=builtins.list)
    stderr: builtins.list[str] = field(default_factory=builtins.list)


@dataclass
class Execution:
    """What a cell did: its results, its output and its error, if any."""

    results: builtins.list[Result] = field(default_factory=builtins.list)
    logs: Logs = field(default_factory=Logs)
    error: ExecutionError | None = None
    execution_count: int | None = None
    context: str | None = None
    duration_ms: float | None = None
    exit_code: int | None = None  # bash cells: the status of the last command

    @property
    def text(self) -> str | None:
        """The text of the main result (the last expression's value), if any."""
        for result in self.results:
            if result.is_main_result:
                return result.text
        return None

    @property
    def stdout(self) -> str:
        return "".join(self.logs.stdout)

    @property
    def stderr(self) -> str:
        return "".join(self.logs.stderr)

    @property
    def timed_out(self) -> bool:
        return self.error is not None and self.error.name == "TimeoutError"


@dataclass(frozen=True)
class CodeContext:
    name: str
    language: str
    cwd: str
    created_at: str
    execution_count: int = 0
    alive: bool = True

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> CodeContext:
        return cls(
            name=str(obj["name"]),
            language=str(obj["language"]),
            cwd=str(obj.get("cwd", "")),
            created_at=str(obj.get("created_at", "")),
            execution_count=int(obj.get("execution_count") or 0),
            alive=bool(obj.get("alive", True)),
        )


# -- wire ----------------------------------------------------------------------------

CodeEvent: TypeAlias = tuple[str, Any]  # ("stdout", str) | ("result", Result) | ...


def code_event(obj: dict[str, Any]) -> CodeEvent | None:
    """One NDJSON event of a cell; platform failures (``error`` with ``code``) raise."""
    kind = obj.get("type")
    if kind in ("stdout", "stderr"):
        return kind, str(obj.get("data", ""))
    if kind == "result":
        data = obj.get("data")
        meta = obj.get("metadata")
        return kind, Result(
            data=dict(data) if isinstance(data, dict) else {},
            is_main_result=bool(obj.get("is_main_result", False)),
            metadata=dict(meta) if isinstance(meta, dict) else {},
        )
    if kind == "error":
        if "code" in obj and "name" not in obj:
            raise from_payload(obj)
        return kind, ExecutionError(
            str(obj.get("name", "Error")), str(obj.get("value", "")), str(obj.get("traceback", ""))
        )
    if kind == "end":
        return kind, obj
    return None


def _sb(sandbox_id: str) -> str:
    return f"/v1/sandboxes/{quote(sandbox_id, safe='')}/code"


def _run_call(
    sandbox_id: str, code: str, language: str, context: str | None, timeout: float | None
) -> StreamCall[CodeEvent]:
    body: dict[str, Any] = {"code": code, "language": language, "timeout": timeout}
    if context is not None:
        body["context"] = context
    return StreamCall("POST", _sb(sandbox_id), lambda: NdjsonDecoder(code_event), json=body)


def _context_call(method: str, path: str, json: Any = None) -> Call[CodeContext]:
    return Call(method, path, lambda r: CodeContext.from_json(r.json()), json=json)


def _list_call(sandbox_id: str) -> Call[builtins.list[CodeContext]]:
    def parse(response: httpx.Response) -> builtins.list[CodeContext]:
        return [CodeContext.from_json(c) for c in response.json().get("contexts", [])]

    return Call("GET", f"{_sb(sandbox_id)}/contexts", parse)


def _create_call(
    sandbox_id: str, language: str, name: str | None, cwd: str | None
) -> Call[CodeContext]:
    body = {k: v for k, v in {"language": language, "name": name, "cwd": cwd}.items() if v}
    return _context_call("POST", f"{_sb(sandbox_id)}/contexts", body)


class _Collector:
    """Events → :class:`Execution`, calling the handlers as events arrive."""

    def __init__(
        self,
        on_stdout: TextHandler | None,
        on_stderr: TextHandler | None,
        on_result: ResultHandler | None,
        on_error: ErrorHandler | None,
    ) -> None:
        self.execution = Execution()
        self._handlers: dict[str, Callable[[Any], Any] | None] = {
            "stdout": on_stdout,
            "stderr": on_stderr,
            "result": on_result,
            "error": on_error,
        }

    def feed(self, event: CodeEvent) -> Any:
        kind, value = event
        ex = self.execution
        if kind == "stdout":
            ex.logs.stdout.append(value)
        elif kind == "stderr":
            ex.logs.stderr.append(value)
        elif kind == "result":
            ex.results.append(value)
        elif kind == "error":
            ex.error = value
        elif kind == "end":
            count = value.get("execution_count")
            ex.execution_count = count if isinstance(count, int) else None
            ex.context = value.get("context") or None
            duration = value.get("duration_ms")
            ex.duration_ms = float(duration) if isinstance(duration, int | float) else None
            code = value.get("exit_code")
            ex.exit_code = code if isinstance(code, int) else None
            return None
        handler = self._handlers.get(kind)
        return handler(value) if handler is not None else None


# -- clients ---------------------------------------------------------------------------


class CodeInterpreter:
    """Cells and contexts of one sandbox; ``sandbox.run_code`` uses it."""

    def __init__(self, http: SyncHttp, sandbox_id: str) -> None:
        self._http = http
        self._sandbox_id = sandbox_id

    @classmethod
    def of(cls, sandbox: Any) -> CodeInterpreter:
        """The interpreter of a :class:`~atelier.sdk.sandbox.Sandbox`."""
        return cls(sandbox._http, sandbox.id)

    def run(
        self,
        code: str,
        *,
        language: str = "python",
        context: str | None = None,
        timeout: float | None = DEFAULT_CODE_TIMEOUT,
        on_stdout: TextHandler | None = None,
        on_stderr: TextHandler | None = None,
        on_result: ResultHandler | None = None,
        on_error: ErrorHandler | None = None,
    ) -> Execution:
        collector = _Collector(on_stdout, on_stderr, on_result, on_error)
        call = _run_call(self._sandbox_id, code, language, context, timeout)
        with self._http.stream(call) as events:
            for event in events:
                collector.feed(event)
        return collector.execution

    def list_contexts(self) -> builtins.list[CodeContext]:
        return self._http.call(_list_call(self._sandbox_id))

    def create_context(
        self, language: str = "python", *, name: str | None = None, cwd: str | None = None
    ) -> CodeContext:
        return self._http.call(_create_call(self._sandbox_id, language, name, cwd))

    def restart_context(self, name: str) -> CodeContext:
        path = f"{_sb(self._sandbox_id)}/contexts/{quote(name, safe='')}/restart"
        return self._http.call(_context_call("POST", path))

    def delete_context(self, name: str) -> None:
        path = f"{_sb(self._sandbox_id)}/contexts/{quote(name, safe='')}"
        self._http.call(Call("DELETE", path, parse_none))


class AsyncCodeInterpreter:
    """The async mirror of :class:`CodeInterpreter` (handlers may be coroutine functions)."""

    def __init__(self, http: AsyncHttp, sandbox_id: str) -> None:
        self._http = http
        self._sandbox_id = sandbox_id

    @classmethod
    def of(cls, sandbox: Any) -> AsyncCodeInterpreter:
        return cls(sandbox._http, sandbox.id)

    async def run(
        self,
        code: str,
        *,
        language: str = "python",
        context: str | None = None,
        timeout: float | None = DEFAULT_CODE_TIMEOUT,
        on_stdout: TextHandler | None = None,
        on_stderr: TextHandler | None = None,
        on_result: ResultHandler | None = None,
        on_error: ErrorHandler | None = None,
    ) -> Execution:
        collector = _Collector(on_stdout, on_stderr, on_result, on_error)
        call = _run_call(self._sandbox_id, code, language, context, timeout)
        async with self._http.stream(call) as events:
            async for event in events:
                if inspect.isawaitable(handled := collector.feed(event)):
                    await handled
        return collector.execution

    async def list_contexts(self) -> builtins.list[CodeContext]:
        return await self._http.call(_list_call(self._sandbox_id))

    async def create_context(
        self, language: str = "python", *, name: str | None = None, cwd: str | None = None
    ) -> CodeContext:
        return await self._http.call(_create_call(self._sandbox_id, language, name, cwd))

    async def restart_context(self, name: str) -> CodeContext:
        path = f"{_sb(self._sandbox_id)}/contexts/{quote(name, safe='')}/restart"
        return await self._http.call(_context_call("POST", path))

    async def delete_context(self, name: str) -> None:
        path = f"{_sb(self._sandbox_id)}/contexts/{quote(name, safe='')}"
        await self._http.call(Call("DELETE", path, parse_none))
