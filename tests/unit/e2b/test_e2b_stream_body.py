"""``stream_body``: envelopes, keep-alives while idle, the call's deadline, errors, cleanup."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any, cast

from atelier.e2b.calls import Call, EventStream, stream_body
from atelier.e2b.connect import END_STREAM, EnvelopeReader, Status
from atelier.errors import FileNotFound

KEEPALIVE = {"keepalive": {}}


def _call(timeout: float | None = None, keepalive: float | None = None) -> Call:
    none = cast(Any, None)
    return Call(none, none, none, none, None, timeout=timeout, keepalive=keepalive)


def _frames(call: Call, events: EventStream) -> list[tuple[int, dict[str, Any]]]:
    async def run() -> bytes:
        return b"".join([chunk async for chunk in stream_body(call, events, KEEPALIVE)])

    return [(flags, json.loads(data)) for flags, data in EnvelopeReader().feed(asyncio.run(run()))]


def test_events_then_a_clean_end() -> None:
    async def events() -> EventStream:
        yield {"n": 1}
        yield {"n": 2}

    assert _frames(_call(), events()) == [(0, {"n": 1}), (0, {"n": 2}), (END_STREAM, {})]


def test_errors_and_statuses_end_the_stream() -> None:
    async def failing() -> EventStream:
        yield {"n": 1}
        raise FileNotFound("no /x")

    frames = _frames(_call(), failing())
    assert frames[-1] == (END_STREAM, {"error": {"code": "not_found", "message": "no /x"}})

    async def timed_out() -> EventStream:
        yield Status("deadline_exceeded", "too slow")
        yield {"never": True}

    assert _frames(_call(), timed_out()) == [
        (END_STREAM, {"error": {"code": "deadline_exceeded", "message": "too slow"}})
    ]

    async def buggy() -> EventStream:
        raise RuntimeError("oops")
        yield {}

    assert _frames(_call(), buggy())[-1][1]["error"]["code"] == "internal"


def test_keepalives_while_idle_and_the_deadline() -> None:
    cleaned = asyncio.Event()

    async def idle() -> AsyncIterator[dict[str, Any] | Status]:
        try:
            await asyncio.sleep(3600)
            yield {}
        finally:
            cleaned.set()

    frames = _frames(_call(timeout=0.35, keepalive=0.1), idle())
    assert frames[0] == (0, KEEPALIVE)
    assert all(frame == (0, KEEPALIVE) for frame in frames[:-1])
    assert frames[-1][0] == END_STREAM
    assert frames[-1][1]["error"]["code"] == "deadline_exceeded"
    assert cleaned.is_set()  # the handler's cleanup ran
