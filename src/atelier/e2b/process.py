"""envd's ``process.Process`` service over the agent's exec, attach, stdin, signal and PTY.

Every ``Start`` runs the command as an agent *background* process and follows
it with ``attach``: so a client that disconnects (e2b's ``handle.disconnect()``,
or a background command whose handle is dropped) leaves it running, and
``Connect`` can follow it later. The call's ``Connect-Timeout-Ms`` is the
process's timeout (the agent kills it then), as in e2b. A PTY lives as long as
its ``Start`` stream (the agent's terminal has one reader); input, resize and
kill reach it through :class:`Terminals`.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Any

from ..core.agent_client import Exit, Output, ProcessInfo, PtySession, Started
from ..errors import InvalidRequest, ProcessNotFound
from .calls import Call, EventStream
from .connect import Status, b64decode, b64encode, read_envelopes
from .mapping import resolve_path

__all__ = ["ProcessService"]

_SIGNALS: dict[object, str] = {
    "SIGNAL_SIGKILL": "SIGKILL",
    "SIGNAL_SIGTERM": "SIGTERM",
    9: "SIGKILL",
    15: "SIGTERM",
}
MAX_CONFIGS = 4096


def _event(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"event": {kind: body}}


def _end(exit: Exit) -> dict[str, Any]:
    status = f"signal: {exit.signal}" if exit.signal else f"exit status {exit.exit_code}"
    return _event(
        "end", {"exitCode": exit.exit_code, "exited": exit.signal is None, "status": status}
    )


class ProcessService:
    """The handlers, plus the live terminals and the configs ``List`` reports."""

    def __init__(self) -> None:
        self.terminals: dict[tuple[str, int], PtySession] = {}
        self._configs: OrderedDict[tuple[str, int], dict[str, Any]] = OrderedDict()

    # -- helpers ---------------------------------------------------------------------
    async def _pid(self, call: Call, message: dict[str, Any]) -> int:
        selector = message.get("process") or {}
        if "pid" in selector:
            return int(selector["pid"])
        tag = selector.get("tag")
        if not tag:
            raise InvalidRequest("process selector needs a pid or a tag")
        for proc in await call.agent.list_processes():
            if proc["tag"] == tag and proc["running"]:
                return proc["pid"]
        raise ProcessNotFound(f"no running process is tagged {tag!r}")

    def _remember(self, call: Call, pid: int, config: dict[str, Any]) -> None:
        self._configs[(call.sandbox_id, pid)] = config
        while len(self._configs) > MAX_CONFIGS:
            self._configs.popitem(last=False)

    # -- streams ---------------------------------------------------------------------
    async def start(self, call: Call, message: dict[str, Any]) -> EventStream:
        config = message.get("process") or {}
        if not config.get("cmd"):
            raise InvalidRequest("process.cmd is required")
        argv = [str(config["cmd"]), *(str(a) for a in config.get("args") or [])]
        env = {**call.rec.env, **(config.get("envs") or {})}
        cwd = resolve_path(config["cwd"], call.user) if config.get("cwd") else call.rec.default_cwd
        if message.get("pty"):
            size = (message["pty"] or {}).get("size") or {}
            terminal = await call.agent.pty(
                argv=argv,
                env=env,
                cwd=cwd,
                user=call.user,
                cols=int(size.get("cols") or 80),
                rows=int(size.get("rows") or 24),
            )
            async for event in self._terminal(call, terminal):
                yield event
            return
        session = await call.agent.exec(
            argv=argv,
            env=env,
            cwd=cwd,
            user=call.user,
            timeout=call.timeout,
            stdin=bool(message.get("stdin")),
            background=True,
            tag=message.get("tag") or None,
        )
        try:
            first = await anext(session)
        finally:
            await session.detach()  # a background process keeps running
        if not isinstance(first, Started):
            raise InvalidRequest(f"the process did not start: {first!r}")
        self._remember(call, first.pid, {"cmd": argv[0], "args": argv[1:], "envs": env, "cwd": cwd})
        async for event in self._follow(call, first.pid):
            yield event

    async def _terminal(self, call: Call, terminal: PtySession) -> EventStream:
        key: tuple[str, int] | None = None
        try:
            async for event in terminal:
                if isinstance(event, Started):
                    key = (call.sandbox_id, event.pid)
                    self.terminals[key] = terminal
                    yield _event("start", {"pid": event.pid})
                elif isinstance(event, Output):
                    yield _event("data", {"pty": b64encode(event.data)})
                elif isinstance(event, Exit):
                    yield _end(event)
                    return
        finally:
            if key is not None:
                self.terminals.pop(key, None)
            with contextlib.suppress(Exception):
                await terminal.close()

    async def _follow(self, call: Call, pid: int) -> EventStream:
        session = await call.agent.attach(pid)
        try:
            async for event in session:
                if isinstance(event, Started):
                    yield _event("start", {"pid": event.pid})
                elif isinstance(event, Output):
                    kind = "stderr" if event.stream == "stderr" else "stdout"
                    yield _event("data", {kind: b64encode(event.data)})
                elif isinstance(event, Exit):
                    yield _end(event)
                    if event.timed_out:
                        yield Status("deadline_exceeded", f"process {pid} reached its timeout")
                    return
        finally:
            await session.detach()

    async def connect(self, call: Call, message: dict[str, Any]) -> EventStream:
        pid = await self._pid(call, message)
        if (call.sandbox_id, pid) in self.terminals:
            raise InvalidRequest("connecting to a terminal (PTY) is not supported")
        async for event in self._follow(call, pid):
            yield event

    # -- unary -----------------------------------------------------------------------
    async def list(self, call: Call, _message: dict[str, Any]) -> dict[str, Any]:
        processes = [self._info(call, p) for p in await call.agent.list_processes() if p["running"]]
        for sandbox_id, pid in self.terminals:
            if sandbox_id == call.sandbox_id:
                processes.append({"pid": pid, "config": {"cmd": "/bin/bash", "args": []}})
        return {"processes": processes}

    def _info(self, call: Call, proc: ProcessInfo) -> dict[str, Any]:
        config = self._configs.get((call.sandbox_id, proc["pid"]))
        if config is None:
            argv = proc["argv"] or ["/bin/bash", "-l", "-c", proc["cmd"] or ""]
            config = {"cmd": argv[0], "args": argv[1:], "envs": {}, "cwd": proc["cwd"]}
        info: dict[str, Any] = {"pid": proc["pid"], "config": config}
        if proc["tag"]:
            info["tag"] = proc["tag"]
        return info

    async def send_input(self, call: Call, message: dict[str, Any]) -> dict[str, Any]:
        pid = await self._pid(call, message)
        await self._write(call, pid, message.get("input") or {})
        return {}

    async def _write(self, call: Call, pid: int, data: dict[str, Any]) -> None:
        if "pty" in data:
            terminal = self.terminals.get((call.sandbox_id, pid))
            if terminal is None:
                raise ProcessNotFound(f"no terminal has pid {pid}")
            await terminal.write(b64decode(data["pty"]))
        elif "stdin" in data:
            await call.agent.write_stdin(pid, b64decode(data["stdin"]))

    async def stream_input(self, call: Call, messages: Any) -> dict[str, Any]:
        """Client stream: ``start`` names the process, then ``data`` events in order."""
        pid: int | None = None
        async for message in read_envelopes(messages):
            if "start" in message:
                pid = await self._pid(call, message["start"] or {})
            elif "data" in message:
                if pid is None:
                    raise InvalidRequest("StreamInput needs a start event first")
                await self._write(call, pid, (message["data"] or {}).get("input") or {})
        return {}

    async def send_signal(self, call: Call, message: dict[str, Any]) -> dict[str, Any]:
        pid = await self._pid(call, message)
        signal = _SIGNALS.get(message.get("signal", ""))
        if signal is None:
            raise InvalidRequest(f"unsupported signal {message.get('signal')!r}")
        terminal = self.terminals.get((call.sandbox_id, pid))
        if terminal is not None:
            await terminal.signal(signal)  # its exit then ends the Start stream
            return {}
        await call.agent.signal(pid, signal)
        return {}

    async def close_stdin(self, call: Call, message: dict[str, Any]) -> dict[str, Any]:
        pid = await self._pid(call, message)
        await call.agent.write_stdin(pid, b"", eof=True)
        return {}

    async def update(self, call: Call, message: dict[str, Any]) -> dict[str, Any]:
        pid = await self._pid(call, message)
        size = (message.get("pty") or {}).get("size")
        if size:
            terminal = self.terminals.get((call.sandbox_id, pid))
            if terminal is None:
                raise ProcessNotFound(f"no terminal has pid {pid}")
            await terminal.resize(int(size.get("cols") or 80), int(size.get("rows") or 24))
        return {}
