"""Commands: ``exec`` and ``process.list/attach/stdin/signal`` over one global table.

The table outlives connections: a background process keeps running when its
stream (or the whole connection) goes away and can be attached to again
later, getting the output it has not delivered yet. Exited processes stay
until a host collected their exit (at most ``MAX_EXITED`` of them).
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import os
import signal
from typing import Any

from .common import AgentError, log, parse_signal
from .pipes import InputPipe, OutputPipe
from .process import Process, build_command, resolve_cwd
from .protocol import ConnectionLost, Data, Eof, Msg, RemoteError, Stream, StreamClosed
from .spawn import BadCwd, CommandNotFound, ExecFailed, Spawner, SpawnRequest
from .users import Identity, base_env, resolve_user

__all__ = ["MAX_EXITED", "ProcessTable"]

MAX_EXITED = 256
_synthetic_pids = itertools.count(4_194_305)  # above Linux's PID_MAX_LIMIT: never a real pid


class ProcessTable:
    def __init__(self, spawner: Spawner) -> None:
        self.spawner = spawner
        self.procs: dict[int, Process] = {}
        self._kept: set[asyncio.Task[None]] = set()

    def get(self, pid: Any) -> Process:
        if isinstance(pid, bool) or not isinstance(pid, int):
            raise AgentError("invalid_request", "pid must be an integer")
        proc = self.procs.get(pid)
        if proc is None:
            raise AgentError("process_not_found", f"no process with pid {pid}")
        return proc

    def keep(self, task: asyncio.Task[None]) -> None:
        self._kept.add(task)
        task.add_done_callback(self._kept.discard)

    def on_exit(self, proc: Process) -> None:
        if proc.abandoned:  # nobody will collect it
            self._remove(proc)
        exited = [p for p in self.procs.values() if not p.running]
        for old in exited[: max(0, len(exited) - MAX_EXITED)]:
            self._remove(old)

    def delivered(self, proc: Process) -> None:
        """The exit reached a host (or no host will ever want it): the entry is done."""
        if self.procs.get(proc.pid) is proc:
            self._remove(proc)

    def _remove(self, proc: Process) -> None:
        if self.procs.get(proc.pid) is proc:
            del self.procs[proc.pid]
        if proc.attachment is None:
            proc.release()

    def shutdown(self) -> None:
        for proc in list(self.procs.values()):
            if proc.running:
                proc.send_signal(signal.SIGKILL)
            proc.release()
        self.procs.clear()

    # -- ops -------------------------------------------------------------------
    async def op_exec(self, stream: Stream, req: dict[str, Any]) -> None:
        ident = resolve_user(req.get("user"))
        env = base_env(ident, req.get("env"))
        argv, cmd, search = build_command(req)
        cwd = resolve_cwd(req.get("cwd"), ident)
        timeout = req.get("timeout")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
        ):
            raise AgentError("invalid_request", "timeout must be a positive number of seconds")
        tag = req.get("tag")
        if tag is not None and not isinstance(tag, str):
            raise AgentError("invalid_request", "tag must be a string")
        background = bool(req.get("background", False))
        want_stdin = bool(req.get("stdin", False))
        proc = await self._start(ident, env, argv, cmd, search, cwd, want_stdin, background, tag)
        if timeout is not None and proc.running:
            proc.timer = asyncio.get_running_loop().call_later(float(timeout), proc.on_timeout)
        if background:
            await proc.serve_control(stream)
        else:
            await proc.serve(stream, kill_on_close=True)

    async def _start(
        self,
        ident: Identity,
        env: dict[str, str],
        argv: list[str],
        cmd: str | None,
        search: bool,
        cwd: str,
        want_stdin: bool,
        background: bool,
        tag: str | None,
    ) -> Process:
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        in_r, in_w = os.pipe() if want_stdin else (None, None)
        proc = Process(
            self,
            cmd=cmd,
            argv=argv if cmd is None else None,
            tag=tag,
            user=ident.name,
            cwd=cwd,
            background=background,
            stdout=OutputPipe(out_r),
            stderr=OutputPipe(err_r),
            stdin=InputPipe(in_w) if in_w is not None else None,
        )
        request = SpawnRequest(argv, env, cwd, ident, in_r, out_w, err_w, search_path=search)
        try:
            proc.pid = await self.spawner.spawn(request, proc.on_exit)
        except BadCwd as exc:
            proc.release()
            raise AgentError("invalid_request", str(exc)) from None
        except (CommandNotFound, ExecFailed) as exc:
            proc.release()
            return self._synthetic(proc, exc)
        except BaseException:
            proc.release()
            raise
        finally:
            for fd in (out_w, err_w, in_r):
                if fd is not None:
                    os.close(fd)
        self.procs[proc.pid] = proc
        log.info("exec pid=%d user=%s cwd=%s argv=%r", proc.pid, ident.name, cwd, argv)
        return proc

    def _synthetic(self, failed: Process, exc: CommandNotFound | ExecFailed) -> Process:
        """A process that 'ran' and failed like a shell would: 127 not found, 126 not runnable."""
        not_found = isinstance(exc, CommandNotFound) or exc.errno == errno.ENOENT
        code = 127 if not_found else 126
        message = f"atelier: {exc.name}: {exc.reason}\n".encode()
        proc = Process(
            self,
            cmd=failed.cmd,
            argv=failed.argv,
            tag=failed.tag,
            user=failed.user,
            cwd=failed.cwd,
            background=failed.background,
            stdout=OutputPipe(None),
            stderr=OutputPipe(None, initial=message),
            stdin=None,
        )
        proc.pid = next(_synthetic_pids)
        self.procs[proc.pid] = proc
        log.info("exec failed pid=%d: %s", proc.pid, message.decode().strip())
        proc.finish_synthetic(code)
        return proc

    async def op_list(self, stream: Stream, req: dict[str, Any]) -> None:
        procs = sorted(self.procs.values(), key=lambda p: p.started_at)
        await stream.send_msg({"processes": [p.info() for p in procs]})

    async def op_attach(self, stream: Stream, req: dict[str, Any]) -> None:
        proc = self.get(req.get("pid"))
        await proc.serve(stream, kill_on_close=not proc.background)

    async def op_signal(self, stream: Stream, req: dict[str, Any]) -> None:
        proc = self.get(req.get("pid"))
        proc.send_signal(parse_signal(req.get("signal")))
        await stream.send_msg({"ok": True})

    async def op_stdin(self, stream: Stream, req: dict[str, Any]) -> None:
        proc = self.get(req.get("pid"))
        if proc.stdin is None or proc.stdin.closed:
            raise AgentError("invalid_request", f"process {proc.pid} has no open stdin")
        while True:
            try:
                event = await stream.recv()
            except (ConnectionLost, RemoteError, StreamClosed):
                return
            if event is None:
                return
            if isinstance(event, Data) and event.channel == 0:
                await proc.write_stdin(event.data)
            elif isinstance(event, Eof) and event.channel == 0:
                proc.stdin.close()
                break
            elif isinstance(event, Msg) and event.body.get("type") == "end":
                break  # the host is done sending but keeps stdin open
        await stream.send_msg({"ok": True})
