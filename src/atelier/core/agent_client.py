"""Typed asyncio client for the in-sandbox agent, over one multiplexed connection.

Every call opens one stream on the shared :class:`~atelier.agent.protocol.Connection`.
Agent ``ERROR`` replies become the matching :mod:`atelier.errors` class (by
code); a lost connection becomes :class:`~atelier.errors.AgentFailure`.

::

    async with await AgentClient.connect(socket_path) as agent:
        result = await agent.run(argv=["echo", "hi"])
        session = await agent.exec("make test", background=True)
        async for event in await agent.attach(session.pid): ...
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, TypedDict, cast

from atelier.agent.protocol import (
    Channel,
    Connection,
    ConnectionLost,
    Data,
    Msg,
    ProtocolError,
    RemoteError,
    Stream,
    StreamClosed,
)
from atelier.errors import AgentFailure, AtelierError, PortUnreachable, error_class_for

__all__ = [
    "Accepted",
    "AgentClient",
    "AgentListener",
    "CommandResult",
    "Exit",
    "FileInfo",
    "ListeningPort",
    "MkdirResult",
    "Output",
    "Ping",
    "PortEvent",
    "PortUnreachable",
    "PortWatch",
    "ProcessEvent",
    "ProcessInfo",
    "ProcessSession",
    "PtySession",
    "Started",
    "TcpTunnel",
    "WatchEvent",
    "WatchStream",
]

READ_LIMIT = 1024 * 1024  # StreamReader buffer: fewer pauses for 64 KiB frames


# -- results and events ------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Started:
    pid: int


@dataclass(frozen=True, slots=True)
class Output:
    channel: int  # 1 = stdout (or terminal output), 2 = stderr
    data: bytes

    @property
    def stream(self) -> Literal["stdout", "stderr"]:
        return "stderr" if self.channel == Channel.STDERR else "stdout"


@dataclass(frozen=True, slots=True)
class Exit:
    exit_code: int
    signal: str | None
    timed_out: bool


ProcessEvent = Started | Output | Exit


@dataclass(frozen=True, slots=True)
class Ping:
    pid: int
    protocol: int


@dataclass(frozen=True, slots=True)
class CommandResult:
    pid: int
    exit_code: int
    signal: str | None
    timed_out: bool
    stdout: bytes
    stderr: bytes


class FileInfo(TypedDict):
    name: str
    path: str
    type: Literal["file", "dir", "symlink", "other"]
    size: int
    mode: str
    owner: str
    group: str
    modified_at: str
    symlink_target: str | None


class MkdirResult(TypedDict):
    created: bool
    entry: FileInfo


class ProcessInfo(TypedDict):
    pid: int
    cmd: str | None
    argv: list[str] | None
    tag: str | None
    user: str
    cwd: str
    background: bool
    running: bool
    exit_code: int | None
    started_at: str


class WatchEvent(TypedDict):
    type: Literal["event"]
    event: Literal["create", "modify", "delete", "rename"]
    path: str
    is_dir: bool


class ListeningPort(TypedDict):
    port: int
    address: str
    family: Literal["ipv4", "ipv6"]
    inode: int
    pid: int | None
    command: str | None


class PortEvent(TypedDict):
    type: Literal["opened", "closed"]
    port: int
    address: str
    family: Literal["ipv4", "ipv6"]
    inode: int
    pid: int | None
    command: str | None


# -- errors ----------------------------------------------------------------------------
_TUNNEL_CODES: dict[str, type[AtelierError]] = {
    "connection_refused": PortUnreachable,
    "connection_timeout": PortUnreachable,
}

_PROTOCOL_ERRORS = (RemoteError, ConnectionLost, StreamClosed, ProtocolError)


def _translate(exc: BaseException) -> AtelierError:
    if isinstance(exc, RemoteError):
        if exc.code == "internal":
            return AgentFailure(f"agent error: {exc.message}", details=exc.details or None)
        return error_class_for(exc.code)(exc.message, details=exc.details or None)
    if isinstance(exc, ConnectionLost):
        return AgentFailure(f"lost the connection to the agent ({exc})")
    return AgentFailure(f"agent protocol failure: {exc}")


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except _PROTOCOL_ERRORS as exc:
        raise _translate(exc) from exc


@contextlib.asynccontextmanager
async def _sending(stream: Stream) -> AsyncIterator[None]:
    """Send on ``stream``; if the agent ended it meanwhile, raise the agent's reason."""
    try:
        yield
    except StreamClosed as exc:
        with _errors():
            while await stream.recv() is not None:  # raises the agent's ERROR, if any
                pass
        raise AgentFailure("the agent closed the stream early") from exc
    except _PROTOCOL_ERRORS as exc:
        raise _translate(exc) from exc


