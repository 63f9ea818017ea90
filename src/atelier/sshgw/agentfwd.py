"""Agent forwarding (``ssh -A``).

When a client asks for it, the sessions of that SSH connection get
``SSH_AUTH_SOCK`` naming a unix socket the agent listens on inside the sandbox
(in a fresh 0700 directory owned by the session's user). Each connection made
to it is carried back on an ``auth-agent@openssh.com`` channel to the client's
own ssh-agent. One socket per SSH connection, made at its first session that
asked, removed when the SSH connection ends or the sandbox stops.

asyncssh also opens a unix listener of its own on the gateway host when it
accepts the request (``get_agent_path()``); it is only used here as the sign
that forwarding was granted and is never connected to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

import asyncssh

from ..core.agent_client import Accepted, AgentClient, AgentListener, TcpTunnel
from ..errors import AtelierError
from .forward import relay_tunnel

__all__ = ["AgentForwarder"]

log = logging.getLogger("atelier.sshgw")


class AgentForwarder:
    """The ``SSH_AUTH_SOCK`` of one SSH connection's sessions."""

    def __init__(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._listener: AgentListener | None = None
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None

    async def socket_path(self, agent: AgentClient, user: str | None) -> str | None:
        """The socket inside the sandbox (made on first use); None if it cannot be made."""
        async with self._lock:
            if self._listener is not None and self._loop_task and not self._loop_task.done():
                return self._listener.path
            try:
                listener = await agent.listen_unix(user)
            except AtelierError as exc:
                log.warning("ssh -A: cannot listen in the sandbox: %s", exc.message)
                return None
            self._listener = listener
            self._loop_task = self._spawn(self._accept_loop(listener))
            return listener.path

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _accept_loop(self, listener: AgentListener) -> None:
        try:
            async for accepted in listener:
                self._spawn(self._forward(listener, accepted))
        except AtelierError as exc:
            log.info("ssh -A listener ended: %s", exc.message)

    async def _forward(self, listener: AgentListener, accepted: Accepted) -> None:
        tunnel: TcpTunnel | None = None
        try:
            tunnel = await listener.accept(accepted)
            reader, writer = await self._conn.open_agent_connection()
        except (AtelierError, asyncssh.Error, OSError) as exc:
            log.info("ssh -A connection dropped: %s", exc)
            if tunnel is not None:
                await tunnel.close()
            return
        await relay_tunnel(tunnel, reader, writer)

    async def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(AtelierError):
                await listener.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
