"""The ``pty`` op: an interactive terminal session on one stream.

The child becomes a session leader (setsid) and opens the pty replica
without ``O_NOCTTY``, which makes it its controlling terminal (what
``TIOCSCTTY`` would do) without running any code between fork and exec.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import struct
import termios
from typing import Any

from .common import AgentError, exit_fields, log, parse_signal
from .pipes import InputPipe, OutputPipe, pump_output
from .process import EXIT_GRACE, build_command, resolve_cwd
from .protocol import ConnectionLost, Data, Msg, RemoteError, Stream, StreamClosed
from .spawn import BadCwd, CommandNotFound, ExecFailed, Spawner, SpawnRequest
from .users import base_env, resolve_user

__all__ = ["HANGUP_GRACE", "Terminal", "kill_session", "op_pty"]

HANGUP_GRACE = 1.0  # seconds between SIGHUP and SIGKILL when the host goes away


def _dimension(value: Any, default: int, name: str) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 0xFFFF:
        raise AgentError("invalid_request", f"{name} must be an integer between 1 and 65535")
    return value


def set_winsize(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def kill_session(sid: int, sig: int) -> int:
    """Send ``sig`` to every process of session ``sid`` (found in /proc); return the count."""
    count = 0
    try:
        entries = os.listdir("/proc")
    except OSError:
        return 0
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                raw = fh.read()
            fields = raw[raw.rindex(b")") + 2 :].split()
            if int(fields[3]) != sid:  # state ppid pgrp session ...
                continue
            os.kill(int(entry), sig)
            count += 1
        except (OSError, ValueError, IndexError):
            continue
    return count


class Terminal:
    def __init__(self, master: int) -> None:
        self.output = OutputPipe(master)
        self.input = InputPipe(os.dup(master))
        self.control_fd = os.dup(master)  # for resize, whatever the pipes' state
        self.pid = 0
        self.exited = asyncio.Event()
        self.exit_code: int | None = None
        self.signal_name: str | None = None
        self._grace: asyncio.TimerHandle | None = None

    def on_exit(self, status: int) -> None:
        self.exit_code, self.signal_name = exit_fields(status)
        self.exited.set()
        log.info("pty exit pid=%d code=%s", self.pid, self.exit_code)
        if not self.output.eof:
            self._grace = asyncio.get_running_loop().call_later(EXIT_GRACE, self._settle)

    def _settle(self) -> None:
        self._grace = None
        if not self.output.settle():
            self._grace = asyncio.get_running_loop().call_later(EXIT_GRACE, self._settle)

    def resize(self, cols: Any, rows: Any) -> None:
        try:
            set_winsize(self.control_fd, _dimension(cols, 80, "cols"), _dimension(rows, 24, "rows"))
        except (AgentError, OSError) as exc:
            log.warning("pty resize ignored: %s", exc)

    def signal(self, sig: int) -> None:
        if self.pid and not self.exited.is_set():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)

    def close(self) -> None:
        if self._grace is not None:
            self._grace.cancel()
        self.output.close()
        self.input.close()
        if self.control_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.control_fd)
            self.control_fd = -1

    async def serve(self, stream: Stream) -> None:
        loop = asyncio.get_running_loop()
        inp = loop.create_task(self._input(stream))
        waiters: list[asyncio.Task[Any]] = []
        delivered = False
        try:
            await stream.send_msg({"type": "started", "pid": self.pid})
            out = loop.create_task(self._deliver(stream))
            closed = loop.create_task(stream.remote_closed_event.wait())
            waiters = [out, closed]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if out.done() and not out.cancelled() and out.exception() is None:
                await stream.send_msg(
                    {
                        "type": "exit",
                        "exit_code": self.exit_code,
                        "signal": self.signal_name,
                        "timed_out": False,
                    }
                )
                delivered = True
        finally:
            inp.cancel()
            for task in waiters:
                task.cancel()
            if not delivered:
                self.hang_up()
            self.close()

    async def _deliver(self, stream: Stream) -> None:
        await pump_output(self.output, stream, 1)
        await self.exited.wait()

    async def _input(self, stream: Stream) -> None:
        while True:
            try:
                event = await stream.recv()
            except (ConnectionLost, RemoteError, StreamClosed):
                return
            if event is None:
                return
            if isinstance(event, Data) and event.channel == 0:
                async with self.input.lock:
                    await self.input.write(event.data)
            elif isinstance(event, Msg):
                kind = event.body.get("type")
                if kind == "resize":
                    self.resize(event.body.get("cols"), event.body.get("rows"))
                elif kind == "signal":
                    try:
                        self.signal(parse_signal(event.body.get("signal")))
                    except AgentError as exc:
                        log.warning("pty signal ignored: %s", exc)

    def hang_up(self) -> None:
        """The host went away: SIGHUP the session now, SIGKILL what is left later."""
        if not self.pid or self.exited.is_set():
            return
        log.info("pty closed by host: hanging up session %d", self.pid)
        sid = self.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(sid, signal.SIGHUP)
        loop = asyncio.get_running_loop()

        def finish() -> None:
            task = loop.create_task(asyncio.to_thread(kill_session, sid, signal.SIGKILL))
            _pending.add(task)
            task.add_done_callback(_pending.discard)

        loop.call_later(HANGUP_GRACE, finish)


_pending: set[asyncio.Future[int]] = set()


async def op_pty(spawner: Spawner, stream: Stream, req: dict[str, Any]) -> None:
    ident = resolve_user(req.get("user"))
    env = base_env(ident, req.get("env"))
    env.setdefault("TERM", "xterm-256color")
    if req.get("cmd") is None and req.get("argv") is None:
        shell = "/bin/bash" if os.access("/bin/bash", os.X_OK) else "/bin/sh"
        argv, search = [shell, "-l"], False
    else:
        argv, _cmd, search = build_command(req)
    cwd = resolve_cwd(req.get("cwd"), ident)
    cols = _dimension(req.get("cols"), 80, "cols")
    rows = _dimension(req.get("rows"), 24, "rows")
    master, replica = os.openpty()
    term: Terminal | None = None
    try:
        set_winsize(master, cols, rows)
        tty_path = os.ttyname(replica)
        if os.geteuid() == 0:
            os.chown(tty_path, ident.uid, -1)
        term = Terminal(master)
        request = SpawnRequest(
            argv, env, cwd, ident, tty_path=tty_path, tty_fd=replica, search_path=search
        )
        term.pid = await spawner.spawn(request, term.on_exit)
    except BadCwd as exc:
        raise AgentError("invalid_request", str(exc)) from None
    except (CommandNotFound, ExecFailed) as exc:
        raise AgentError("invalid_request", f"cannot start {exc.name}: {exc.reason}") from None
    except BaseException:
        if term is None:
            os.close(master)
        raise
    finally:
        os.close(replica)
        if term is not None and not term.pid:
            term.close()
    log.info("pty pid=%d user=%s argv=%r", term.pid, ident.name, argv)
    await term.serve(stream)