def _exit_from(body: dict[str, Any]) -> Exit:
    return Exit(
        exit_code=int(body.get("exit_code", -1)),
        signal=body.get("signal"),
        timed_out=bool(body.get("timed_out", False)),
    )


async def _open_started(stream: Stream) -> Started:
    """The first reply of exec/attach/pty: ``started`` (or the error)."""
    try:
        with _errors():
            body = await stream.recv_msg()
        if body.get("type") != "started":
            raise AgentFailure(f"unexpected first message from the agent: {body!r}")
        return Started(int(body["pid"]))
    except BaseException:
        await stream.close()
        raise


# -- sessions ----------------------------------------------------------------------------
class _EventStream:
    """Shared by process and pty sessions: an async iterator of typed events."""

    def __init__(self, stream: Stream, started: Started) -> None:
        self._stream = stream
        self.pid = started.pid
        self.exit: Exit | None = None
        self._pending: list[ProcessEvent] = [started]
        self._done = False

    def __aiter__(self) -> _EventStream:
        return self

    async def __anext__(self) -> ProcessEvent:
        if self._pending:
            return self._pending.pop(0)
        if self._done:
            raise StopAsyncIteration
        with _errors():
            while True:
                event = await self._stream.recv()
                if event is None:
                    self._done = True
                    raise StopAsyncIteration
                if isinstance(event, Data):
                    return Output(event.channel, event.data)
                if isinstance(event, Msg):
                    kind = event.body.get("type")
                    if kind == "exit":
                        self.exit = _exit_from(event.body)
                        self._done = True
                        await self._stream.close()
                        return self.exit
                    if kind == "started":
                        return Started(int(event.body["pid"]))

    async def signal(self, sig: str | int) -> None:
        """Signal the process group (``"SIGTERM"``, ``"TERM"`` or ``15``)."""
        with _errors():
            await self._stream.send_msg({"type": "signal", "signal": sig})

    async def wait(self) -> Exit:
        """Skip the remaining output; the exit status."""
        async for _ in self:
            pass
        if self.exit is None:
            raise AgentFailure(f"the stream of process {self.pid} ended before it exited")
        return self.exit

    @property
    def closed(self) -> bool:
        return self._stream.closed


class ProcessSession(_EventStream):
    """A running command: iterate for :class:`Started`, :class:`Output`, :class:`Exit`."""

    def __aiter__(self) -> ProcessSession:
        return self

    async def send_stdin(self, data: bytes) -> None:
        """Write to the process's stdin (exec'd with ``stdin=True``), flow-controlled."""
        async with _sending(self._stream):
            await self._stream.send(data, Channel.STDIN)

    async def close_stdin(self) -> None:
        with _errors():
            await self._stream.send_eof(Channel.STDIN)

    async def detach(self) -> None:
        """Stop following: a foreground process is killed, a background one keeps running."""
        await self._stream.close()

    async def collect(self) -> CommandResult:
        """Read everything until exit."""
        out: list[bytes] = []
        err: list[bytes] = []
        async for event in self:
            if isinstance(event, Output):
                (err if event.channel == Channel.STDERR else out).append(event.data)
        if self.exit is None:
            raise AgentFailure(f"the stream of process {self.pid} ended before it exited")
        return CommandResult(
            self.pid,
            self.exit.exit_code,
            self.exit.signal,
            self.exit.timed_out,
            b"".join(out),
            b"".join(err),
        )


class PtySession(_EventStream):
    """An interactive terminal: :class:`Output` (channel 1) is terminal output."""

    def __aiter__(self) -> PtySession:
        return self

    async def write(self, data: bytes) -> None:
        """Keyboard input."""
        with _errors():
            await self._stream.send(data, Channel.STDIN)

    async def resize(self, cols: int, rows: int) -> None:
        with _errors():
            await self._stream.send_msg({"type": "resize", "cols": cols, "rows": rows})

    async def close(self) -> None:
        """Hang up: the agent sends SIGHUP to the session, then SIGKILL."""
        await self._stream.close()


