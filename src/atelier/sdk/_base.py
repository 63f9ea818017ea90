"""The I/O-free core shared by the sync and the async SDK.

Everything that is not a socket read or write lives here once: configuration,
request descriptions (:class:`Call`, :class:`StreamCall`), error mapping,
incremental NDJSON decoding, command-event parsing and result collection, and
the PTY frame protocol. ``_http.py`` performs the I/O, sync and async.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeAlias, TypeVar
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx

from atelier.errors import (
    ApiConnectionError,
    AtelierError,
    AuthenticationError,
    error_class_for,
    from_payload,
)
from atelier.sdk.models import CommandEvent, CommandResult, Exit, Started, Stderr, Stdout

__all__ = [
    "CONNECT_TIMEOUT",
    "DEFAULT_API_URL",
    "DEFAULT_REQUEST_TIMEOUT",
    "USER_AGENT",
    "Call",
    "ConnectionConfig",
    "Decoder",
    "NdjsonDecoder",
    "OutputHandler",
    "PtyFrames",
    "RawDecoder",
    "ResultCollector",
    "StreamCall",
    "error_from_response",
    "event_decoder",
    "parse_event",
    "parse_none",
    "translate_errors",
    "ws_handshake_error",
]

T = TypeVar("T")

DEFAULT_API_URL = "http://127.0.0.1:8080"
DEFAULT_REQUEST_TIMEOUT = 120.0
CONNECT_TIMEOUT = 10.0
USER_AGENT = "atelier-python-sdk/0.1"

Params: TypeAlias = list[tuple[str, str]]
OutputHandler: TypeAlias = Callable[[str], Any]


# -- configuration -----------------------------------------------------------


@dataclass(frozen=True)
class ConnectionConfig:
    """Where the API is and how to authenticate; resolved once per client."""

    api_url: str
    token: str = field(repr=False)
    request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT

    @classmethod
    def resolve(
        cls,
        api_url: str | None = None,
        token: str | None = None,
        request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
    ) -> ConnectionConfig:
        """Fill in ``ATELIER_URL`` / ``ATELIER_TOKEN``; a missing token fails here."""
        url = (api_url or os.environ.get("ATELIER_URL") or DEFAULT_API_URL).rstrip("/")
        tok = token or os.environ.get("ATELIER_TOKEN")
        if not tok:
            raise AuthenticationError(
                "no API token: pass token=... or set ATELIER_TOKEN "
                "(the server writes the admin token to <data_dir>/admin-token)"
            )
        return cls(api_url=url, token=tok, request_timeout=request_timeout)

    @property
    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def headers(self) -> dict[str, str]:
        return {**self.auth_headers, "User-Agent": USER_AGENT}

    def timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self.request_timeout, connect=CONNECT_TIMEOUT)

    def stream_timeout(self) -> httpx.Timeout:
        """Streams may stay silent for as long as the process does: no read timeout."""
        return httpx.Timeout(self.request_timeout, connect=CONNECT_TIMEOUT, read=None)

    def ws_url(self, path: str, params: Params) -> str:
        parts = urlsplit(self.api_url)
        scheme = {"https": "wss", "http": "ws"}.get(parts.scheme, parts.scheme)
        base = parts.path.rstrip("/")
        return urlunsplit((scheme, parts.netloc, base + path, urlencode(params), ""))


# -- request descriptions ----------------------------------------------------


def parse_none(response: httpx.Response) -> None:
    """For answers without a body (``204``)."""
    return None


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request/response exchange and how to turn the answer into ``T``."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: Params = field(default_factory=list)
    json: Any = None


@dataclass(frozen=True)
class StreamCall(Generic[T]):
    """A request whose body is consumed incrementally through a :class:`Decoder`."""

    method: str
    path: str
    decoder: Callable[[], Decoder[T]]
    params: Params = field(default_factory=list)
    json: Any = None


# -- errors ------------------------------------------------------------------


def error_from_response(status: int, body: bytes, reason: str = "") -> AtelierError:
    """Map an HTTP error answer to the matching :class:`AtelierError`."""
    payload: Any = None
    try:
        payload = json.loads(body) if body else None
    except ValueError:
        payload = None
    if isinstance(payload, dict) and "code" in payload:
        return from_payload(payload, status)
    if isinstance(payload, dict) and "detail" in payload:
        message = str(payload["detail"])
    else:
        message = body.decode("utf-8", "replace").strip() or reason or "request failed"
    cls = error_class_for("", status)
    return cls(f"HTTP {status}: {message}", details={"status": status})


@contextmanager
def translate_errors(what: str = "request") -> Iterator[None]:
    """Turn httpx transport failures into :class:`ApiConnectionError`."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise ApiConnectionError(
            f"{what} timed out: {exc or type(exc).__name__}", details={"timeout": True}
        ) from exc
    except httpx.TransportError as exc:
        raise ApiConnectionError(
            f"cannot reach the Atelier API: {exc or type(exc).__name__}"
        ) from exc


# -- incremental decoding ----------------------------------------------------


class Decoder(Protocol[T]):
    """Turns body chunks into items; ``finish`` flushes what is left at the end."""

    def feed(self, chunk: bytes) -> list[T]: ...

    def finish(self) -> list[T]: ...


class RawDecoder:
    """Passes body chunks through unchanged (file downloads)."""

    def feed(self, chunk: bytes) -> list[bytes]:
        return [chunk] if chunk else []

    def finish(self) -> list[bytes]:
        return []


