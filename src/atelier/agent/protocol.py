"""Wire protocol between the Atelier server and the in-sandbox agent.

Standard library only: this module runs inside every sandbox.

One byte stream (a unix socket) carries many concurrent *streams*. Every
frame is a 10-byte header followed by a payload::

    stream_id: u32   kind: u8   channel: u8   length: u32   payload[length]

Kinds:

* ``OPEN``   - host opens stream ``stream_id``; payload is a JSON request
  ``{"op": "...", ...arguments}``. Only the host opens streams and never
  reuses an id.
* ``DATA``   - bytes on ``channel`` (0 = stdin / upload, 1 = stdout /
  download, 2 = stderr). Counted against the receiver's window.
* ``WINDOW`` - payload is a u32: the receiver grants the sender that many more
  bytes of DATA on this stream (credit-based flow control, per stream, per
  direction). Each side starts with :data:`INITIAL_WINDOW` bytes of credit.
* ``EOF``    - no more DATA on ``channel`` from this side.
* ``MSG``    - a JSON control message (``started``, ``exit``, ``resize``,
  ``signal``, a result of a request, a watch event, ...).
* ``ERROR``  - JSON ``{"code": ..., "message": ...}``; ends the stream.
* ``CLOSE``  - ends the stream. Either side may send it; the receiver stops
  using the stream (an agent handler treats it as "cancel").

Because DATA is only sent against credit, neither side ever buffers more than
one window per stream, however large the output or the upload.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "INITIAL_WINDOW",
    "MAX_PAYLOAD",
    "PROTOCOL_VERSION",
    "Channel",
    "Connection",
    "ConnectionLost",
    "Data",
    "Eof",
    "Kind",
    "Msg",
    "ProtocolError",
    "RemoteError",
    "Stream",
    "StreamClosed",
]

PROTOCOL_VERSION = 1
HEADER = struct.Struct("!IBBI")
MAX_PAYLOAD = 256 * 1024
INITIAL_WINDOW = 4 * 1024 * 1024
_GRANT_THRESHOLD = INITIAL_WINDOW // 4
_MAX_CONTROL_PAYLOAD = 16 * 1024 * 1024


class Kind(enum.IntEnum):
    OPEN = 1
    DATA = 2
    WINDOW = 3
    EOF = 4
    MSG = 5
    ERROR = 6
    CLOSE = 7


class Channel(enum.IntEnum):
    STDIN = 0
    STDOUT = 1
    STDERR = 2


class ProtocolError(Exception):
    """The peer sent something this side cannot understand."""


class ConnectionLost(Exception):
    """The underlying connection went away while a stream was in use."""


class StreamClosed(Exception):
    """The stream was closed (by either side) and can no longer send."""


class RemoteError(Exception):
    """The peer ended a stream with an ERROR frame."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details or {}


@dataclass(frozen=True, slots=True)
class Data:
    channel: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Eof:
    channel: int


@dataclass(frozen=True, slots=True)
class Msg:
    body: dict[str, Any]


Event = Data | Eof | Msg
_END = object()