class WatchStream:
    """File-system events; ``aclose()`` (or leaving ``async with``) ends the watch."""

    def __init__(self, conn: Connection, path: str, recursive: bool) -> None:
        self._conn = conn
        self._args = {"path": path, "recursive": recursive}
        self._stream: Stream | None = None
        self._closed = False

    async def ready(self) -> None:
        """Wait until the agent's watches are in place (raises e.g. ``FileNotFound``)."""
        if self._stream is not None:
            return
        if self._closed:
            raise AgentFailure("the watch is closed")
        with _errors():
            stream = await self._conn.open("fs.watch", **self._args)
        self._stream = stream
        try:
            with _errors():
                await stream.recv_msg()  # {"type": "ready"}
        except BaseException:
            await self.aclose()
            raise

    def __aiter__(self) -> WatchStream:
        return self

    async def __anext__(self) -> WatchEvent:
        await self.ready()
        assert self._stream is not None
        with _errors():
            while True:
                event = await self._stream.recv()
                if event is None:
                    raise StopAsyncIteration
                if isinstance(event, Msg) and event.body.get("type") == "event":
                    return cast(WatchEvent, event.body)

    async def aclose(self) -> None:
        self._closed = True
        if self._stream is not None:
            await self._stream.close()

    async def __aenter__(self) -> WatchStream:
        await self.ready()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class TcpTunnel:
    """A TCP connection inside the sandbox, relayed over one agent stream.

    ``read()`` returns the next bytes (``b""`` once the sandbox side sent EOF),
    ``write()`` sends under the stream's flow control, ``write_eof()``
    half-closes, ``close()`` ends both directions (idempotent).
    """

    def __init__(self, stream: Stream) -> None:
        self._stream = stream
        self._eof = False

    @property
    def closed(self) -> bool:
        return self._stream.closed

    async def read(self) -> bytes:
        """The next chunk from the sandbox; ``b""`` at EOF (or once the tunnel closed)."""
        if self._eof:
            return b""
        with _errors():
            while True:
                event = await self._stream.recv()
                if event is None:
                    self._eof = True
                    return b""
                if isinstance(event, Data):
                    if event.data:
                        return event.data
                elif not isinstance(event, Msg):  # EOF on channel 1
                    self._eof = True
                    return b""

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        async with _sending(self._stream):
            await self._stream.send(data, Channel.STDIN)

    async def write_eof(self) -> None:
        with _errors():
            await self._stream.send_eof(Channel.STDIN)

    async def close(self) -> None:
        await self._stream.close()

    async def __aenter__(self) -> TcpTunnel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


@dataclass(frozen=True, slots=True)
class Accepted:
    """A connection a listener inside the sandbox accepted; claim it with ``accept``."""

    conn: str
    peer_host: str
    peer_port: int


