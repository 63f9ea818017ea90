"""The SSH gateway: an asyncssh server inside ``atelier server``.

``ssh <sandbox-id>@<host> -p <ssh_port>``: the user name picks the sandbox, a
public key registered through ``/v1/ssh-keys`` picks the API token (which must
be allowed to reach the sandbox). Only public-key authentication is offered.
Sessions (shell, exec, PTY), SFTP/scp, local and remote forwarding and agent
forwarding go through the sandbox's agent; X11 forwarding is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import asyncssh

from ..config import Settings
from .access import AgentSource, EventSink, SandboxAccess
from .agentfwd import AgentForwarder
from .auth import SandboxLookup, authorize
from .forward import open_direct_tcpip
from .hostkey import load_or_create_host_key
from .keys import SSHKeyService
from .remote import listen_in_sandbox
from .session import handle_process
from .sftp import AgentSFTPServer

__all__ = ["GatewayInfo", "SSHGateway"]

log = logging.getLogger("atelier.sshgw")

LOGIN_TIMEOUT = 60.0
KEEPALIVE_INTERVAL = 30.0
CLOSE_TIMEOUT = 5.0


class _Sandboxes(AgentSource, SandboxLookup):
    """What the gateway needs of ``SandboxService``."""


@dataclass(frozen=True, slots=True)
class GatewayInfo:
    enabled: bool
    host: str | None  # the host clients should use; None: the API URL's host
    port: int | None
    host_keys: list[str]  # OpenSSH public key lines


class _Connection(asyncssh.SSHServer):
    """One client connection; knows its sandbox once a key was accepted."""

    def __init__(self, gateway: SSHGateway) -> None:
        self.gateway = gateway
        self.conn: asyncssh.SSHServerConnection | None = None
        self.access: SandboxAccess | None = None
        self.forwarder: AgentForwarder | None = None
        self.peer = "?"

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        self.forwarder = AgentForwarder(conn)
        self.gateway.connections.add(conn)
        peer = conn.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peer = f"{peer[0]}:{peer[1]}"

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn is not None:
            self.gateway.connections.discard(self.conn)
        if self.forwarder is not None:
            self.gateway.spawn(self.forwarder.close())

    # -- authentication: public keys only ----------------------------------------------
    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def host_based_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    async def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        gw = self.gateway
        try:
            grant = await authorize(gw.keys, gw.sandboxes, username, key)
        except Exception:
            log.exception("ssh: checking a key for %s failed", username)
            return False
        if grant is None:
            fingerprint = key.get_fingerprint()
            log.info("ssh: refused key %s for %r from %s", fingerprint, username, self.peer)
            return False
        self.access = SandboxAccess(grant, gw.sandboxes, gw.events, self.peer)
        return True

    # -- forwarding ----------------------------------------------------------------------
    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Any:
        if self.access is None:
            return False
        return open_direct_tcpip(self.access, dest_host, dest_port)

    def server_requested(self, listen_host: str, listen_port: int) -> Any:
        if self.access is None or self.conn is None:
            return False
        return listen_in_sandbox(self.conn, self.access, listen_host, listen_port)


def _owner(chan: Any) -> tuple[_Connection, SandboxAccess]:
    """The channel's connection and its (logged-in) sandbox access."""
    owner = chan.get_connection().get_owner()
    if not isinstance(owner, _Connection) or owner.access is None:
        raise asyncssh.DisconnectError(asyncssh.DISC_BY_APPLICATION, "not logged in")
    return owner, owner.access


class SSHGateway:
    """Keys (always) and the listener (when ``ssh_port`` is set)."""

    def __init__(
        self, settings: Settings, keys: SSHKeyService, sandboxes: Any, events: EventSink
    ) -> None:
        self.settings = settings
        self.keys = keys
        self.sandboxes: _Sandboxes = sandboxes
        self.events = events
        self.connections: set[asyncssh.SSHServerConnection] = set()
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._host_key: asyncssh.SSHKey | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def host_key_path(self) -> Any:
        return self.settings.ssh_host_key or self.settings.data_dir / "ssh_host_ed25519_key"

    @property
    def port(self) -> int | None:
        return self._acceptor.get_port() if self._acceptor is not None else None

    def info(self) -> GatewayInfo:
        keys = []
        if self._host_key is not None:
            keys.append(" ".join(self._host_key.export_public_key().decode().split()[:2]))
        return GatewayInfo(
            enabled=self._acceptor is not None,
            host=self.settings.ssh_public_host,
            port=self.port,
            host_keys=keys,
        )

    async def start(self) -> None:
        if self.settings.ssh_port is None:
            return
        self._host_key = load_or_create_host_key(self.host_key_path)
        listen = self.settings.ssh_host or self.settings.host
        self._acceptor = await asyncssh.create_server(
            lambda: _Connection(self),
            listen,
            self.settings.ssh_port,
            server_host_keys=[self._host_key],
            server_version="Atelier",
            process_factory=self._process,
            sftp_factory=self._sftp,
            allow_scp=True,
            encoding=None,
            line_editor=False,
            agent_forwarding=True,
            x11_forwarding=False,
            login_timeout=LOGIN_TIMEOUT,
            keepalive_interval=KEEPALIVE_INTERVAL,
        )
        log.info("SSH gateway listening on %s port %s", listen, self.port)

    async def _process(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        owner, access = _owner(process.channel)
        await handle_process(access, process, owner.forwarder)

    def _sftp(self, chan: Any) -> AgentSFTPServer:
        _, access = _owner(chan)
        self.spawn(access.record(session="sftp"))
        return AgentSFTPServer(chan, access)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in the background (kept referenced until it ends)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        if self._acceptor is None:
            return
        self._acceptor.close()
        for conn in list(self.connections):
            conn.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self._acceptor.wait_closed()
                for conn in list(self.connections):
                    await conn.wait_closed()
        self._acceptor = None
