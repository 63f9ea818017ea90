"""Non-blocking pipe ends driven by the event loop, with bounded buffers.

:class:`OutputPipe` reads a process's stdout/stderr (or a pty master) into a
buffer of at most ``limit`` bytes and stops reading when it is full, so a
process that outputs faster than the host consumes blocks on write
(backpressure) instead of the agent buffering without bound.
:func:`pump_output` moves a buffer to a stream exactly as fast as the
stream's window credit allows. :class:`InputPipe` writes to a process's stdin
(or a pty master), waiting while the pipe is full.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os

from .protocol import MAX_PAYLOAD, Stream

__all__ = ["OUTPUT_LIMIT", "InputPipe", "OutputPipe", "pump_output"]

OUTPUT_LIMIT = 1024 * 1024
_READ_SIZE = 64 * 1024
_SEND_BATCH = 4 * MAX_PAYLOAD


class OutputPipe:
    """The agent's read end of one output pipe (``fd`` is owned and closed here)."""

    def __init__(self, fd: int | None, limit: int = OUTPUT_LIMIT, initial: bytes = b"") -> None:
        self.buffer = bytearray(initial)
        self.limit = limit
        self.eof = fd is None  # no fd: a synthetic, already finished output
        self._fd = fd
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self._reading = False
        if fd is not None:
            os.set_blocking(fd, False)
            self._resume()

    @property
    def paused(self) -> bool:
        """True while reading stopped because the buffer is full."""
        return not self.eof and not self._reading

    def _resume(self) -> None:
        if not self._reading and self._fd is not None and not self.eof:
            self._loop.add_reader(self._fd, self._on_readable)
            self._reading = True

    def _pause(self) -> None:
        if self._reading and self._fd is not None:
            self._loop.remove_reader(self._fd)
            self._reading = False

    def _on_readable(self) -> None:
        assert self._fd is not None
        space = self.limit - len(self.buffer)
        if space <= 0:
            self._pause()
            return
        try:
            data = os.read(self._fd, min(_READ_SIZE, space))
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # EIO: a pty whose other side is all closed
            if exc.errno not in (errno.EIO, errno.EBADF):
                raise
            data = b""
        if not data:
            self._finish()
            return
        self.buffer += data
        self._changed.set()
        if len(self.buffer) >= self.limit:
            self._pause()

    def _finish(self) -> None:
        self._pause()
        self.eof = True
        self._changed.set()
        self._close_fd()

    def _close_fd(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)

    def force_eof(self) -> None:
        """Stop delivering: the process exited but someone else keeps the pipe open.

        Later output is read and dropped until the pipe really ends, so the
        holder (a daemonized grandchild) never blocks on a full pipe.
        """
        if self.eof:
            return
        self._pause()
        self.eof = True
        self._changed.set()
        if self._fd is not None:
            self._loop.add_reader(self._fd, self._discard)

    def settle(self) -> bool:
        """The writer exited: read what is in the pipe now, then stop waiting for more.

        Returns False if the buffer filled up first (the host has to read
        before the rest can be taken); True once the output is finished.
        """
        if self.eof or self._fd is None:
            return True
        while len(self.buffer) < self.limit:
            try:
                data = os.read(self._fd, min(_READ_SIZE, self.limit - len(self.buffer)))
            except (BlockingIOError, InterruptedError):
                self.force_eof()
                return True
            except OSError:
                data = b""
            if not data:
                self._finish()
                return True
            self.buffer += data
            self._changed.set()
        self._pause()
        return False

    def _discard(self) -> None:
        assert self._fd is not None
        try:
            data = os.read(self._fd, _READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._loop.remove_reader(self._fd)
            self._close_fd()

    def consume(self, n: int) -> None:
        del self.buffer[:n]
        if len(self.buffer) < self.limit:
            self._resume()

    async def wait(self) -> None:
        """Wait until there is buffered data or the output ended."""
        while not self.buffer and not self.eof:
            self._changed.clear()
            await self._changed.wait()

    @property
    def done(self) -> bool:
        return self.eof and not self.buffer

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._fd)
            self._reading = False
            self._close_fd()
        self.eof = True
        self._changed.set()


async def pump_output(
    pipe: OutputPipe, stream: Stream, channel: int, send_eof: bool = True
) -> None:
    """Send ``pipe``'s output on ``stream`` as credit allows; then EOF on ``channel``.

    Bytes leave the buffer only once they are in the connection's transport,
    so a cancelled pump (a new attacher took over) loses nothing.
    """
    while True:
        await pipe.wait()
        if pipe.buffer:
            await stream.wait_credit()
            # A copy (never a view) of the buffer: the buffer must stay resizable.
            chunk = pipe.buffer[: min(stream.send_credit, _SEND_BATCH)]
            sent = stream.send_nowait(chunk, channel)
            pipe.consume(sent)
            await stream.drain()
        elif pipe.eof:
            if send_eof:
                await stream.send_eof(channel)
            return


class InputPipe:
    """The agent's write end of a process's stdin (``fd`` is owned and closed here)."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self._fd: int | None = fd
        self._loop = asyncio.get_running_loop()
        self._waiter: asyncio.Future[None] | None = None
        self.lock = asyncio.Lock()
        self.broken = False

    @property
    def closed(self) -> bool:
        return self._fd is None

    async def write(self, data: bytes) -> bool:
        """Write everything (waiting while the pipe is full); False once the reader is gone."""
        view = memoryview(data)
        while view:
            if self._fd is None or self.broken:
                return False
            try:
                n = os.write(self._fd, view)
            except (BlockingIOError, InterruptedError):
                await self._writable()
                continue
            except OSError:  # EPIPE (the process closed stdin or exited), EIO (pty)
                self.broken = True
                return False
            view = view[n:]
        return True

    async def _writable(self) -> None:
        assert self._fd is not None
        fd = self._fd
        fut: asyncio.Future[None] = self._loop.create_future()
        self._waiter = fut

        def ready() -> None:
            if not fut.done():
                fut.set_result(None)

        self._loop.add_writer(fd, ready)
        try:
            await fut
        finally:
            if self._waiter is fut:  # else close() already unregistered it
                self._waiter = None
                self._loop.remove_writer(fd)

    def close(self) -> None:
        """Close stdin (the process sees EOF); a pending write returns False."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            self._loop.remove_writer(fd)
            if not waiter.done():
                waiter.set_result(None)
        with contextlib.suppress(OSError):
            os.close(fd)