class AgentListener:
    """A socket listening inside the sandbox (``AgentClient.listen_tcp``/``listen_unix``).

    Iterating yields :class:`Accepted` connections until the listener ends;
    :meth:`accept` turns one into a :class:`TcpTunnel` (unclaimed ones are closed
    by the agent after a while). :meth:`close` stops listening (idempotent).
    """

    def __init__(self, conn: Connection, stream: Stream, body: dict[str, Any]) -> None:
        self._conn = conn
        self._stream = stream
        self.id = str(body["id"])
        self.port: int | None = body.get("port")
        self.path: str | None = body.get("path")

    def __aiter__(self) -> AgentListener:
        return self

    async def __anext__(self) -> Accepted:
        with _errors():
            while True:
                event = await self._stream.recv()
                if event is None:
                    raise StopAsyncIteration
                if isinstance(event, Msg) and event.body.get("type") == "accepted":
                    body = event.body
                    return Accepted(
                        str(body["conn"]),
                        str(body.get("peer_host") or ""),
                        int(body.get("peer_port") or 0),
                    )

    async def accept(self, accepted: Accepted) -> TcpTunnel:
        """Claim an accepted connection; raises :class:`PortUnreachable` if it is gone."""
        with _errors():
            stream = await self._conn.open("accept", listener=self.id, conn=accepted.conn)
        try:
            try:
                body = await stream.recv_msg()
            except RemoteError as exc:
                cls = _TUNNEL_CODES.get(exc.code)
                raise (cls(exc.message) if cls else _translate(exc)) from exc
            except _PROTOCOL_ERRORS as exc:
                raise _translate(exc) from exc
            if body.get("type") != "connected":
                raise AgentFailure(f"unexpected first message from the agent: {body!r}")
        except BaseException:
            await stream.close()
            raise
        return TcpTunnel(stream)

    async def close(self) -> None:
        await self._stream.close()

    async def __aenter__(self) -> AgentListener:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class PortWatch:
    """Live listening-port changes; ``ports`` holds the set at ``ready()`` time."""

    def __init__(self, conn: Connection, interval: float) -> None:
        self._conn = conn
        self._interval = interval
        self._stream: Stream | None = None
        self._closed = False
        self.ports: list[ListeningPort] = []

    async def ready(self) -> list[ListeningPort]:
        """Start watching; the ports listening now."""
        if self._stream is not None:
            return self.ports
        if self._closed:
            raise AgentFailure("the port watch is closed")
        with _errors():
            stream = await self._conn.open("ports.watch", interval=self._interval)
        self._stream = stream
        try:
            with _errors():
                body = await stream.recv_msg()
            self.ports = cast(list[ListeningPort], body.get("ports", []))
        except BaseException:
            await self.aclose()
            raise
        return self.ports

    def __aiter__(self) -> PortWatch:
        return self

    async def __anext__(self) -> PortEvent:
        await self.ready()
        assert self._stream is not None
        with _errors():
            while True:
                event = await self._stream.recv()
                if event is None:
                    raise StopAsyncIteration
                if isinstance(event, Msg) and event.body.get("type") in ("opened", "closed"):
                    return cast(PortEvent, event.body)

    async def aclose(self) -> None:
        self._closed = True
        if self._stream is not None:
            await self._stream.close()

    async def __aenter__(self) -> PortWatch:
        await self.ready()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


# -- the client ----------------------------------------------------------------------------
def _drop_none(**args: Any) -> dict[str, Any]:
    return {k: v for k, v in args.items() if v is not None}


def _command(
    cmd: str | None,
    argv: Sequence[str] | None,
    env: Mapping[str, str] | None,
    cwd: str | None,
    user: str | None,
) -> dict[str, Any]:
    args = _drop_none(cmd=cmd, argv=list(argv) if argv is not None else None, cwd=cwd, user=user)
    args["env"] = dict(env or {})
    return args


_FIRST_PING_WAIT = 1.0  # seconds; doubled per unanswered ping ...
_MAX_PING_WAIT = 8.0  # ... up to this


