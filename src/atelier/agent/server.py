"""The agent's unix-socket server and request dispatcher.

Releasing the socket (for a checkpoint): on ``SIGUSR1`` the agent closes its
listener and every connection, then unlinks the socket file -- the last step,
so a host that sees the file gone knows no host-backed socket is left open
(gVisor cannot checkpoint a sandbox holding one). On ``SIGUSR2`` it binds and
listens again. The agent cannot unlink a host-backed socket file under
gVisor, so it also writes ``agent.released`` beside the socket (last) and
removes it before listening again; the host waits for that file and removes
the socket file itself. The file lists the unix sockets still bound in the
sandbox (JSON ``{"pid", "sockets"}``): one on a host-backed path would make
the checkpoint fail. Processes keep running meanwhile; their output is kept as
when a client disconnects. Signals arriving in a burst are settled in order:
the last one wins.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from . import files, ports, terminal, watch
from .bootstrap import RELEASED_NAME
from .common import AgentError, from_oserror, log
from .listeners import ListenerTable
from .processes import ProcessTable
from .protocol import PROTOCOL_VERSION, Connection, ConnectionLost, Stream, StreamClosed
from .reaper import Reaper
from .spawn import Spawner

__all__ = ["READ_LIMIT", "AgentServer"]

READ_LIMIT = 1024 * 1024  # StreamReader buffer: fewer pauses for 64 KiB frames
Op = Callable[[Stream, dict[str, Any]], Awaitable[None]]


def bound_socket_paths(table: str = "/proc/net/unix") -> list[str]:
    """Paths of the unix sockets bound in this (sandbox) kernel, which the
    host needs to know before a checkpoint: gVisor cannot save one bound on
    a host-backed path."""
    try:
        with open(table, encoding="utf-8", errors="replace") as fh:
            lines = fh.read().splitlines()[1:]
    except OSError:
        return []
    paths = set()
    for line in lines:
        fields = line.split(maxsplit=7)
        if len(fields) == 8 and fields[7].startswith("/"):
            paths.add(fields[7])
    return sorted(paths)


def _write_marker(path: str, sockets: list[str]) -> None:
    body = json.dumps({"pid": os.getpid(), "sockets": sockets[:100]}).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, body + b"\n")
    finally:
        os.close(fd)


class AgentServer:
    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.reaper = Reaper()
        self.spawner = Spawner(self.reaper)
        self.table = ProcessTable(self.spawner)
        self.listeners = ListenerTable()
        self.connections: set[Connection] = set()
        self._server: asyncio.AbstractServer | None = None
        self._stopping = asyncio.Event()
        self._want_listening = True
        self._switching: asyncio.Task[None] | None = None
        self.ops: dict[str, Op] = {
            "ping": self.op_ping,
            "exec": self.table.op_exec,
            "process.list": self.table.op_list,
            "process.attach": self.table.op_attach,
            "process.stdin": self.table.op_stdin,
            "process.signal": self.table.op_signal,
            "pty": self.op_pty,
            "fs.watch": watch.op_watch,
            **files.FILE_OPS,
            **ports.PORT_OPS,
            **self.listeners.ops,
        }

    async def op_ping(self, stream: Stream, req: dict[str, Any]) -> None:
        await stream.send_msg({"pong": True, "protocol": PROTOCOL_VERSION, "pid": os.getpid()})

    async def op_pty(self, stream: Stream, req: dict[str, Any]) -> None:
        await terminal.op_pty(self.spawner, stream, req)

    async def handle(self, stream: Stream, request: dict[str, Any]) -> None:
        op = request.get("op")
        handler = self.ops.get(op) if isinstance(op, str) else None
        if handler is None:
            await stream.send_error("invalid_request", f"unknown op {op!r}")
            return
        try:
            await handler(stream, request)
        except AgentError as exc:
            await stream.send_error(exc.code, exc.message)
        except (ConnectionLost, StreamClosed):
            raise
        except OSError as exc:
            err = from_oserror(exc)
            log.warning("op %s failed: %s", op, exc)
            await stream.send_error(err.code, err.message)
        except Exception:
            log.exception("op %s crashed", op)
            raise

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._server is None:  # accepted just before the socket was released
            writer.transport.abort()
            return
        conn = Connection(reader, writer, self.handle)
        self.connections.add(conn)
        log.info("connection opened (%d open)", len(self.connections))
        try:
            await conn.serve()
        finally:
            self.connections.discard(conn)
            log.info("connection closed (%d open)", len(self.connections))

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.reaper.start(loop)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGUSR1, self.request_socket, False)
        loop.add_signal_handler(signal.SIGUSR2, self.request_socket, True)
        await self._listen()

    @property
    def released_marker(self) -> str:
        """Written (last) once the socket is released; removed before listening again."""
        return os.path.join(os.path.dirname(self.socket_path), RELEASED_NAME)

    @property
    def listening(self) -> bool:
        return self._server is not None

    def request_socket(self, listening: bool) -> None:
        """Release (False) or re-take (True) the socket, in the background."""
        self._want_listening = listening
        if self._switching is None or self._switching.done():
            self._switching = asyncio.get_running_loop().create_task(self._settle_socket())

    async def _settle_socket(self) -> None:
        while self._want_listening != self.listening and not self._stopping.is_set():
            try:
                if self._want_listening:
                    await self._listen()
                else:
                    await self._release()
            except OSError:
                log.exception("cannot switch the socket (listening=%s)", self._want_listening)
                return

    async def _release(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()  # closes the listening socket now
        count = len(self.connections)
        for conn in list(self.connections):
            await conn.aclose(abort=True)
        for _ in range(3):  # let accepts already queued reach _on_client and be refused
            await asyncio.sleep(0)
        # gVisor refuses to unlink a host-backed socket file (EPERM): the host
        # removes it once it sees the marker.
        with contextlib.suppress(OSError):
            os.unlink(self.socket_path)
        others = [p for p in bound_socket_paths() if p != self.socket_path]
        _write_marker(self.released_marker, others)
        log.info("socket released (%d connections closed)", count)

    async def _listen(self) -> None:
        directory = os.path.dirname(self.socket_path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.released_marker)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        # The umask makes the socket 0600 from birth; no chmod afterwards: under
        # gVisor a host-backed socket file refuses chmod/stat (EPERM).
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._on_client, self.socket_path, limit=READ_LIMIT
            )
        finally:
            os.umask(old_umask)
        log.info("agent ready pid=%d socket=%s", os.getpid(), self.socket_path)

    def stop(self) -> None:
        log.info("stopping")
        self._stopping.set()

    async def run(self) -> None:
        await self.start()
        try:
            await self._stopping.wait()
        finally:
            await self.close()

    async def close(self) -> None:
        if self._switching is not None:
            self._switching.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._switching
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            await conn.aclose()
        self.listeners.close()
        self.table.shutdown()
        self.spawner.shutdown()
        self.reaper.stop()
        with contextlib.suppress(OSError):
            os.unlink(self.socket_path)
