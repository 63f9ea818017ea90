"""One command and its streams: output buffers, stdin, signals, exit, attachments.

A process's stdout/stderr always flow through its bounded :class:`OutputPipe`
buffers; an attached stream drains them as its window allows, and with no
stream attached they fill up to the limit and then the process blocks on
write (backpressure).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from typing import TYPE_CHECKING, Any

from .common import AgentError, exit_fields, iso_utc, log, parse_signal, require_abs_path
from .pipes import InputPipe, OutputPipe, pump_output
from .protocol import ConnectionLost, Data, Eof, Msg, RemoteError, Stream, StreamClosed
from .users import Identity

if TYPE_CHECKING:
    from .processes import ProcessTable as _Table

__all__ = ["EXIT_GRACE", "Process", "build_command", "resolve_cwd"]

EXIT_GRACE = 0.25  # after exit, how long output may still arrive from pipe holders


def build_command(req: dict[str, Any]) -> tuple[list[str], str | None, bool]:
    """``(argv to spawn, cmd or None, whether to search PATH)`` for ``cmd`` xor ``argv``."""
    cmd, argv = req.get("cmd"), req.get("argv")
    if (cmd is None) == (argv is None):
        raise AgentError("invalid_request", "give exactly one of cmd or argv")
    if cmd is not None:
        if not isinstance(cmd, str) or not cmd.strip() or "\0" in cmd:
            raise AgentError("invalid_request", "cmd must be a non-empty string")
        if os.access("/bin/bash", os.X_OK):
            return ["/bin/bash", "-l", "-c", cmd], cmd, False
        return ["/bin/sh", "-c", cmd], cmd, False
    if (
        not isinstance(argv, list)
        or not argv
        or not all(isinstance(a, str) and "\0" not in a for a in argv)
        or not argv[0]
    ):
        raise AgentError("invalid_request", "argv must be a non-empty list of strings")
    return list(argv), None, True


def resolve_cwd(value: Any, ident: Identity) -> str:
    if value is None:
        return ident.home if os.path.isdir(ident.home) else "/"
    try:
        return require_abs_path(value, "cwd")
    except AgentError as exc:
        raise AgentError("invalid_request", exc.message) from None


class _Attachment:
    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.superseded = asyncio.Event()


class Process:
    def __init__(
        self,
        table: _Table,
        *,
        cmd: str | None,
        argv: list[str] | None,
        tag: str | None,
        user: str,
        cwd: str,
        background: bool,
        stdout: OutputPipe,
        stderr: OutputPipe,
        stdin: InputPipe | None,
    ) -> None:
        self.table = table
        self.pid = 0
        self.cmd = cmd
        self.argv = argv
        self.tag = tag
        self.user = user
        self.cwd = cwd
        self.background = background
        self.stdout = stdout
        self.stderr = stderr
        self.stdin = stdin
        self.started_at = time.time()
        self.exit_code: int | None = None
        self.signal_name: str | None = None
        self.timed_out = False
        self.exited = asyncio.Event()
        self.synthetic = False
        self.attachment: _Attachment | None = None
        self.abandoned = False  # a foreground process whose host went away
        self.timer: asyncio.TimerHandle | None = None
        self._grace: asyncio.TimerHandle | None = None

    @property
    def running(self) -> bool:
        return not self.exited.is_set()

    def info(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "cmd": self.cmd,
            "argv": self.argv,
            "tag": self.tag,
            "user": self.user,
            "cwd": self.cwd,
            "background": self.background,
            "running": self.running,
            "exit_code": self.exit_code,
            "started_at": iso_utc(self.started_at),
        }

    def exit_message(self) -> dict[str, Any]:
        return {
            "type": "exit",
            "exit_code": self.exit_code,
            "signal": self.signal_name,
            "timed_out": self.timed_out,
        }

    # -- lifecycle -----------------------------------------------------------
    def on_exit(self, status: int) -> None:
        if self.timed_out:
            self.exit_code, self.signal_name = 128 + signal.SIGKILL, "SIGKILL"
        else:
            self.exit_code, self.signal_name = exit_fields(status)
        self._finish()

    def finish_synthetic(self, exit_code: int) -> None:
        self.synthetic = True
        self.exit_code = exit_code
        self._finish()

    def _finish(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.exited.set()
        if self.stdin is not None:
            self.stdin.close()
        log.info(
            "exit pid=%d code=%s signal=%s timed_out=%s",
            self.pid,
            self.exit_code,
            self.signal_name,
            self.timed_out,
        )
        if not (self.stdout.eof and self.stderr.eof):
            loop = asyncio.get_running_loop()
            self._grace = loop.call_later(EXIT_GRACE, self._settle_output)
        self.table.on_exit(self)

    def _settle_output(self) -> None:
        # The process is gone but its output is not finished: a descendant
        # holds the pipe open. Take what is in the pipe now and stop waiting
        # for more (unless the buffer is full: then the host is just slow).
        self._grace = None
        if not all([self.stdout.settle(), self.stderr.settle()]):
            loop = asyncio.get_running_loop()
            self._grace = loop.call_later(EXIT_GRACE, self._settle_output)

    def on_timeout(self) -> None:
        self.timer = None
        if self.running:
            self.timed_out = True
            log.info("timeout pid=%d", self.pid)
            self.send_signal(signal.SIGKILL)

    def send_signal(self, sig: int) -> None:
        """Signal the process group (the process itself if it left its group)."""
        if self.synthetic or not self.running:
            return
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)
        except PermissionError as exc:
            raise AgentError("permission_denied", f"cannot signal {self.pid}: {exc}") from None

    def release(self) -> None:
        """Forget the process: close the agent's pipe ends."""
        for handle in (self.timer, self._grace):
            if handle is not None:
                handle.cancel()
        self.stdout.close()
        self.stderr.close()
        if self.stdin is not None:
            self.stdin.close()

    # -- streaming to the host -----------------------------------------------
    async def serve_control(self, stream: Stream) -> None:
        """A background exec's stream: ``started``, then only stdin and signals.

        Output stays in the buffers for ``process.attach``: anything sent here
        could be lost in flight while the host detaches right after ``started``.
        """
        await stream.send_msg({"type": "started", "pid": self.pid})
        await self._input(stream)  # until the host closes the stream

    async def serve(self, stream: Stream, kill_on_close: bool) -> None:
        """Send ``started``, output, EOFs and ``exit`` on ``stream``; take stdin/signals."""
        if self.attachment is not None:
            self.attachment.superseded.set()
        att = _Attachment(stream)
        self.attachment = att
        loop = asyncio.get_running_loop()
        inp = loop.create_task(self._input(stream))
        waiters: list[asyncio.Task[Any]] = []
        delivered = False
        try:
            await stream.send_msg({"type": "started", "pid": self.pid})
            out = loop.create_task(self._deliver(stream))
            closed = loop.create_task(stream.remote_closed_event.wait())
            superseded = loop.create_task(att.superseded.wait())
            waiters = [out, closed, superseded]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if out.done() and not out.cancelled() and out.exception() is None:
                await stream.send_msg(self.exit_message())
                delivered = True
        finally:
            for task in waiters:
                task.cancel()
            if self.attachment is att:
                self.attachment = None
            host_gone = not delivered and not att.superseded.is_set()
            if host_gone and kill_on_close:
                self.abandoned = True
                if self.running:
                    log.info("stream closed: killing pid=%d", self.pid)
                    self.send_signal(signal.SIGKILL)
            if host_gone and not kill_on_close and not inp.done():
                self.table.keep(inp)  # let stdin sent before the detach reach the process
            else:
                inp.cancel()
            if delivered or (self.abandoned and not self.running):
                self.table.delivered(self)

    async def _deliver(self, stream: Stream) -> None:
        loop = asyncio.get_running_loop()
        pumps = [
            loop.create_task(pump_output(self.stdout, stream, 1)),
            loop.create_task(pump_output(self.stderr, stream, 2)),
        ]
        try:
            for pump in pumps:
                await pump
            await self.exited.wait()
        finally:
            for pump in pumps:
                pump.cancel()

    async def _input(self, stream: Stream) -> None:
        while True:
            try:
                event = await stream.recv()
            except (ConnectionLost, RemoteError, StreamClosed):
                return
            if event is None:
                return
            if isinstance(event, Data) and event.channel == 0:
                await self.write_stdin(event.data)
            elif isinstance(event, Eof) and event.channel == 0:
                if self.stdin is not None:
                    self.stdin.close()
            elif isinstance(event, Msg):
                self.control(event.body)

    async def write_stdin(self, data: bytes) -> None:
        if self.stdin is None or self.stdin.closed:
            return  # nobody reads it: drop, like writing to a closed pipe
        async with self.stdin.lock:
            await self.stdin.write(data)

    def control(self, body: dict[str, Any]) -> None:
        if body.get("type") == "signal":
            try:
                self.send_signal(parse_signal(body.get("signal")))
            except AgentError as exc:
                log.warning("signal request for pid %d ignored: %s", self.pid, exc)
