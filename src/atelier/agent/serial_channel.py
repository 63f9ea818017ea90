"""Serve the host over virtio-serial ports: the agent channel of the VM runtimes.

Standard library only; runs inside the guest. QEMU listens on a host unix
socket per port (``-chardev socket,server=on``) and forwards its bytes to a
named port in the guest:

* ``org.atelier.agent``: the agent protocol. The host's ``AgentClient``
  connects to it exactly as to the gVisor agent's socket.
* ``org.atelier.control`` (optional): one-line commands from the runtime
  itself, which needs a way in while a server holds the agent port:
  ``sync`` (flush the guest's page cache before the VM is stopped),
  ``time <unix seconds>`` (set the clock after a restore or a long pause),
  ``agent-idle [timeout]`` (wait until the agent port waits for a new host:
  after a restore, before one connects), ``ping``. Each answers ``ok`` or
  ``error <reason>``.

A port is one byte stream, not a listener: one connection at a time. While no
host is connected ``poll`` reports ``POLLHUP`` and ``read`` returns
end-of-file. When the host goes away the connection ends (the process table
lives on, as with the socket server), the port is closed -- which discards
unread bytes of the old host -- and reopened, and the agent waits for the
next host: a restarted server, or the first host of a VM restored from a
memory snapshot (whose QEMU tells the guest that the snapshot's host is gone;
the runtime asks ``agent-idle`` on the control port before anyone connects).

Waiting costs nothing: with ``O_ASYNC`` the driver sends ``SIGIO`` when the
host side connects; a slow poll backs it up.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import errno
import fcntl
import os
import select
import signal
import time
from collections.abc import Awaitable, Callable

from .common import log
from .protocol import Connection
from .server import READ_LIMIT, AgentServer

__all__ = [
    "CONTROL_PORT",
    "SYS_PORTS",
    "ControlChannel",
    "PortChannel",
    "SerialChannel",
    "find_port",
    "host_connected",
    "serve",
]

SYS_PORTS = "/sys/class/virtio-ports"
CONTROL_PORT = "org.atelier.control"
_BACKUP_POLL = 1.0  # seconds between checks when SIGIO works
_FAST_POLL = 0.05  # ... and when it does not
_PORT_WAIT = 0.02
_BUSY_RETRIES = 250  # x _PORT_WAIT
_MAX_LINE = 4096


def find_port(name: str, sys_dir: str = SYS_PORTS, dev_dir: str = "/dev") -> str | None:
    """The device path of the virtio-serial port called ``name`` (or ``name``
    itself if it is a path), None while it does not exist (yet)."""
    if name.startswith("/"):
        return name if os.path.exists(name) else None
    link = os.path.join(dev_dir, "virtio-ports", name)
    if os.path.exists(link):
        return link
    try:
        entries = sorted(os.listdir(sys_dir))
    except OSError:
        return None
    for entry in entries:
        try:
            with open(os.path.join(sys_dir, entry, "name"), encoding="utf-8") as fh:
                if fh.read().strip() != name:
                    continue
        except OSError:
            continue
        path = os.path.join(dev_dir, entry)
        if os.path.exists(path):
            return path
    return None


def host_connected(fd: int) -> bool:
    """Whether a host is connected to the port open on ``fd`` (no ``POLLHUP``)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLOUT)
    return not any(ev & select.POLLHUP for _, ev in poller.poll(0))


class _Sigio:
    """One SIGIO handler for every port (a signal has one handler per process)."""

    def __init__(self) -> None:
        self.waiters: set[asyncio.Event] = set()
        self.installed = False
        self.users = 0

    def acquire(self, loop: asyncio.AbstractEventLoop) -> bool:
        if not self.installed:
            try:
                loop.add_signal_handler(signal.SIGIO, self._fire)
                self.installed = True
            except (RuntimeError, ValueError, OSError) as exc:
                log.warning("no SIGIO (%s); polling the serial ports", exc)
                return False
        self.users += 1
        return True

    def release(self, loop: asyncio.AbstractEventLoop) -> None:
        self.users -= 1
        if self.users <= 0 and self.installed:
            loop.remove_signal_handler(signal.SIGIO)
            self.installed = False

    def _fire(self) -> None:
        for event in self.waiters:
            event.set()


_SIGIO = _Sigio()


