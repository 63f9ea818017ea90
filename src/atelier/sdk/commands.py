"""``sandbox.commands``: run processes, stream their output, attach to them later.

A command's nonzero exit status is *not* an exception: look at
``result.exit_code`` (or ``result.ok``). Errors of the platform itself
(sandbox gone, agent failure, server unreachable) raise
:class:`atelier.errors.AtelierError` subclasses.
"""

from __future__ import annotations

import builtins
import inspect
from collections.abc import Mapping, Sequence
from typing import Literal, overload

from atelier.errors import ProcessNotFound
from atelier.sdk import _api as api
from atelier.sdk._base import OutputHandler, ResultCollector
from atelier.sdk._http import (
    AsyncHttp,
    AsyncResponseStream,
    ResponseStream,
    SyncHttp,
    sync_body,
)
from atelier.sdk.models import CommandEvent, CommandResult, ProcessInfo

__all__ = ["AsyncCommandHandle", "AsyncCommands", "CommandHandle", "Commands"]


def _stdin_bytes(data: str | bytes) -> bytes:
    body = sync_body(data)
    assert isinstance(body, bytes)
    return body


# -- sync --------------------------------------------------------------------


class CommandHandle:
    """A background process: stream or wait for its output, feed its stdin, signal it."""

    def __init__(
        self, http: SyncHttp, sandbox_id: str, pid: int, info: ProcessInfo | None = None
    ) -> None:
        self._http = http
        self.sandbox_id = sandbox_id
        self.pid = pid
        self.info = info

    def __repr__(self) -> str:
        return f"CommandHandle(sandbox_id={self.sandbox_id!r}, pid={self.pid})"

    def stream(self) -> ResponseStream[CommandEvent]:
        """Events from the start of the process (buffered output replayed), then live
        until :class:`Exit`. Each call attaches anew; close the stream to detach."""
        return self._http.stream(api.process_events(self.sandbox_id, self.pid))

    def wait(
        self, on_stdout: OutputHandler | None = None, on_stderr: OutputHandler | None = None
    ) -> CommandResult:
        """Block until the process exits and return its whole output."""
        collector = ResultCollector(on_stdout, on_stderr, pid=self.pid)
        with self.stream() as events:
            for event in events:
                collector.feed(event)
        return collector.result()

    def send_stdin(self, data: str | bytes, eof: bool = False) -> None:
        """Write to the process's stdin (started with ``keep_stdin_open=True``);
        ``eof=True`` closes stdin afterwards."""
        call = api.send_stdin(self.sandbox_id, self.pid, eof=eof)
        self._http.call(call, content=_stdin_bytes(data))

    def signal(self, signal: str | int = "SIGTERM") -> None:
        self._http.call(api.signal_process(self.sandbox_id, self.pid, signal))

    def kill(self) -> bool:
        """SIGKILL the process; ``False`` if it no longer exists."""
        try:
            self.signal("SIGKILL")
        except ProcessNotFound:
            return False
        return True


class Commands:
    """Processes of one sandbox (``sandbox.commands``)."""

    def __init__(self, http: SyncHttp, sandbox_id: str) -> None:
        self._http = http
        self._sandbox_id = sandbox_id

    @overload
    def run(
        self,
        cmd: str | None = None,
        *,
        argv: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        timeout: float | None = None,
        stdin: str | None = None,
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
        background: Literal[False] = False,
        tag: str | None = None,
    ) -> CommandResult: ...

    @overload
    def run(
        self,
        cmd: str | None = None,
        *,
        argv: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        timeout: float | None = None,
        stdin: str | None = None,
        background: Literal[True],
        keep_stdin_open: bool = False,
        tag: str | None = None,
    ) -> CommandHandle: ...

    def run(
        self,
        cmd: str | None = None,
        *,
        argv: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        timeout: float | None = None,
        stdin: str | None = None,
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
        background: bool = False,
        keep_stdin_open: bool = False,
        tag: str | None = None,
    ) -> CommandResult | CommandHandle:
        """Run ``cmd`` (a shell string, ``bash -l -c``) or ``argv`` (exec'd directly).

        In the foreground, block until it exits and return a :class:`CommandResult`
        (output is also passed to ``on_stdout``/``on_stderr`` as it arrives; leaving
        early, e.g. on Ctrl-C, kills the process). With ``background=True`` return
        a :class:`CommandHandle` at once.
        """
        body = api.command_body(
            cmd,
            argv,
            env=env,
            cwd=cwd,
            user=user,
            timeout=timeout,
            stdin=stdin,
            keep_stdin_open=keep_stdin_open,
            tag=tag,
        )
        if background:
            info = self._http.call(api.run_background(self._sandbox_id, body))
            return CommandHandle(self._http, self._sandbox_id, info.pid, info)
        collector = ResultCollector(on_stdout, on_stderr)
        with self._http.stream(api.run_foreground(self._sandbox_id, body)) as events:
            for event in events:
                collector.feed(event)
        return collector.result()

    def list(self) -> builtins.list[ProcessInfo]:
        return self._http.call(api.list_processes(self._sandbox_id))

    def connect(self, pid: int) -> CommandHandle:
        """A handle on a running (or finished, still listed) process."""
        for info in self.list():
            if info.pid == pid:
                return CommandHandle(self._http, self._sandbox_id, pid, info)
        raise ProcessNotFound(f"no process {pid} in sandbox {self._sandbox_id}")

    def send_stdin(self, pid: int, data: str | bytes, eof: bool = False) -> None:
        CommandHandle(self._http, self._sandbox_id, pid).send_stdin(data, eof=eof)

    def signal(self, pid: int, signal: str | int = "SIGTERM") -> None:
        CommandHandle(self._http, self._sandbox_id, pid).signal(signal)

    def kill(self, pid: int) -> bool:
        return CommandHandle(self._http, self._sandbox_id, pid).kill()


