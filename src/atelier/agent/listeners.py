"""Listening inside the sandbox for the host: ``listen`` and ``accept``.

Only the host opens streams (see ``protocol.py``), so a connection accepted
inside the sandbox cannot open one on its own. Instead:

* ``listen {kind: "tcp", host, port}`` or ``listen {kind: "unix", path, user}``
  binds a socket and answers ``{"type": "listening", "id", "port", "path"}``.
  Every accepted connection is parked and announced on the same stream as
  ``{"type": "accepted", "conn", "peer_host", "peer_port"}``. When the host
  closes the stream the listener goes away (a unix socket file with it) and
  connections nobody claimed are closed.
* ``accept {listener, conn}`` claims a parked connection and relays it like
  ``tcp.connect`` does (``{"type": "connected"}``, then DATA both ways).

A parked connection not claimed within :data:`CLAIM_TIMEOUT` seconds is
closed; a listener parks at most :data:`MAX_PARKED` connections at a time and
closes further ones at once. The unix kind makes its socket in a fresh
directory (mode 0700, owned by ``user``) under ``/dev/shm`` (else ``/tmp``),
so only that user and root reach it.
Used by the SSH gateway for ``ssh -R`` (tcp) and ``ssh -A`` (unix).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass, field
from typing import Any

from .common import AgentError
from .ports import RELAY_CHUNK, relay_socket
from .protocol import Stream
from .users import resolve_user

__all__ = ["CLAIM_TIMEOUT", "MAX_PARKED", "ListenerTable"]

CLAIM_TIMEOUT = 30.0
MAX_PARKED = 64
# A memory filesystem inside the sandbox first: under gVisor /tmp is a host
# directory, where a socket file is host-backed (refuses stat/chmod, blocks
# checkpoints).
_UNIX_PARENTS = ("/dev/shm", "/tmp")


@dataclass
class _Parked:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    timer: asyncio.TimerHandle | None = None

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.writer.close()


@dataclass
class _Listener:
    id: str
    server: asyncio.AbstractServer
    directory: str | None = None  # the unix kind's private directory
    parked: dict[str, _Parked] = field(default_factory=dict)

    def close(self) -> None:
        self.server.close()
        for conn in self.parked.values():
            conn.close()
        self.parked.clear()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)


def _port_arg(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise AgentError("invalid_request", f"port must be an integer 0-65535, got {value!r}")
    return value


class ListenerTable:
    """The listeners of one agent, by id (ids are never reused)."""

    def __init__(self) -> None:
        self._listeners: dict[str, _Listener] = {}
        self._ids = itertools.count(1)

    async def op_listen(self, stream: Stream, req: dict[str, Any]) -> None:
        kind = req.get("kind", "tcp")
        lid = f"l{next(self._ids)}"
        announce: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        conn_ids = itertools.count(1)

        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            listener = self._listeners.get(lid)
            if listener is None or len(listener.parked) >= MAX_PARKED:
                writer.close()
                return
            cid = f"c{next(conn_ids)}"
            parked = _Parked(reader, writer)
            parked.timer = asyncio.get_running_loop().call_later(
                CLAIM_TIMEOUT, self._expire, lid, cid
            )
            listener.parked[cid] = parked
            peer = writer.get_extra_info("peername")
            host, port = (peer[0], peer[1]) if isinstance(peer, tuple) else ("", 0)
            announce.put_nowait(
                {"type": "accepted", "conn": cid, "peer_host": host, "peer_port": port}
            )

        if kind == "tcp":
            listener, reply = await self._listen_tcp(lid, req, on_client)
        elif kind == "unix":
            listener, reply = await self._listen_unix(lid, req, on_client)
        else:
            raise AgentError("invalid_request", f"unknown listener kind {kind!r}")
        self._listeners[lid] = listener
        try:
            await stream.send_msg({"type": "listening", "id": lid, **reply})
            closed = asyncio.ensure_future(stream.remote_closed_event.wait())
            try:
                while True:
                    nxt = asyncio.ensure_future(announce.get())
                    done, _ = await asyncio.wait({closed, nxt}, return_when=asyncio.FIRST_COMPLETED)
                    if nxt not in done:
                        nxt.cancel()
                        return
                    await stream.send_msg(nxt.result())
            finally:
                closed.cancel()
        finally:
            del self._listeners[lid]
            listener.close()

    async def _listen_tcp(
        self, lid: str, req: dict[str, Any], on_client: Any
    ) -> tuple[_Listener, dict[str, Any]]:
        port = _port_arg(req.get("port", 0))
        host = req.get("host") or "127.0.0.1"
        if not isinstance(host, str) or "\0" in host:
            raise AgentError("invalid_request", f"invalid host {host!r}")
        try:
            server = await asyncio.start_server(
                on_client, host, port, limit=RELAY_CHUNK, reuse_address=True
            )
        except OSError as exc:
            raise AgentError(
                "invalid_request",
                f"cannot listen on {host}:{port} in the sandbox: {exc.strerror or exc}",
            ) from None
        bound = server.sockets[0].getsockname()[1] if server.sockets else port
        return _Listener(lid, server), {"port": bound, "path": None}

    async def _listen_unix(
        self, lid: str, req: dict[str, Any], on_client: Any
    ) -> tuple[_Listener, dict[str, Any]]:
        ident = resolve_user(req.get("user"))
        parent = next((p for p in _UNIX_PARENTS if os.path.isdir(p)), None)
        directory = tempfile.mkdtemp(prefix="atelier-ssh-", dir=parent)
        try:
            os.chown(directory, ident.uid, ident.gid)
            path = os.path.join(directory, "agent.sock")
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            # gVisor refuses chown/chmod of a socket file: it is born 0666, in a
            # directory only the user can enter. (The umask is the process's; no
            # await in between, so nothing else runs under it.)
            old_umask = os.umask(0o111)
            try:
                sock.bind(path)
            except BaseException:
                sock.close()
                raise
            finally:
                os.umask(old_umask)
            server = await asyncio.start_unix_server(on_client, sock=sock, limit=RELAY_CHUNK)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        return _Listener(lid, server, directory), {"port": None, "path": path}

    def _expire(self, lid: str, cid: str) -> None:
        listener = self._listeners.get(lid)
        parked = listener.parked.pop(cid, None) if listener is not None else None
        if parked is not None:
            parked.writer.close()

    async def op_accept(self, stream: Stream, req: dict[str, Any]) -> None:
        listener = self._listeners.get(str(req.get("listener")))
        parked = listener.parked.pop(str(req.get("conn")), None) if listener else None
        if parked is None:
            raise AgentError(
                "connection_refused", "no such accepted connection (closed or claimed)"
            )
        if parked.timer is not None:
            parked.timer.cancel()
        sock = parked.writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await stream.send_msg({"type": "connected"})
            await relay_socket(stream, parked.reader, parked.writer)
        finally:
            parked.writer.close()
            with contextlib.suppress(Exception):
                await parked.writer.wait_closed()

    def close(self) -> None:
        for listener in list(self._listeners.values()):
            listener.close()
        self._listeners.clear()

    @property
    def ops(self) -> dict[str, Any]:
        return {"listen": self.op_listen, "accept": self.op_accept}