def _encode_json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _decode_json(payload: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(payload)
    except ValueError as exc:  # also UnicodeDecodeError
        raise ProtocolError(f"invalid JSON payload: {exc}") from exc
    if not isinstance(obj, dict):
        raise ProtocolError("JSON payload is not an object")
    return obj


class Stream:
    """One logical stream inside a :class:`Connection`."""

    def __init__(self, conn: Connection, stream_id: int) -> None:
        self._conn = conn
        self.id = stream_id
        self._events: asyncio.Queue[Any] = asyncio.Queue()
        self._send_credit = INITIAL_WINDOW
        self._credit_changed = asyncio.Event()
        self._unacked = 0
        self._recv_window = INITIAL_WINDOW  # credit granted to the peer, not yet used
        self._local_closed = False
        self._remote_closed = False
        self._error: BaseException | None = None
        self.remote_closed_event = asyncio.Event()

    # -- receiving -------------------------------------------------------
    async def recv(self) -> Event | None:
        """Next event from the peer; ``None`` once the peer closed the stream.

        Raises :class:`RemoteError` if the peer ended the stream with an error
        and :class:`ConnectionLost` if the connection died. After this side
        closed the stream, ``recv`` returns ``None`` (it never blocks forever).
        """
        item = await self._events.get()
        if item is _END:
            self._events.put_nowait(_END)  # keep returning the end marker
            if self._error is not None:
                raise self._error
            return None
        if isinstance(item, Data):
            self._grant(len(item.data))
        return item  # type: ignore[no-any-return]

    async def recv_msg(self) -> dict[str, Any]:
        """Receive events until a MSG arrives (DATA/EOF before it are an error)."""
        while True:
            ev = await self.recv()
            if ev is None:
                raise StreamClosed(f"stream {self.id} closed before a reply")
            if isinstance(ev, Msg):
                return ev.body
            raise ProtocolError(f"expected a message on stream {self.id}, got {ev!r}")

    def _grant(self, n: int) -> None:
        self._unacked += n
        if self._unacked >= _GRANT_THRESHOLD and not self.closed and self._conn.is_open:
            grant, self._unacked = self._unacked, 0
            self._recv_window += grant
            self._conn._write_frame(self.id, Kind.WINDOW, 0, struct.pack("!I", grant))

    # -- sending ---------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._local_closed or self._remote_closed

    def _check_open(self) -> None:
        if self._error is not None and isinstance(self._error, ConnectionLost):
            raise self._error
        if self.closed:
            raise StreamClosed(f"stream {self.id} is closed")

    @property
    def send_credit(self) -> int:
        """Bytes of DATA this side may send right now without waiting."""
        return max(self._send_credit, 0)

    async def wait_credit(self) -> None:
        """Wait until the peer granted some window credit (or raise if the stream closed)."""
        self._check_open()
        while self._send_credit <= 0:
            self._credit_changed.clear()
            await self._credit_changed.wait()
            self._check_open()

    def send_nowait(
        self, data: bytes | bytearray | memoryview, channel: int = Channel.STDIN
    ) -> int:
        """Queue as much of ``data`` as the current credit allows; return the byte count.

        Never waits: the frames are handed to the transport before this returns,
        so a caller can take exactly that many bytes out of its own buffer. Call
        :meth:`drain` afterwards to respect the transport's write buffer limit.
        """
        self._check_open()
        view = memoryview(data)
        sent = 0
        while sent < len(view) and self._send_credit > 0:
            n = min(len(view) - sent, self._send_credit, MAX_PAYLOAD)
            self._conn._write_frame(self.id, Kind.DATA, channel, view[sent : sent + n])
            self._send_credit -= n
            sent += n
        return sent

    async def drain(self) -> None:
        """Wait until the connection's write buffer is below its high-water mark."""
        await self._conn._drain()

    async def send(
        self, data: bytes | bytearray | memoryview, channel: int = Channel.STDIN
    ) -> None:
        """Send bytes, waiting for window credit as needed."""
        view = memoryview(data)
        while view:
            self._check_open()
            while self._send_credit <= 0:
                self._credit_changed.clear()
                await self._credit_changed.wait()
                self._check_open()
            n = min(len(view), self._send_credit, MAX_PAYLOAD)
            self._conn._write_frame(self.id, Kind.DATA, channel, view[:n])
            self._send_credit -= n
            view = view[n:]
        await self._conn._drain()

    async def send_eof(self, channel: int = Channel.STDIN) -> None:
        self._check_open()
        self._conn._write_frame(self.id, Kind.EOF, channel, b"")
        await self._conn._drain()

    async def send_msg(self, body: dict[str, Any]) -> None:
        self._check_open()
        self._conn._write_frame(self.id, Kind.MSG, 0, _encode_json(body))
        await self._conn._drain()

    async def send_error(self, code: str, message: str, **details: Any) -> None:
        """End the stream with an error (no-op if already closed)."""
        if self.closed:
            return
        body = {"code": code, "message": message, **({"details": details} if details else {})}
        self._local_closed = True
        self._conn._forget(self)
        self._wake_local_close()
        with contextlib.suppress(ConnectionLost):
            self._conn._write_frame(self.id, Kind.ERROR, 0, _encode_json(body))
            await self._conn._drain()

    async def close(self) -> None:
        """End the stream (idempotent)."""
        if self._local_closed:
            return
        self._local_closed = True
        self._conn._forget(self)
        self._wake_local_close()
        if not self._remote_closed:
            with contextlib.suppress(ConnectionLost):
                self._conn._write_frame(self.id, Kind.CLOSE, 0, b"")
                await self._conn._drain()

    def _wake_local_close(self) -> None:
        # Senders waiting for credit see StreamClosed; a pending recv() ends.
        self._credit_changed.set()
        if not self._remote_closed:
            self._events.put_nowait(_END)

    # -- called by the connection ------------------------------------------
    def _on_frame(self, kind: int, channel: int, payload: bytes) -> None:
        if kind == Kind.DATA:
            self._recv_window -= len(payload)
            if self._recv_window < 0:
                raise ProtocolError(f"peer sent DATA beyond its window on stream {self.id}")
            self._events.put_nowait(Data(channel, payload))
        elif kind == Kind.WINDOW:
            if len(payload) != 4:
                raise ProtocolError(f"bad WINDOW frame on stream {self.id}")
            (grant,) = struct.unpack("!I", payload)
            self._send_credit += grant
            self._credit_changed.set()
        elif kind == Kind.EOF:
            self._events.put_nowait(Eof(channel))
        elif kind == Kind.MSG:
            self._events.put_nowait(Msg(_decode_json(payload)))
        elif kind == Kind.ERROR:
            body = _decode_json(payload)
            self._finish(
                RemoteError(
                    str(body.get("code", "error")),
                    str(body.get("message", "")),
                    body.get("details"),
                )
            )
        elif kind == Kind.CLOSE:
            self._finish(None)
        else:
            raise ProtocolError(f"unexpected frame kind {kind} on stream {self.id}")

    def _finish(self, error: BaseException | None) -> None:
        if self._remote_closed:
            return
        self._remote_closed = True
        self._error = error
        self._events.put_nowait(_END)
        self._credit_changed.set()
        self.remote_closed_event.set()


Handler = Callable[[Stream, dict[str, Any]], Awaitable[None]]


class Connection:
    """Frames, multiplexing and flow control over an asyncio stream pair.

    The host side calls :meth:`open`; the agent side passes ``handler``, which
    is run as a task for every stream the host opens.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        handler: Handler | None = None,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._handler = handler
        self._streams: dict[int, Stream] = {}
        self._next_id = 1
        self._lost: ConnectionLost | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = asyncio.Event()

    @property
    def is_open(self) -> bool:
        return self._lost is None

    # -- host side ----------------------------------------------------------
    async def open(self, op: str, **args: Any) -> Stream:
        """Open a stream for request ``op`` with JSON arguments ``args``."""
        if self._lost is not None:
            raise self._lost
        sid = self._next_id
        self._next_id += 1
        stream = Stream(self, sid)
        self._streams[sid] = stream
        self._write_frame(sid, Kind.OPEN, 0, _encode_json({"op": op, **args}))
        await self._drain()
        return stream

    async def request(self, op: str, **args: Any) -> dict[str, Any]:
        """Open a stream, wait for its single reply message, close it."""
        stream = await self.open(op, **args)
        try:
            return await stream.recv_msg()
        finally:
            await stream.close()

    # -- both sides ---------------------------------------------------------
    async def serve(self) -> None:
        """Read frames until the connection ends; then fail every stream."""
        reason = "connection closed"
        try:
            while True:
                header = await self._reader.readexactly(HEADER.size)
                sid, kind, channel, length = HEADER.unpack(header)
                if length > _MAX_CONTROL_PAYLOAD:
                    raise ProtocolError(f"frame of {length} bytes is too large")
                payload = await self._reader.readexactly(length) if length else b""
                self._dispatch(sid, kind, channel, payload)
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
            reason = f"connection lost: {exc!r}"
        except ProtocolError as exc:
            reason = f"protocol error: {exc}"
        finally:
            self._fail_all(ConnectionLost(reason))

    def _dispatch(self, sid: int, kind: int, channel: int, payload: bytes) -> None:
        if kind == Kind.OPEN:
            if self._handler is None:
                raise ProtocolError("peer tried to open a stream")
            if sid in self._streams:
                raise ProtocolError(f"stream {sid} opened twice")
            request = _decode_json(payload)
            opened = Stream(self, sid)
            self._streams[sid] = opened
            task = asyncio.get_running_loop().create_task(self._run_handler(opened, request))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        stream = self._streams.get(sid)
        if stream is None:
            return  # late frame for a stream this side already forgot
        stream._on_frame(kind, channel, payload)
        if kind in (Kind.CLOSE, Kind.ERROR):
            self._forget(stream)

    async def _run_handler(self, stream: Stream, request: dict[str, Any]) -> None:
        assert self._handler is not None
        try:
            await self._handler(stream, request)
        except (ConnectionLost, StreamClosed):
            pass
        except Exception as exc:  # report, never crash the agent
            with contextlib.suppress(ConnectionLost, StreamClosed):
                await stream.send_error("internal", f"{type(exc).__name__}: {exc}")
        finally:
            with contextlib.suppress(ConnectionLost):
                await stream.close()

    def _write_frame(self, sid: int, kind: int, channel: int, payload: bytes | memoryview) -> None:
        if self._lost is not None:
            raise self._lost
        # One write per frame: header and payload leave in the same send() when
        # the transport is idle (half the syscalls, no 10-byte packets).
        self._writer.write(HEADER.pack(sid, kind, channel, len(payload)) + payload)

    async def _drain(self) -> None:
        if self._lost is not None:
            raise self._lost
        try:
            await self._writer.drain()
        except (ConnectionError, OSError) as exc:
            self._fail_all(ConnectionLost(f"connection lost: {exc!r}"))
            raise ConnectionLost(str(exc)) from exc

    def _forget(self, stream: Stream) -> None:
        # Once either side ended a stream, frames that still arrive for it
        # (late DATA/WINDOW) are dropped by _dispatch.
        self._streams.pop(stream.id, None)

    def _fail_all(self, exc: ConnectionLost) -> None:
        if self._lost is None:
            self._lost = exc
        for stream in list(self._streams.values()):
            stream._finish(exc)
        self._streams.clear()
        with contextlib.suppress(Exception):
            self._writer.close()
        self.closed.set()

    async def aclose(self, *, abort: bool = False) -> None:
        """End the connection. ``abort`` drops unsent bytes and closes the
        socket at once (a peer that stopped reading cannot keep it open), and
        waits (briefly) until the stream handlers have finished cleaning up."""
        self._fail_all(ConnectionLost("closed by this side"))
        if abort:
            with contextlib.suppress(Exception):
                self._writer.transport.abort()
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        if abort and tasks:  # their cleanup (e.g. closing a listener) done on return
            await asyncio.wait(tasks, timeout=2)
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()