# -- async -------------------------------------------------------------------


class AsyncCommandHandle:
    """The async mirror of :class:`CommandHandle`."""

    def __init__(
        self, http: AsyncHttp, sandbox_id: str, pid: int, info: ProcessInfo | None = None
    ) -> None:
        self._http = http
        self.sandbox_id = sandbox_id
        self.pid = pid
        self.info = info

    def __repr__(self) -> str:
        return f"AsyncCommandHandle(sandbox_id={self.sandbox_id!r}, pid={self.pid})"

    def stream(self) -> AsyncResponseStream[CommandEvent]:
        """``async for event in handle.stream()`` (see :meth:`CommandHandle.stream`)."""
        return self._http.stream(api.process_events(self.sandbox_id, self.pid))

    async def wait(
        self, on_stdout: OutputHandler | None = None, on_stderr: OutputHandler | None = None
    ) -> CommandResult:
        """Wait for the exit; handlers may be plain functions or coroutine functions."""
        collector = ResultCollector(on_stdout, on_stderr, pid=self.pid)
        async with self.stream() as events:
            async for event in events:
                if inspect.isawaitable(handled := collector.feed(event)):
                    await handled
        return collector.result()

    async def send_stdin(self, data: str | bytes, eof: bool = False) -> None:
        call = api.send_stdin(self.sandbox_id, self.pid, eof=eof)
        await self._http.call(call, content=_stdin_bytes(data))

    async def signal(self, signal: str | int = "SIGTERM") -> None:
        await self._http.call(api.signal_process(self.sandbox_id, self.pid, signal))

    async def kill(self) -> bool:
        try:
            await self.signal("SIGKILL")
        except ProcessNotFound:
            return False
        return True


class AsyncCommands:
    """The async mirror of :class:`Commands`."""

    def __init__(self, http: AsyncHttp, sandbox_id: str) -> None:
        self._http = http
        self._sandbox_id = sandbox_id

    @overload
    async def run(
        self,
        cmd: str | None = None,
        *,
        argv: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        timeout: float | None = None,
        stdin: str | None = None,
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
        background: Literal[False] = False,
        tag: str | None = None,
    ) -> CommandResult: ...

    @overload
    async def run(
        self,
        cmd: str | None = None,
        *,
        argv: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        timeout: float | None = None,
        stdin: str | None = None,
        background: Literal[True],
        keep_stdin_open: bool = False,
        tag: str | None = None,
    ) -> AsyncCommandHandle: ...

    async def run(
        self,
        cmd: str | None = None,
        *,
        argv: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        timeout: float | None = None,
        stdin: str | None = None,
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
        background: bool = False,
        keep_stdin_open: bool = False,
        tag: str | None = None,
    ) -> CommandResult | AsyncCommandHandle:
        """See :meth:`Commands.run`; handlers may be coroutine functions."""
        body = api.command_body(
            cmd,
            argv,
            env=env,
            cwd=cwd,
            user=user,
            timeout=timeout,
            stdin=stdin,
            keep_stdin_open=keep_stdin_open,
            tag=tag,
        )
        if background:
            info = await self._http.call(api.run_background(self._sandbox_id, body))
            return AsyncCommandHandle(self._http, self._sandbox_id, info.pid, info)
        collector = ResultCollector(on_stdout, on_stderr)
        async with self._http.stream(api.run_foreground(self._sandbox_id, body)) as events:
            async for event in events:
                if inspect.isawaitable(handled := collector.feed(event)):
                    await handled
        return collector.result()

    async def list(self) -> builtins.list[ProcessInfo]:
        return await self._http.call(api.list_processes(self._sandbox_id))

    async def connect(self, pid: int) -> AsyncCommandHandle:
        for info in await self.list():
            if info.pid == pid:
                return AsyncCommandHandle(self._http, self._sandbox_id, pid, info)
        raise ProcessNotFound(f"no process {pid} in sandbox {self._sandbox_id}")

    async def send_stdin(self, pid: int, data: str | bytes, eof: bool = False) -> None:
        await AsyncCommandHandle(self._http, self._sandbox_id, pid).send_stdin(data, eof=eof)

    async def signal(self, pid: int, signal: str | int = "SIGTERM") -> None:
        await AsyncCommandHandle(self._http, self._sandbox_id, pid).signal(signal)

    async def kill(self, pid: int) -> bool:
        return await AsyncCommandHandle(self._http, self._sandbox_id, pid).kill()
