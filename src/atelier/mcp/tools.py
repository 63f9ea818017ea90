"""The MCP tools of ``atelier mcp``: thin, bounded wrappers over the async SDK.

Every tool returns a ``CallToolResult``: text for the model plus the same facts
as ``structuredContent``. Atelier errors become ``isError`` results (see
``results.py``); every call is written to the audit record (``audit.py``).
"""

from __future__ import annotations

import base64 as b64
import binascii
import contextlib
import logging
import posixpath
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Annotated, Any, Literal

import anyio
import httpx
from mcp.server.mcpserver import Context, MCPServer
from mcp.types import CallToolResult, ToolAnnotations
from pydantic import Field

from atelier.errors import AtelierError, SandboxNotFound
from atelier.mcp.audit import AuditLog, summarize_arguments
from atelier.mcp.limits import (
    FILE_LIST_LIMIT,
    READ_LIMIT,
    STREAM_LIMIT,
    BoundedOutput,
    decode_file,
)
from atelier.mcp.results import ToolFailure, as_json, error_code, error_result, ok_result
from atelier.mcp.sessions import Session, Sessions
from atelier.sdk import AsyncSandbox, Exit, FileInfo, SandboxInfo, Stderr, Stdout

__all__ = ["HOME", "INTERPRETERS", "Toolbox", "register_tools"]

logger = logging.getLogger("atelier.mcp")

HOME = "/home/user"
"""Where relative paths point (the home of the sandbox's default user)."""

INTERPRETERS: dict[str, list[str]] = {
    "python": ["python3", "-"],
    "bash": ["bash", "-s"],
    "javascript": ["node", "-"],
}

KILL_GRACE = 30.0
"""Seconds past a command's own timeout before the MCP server gives up on it."""

Ctx = Context[Any, Any]
SandboxId = Annotated[
    str | None,
    Field(
        description="The sandbox to use (from create_sandbox or list_sandboxes). "
        "Omit it to use this session's sandbox, created on first use."
    ),
]
SandboxPath = Annotated[
    str,
    Field(description=f"Path inside the sandbox; relative paths are relative to {HOME}."),
]
Env = Annotated[
    dict[str, str] | None, Field(description="Extra environment variables for the process.")
]
TimeoutSeconds = Annotated[
    int,
    Field(ge=1, le=3600, description="Kill the process after this many seconds (1-3600)."),
]

Body = Callable[[AsyncSandbox], Awaitable[CallToolResult]]


def _abs(path: str) -> str:
    if not path:
        raise ToolFailure("path must not be empty", code="invalid_path")
    return posixpath.normpath(path if path.startswith("/") else posixpath.join(HOME, path))


def _describe(info: SandboxInfo, session: Session) -> dict[str, Any]:
    return {
        "id": info.id,
        "template": info.template,
        "state": info.state,
        "expires_at": info.expires_at.isoformat() if info.expires_at else None,
        "labels": info.labels,
        "this_session": session.owns(info.id)
        or (session.current is not None and session.current.id == info.id),
        "deleted_with_session": session.owns(info.id),
        "current": session.current is not None and session.current.id == info.id,
    }


def _file_json(info: FileInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "path": info.path,
        "type": info.type,
        "size": info.size,
        "mode": info.mode,
        "modified_at": info.modified_at.isoformat() if info.modified_at else None,
    }


def _command_text(out: BoundedOutput, err: BoundedOutput, exit: Exit, limit: int) -> str:
    parts = [out.text()] if out.total else []
    if err.total:
        parts.append("[stderr]\n" + err.text())
    status = f"[exit code {exit.exit_code}]"
    if exit.timed_out:
        status = f"[timed out: killed, exit code {exit.exit_code}]"
    parts.append(status)
    if out.truncated or err.truncated:
        parts.append(
            f"[output truncated to {limit} bytes per stream: the first and last halves are kept]"
        )
    return "\n".join(p.rstrip("\n") if i < len(parts) - 1 else p for i, p in enumerate(parts))


