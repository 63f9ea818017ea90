"""One envd request's context (caller, sandbox, agent, user) and Connect stream plumbing."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from ..api.deps import AppContext
from ..core.agent_client import AgentClient
from ..core.auth import Principal
from ..core.models import SandboxRecord
from ..errors import AtelierError
from .connect import Status, encode_envelope, end_stream, from_atelier
from .mapping import user_from_basic

__all__ = ["Call", "EventStream", "Handler", "StreamHandler", "open_call", "stream_body"]

log = logging.getLogger("atelier.e2b")
KEEPALIVE_HEADER = "keepalive-ping-interval"
TIMEOUT_HEADER = "connect-timeout-ms"
MAX_KEEPALIVE = 3600.0


@dataclass(slots=True)
class Call:
    ctx: AppContext
    principal: Principal
    rec: SandboxRecord
    agent: AgentClient
    user: str | None  # envd's Basic-auth user, else the sandbox's default
    timeout: float | None  # Connect-Timeout-Ms, in seconds
    keepalive: float | None  # Keepalive-Ping-Interval, in seconds

    @property
    def sandbox_id(self) -> str:
        return self.rec.id


def _seconds(raw: str | None, scale: float) -> float | None:
    try:
        value = float(raw) / scale if raw else None
    except ValueError:
        return None
    return value if value is not None and value > 0 else None


async def open_call(ctx: AppContext, request: Request, sandbox_id: str) -> Call:
    """Authenticate ``X-Access-Token`` (an Atelier token) and reach the sandbox's agent."""
    principal = await ctx.tokens.authenticate(request.headers.get("x-access-token"))
    rec, agent = await ctx.sandboxes.agent(principal, sandbox_id)
    keepalive = _seconds(request.headers.get(KEEPALIVE_HEADER), 1)
    return Call(
        ctx=ctx,
        principal=principal,
        rec=rec,
        agent=agent,
        user=user_from_basic(request.headers.get("authorization")) or rec.default_user,
        timeout=_seconds(request.headers.get(TIMEOUT_HEADER), 1000),
        keepalive=min(keepalive, MAX_KEEPALIVE) if keepalive else None,
    )


EventStream = AsyncIterator[dict[str, Any] | Status]  # a Status ends the stream with that error
Handler = Callable[[Call, dict[str, Any]], Awaitable[dict[str, Any]]]
StreamHandler = Callable[[Call, dict[str, Any]], EventStream]
_DONE = object()


async def stream_body(
    call: Call, events: EventStream, keepalive: dict[str, Any] | None
) -> AsyncIterator[bytes]:
    """Envelopes of ``events``; keep-alive messages while idle; the call's deadline
    ends the stream with ``deadline_exceeded``; errors end it with their status.

    The events are pumped by a task into a small queue (backpressure stays
    bounded); however the response ends, the task is cancelled, which runs
    the handler's cleanup.
    """
    queue: asyncio.Queue[object] = asyncio.Queue(maxsize=16)

    async def pump() -> None:
        try:
            async for event in events:
                await queue.put(event)
            await queue.put(_DONE)
        except AtelierError as exc:
            await queue.put(from_atelier(exc))
        except Exception as exc:  # a bug must end the stream, not hang it
            log.exception("e2b stream handler failed")
            await queue.put(Status("internal", f"{type(exc).__name__}: {exc}"))

    task = asyncio.get_running_loop().create_task(pump())
    deadline = time.monotonic() + call.timeout if call.timeout else None
    try:
        while True:
            waits = [w for w in (call.keepalive if keepalive else None,) if w]
            if deadline is not None:
                waits.append(max(deadline - time.monotonic(), 0.0))
            try:
                item = await asyncio.wait_for(queue.get(), min(waits) if waits else None)
            except TimeoutError:
                if deadline is not None and time.monotonic() >= deadline:
                    yield end_stream(Status("deadline_exceeded", "the call's timeout passed"))
                    return
                yield encode_envelope(keepalive or {})
                continue
            if item is _DONE:
                yield end_stream()
                return
            if isinstance(item, Status):
                yield end_stream(item)
                return
            assert isinstance(item, dict)
            yield encode_envelope(item)
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
