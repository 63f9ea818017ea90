"""Remote port forwarding (``ssh -R [bind:]port:host:hostport``).

The agent listens on ``port`` inside the sandbox (``listen``); each connection
it accepts is claimed (``accept``) and carried back to the client on a
``forwarded-tcpip`` channel, where the client connects it to ``host:hostport``.
The listener lives as long as the forward: cancelled by the client, closed with
the SSH connection, or ended by the sandbox (stopped, agent restarted).

Bind addresses: ``""``/``localhost`` mean the sandbox's loopback (as sshd
without ``GatewayPorts``), ``*`` every address of the sandbox; any other is
used as given. Port ``0`` picks a free port, which the client is told.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncssh

from ..core.agent_client import Accepted, AgentListener, TcpTunnel
from ..errors import AtelierError
from .access import SandboxAccess
from .forward import relay_tunnel

__all__ = ["SandboxListener", "bind_address", "listen_in_sandbox"]

log = logging.getLogger("atelier.sshgw")

_LOOPBACK_NAMES = {"", "localhost", "localhost.localdomain", "ip6-localhost"}
_ALL_NAMES = {"*", "0.0.0.0"}


def bind_address(listen_host: str) -> str:
    """Where the agent binds for a ``-R`` bind address."""
    name = listen_host.lower()
    if name in _LOOPBACK_NAMES:
        return "127.0.0.1"
    if name in _ALL_NAMES:
        return "0.0.0.0"
    return listen_host


class SandboxListener(asyncssh.SSHListener):
    """An asyncssh listener whose socket is inside the sandbox."""

    def __init__(
        self,
        conn: asyncssh.SSHServerConnection,
        access: SandboxAccess,
        listener: AgentListener,
        listen_host: str,
    ) -> None:
        super().__init__()
        self._conn = conn
        self._access = access
        self._listener = listener
        self._listen_host = listen_host
        self._port = listener.port or 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = asyncio.Event()
        self._loop_task = asyncio.get_running_loop().create_task(self._accept_loop())

    def get_port(self) -> int:
        return self._port

    def close(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            self._loop_task.cancel()
            task = asyncio.get_running_loop().create_task(self._listener.close())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def wait_closed(self) -> None:
        await self._closed.wait()
        with contextlib.suppress(BaseException):
            await self._loop_task

    async def _accept_loop(self) -> None:
        try:
            async for accepted in self._listener:
                task = asyncio.get_running_loop().create_task(self._forward(accepted))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        except AtelierError as exc:
            log.info(
                "ssh -R listener on port %s in %s ended: %s",
                self._port,
                self._access.sandbox_id,
                exc.message,
            )
        finally:
            self.close()

    async def _forward(self, accepted: Accepted) -> None:
        tunnel: TcpTunnel | None = None
        try:
            tunnel = await self._listener.accept(accepted)
            reader, writer = await self._conn.open_connection(
                self._listen_host, self._port, accepted.peer_host, accepted.peer_port
            )
        except (AtelierError, asyncssh.Error, OSError) as exc:
            log.info("ssh -R connection to port %s dropped: %s", self._port, exc)
            if tunnel is not None:
                await tunnel.close()
            return
        with self._access.attached():  # an open connection keeps the sandbox from idling
            await relay_tunnel(tunnel, reader, writer)


async def listen_in_sandbox(
    conn: asyncssh.SSHServerConnection, access: SandboxAccess, listen_host: str, listen_port: int
) -> SandboxListener | bool:
    """The ``server_requested`` answer: a listener inside the sandbox, or False."""
    try:
        _, agent = await access.agent()
        listener = await agent.listen_tcp(listen_port, bind_address(listen_host))
    except AtelierError as exc:
        log.info(
            "ssh -R %s:%s refused for %s: %s",
            listen_host,
            listen_port,
            access.sandbox_id,
            exc.message,
        )
        return False
    await access.record(session="tcpip-forward", host=listen_host, port=listener.port)
    return SandboxListener(conn, access, listener, listen_host)
