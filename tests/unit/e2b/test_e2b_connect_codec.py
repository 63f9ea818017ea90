"""The Connect envelope framing, the JSON message codec and the error-code table."""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator

import pytest

from atelier.e2b.connect import (
    END_STREAM,
    EnvelopeReader,
    Status,
    b64decode,
    b64encode,
    decode_message,
    encode_envelope,
    end_stream,
    from_atelier,
    read_envelopes,
)
from atelier.errors import (
    AgentFailure,
    AtelierError,
    AuthenticationError,
    FileExists,
    FileNotFound,
    InvalidRequest,
    InvalidStateTransition,
    IsADirectory,
    ProcessNotFound,
    SandboxNotFound,
)


def test_envelope_layout() -> None:
    frame = encode_envelope({"a": 1})
    assert frame[0] == 0
    assert struct.unpack(">I", frame[1:5])[0] == len(frame) - 5
    assert json.loads(frame[5:]) == {"a": 1}
    last = end_stream()
    assert last[0] == END_STREAM and json.loads(last[5:]) == {}
    failed = end_stream(Status("not_found", "gone"))
    assert json.loads(failed[5:]) == {"error": {"code": "not_found", "message": "gone"}}


def test_reader_reassembles_frames_split_anywhere() -> None:
    stream = encode_envelope({"n": 1}) + encode_envelope({"n": 2}) + end_stream()
    for cut in range(1, len(stream)):
        reader = EnvelopeReader()
        got = reader.feed(stream[:cut]) + reader.feed(stream[cut:])
        assert [flags for flags, _ in got] == [0, 0, END_STREAM]
        assert [json.loads(data) for _, data in got] == [{"n": 1}, {"n": 2}, {}]
        assert reader.pending == 0


def test_reader_refuses_oversized_and_compressed_messages() -> None:
    with pytest.raises(InvalidRequest, match="too large"):
        EnvelopeReader(max_message=10).feed(struct.pack(">BI", 0, 11))
    with pytest.raises(InvalidRequest, match="compressed"):
        EnvelopeReader().feed(struct.pack(">BI", 1, 2) + b"{}")


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def _collect(parts: list[bytes]) -> list[dict[str, object]]:
    return [m async for m in read_envelopes(_chunks(*parts))]


def test_read_envelopes_stops_at_end_of_stream_and_rejects_truncation() -> None:
    body = encode_envelope({"start": {}}) + end_stream() + encode_envelope({"late": 1})
    assert asyncio.run(_collect([body[:3], body[3:]])) == [{"start": {}}]
    with pytest.raises(InvalidRequest, match="ended inside a message"):
        asyncio.run(_collect([encode_envelope({"x": 1})[:-1]]))


def test_decode_message() -> None:
    assert decode_message(b"") == {}
    assert decode_message(b'{"path": "/a"}') == {"path": "/a"}
    with pytest.raises(InvalidRequest):
        decode_message(b"[1]")
    with pytest.raises(InvalidRequest):
        decode_message(b"{nope")


def test_base64_accepts_both_alphabets_without_padding() -> None:
    data = bytes([0xFB, 0xFF, 0xFE, 0x00])
    assert b64decode(b64encode(data)) == data
    assert b64decode("-__-AA") == bytes([0xFB, 0xFF, 0xFE, 0x00])
    with pytest.raises(InvalidRequest):
        b64decode("***")
    with pytest.raises(InvalidRequest):
        b64decode(5)


@pytest.mark.parametrize(
    ("error", "code", "status"),
    [
        (FileNotFound("x"), "not_found", 404),
        (ProcessNotFound("x"), "not_found", 404),
        (FileExists("x"), "already_exists", 409),
        (IsADirectory("x"), "invalid_argument", 400),
        (InvalidRequest("x"), "invalid_argument", 400),
        (AuthenticationError("x"), "unauthenticated", 401),
        (AgentFailure("x"), "internal", 500),
        (SandboxNotFound("x"), "unavailable", 503),
        (InvalidStateTransition("x"), "unavailable", 503),
    ],
)
def test_atelier_errors_become_connect_codes(error: AtelierError, code: str, status: int) -> None:
    mapped = from_atelier(error)
    assert (mapped.code, mapped.http_status) == (code, status)


def test_a_gone_sandbox_reads_as_not_running_to_the_sdk() -> None:
    # e2b's SDK recognises "was not found" in an UNAVAILABLE error (SandboxNotRunningException)
    assert "was not found" in from_atelier(SandboxNotFound("sandbox sb-1 does not exist")).message
