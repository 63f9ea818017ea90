"""Turning agent process sessions into NDJSON event streams."""

from __future__ import annotations

import codecs
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from ..core.agent_client import Exit, Output, ProcessSession, Started
from ..errors import AtelierError

__all__ = ["event_dict", "ndjson_events"]


def event_dict(event: Started | Output | Exit, decoders: dict[int, Any]) -> dict[str, Any] | None:
    if isinstance(event, Started):
        return {"type": "started", "pid": event.pid}
    if isinstance(event, Output):
        decoder = decoders.setdefault(
            event.channel, codecs.getincrementaldecoder("utf-8")("replace")
        )
        text = decoder.decode(event.data)
        if not text:
            return None
        return {"type": "stdout" if event.channel == 1 else "stderr", "data": text}
    return {
        "type": "exit",
        "exit_code": event.exit_code,
        "signal": event.signal,
        "timed_out": event.timed_out,
    }


async def ndjson_events(
    session: ProcessSession, first: Started | Output | Exit | None = None
) -> AsyncIterator[bytes]:
    """Yield one JSON line per event until exit; detach the session however we leave."""
    decoders: dict[int, Any] = {}
    finished = False
    try:
        if first is not None:
            item = event_dict(first, decoders)
            if item is not None:
                yield _line(item)
            finished = isinstance(first, Exit)
        while not finished:
            try:
                event = await anext(session)
            except StopAsyncIteration:
                break
            except AtelierError as exc:
                yield _line({"type": "error", **exc.to_payload()})
                break
            if isinstance(event, Exit):
                for channel, decoder in decoders.items():
                    tail = decoder.decode(b"", final=True)
                    if tail:
                        yield _line({"type": "stdout" if channel == 1 else "stderr", "data": tail})
                finished = True
            item = event_dict(event, decoders)
            if item is not None:
                yield _line(item)
    finally:
        with contextlib.suppress(Exception):
            await session.detach()


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"