class PortChannel(abc.ABC):
    """Open a port, wait for a host, run :meth:`session` on it, repeat."""

    quiet_wait = False  # do not log while the port does not exist

    def __init__(self, port: str) -> None:
        self.port = port
        self.sessions = 0  # host connections served so far
        self.waiting = asyncio.Event()  # set while the port waits for a (new) host
        self._wake = asyncio.Event()
        self._sigio = False

    @abc.abstractmethod
    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one host connection on the port until it goes away."""

    async def serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        self._sigio = _SIGIO.acquire(loop)
        _SIGIO.waiters.add(self._wake)
        try:
            while True:
                try:
                    fd = await self._open()
                    await self._wait_host(fd)
                    await self._serve(fd)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("serial port %s failed; retrying", self.port)
                    await asyncio.sleep(1)
        finally:
            _SIGIO.waiters.discard(self._wake)
            if self._sigio:
                _SIGIO.release(loop)

    async def _open(self) -> int:
        path = find_port(self.port)
        if path is None:
            if not self.quiet_wait:
                log.info("waiting for virtio-serial port %s", self.port)
            while path is None:
                await asyncio.sleep(_PORT_WAIT if not self.quiet_wait else _BACKUP_POLL)
                path = find_port(self.port)
        flags = os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC
        for attempt in range(_BUSY_RETRIES):
            try:
                return os.open(path, flags)
            except OSError as exc:
                # the previous session's descriptors close a loop turn later
                if exc.errno != errno.EBUSY:
                    raise
            await asyncio.sleep(0 if attempt < 3 else _PORT_WAIT)
        return os.open(path, flags)

    async def _wait_host(self, fd: int) -> None:
        try:
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            if self._sigio:
                fcntl.fcntl(fd, fcntl.F_SETOWN, os.getpid())
                fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_ASYNC)
            interval = _BACKUP_POLL if self._sigio else _FAST_POLL
            self.waiting.set()
            while True:
                self._wake.clear()
                if host_connected(fd):
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), interval)
            # no SIGIO for every chunk of data while connected
            fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_ASYNC)
            self.waiting.clear()
        except BaseException:
            os.close(fd)
            raise

    async def _serve(self, fd: int) -> None:
        """One host session over the port open on ``fd`` (closed when it ends)."""
        loop = asyncio.get_running_loop()
        try:
            wfd = os.dup(fd)
        except OSError:
            os.close(fd)
            raise
        reader = asyncio.StreamReader(limit=READ_LIMIT)
        protocol = asyncio.StreamReaderProtocol(reader)
        rfile = os.fdopen(fd, "rb", buffering=0)
        wfile = os.fdopen(wfd, "wb", buffering=0)
        rtransport: asyncio.BaseTransport | None = None
        wtransport: asyncio.WriteTransport | None = None
        try:
            rtransport, _ = await loop.connect_read_pipe(lambda: protocol, rfile)
            wtransport, wprotocol = await loop.connect_write_pipe(
                asyncio.streams.FlowControlMixin, wfile
            )
            writer = asyncio.StreamWriter(wtransport, wprotocol, reader, loop)
            self.sessions += 1
            await self.session(reader, writer)
        finally:
            # abort, not close: output queued for a host that is gone must not
            # keep the port open (writes would wait for a host forever); a
            # closing transport with an empty buffer has already let go
            if wtransport is not None:
                if not wtransport.is_closing() or wtransport.get_write_buffer_size():
                    wtransport.abort()
            else:
                wfile.close()
            if rtransport is not None:
                rtransport.close()
            else:
                rfile.close()


class SerialChannel(PortChannel):
    """The agent protocol (``server``'s dispatcher) over one port."""

    def __init__(self, server: AgentServer, port: str) -> None:
        super().__init__(port)
        self.server = server

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(reader, writer, self.server.handle)
        self.server.connections.add(conn)
        log.info("host connected on %s (%d open)", self.port, len(self.server.connections))
        try:
            await conn.serve()
        finally:
            self.server.connections.discard(conn)
            log.info("host disconnected from %s", self.port)


async def _sync() -> str:
    await asyncio.to_thread(os.sync)
    return "ok"


async def _set_time(value: str) -> str:
    seconds = float(value)
    if abs(seconds - time.time()) > 0.5:
        time.clock_settime(time.CLOCK_REALTIME, seconds)
    return "ok"


class ControlChannel(PortChannel):
    """One-line commands of the runtime (see the module docstring)."""

    quiet_wait = True

    def __init__(self, agent: PortChannel | None = None, port: str = CONTROL_PORT) -> None:
        super().__init__(port)
        self.agent = agent
        self.commands: dict[str, Callable[[str], Awaitable[str]]] = {
            "ping": lambda _arg: _ok(),
            "sync": lambda _arg: _sync(),
            "time": _set_time,
            "agent-idle": self._agent_idle,
        }

    async def _agent_idle(self, arg: str) -> str:
        """``ok`` once the agent port waits for a new host (after a restore, the
        old host's connection must be gone before a new host may connect)."""
        if self.agent is None:
            return "error no agent port"
        try:
            await asyncio.wait_for(self.agent.waiting.wait(), float(arg or 60))
        except TimeoutError:
            return "error the agent port is still connected to a host"
        return "ok"

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                line = await reader.readuntil(b"\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
                return
            if len(line) > _MAX_LINE:
                return
            name, _, arg = line.decode(errors="replace").strip().partition(" ")
            handler = self.commands.get(name)
            try:
                reply = await handler(arg) if handler else f"error unknown command {name!r}"
            except (ValueError, OSError) as exc:
                reply = f"error {exc}"
            log.info("control %s: %s", name, reply)
            try:
                writer.write(reply.encode() + b"\n")
                await writer.drain()
            except (ConnectionError, OSError):
                return


async def _ok() -> str:
    return "ok"


async def serve(server: AgentServer, port: str, control: str | None = CONTROL_PORT) -> None:
    """Run ``server`` (its in-guest socket included), serve the host on
    ``port`` and the runtime on ``control`` (if that port exists)."""
    loop = asyncio.get_running_loop()
    agent = SerialChannel(server, port)
    channels: list[PortChannel] = [agent]
    if control:
        channels.append(ControlChannel(agent, control))
    tasks = [loop.create_task(channel.serve_forever()) for channel in channels]
    try:
        await server.run()
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