class Toolbox:
    """The tools' implementations, bound to the sessions and the audit record."""

    def __init__(self, sessions: Sessions, audit: AuditLog, stream_limit: int = STREAM_LIMIT):
        self.sessions = sessions
        self.audit = audit
        self.stream_limit = stream_limit

    # -- the shared envelope ---------------------------------------------------

    async def call(
        self,
        ctx: Ctx,
        tool: str,
        arguments: Mapping[str, Any],
        body: Callable[[Session], Awaitable[tuple[CallToolResult, str | None]]],
    ) -> CallToolResult:
        """Run ``body``; map errors to ``isError`` results; write the audit line."""
        started = time.monotonic()
        session_key = "-"
        sandbox_id = arguments.get("sandbox_id")
        try:
            session = self.sessions.session_for(ctx)
            session_key = session.key
            result, sandbox_id = await body(session)
        except AtelierError as exc:
            self.audit.record(
                tool=tool, session=session_key, sandbox_id=sandbox_id, arguments=arguments,
                ok=False, started=started, error_code=error_code(exc),
            )  # fmt: skip
            return error_result(exc)
        except Exception as exc:  # a bug here must not take the server down
            logger.exception("tool %s failed unexpectedly", tool)
            self.audit.record(
                tool=tool, session=session_key, sandbox_id=sandbox_id, arguments=arguments,
                ok=False, started=started, error_code="internal",
            )  # fmt: skip
            return error_result(AtelierError(f"internal error: {type(exc).__name__}: {exc}"))
        self.audit.record(
            tool=tool, session=session_key, sandbox_id=sandbox_id, arguments=arguments,
            ok=not result.is_error, started=started,
        )  # fmt: skip
        return result

    @staticmethod
    async def _trail(
        sb: AsyncSandbox,
        tool: str,
        arguments: Mapping[str, Any],
        ok: bool,
        code: str | None,
        started: float,
    ) -> None:
        """The call in the sandbox's own audit trail (``client.mcp.tool_call``);
        a failure to record never fails the tool call."""
        detail: dict[str, Any] = {
            "tool": tool,
            "ok": ok,
            "duration_ms": round((time.monotonic() - started) * 1000),
            "arguments": summarize_arguments(arguments),
        }
        if code is not None:
            detail["error"] = code
        try:
            await sb.record_event("mcp.tool_call", detail)
        except (AtelierError, httpx.HTTPError) as exc:
            logger.warning("could not add the call to %s's audit trail: %s", sb.id, exc)

    async def in_sandbox(
        self, ctx: Ctx, tool: str, arguments: Mapping[str, Any], body: Body
    ) -> CallToolResult:
        """``call`` for tools that act inside a sandbox (``sandbox_id`` or the session's)."""

        async def run(session: Session) -> tuple[CallToolResult, str | None]:
            async with self._target(session, arguments.get("sandbox_id")) as sb:
                started, ok, code = time.monotonic(), False, None
                try:
                    result = await body(sb)
                    ok = not result.is_error
                    return result, sb.id
                except AtelierError as exc:
                    code = error_code(exc)
                    raise
                finally:
                    await self._trail(sb, tool, arguments, ok, code, started)

        return await self.call(ctx, tool, arguments, run)

    @contextlib.asynccontextmanager
    async def _target(
        self, session: Session, sandbox_id: str | None
    ) -> AsyncIterator[AsyncSandbox]:
        if sandbox_id is None:
            sb = await self.sessions.current(session)
            try:
                yield sb
            except SandboxNotFound:
                handle = self.sessions.forget(session, sb.id)
                if handle is not None:
                    await handle.close()
                raise SandboxNotFound(
                    f"this session's sandbox {sb.id} is gone; the next call creates a new one"
                ) from None
            await self.sessions.keep_alive(sb)
            return
        tracked = session.owned.get(sandbox_id)
        if tracked is None and session.current is not None and session.current.id == sandbox_id:
            tracked = session.current
        if tracked is not None:
            yield tracked
            return
        cfg = self.sessions.config
        sb = await AsyncSandbox.connect(
            sandbox_id, api_url=cfg.api_url, token=session.token,
            request_timeout=cfg.request_timeout,
        )  # fmt: skip
        try:
            yield sb
        finally:
            await sb.close()

    # -- sandboxes ---------------------------------------------------------------

    async def create_sandbox(
        self,
        ctx: Ctx,
        template: str | None,
        timeout: int | None,
        env: dict[str, str] | None,
        keep: bool,
    ) -> CallToolResult:
        args = {"template": template, "timeout": timeout, "env": env, "keep": keep}

        async def run(session: Session) -> tuple[CallToolResult, str | None]:
            seconds = None if timeout == 0 else timeout
            if timeout is None:
                seconds = self.sessions.config.sandbox_timeout
            sb = await self.sessions.create(
                session, template=template, timeout=seconds, env=env, keep=keep
            )
            if timeout == 0:
                await sb.set_timeout(None)
            data = _describe(sb.info, session)
            when = "is kept after this session" if keep else "is deleted when this session ends"
            text = (
                f"created sandbox {sb.id} (template {sb.info.template}); it is now this "
                f"session's sandbox and {when}\n{as_json(data)}"
            )
            return ok_result(text, data), sb.id

        return await self.call(ctx, "create_sandbox", args, run)

    async def list_sandboxes(self, ctx: Ctx) -> CallToolResult:
        async def run(session: Session) -> tuple[CallToolResult, str | None]:
            cfg = self.sessions.config
            infos = await AsyncSandbox.list(
                api_url=cfg.api_url, token=session.token, request_timeout=cfg.request_timeout
            )
            data = {"sandboxes": [_describe(info, session) for info in infos]}
            text = f"{len(infos)} sandbox(es)\n{as_json(data)}" if infos else "no sandboxes"
            return ok_result(text, data), None

        return await self.call(ctx, "list_sandboxes", {}, run)

    async def delete_sandbox(self, ctx: Ctx, sandbox_id: str) -> CallToolResult:
        async def run(session: Session) -> tuple[CallToolResult, str | None]:
            handle = self.sessions.forget(session, sandbox_id)
            try:
                if handle is None:
                    cfg = self.sessions.config
                    handle = await AsyncSandbox.connect(
                        sandbox_id, api_url=cfg.api_url, token=session.token,
                        request_timeout=cfg.request_timeout,
                    )  # fmt: skip
                existed = await handle.kill()
            finally:
                if handle is not None:
                    await handle.close()
            if not existed:
                raise SandboxNotFound(f"sandbox {sandbox_id} does not exist")
            data = {"id": sandbox_id, "deleted": True}
            return ok_result(f"deleted sandbox {sandbox_id}", data), sandbox_id

        return await self.call(ctx, "delete_sandbox", {"sandbox_id": sandbox_id}, run)

    # -- processes ---------------------------------------------------------------

    async def _run(
        self,
        sb: AsyncSandbox,
        *,
        cmd: str | None = None,
        argv: list[str] | None = None,
        stdin: str | None = None,
        cwd: str | None,
        env: dict[str, str] | None,
        timeout_seconds: int,
    ) -> tuple[BoundedOutput, BoundedOutput, Exit]:
        """Run a process, keeping at most ``stream_limit`` bytes of each stream in memory.

        The process runs in the background and its events are streamed, so the
        SDK never accumulates the whole output; if this call is cancelled (or the
        stream breaks) before the exit, the process is killed.
        """
        out, err = BoundedOutput(self.stream_limit), BoundedOutput(self.stream_limit)
        exit: Exit | None = None
        handle = await sb.commands.run(
            cmd, argv=argv, stdin=stdin, cwd=_abs(cwd) if cwd else None, env=env,
            timeout=timeout_seconds, background=True, tag="mcp",
        )  # fmt: skip
        try:
            with anyio.fail_after(timeout_seconds + KILL_GRACE):
                async with handle.stream() as events:
                    async for event in events:
                        if isinstance(event, Stdout):
                            out.feed(event.data)
                        elif isinstance(event, Stderr):
                            err.feed(event.data)
                        elif isinstance(event, Exit):
                            exit = event
        except TimeoutError:  # the sandbox did not enforce the timeout: do it here
            exit = None
            timed_out = True
        else:
            timed_out = False
        finally:
            if exit is None:  # cancelled, stream broke, or timed out here
                with anyio.CancelScope(shield=True), contextlib.suppress(AtelierError):
                    await handle.kill()
        if timed_out:
            exit = Exit(exit_code=137, signal="SIGKILL", timed_out=True)
        if exit is None:
            raise AtelierError("the command's event stream ended before it exited")
        return out, err, exit

    def _command_result(
        self, sb: AsyncSandbox, out: BoundedOutput, err: BoundedOutput, exit: Exit
    ) -> CallToolResult:
        data = {
            "sandbox_id": sb.id,
            "exit_code": exit.exit_code,
            "timed_out": exit.timed_out,
            "stdout": out.text(),
            "stderr": err.text(),
            "stdout_bytes": out.total,
            "stderr_bytes": err.total,
            "truncated": out.truncated or err.truncated,
        }
        return ok_result(_command_text(out, err, exit, self.stream_limit), data)

    async def run_command(
        self,
        ctx: Ctx,
        command: str,
        sandbox_id: str | None,
        cwd: str | None,
        env: dict[str, str] | None,
        timeout_seconds: int,
    ) -> CallToolResult:
        args = {"command": command, "sandbox_id": sandbox_id, "cwd": cwd, "env": env,
                "timeout_seconds": timeout_seconds}  # fmt: skip

        async def body(sb: AsyncSandbox) -> CallToolResult:
            if not command.strip():
                raise ToolFailure("command must not be empty")
            out, err, exit = await self._run(
                sb, cmd=command, cwd=cwd, env=env, timeout_seconds=timeout_seconds
            )
            return self._command_result(sb, out, err, exit)

        return await self.in_sandbox(ctx, "run_command", args, body)

    async def run_code(
        self,
        ctx: Ctx,
        code: str,
        language: str,
        sandbox_id: str | None,
        timeout_seconds: int,
    ) -> CallToolResult:
        args = {"code": code, "language": language, "sandbox_id": sandbox_id,
                "timeout_seconds": timeout_seconds}  # fmt: skip

        async def body(sb: AsyncSandbox) -> CallToolResult:
            argv = INTERPRETERS.get(language)
            if argv is None:
                raise ToolFailure(
                    f"unknown language {language!r}: use one of {', '.join(INTERPRETERS)}"
                )
            out, err, exit = await self._run(
                sb, argv=argv, stdin=code, cwd=None, env=None, timeout_seconds=timeout_seconds
            )
            if exit.exit_code == 127 and out.total == 0 and "not found" in err.text():
                raise ToolFailure(
                    f"{argv[0]} is not installed in sandbox {sb.id} (template "
                    f"{sb.info.template}): install it with run_command, or use another language",
                    code="interpreter_not_found",
                    interpreter=argv[0],
                )
            return self._command_result(sb, out, err, exit)

        return await self.in_sandbox(ctx, "run_code", args, body)

    # -- files ---------------------------------------------------------------------

    async def read_file(self, ctx: Ctx, path: str, sandbox_id: str | None) -> CallToolResult:
        args = {"path": path, "sandbox_id": sandbox_id}

        async def body(sb: AsyncSandbox) -> CallToolResult:
            where = _abs(path)
            info = await sb.files.stat(where)
            if info.type == "dir":
                raise ToolFailure(f"{where} is a directory: use list_files", code="is_a_directory")
            buf = bytearray()
            async with sb.files.read_stream(where) as chunks:
                async for chunk in chunks:
                    buf += chunk
                    if len(buf) > READ_LIMIT:
                        break
            content = decode_file(bytes(buf), info.size, READ_LIMIT)
            data = {
                "path": where,
                "size": content.size,
                "encoding": content.encoding,
                "truncated": content.truncated,
                "content": content.content,
            }
            text = content.content
            if content.note:
                text = f"[{content.note}]\n{text}"
            return ok_result(text, data)

        return await self.in_sandbox(ctx, "read_file", args, body)

    async def write_file(
        self, ctx: Ctx, path: str, content: str, sandbox_id: str | None, base64: bool
    ) -> CallToolResult:
        args = {"path": path, "content": content, "sandbox_id": sandbox_id, "base64": base64}

        async def body(sb: AsyncSandbox) -> CallToolResult:
            where = _abs(path)
            if base64:
                try:
                    data: bytes = b64.b64decode(content, validate=True)
                except (binascii.Error, ValueError) as exc:
                    raise ToolFailure(f"content is not valid base64: {exc}") from None
            else:
                data = content.encode("utf-8")
            info = await sb.files.write(where, data)
            result = _file_json(info)
            return ok_result(f"wrote {len(data)} bytes to {info.path}", result)

        return await self.in_sandbox(ctx, "write_file", args, body)

    async def list_files(
        self, ctx: Ctx, path: str, sandbox_id: str | None, depth: int
    ) -> CallToolResult:
        args = {"path": path, "sandbox_id": sandbox_id, "depth": depth}

        async def body(sb: AsyncSandbox) -> CallToolResult:
            where = _abs(path)
            entries = await sb.files.list(where, depth=depth)
            shown = entries[:FILE_LIST_LIMIT]
            lines = [
                f"{e.type:7} {e.size:>10} {e.path}{'/' if e.type == 'dir' else ''}" for e in shown
            ]
            if len(entries) > len(shown):
                lines.append(f"[{len(entries) - len(shown)} more entries not shown]")
            data = {
                "path": where,
                "entries": [_file_json(e) for e in shown],
                "total": len(entries),
                "truncated": len(entries) > len(shown),
            }
            return ok_result("\n".join(lines) or f"{where} is empty", data)

        return await self.in_sandbox(ctx, "list_files", args, body)

    async def get_preview_url(
        self, ctx: Ctx, port: int, sandbox_id: str | None, link_ttl_seconds: int
    ) -> CallToolResult:
        args = {"port": port, "sandbox_id": sandbox_id, "link_ttl_seconds": link_ttl_seconds}

        async def body(sb: AsyncSandbox) -> CallToolResult:
            ports: Any = getattr(sb, "ports", None)  # sandbox.ports: preview URLs (docs/ports.md)
            if ports is None:
                raise ToolFailure(
                    "preview URLs are not available from this Atelier SDK yet",
                    code="not_available",
                )
            listening = any(p.port == port for p in await ports.list())
            url = await ports.url(port)
            data: dict[str, Any] = {"sandbox_id": sb.id, "port": port, "url": url,
                                    "listening": listening}  # fmt: skip
            lines = [f"preview URL (needs the Atelier token unless the port is public): {url}"]
            if link_ttl_seconds:
                link = await ports.link(port, ttl=link_ttl_seconds)
                data["link"] = link.url
                data["link_expires_at"] = link.expires_at.isoformat()
                lines.append(
                    f"signed link (no token needed, expires {data['link_expires_at']}): {link.url}"
                )
            if not listening:
                lines.append(f"note: nothing listens on port {port} in the sandbox yet")
            return ok_result("\n".join(lines), data)

        return await self.in_sandbox(ctx, "get_preview_url", args, body)