class AgentClient:
    """One connection to one agent. Safe for many concurrent calls."""

    def __init__(self, conn: Connection, serve_task: asyncio.Task[None], socket_path: str) -> None:
        self._conn = conn
        self._serve_task = serve_task
        self.socket_path = socket_path

    @classmethod
    async def connect(
        cls, socket_path: str | os.PathLike[str], timeout: float = 10.0
    ) -> AgentClient:
        """Connect, retrying until the agent answers ``ping`` or ``timeout`` passes.

        A ping that is not answered within a short, growing wait is retried on a
        new connection rather than awaited until ``timeout``: on a virtio-serial
        port the guest discards bytes that arrive while it closes the previous
        host's session, so the first ping of a quick reconnect can be lost.
        """
        path = os.fspath(socket_path)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last: BaseException | None = None
        ping_wait = _FIRST_PING_WAIT
        while True:
            remaining = deadline - loop.time()
            client: AgentClient | None = None
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_unix_connection(path, limit=READ_LIMIT), max(remaining, 0.001)
                )
                conn = Connection(reader, writer)
                client = cls(conn, loop.create_task(conn.serve()), path)
                attempt_wait = min(ping_wait, deadline - loop.time())
                ping_wait = min(ping_wait * 2, _MAX_PING_WAIT)
                await asyncio.wait_for(client.ping(), max(attempt_wait, 0.001))
                return client
            except (OSError, TimeoutError, AtelierError) as exc:
                last = exc
                if client is not None:
                    await client.close()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AgentFailure(
                    f"the agent at {path} did not answer within {timeout:g}s: {last!r}",
                    details={"socket": path},
                )
            await asyncio.sleep(min(0.02, remaining))

    @property
    def is_open(self) -> bool:
        return self._conn.is_open and not self._serve_task.done()

    async def close(self) -> None:
        await self._conn.aclose()
        with contextlib.suppress(BaseException):
            await self._serve_task

    async def __aenter__(self) -> AgentClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _request(self, op: str, **args: Any) -> dict[str, Any]:
        with _errors():
            return await self._conn.request(op, **args)

    async def _open(self, op: str, **args: Any) -> Stream:
        with _errors():
            return await self._conn.open(op, **args)

    async def ping(self) -> Ping:
        body = await self._request("ping")
        return Ping(pid=int(body["pid"]), protocol=int(body["protocol"]))

    # -- processes ---------------------------------------------------------------
    async def exec(
        self,
        cmd: str | None = None,
        *,
        argv: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        timeout: float | None = None,
        stdin: bool = False,
        background: bool = False,
        tag: str | None = None,
    ) -> ProcessSession:
        """Start ``cmd`` (``bash -l -c``) or ``argv``; returns once it started.

        Foreground: the session yields the output and the exit; leaving it
        (``detach``) kills the process group. ``background=True``: the session
        only yields :class:`Started` and takes stdin and signals; the output is
        kept (bounded) for :meth:`attach`, and ``detach`` leaves it running.
        """
        args = _command(cmd, argv, env, cwd, user)
        args.update(_drop_none(timeout=timeout, tag=tag), stdin=stdin, background=background)
        stream = await self._open("exec", **args)
        return ProcessSession(stream, await _open_started(stream))

    async def run(
        self,
        cmd: str | None = None,
        *,
        argv: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        timeout: float | None = None,
        input: bytes | None = None,
    ) -> CommandResult:
        """Run a command to completion and collect its output."""
        session = await self.exec(
            cmd, argv=argv, env=env, cwd=cwd, user=user, timeout=timeout, stdin=input is not None
        )
        try:
            if input is not None:
                if input:
                    await session.send_stdin(input)
                await session.close_stdin()
            return await session.collect()
        finally:
            await session.detach()

    async def attach(self, pid: int) -> ProcessSession:
        """Follow a process: its buffered output is replayed, then live output and exit."""
        stream = await self._open("process.attach", pid=pid)
        return ProcessSession(stream, await _open_started(stream))

    async def list_processes(self) -> list[ProcessInfo]:
        body = await self._request("process.list")
        return cast(list[ProcessInfo], body["processes"])

    async def signal(self, pid: int, sig: str | int) -> None:
        await self._request("process.signal", pid=pid, signal=sig)

    async def write_stdin(self, pid: int, data: bytes, eof: bool = False) -> None:
        """Write to a process's stdin; with ``eof`` close it afterwards."""
        stream = await self._open("process.stdin", pid=pid)
        try:
            async with _sending(stream):
                if data:
                    await stream.send(data, Channel.STDIN)
                if eof:
                    await stream.send_eof(Channel.STDIN)
                else:
                    await stream.send_msg({"type": "end"})
            with _errors():
                await stream.recv_msg()
        finally:
            await stream.close()

    async def pty(
        self,
        cmd: str | None = None,
        *,
        argv: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        cols: int = 80,
        rows: int = 24,
    ) -> PtySession:
        """An interactive terminal (default: ``/bin/bash -l``)."""
        args = _command(cmd, argv, env, cwd, user)
        stream = await self._open("pty", **args, cols=cols, rows=rows)
        return PtySession(stream, await _open_started(stream))

    # -- files -------------------------------------------------------------------------
    async def read_file(self, path: str) -> tuple[int, AsyncIterator[bytes]]:
        """``(size, chunks)``; the chunks stream under flow control (close it to stop early)."""
        stream = await self._open("fs.read", path=path)
        try:
            with _errors():
                size = int((await stream.recv_msg())["size"])
        except BaseException:
            await stream.close()
            raise

        async def chunks() -> AsyncIterator[bytes]:
            try:
                with _errors():
                    while True:
                        event = await stream.recv()
                        if event is None:
                            raise AgentFailure(f"the agent ended the read of {path} early")
                        if isinstance(event, Data):
                            yield event.data
                        elif not isinstance(event, Msg):  # EOF
                            return
            finally:
                await stream.close()

        return size, chunks()

    async def write_file(
        self,
        path: str,
        chunks: bytes | AsyncIterable[bytes] | Iterable[bytes],
        *,
        mode: str | int | None = None,
        user: str | None = None,
        make_parents: bool = True,
    ) -> FileInfo:
        """Write a file atomically (temp file + rename); parents are created."""
        stream = await self._open(
            "fs.write", **_drop_none(path=path, mode=mode, user=user, make_parents=make_parents)
        )
        try:
            async with _sending(stream):
                if isinstance(chunks, bytes | bytearray | memoryview):
                    await stream.send(chunks, Channel.STDIN)
                elif isinstance(chunks, AsyncIterable):
                    async for chunk in chunks:
                        if chunk:
                            await stream.send(chunk, Channel.STDIN)
                else:
                    for chunk in chunks:
                        if chunk:
                            await stream.send(chunk, Channel.STDIN)
                await stream.send_eof(Channel.STDIN)
            with _errors():
                return cast(FileInfo, await stream.recv_msg())
        finally:
            await stream.close()  # without EOF the agent removes its temp file

    async def stat(self, path: str) -> FileInfo:
        return cast(FileInfo, await self._request("fs.stat", path=path))

    async def list_dir(self, path: str, depth: int = 1) -> list[FileInfo]:
        body = await self._request("fs.list", path=path, depth=depth)
        return cast(list[FileInfo], body["entries"])

    async def exists(self, path: str) -> bool:
        return bool((await self._request("fs.exists", path=path))["exists"])

    async def mkdir(
        self, path: str, *, parents: bool = True, mode: str | int = "0755", user: str | None = None
    ) -> MkdirResult:
        body = await self._request(
            "fs.mkdir", **_drop_none(path=path, parents=parents, mode=mode, user=user)
        )
        return cast(MkdirResult, body)

    async def remove(self, path: str, *, recursive: bool = False) -> None:
        await self._request("fs.remove", path=path, recursive=recursive)

    async def rename(self, source: str, destination: str) -> FileInfo:
        body = await self._request("fs.rename", source=source, destination=destination)
        return cast(FileInfo, body)

    async def chmod(self, path: str, mode: str | int) -> FileInfo:
        return cast(FileInfo, await self._request("fs.chmod", path=path, mode=mode))

    def watch(self, path: str, recursive: bool = False) -> WatchStream:
        """Watch a directory. ``await w.ready()`` (or ``async with``) arms it and
        raises errors; iterating also arms it. ``aclose()`` ends the watch."""
        return WatchStream(self._conn, path, recursive)

    # -- ports -------------------------------------------------------------------------
    async def open_tunnel(
        self, port: int, host: str = "127.0.0.1", *, timeout: float = 10.0
    ) -> TcpTunnel:
        """Connect to ``host:port`` inside the sandbox; raises :class:`PortUnreachable`."""
        stream = await self._open("tcp.connect", port=port, host=host, timeout=timeout)
        try:
            try:
                body = await stream.recv_msg()
            except RemoteError as exc:
                cls = _TUNNEL_CODES.get(exc.code)
                if cls is None:
                    raise _translate(exc) from exc
                raise cls(exc.message, details={"port": port, "host": host}) from exc
            except _PROTOCOL_ERRORS as exc:
                raise _translate(exc) from exc
            if body.get("type") != "connected":
                raise AgentFailure(f"unexpected first message from the agent: {body!r}")
        except BaseException:
            await stream.close()
            raise
        return TcpTunnel(stream)

    async def _listen(self, **args: Any) -> AgentListener:
        stream = await self._open("listen", **args)
        try:
            with _errors():
                body = await stream.recv_msg()
        except BaseException:
            await stream.close()
            raise
        return AgentListener(self._conn, stream, body)

    async def listen_tcp(self, port: int = 0, host: str = "127.0.0.1") -> AgentListener:
        """Listen on ``host:port`` inside the sandbox (``0``: any free port, see ``.port``)."""
        return await self._listen(kind="tcp", host=host, port=port)

    async def listen_unix(self, user: str | None = None) -> AgentListener:
        """Listen on a fresh unix socket inside the sandbox (``.path``) only ``user`` may use."""
        return await self._listen(kind="unix", user=user)

    async def list_ports(self, owners: bool = True) -> list[ListeningPort]:
        """The listening TCP sockets inside the sandbox (with their process, if visible)."""
        body = await self._request("ports.list", owners=owners)
        return cast(list[ListeningPort], body["ports"])

    def watch_ports(self, interval: float = 0.5) -> PortWatch:
        """Follow listening ports (polled every ``interval`` seconds by the agent)."""
        return PortWatch(self._conn, interval)
