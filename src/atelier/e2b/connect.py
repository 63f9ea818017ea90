"""The Connect-RPC wire protocol, JSON codec only, as the e2b SDK speaks it to envd.

Unary calls are a plain ``POST`` of a JSON body (``application/json``) answered
by a JSON body, or by an error object ``{"code", "message"}`` with the HTTP
status of its code. Streaming calls (``application/connect+json``) carry
*envelopes* in both directions: one flags byte, a 4-byte big-endian length and
the payload. The server ends a stream with an envelope whose flags have the
end-of-stream bit (``0x02``) set, holding ``{}`` or ``{"error": {...}}``; the
HTTP status of a stream that started is always 200.

Binary protobuf (``application/proto``) is not served: the SDK never sends it.
See docs/e2b.md and ADR 0020.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import AtelierError, InvalidRequest

__all__ = [
    "END_STREAM",
    "STREAM_CONTENT_TYPE",
    "UNARY_CONTENT_TYPE",
    "EnvelopeReader",
    "Status",
    "b64decode",
    "b64encode",
    "decode_message",
    "encode_envelope",
    "end_stream",
    "error_body",
    "from_atelier",
    "read_envelopes",
]

UNARY_CONTENT_TYPE = "application/json"
STREAM_CONTENT_TYPE = "application/connect+json"
COMPRESSED = 0x01
END_STREAM = 0x02
_HEADER = struct.Struct(">BI")
MAX_MESSAGE = 16 * 1024 * 1024  # one request message (stdin chunks, paths) is far smaller

# Connect codes and the HTTP status a unary error is sent with (connectrpc.com/docs/protocol)
HTTP_STATUS: dict[str, int] = {
    "canceled": 499,
    "unknown": 500,
    "invalid_argument": 400,
    "deadline_exceeded": 504,
    "not_found": 404,
    "already_exists": 409,
    "permission_denied": 403,
    "resource_exhausted": 429,
    "failed_precondition": 400,
    "aborted": 409,
    "out_of_range": 400,
    "unimplemented": 501,
    "internal": 500,
    "unavailable": 503,
    "data_loss": 500,
    "unauthenticated": 401,
}

# Atelier error codes (and, failing that, HTTP statuses) -> Connect codes
_BY_ATELIER_CODE = {
    "file_exists": "already_exists",
    "directory_not_empty": "failed_precondition",
    "invalid_state": "unavailable",  # the sandbox is not running
    "sandbox_not_found": "unavailable",  # as e2b's proxy answers for a gone sandbox
}
_BY_STATUS = {
    400: "invalid_argument",
    401: "unauthenticated",
    403: "permission_denied",
    404: "not_found",
    409: "already_exists",
    422: "invalid_argument",
    429: "resource_exhausted",
    502: "unavailable",
    503: "unavailable",
}


@dataclass(frozen=True, slots=True)
class Status:
    """A Connect error status: ``code`` is one of :data:`HTTP_STATUS`'s keys."""

    code: str
    message: str

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 500)


def from_atelier(err: AtelierError) -> Status:
    """The Connect error the SDK maps to the right e2b exception."""
    code = _BY_ATELIER_CODE.get(err.code) or _BY_STATUS.get(err.status, "internal")
    message = err.message
    if err.code in ("sandbox_not_found", "invalid_state"):
        # e2b's SDK recognises a gone sandbox by this phrase (SandboxNotRunningException)
        message = f"{message}: the sandbox was not found or is not running"
    return Status(code, message)


def error_body(err: Status) -> dict[str, str]:
    return {"code": err.code, "message": err.message}


def encode_envelope(payload: Mapping[str, Any], flags: int = 0) -> bytes:
    data = json.dumps(payload, separators=(",", ":")).encode()
    return _HEADER.pack(flags, len(data)) + data


def end_stream(err: Status | None = None) -> bytes:
    return encode_envelope({"error": error_body(err)} if err else {}, END_STREAM)


class EnvelopeReader:
    """Splits a byte stream into envelopes; feed it chunks as they arrive."""

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self._buf = bytearray()
        self._max = max_message

    def feed(self, chunk: bytes) -> list[tuple[int, bytes]]:
        self._buf += chunk
        out: list[tuple[int, bytes]] = []
        while len(self._buf) >= _HEADER.size:
            flags, length = _HEADER.unpack_from(self._buf)
            if length > self._max:
                raise InvalidRequest(f"a message of {length} bytes is too large")
            end = _HEADER.size + length
            if len(self._buf) < end:
                break
            if flags & COMPRESSED:
                raise InvalidRequest("compressed messages are not supported")
            out.append((flags, bytes(self._buf[_HEADER.size : end])))
            del self._buf[:end]
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)


async def read_envelopes(chunks: AsyncIterable[bytes]) -> AsyncIterator[dict[str, Any]]:
    """The JSON messages of an enveloped request body (stops at end-of-stream)."""
    reader = EnvelopeReader()
    async for chunk in chunks:
        for flags, data in reader.feed(chunk):
            if flags & END_STREAM:
                return
            yield decode_message(data)
    if reader.pending:
        raise InvalidRequest("the request ended inside a message")


def decode_message(data: bytes) -> dict[str, Any]:
    if not data:
        return {}
    try:
        message = json.loads(data)
    except ValueError as exc:
        raise InvalidRequest(f"the message is not JSON: {exc}") from exc
    if not isinstance(message, dict):
        raise InvalidRequest("the message must be a JSON object")
    return message


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode(value: object) -> bytes:
    """Protobuf JSON ``bytes``: standard or URL-safe base64, padding optional."""
    if not isinstance(value, str):
        raise InvalidRequest("bytes fields must be base64 strings")
    text = value.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except ValueError as exc:
        raise InvalidRequest(f"invalid base64: {exc}") from exc