def register_tools(server: MCPServer[Any], box: Toolbox) -> None:
    """Register the tools (typed signatures become their input schemas)."""
    read_only = ToolAnnotations(read_only_hint=True, open_world_hint=False)
    destructive = ToolAnnotations(destructive_hint=True, open_world_hint=False)

    @server.tool(annotations=ToolAnnotations(open_world_hint=False))
    async def create_sandbox(
        ctx: Ctx,
        template: Annotated[
            str | None, Field(description="Template to start from (default: base, Debian).")
        ] = None,
        timeout: Annotated[
            int | None,
            Field(
                ge=0,
                description="Seconds until the sandbox is stopped, extended while this session "
                "uses it (default 1800; 0 = never).",
            ),
        ] = None,
        env: Env = None,
        keep: Annotated[
            bool,
            Field(description="Keep the sandbox after this MCP session ends (default: delete)."),
        ] = False,
    ) -> CallToolResult:
        """Create a new isolated sandbox (a Linux machine) and make it this session's sandbox.

        Later calls without sandbox_id use it. You rarely need this: the first tool call
        that needs a sandbox creates one. Sandboxes this session creates are deleted when
        the session ends, unless keep=true.
        """
        return await box.create_sandbox(ctx, template, timeout, env, keep)

    @server.tool(annotations=read_only)
    async def list_sandboxes(ctx: Ctx) -> CallToolResult:
        """List the sandboxes your token can see, with their state and which one this
        session uses by default."""
        return await box.list_sandboxes(ctx)

    @server.tool(annotations=destructive)
    async def delete_sandbox(
        ctx: Ctx,
        sandbox_id: Annotated[str, Field(description="The sandbox to delete.")],
    ) -> CallToolResult:
        """Delete a sandbox and everything in it. If it was this session's sandbox, the next
        call that needs one creates a new one."""
        return await box.delete_sandbox(ctx, sandbox_id)

    @server.tool(annotations=ToolAnnotations(open_world_hint=False))
    async def run_command(
        ctx: Ctx,
        command: Annotated[str, Field(description="A shell command line, run by bash -l -c.")],
        sandbox_id: SandboxId = None,
        cwd: Annotated[
            str | None, Field(description=f"Working directory (default {HOME}).")
        ] = None,
        env: Env = None,
        timeout_seconds: TimeoutSeconds = 60,
    ) -> CallToolResult:
        """Run a shell command in the sandbox as the unprivileged user and wait for it.

        Returns stdout, stderr and the exit code (a nonzero exit is not a tool error).
        Output is capped at 64 KiB per stream: beyond that the first and last 32 KiB are
        kept and a note says how much was cut. The process is killed after timeout_seconds.
        The sandbox has no network access unless its template allows it.
        """
        return await box.run_command(ctx, command, sandbox_id, cwd, env, timeout_seconds)

    @server.tool(annotations=ToolAnnotations(open_world_hint=False))
    async def run_code(
        ctx: Ctx,
        code: Annotated[str, Field(description="The program's source code.")],
        language: Annotated[
            Literal["python", "bash", "javascript"],
            Field(description="python (python3), bash, or javascript (node, if installed)."),
        ] = "python",
        sandbox_id: SandboxId = None,
        timeout_seconds: TimeoutSeconds = 60,
    ) -> CallToolResult:
        """Run a snippet of code with the language's interpreter and return its output.

        Each call is a fresh process: variables do not carry over between calls (a
        stateful kernel is planned); files written to disk do. Print what you want to see.
        Output limits are those of run_command. An interpreter the sandbox's template does
        not have is reported as an error.
        """
        return await box.run_code(ctx, code, language, sandbox_id, timeout_seconds)

    @server.tool(annotations=read_only)
    async def read_file(
        ctx: Ctx, path: SandboxPath, sandbox_id: SandboxId = None
    ) -> CallToolResult:
        """Read a file from the sandbox.

        UTF-8 text is returned as is; other files as base64 (with a note). At most the
        first 256 KiB are returned; a note says when the file is larger.
        """
        return await box.read_file(ctx, path, sandbox_id)

    @server.tool(annotations=ToolAnnotations(destructive_hint=True, open_world_hint=False))
    async def write_file(
        ctx: Ctx,
        path: SandboxPath,
        content: Annotated[str, Field(description="The new content of the file.")],
        sandbox_id: SandboxId = None,
        base64: Annotated[bool, Field(description="content is base64 (for binary files).")] = False,
    ) -> CallToolResult:
        """Create or replace a file in the sandbox (parent directories are created)."""
        return await box.write_file(ctx, path, content, sandbox_id, base64)

    @server.tool(annotations=read_only)
    async def list_files(
        ctx: Ctx,
        path: SandboxPath = HOME,
        sandbox_id: SandboxId = None,
        depth: Annotated[
            int, Field(ge=1, le=5, description="How many levels to descend (1-5).")
        ] = 1,
    ) -> CallToolResult:
        """List a directory of the sandbox: type, size and path of each entry (at most
        1000 entries)."""
        return await box.list_files(ctx, path, sandbox_id, depth)

    @server.tool(annotations=read_only)
    async def get_preview_url(
        ctx: Ctx,
        port: Annotated[
            int, Field(ge=1, le=65535, description="The port a server listens on in the sandbox.")
        ],
        sandbox_id: SandboxId = None,
        link_ttl_seconds: Annotated[
            int,
            Field(
                ge=0,
                le=86400,
                description="Also make a signed link, valid this many seconds, that opens "
                "without a token (0 = no link).",
            ),
        ] = 3600,
    ) -> CallToolResult:
        """Get the URL at which a server listening on `port` inside the sandbox (e.g. a
        web app you started in the background) can be opened from outside, plus a
        signed link a person can open without a token."""
        return await box.get_preview_url(ctx, port, sandbox_id, link_ttl_seconds)
