"""Shell and exec sessions: an SSH channel relayed to an agent process or PTY.

* ``ssh sb-x command`` runs ``command`` like the commands API does (``bash -l -c``),
  stdout and stderr apart, stdin streamed, the exit code passed back.
* ``ssh sb-x`` with a terminal opens a PTY (``/bin/bash -l``); without one
  (``ssh -T``) a login shell reads commands from stdin.
* ``ssh -t sb-x command`` runs the command on a PTY; window changes resize it.

Both directions are flow-controlled end to end: input is read from the channel
only as fast as the agent grants credit, output is written to the channel
only as fast as the SSH window allows (``drain``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Mapping

import asyncssh
from asyncssh.misc import SoftEOFReceived

from ..agent.protocol import Channel
from ..core.agent_client import Exit, Output, ProcessSession, PtySession
from ..errors import AtelierError
from .access import SandboxAccess
from .agentfwd import AgentForwarder

__all__ = ["SHELL_ARGV", "handle_process", "safe_env"]

log = logging.getLogger("atelier.sshgw")

READ_SIZE = 64 * 1024
# Without a terminal and without a command: a login shell reading stdin.
SHELL_ARGV = ["/bin/sh", "-c", "command -v bash >/dev/null 2>&1 && exec bash -l || exec sh -l"]
# Environment variables a client may send (``SendEnv``); everything else is dropped.
_SAFE_ENV = re.compile(r"^(LANG|LANGUAGE|LC_[A-Z_]+|TZ|COLORTERM|TERM_PROGRAM(_VERSION)?)$")


def safe_env(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if _SAFE_ENV.match(k) and "\0" not in v}


def _fail(process: asyncssh.SSHServerProcess[bytes], message: str, code: int = 1) -> None:
    with contextlib.suppress(Exception):
        process.stderr.write(f"atelier: {message}\r\n".encode())
        process.exit(code)


async def handle_process(
    access: SandboxAccess,
    process: asyncssh.SSHServerProcess[bytes],
    forwarder: AgentForwarder | None = None,
) -> None:
    """The process_factory of every session channel (except SFTP).

    With ``forwarder`` and a client that asked for agent forwarding (``-A``),
    ``SSH_AUTH_SOCK`` names the forwarder's socket inside the sandbox."""
    try:
        if process.subsystem is not None:
            _fail(process, f"subsystem {process.subsystem!r} is not supported (only sftp)")
            return
        try:
            rec, agent = await access.agent()
        except AtelierError as exc:
            _fail(process, exc.message)
            return
        with access.attached():  # an open session keeps the sandbox from idling
            term = process.get_terminal_type()
            command = process.command or None
            await access.record(
                session="exec" if command else "shell", command=command, pty=bool(term)
            )
            env = {**rec.env, **safe_env(process.env)}
            # asyncssh grants -A (and makes get_agent_path() non-None) before the
            # session starts: the lookups above have already yielded to it.
            if forwarder is not None and process.channel.get_agent_path() is not None:
                auth_sock = await forwarder.socket_path(agent, rec.default_user)
                if auth_sock is not None:
                    env["SSH_AUTH_SOCK"] = auth_sock
            code: int
            if term:
                cols, rows, _, _ = process.get_terminal_size()
                pty = await agent.pty(
                    cmd=command,
                    env={**env, "TERM": term},
                    cwd=rec.default_cwd,
                    user=rec.default_user,
                    cols=cols or 80,
                    rows=rows or 24,
                )
                code = await _relay(process, pty, is_pty=True)
            else:
                proc = await agent.exec(
                    cmd=command,
                    argv=None if command else SHELL_ARGV,
                    env=env,
                    cwd=rec.default_cwd,
                    user=rec.default_user,
                    stdin=True,
                )
                code = await _relay(process, proc, is_pty=False)
            process.exit(code)
    except AtelierError as exc:
        _fail(process, exc.message)
    except (asyncssh.Error, ConnectionError, BrokenPipeError):
        pass  # the client went away; _relay already ended the process
    except Exception:
        log.exception("ssh session to %s failed", access.sandbox_id)
        _fail(process, "internal error in the SSH gateway", 255)


async def _relay(
    process: asyncssh.SSHServerProcess[bytes],
    session: ProcessSession | PtySession,
    *,
    is_pty: bool,
) -> int:
    """Relay until the process exits (its exit code) or the client goes away (the
    process is then killed, like sshd hanging up a session)."""
    loop = asyncio.get_running_loop()
    pump = loop.create_task(_pump_input(process, session, is_pty))
    output = loop.create_task(_pump_output(process, session))
    closed = loop.create_task(process.wait_closed())
    try:
        await asyncio.wait([output, closed], return_when=asyncio.FIRST_COMPLETED)
        if not output.done():
            raise ConnectionError("the client closed the session")
        return output.result()
    finally:
        for task in (pump, output, closed):
            task.cancel()
        for task in (pump, output, closed):
            with contextlib.suppress(BaseException):
                await task
        if isinstance(session, PtySession):
            await session.close()
        else:
            await session.detach()  # kills the process if it still runs


async def _pump_output(
    process: asyncssh.SSHServerProcess[bytes], session: ProcessSession | PtySession
) -> int:
    """Process → client: stdout and stderr (flow-controlled by the SSH window); the exit code."""
    async for event in session:
        if isinstance(event, Output):
            out = process.stderr if event.channel == Channel.STDERR else process.stdout
            out.write(event.data)
            await out.drain()
        elif isinstance(event, Exit):
            break
    exit_ = session.exit
    return exit_.exit_code if exit_ is not None else 255


async def _pump_input(
    process: asyncssh.SSHServerProcess[bytes],
    session: ProcessSession | PtySession,
    is_pty: bool,
) -> None:
    """Client → process: stdin bytes, window changes and signals."""
    with contextlib.suppress(asyncssh.Error, ConnectionError, AtelierError):
        while True:
            try:
                data = await process.stdin.read(READ_SIZE)
            except asyncssh.TerminalSizeChanged as exc:
                if isinstance(session, PtySession) and exc.width > 0 and exc.height > 0:
                    await session.resize(exc.width, exc.height)
                continue
            except asyncssh.SignalReceived as exc:
                await session.signal(exc.signal)
                continue
            except (asyncssh.BreakReceived, SoftEOFReceived):
                continue
            if not data:
                if isinstance(session, ProcessSession):
                    await session.close_stdin()
                return
            if isinstance(session, PtySession):
                await session.write(data)
            else:
                await session.send_stdin(data)