class NdjsonDecoder(Generic[T]):
    """Newline-delimited JSON, robust to lines (and UTF-8 sequences) split across chunks.

    Lines are split on the byte ``\\n`` before decoding: that byte never occurs
    inside a multi-byte UTF-8 sequence, so a character cut between two chunks
    is reassembled before it is decoded. ``item`` maps each object to a value,
    or to ``None`` to skip it. When ``item`` raises (an ``error`` event), the
    items decoded before it are still returned and the exception is raised by
    the next ``feed``/``finish`` call, so no output that preceded it is lost.
    """

    def __init__(self, item: Callable[[dict[str, Any]], T | None]) -> None:
        self._item = item
        self._buffer = bytearray()
        self._error: BaseException | None = None

    def _line(self, raw: bytes | bytearray) -> T | None:
        text = bytes(raw).decode("utf-8", "replace").strip()
        if not text:
            return None
        try:
            obj = json.loads(text)
        except ValueError as exc:
            raise AtelierError(f"malformed event from the server: {text[:200]!r}") from exc
        if not isinstance(obj, dict):
            raise AtelierError(f"malformed event from the server: {text[:200]!r}")
        return self._item(obj)

    def _raise_deferred(self) -> None:
        if self._error is not None:
            raise self._error

    def _decode(self, lines: list[bytes]) -> list[T]:
        out: list[T] = []
        for line in lines:
            try:
                value = self._line(line)
            except Exception as exc:
                self._error = exc
                break
            if value is not None:
                out.append(value)
        if not out:
            self._raise_deferred()
        return out

    def feed(self, chunk: bytes) -> list[T]:
        self._raise_deferred()
        self._buffer.extend(chunk)
        if b"\n" not in chunk:
            return []
        *lines, rest = bytes(self._buffer).split(b"\n")
        self._buffer = bytearray(rest)
        return self._decode(lines)

    def finish(self) -> list[T]:
        self._raise_deferred()
        rest, self._buffer = bytes(self._buffer), bytearray()
        return self._decode([rest])


# -- commands ----------------------------------------------------------------


def parse_event(obj: dict[str, Any]) -> CommandEvent | None:
    """One NDJSON command event; ``error`` events raise, unknown types are skipped."""
    kind = obj.get("type")
    if kind == "stdout":
        return Stdout(str(obj.get("data", "")))
    if kind == "stderr":
        return Stderr(str(obj.get("data", "")))
    if kind == "started":
        return Started(int(obj["pid"]))
    if kind == "exit":
        code = obj.get("exit_code")
        return Exit(
            exit_code=-1 if code is None else int(code),
            signal=obj.get("signal"),
            timed_out=bool(obj.get("timed_out", False)),
        )
    if kind == "error":
        raise from_payload(
            {
                "code": obj.get("code", "agent_error"),
                "message": obj.get("message", "command failed"),
                "details": obj.get("details"),
            }
        )
    return None


def event_decoder() -> NdjsonDecoder[CommandEvent]:
    return NdjsonDecoder(parse_event)


class ResultCollector:
    """Accumulates command events into a :class:`CommandResult`.

    ``feed`` returns whatever the output handler returned, so the async SDK can
    await coroutine handlers while the sync SDK ignores the value.
    """

    def __init__(
        self,
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
        pid: int | None = None,
    ) -> None:
        self._on_stdout = on_stdout
        self._on_stderr = on_stderr
        self._stdout: list[str] = []
        self._stderr: list[str] = []
        self.pid = pid
        self.exit: Exit | None = None

    def feed(self, event: CommandEvent) -> Any:
        if isinstance(event, Stdout):
            self._stdout.append(event.data)
            return self._on_stdout(event.data) if self._on_stdout else None
        if isinstance(event, Stderr):
            self._stderr.append(event.data)
            return self._on_stderr(event.data) if self._on_stderr else None
        if isinstance(event, Started):
            self.pid = event.pid
        elif isinstance(event, Exit):
            self.exit = event
        return None

    def result(self) -> CommandResult:
        if self.exit is None:
            raise ApiConnectionError("the event stream ended before the process exited")
        return CommandResult(
            stdout="".join(self._stdout),
            stderr="".join(self._stderr),
            exit_code=self.exit.exit_code,
            signal=self.exit.signal,
            timed_out=self.exit.timed_out,
            pid=self.pid,
        )


# -- PTY ---------------------------------------------------------------------


class PtyFrames:
    """The PTY WebSocket protocol: binary frames are output, text frames are JSON control."""

    def __init__(self) -> None:
        self.exit_code: int | None = None
        self.ended = False  # set by the session on close; by an error frame here

    @staticmethod
    def resize(cols: int, rows: int) -> str:
        return json.dumps({"type": "resize", "cols": int(cols), "rows": int(rows)})

    @staticmethod
    def input(data: bytes | str) -> bytes:
        return data.encode("utf-8") if isinstance(data, str) else bytes(data)

    def handle(self, message: bytes | str) -> bytes | None:
        """Output bytes for an output frame, ``None`` for a control frame."""
        if isinstance(message, bytes | bytearray | memoryview):
            return bytes(message)
        try:
            obj = json.loads(message)
        except ValueError:
            return None
        if isinstance(obj, dict):
            if obj.get("type") == "exit":
                code = obj.get("exit_code")
                self.exit_code = -1 if code is None else int(code)
            elif obj.get("type") == "error":  # the server could not open the terminal
                self.ended = True
                raise from_payload(obj)
        return None


def ws_handshake_error(exc: BaseException) -> AtelierError:
    """Map a failed WebSocket handshake / connection to an :class:`AtelierError`."""
    from websockets.exceptions import InvalidStatus

    if isinstance(exc, InvalidStatus):
        response = exc.response
        return error_from_response(
            response.status_code, bytes(response.body or b""), response.reason_phrase
        )
    if isinstance(exc, TimeoutError):
        return ApiConnectionError("opening the terminal timed out", details={"timeout": True})
    return ApiConnectionError(f"cannot open the terminal: {exc or type(exc).__name__}")
