"""A sandbox per MCP session, created on first use and deleted when the session ends.

What a "session" is depends on the protocol era the client speaks:

* the initialize handshake (protocol versions up to 2025-11-25, the SDK's
  ``ClientSession``): one session per stdio connection, or per
  ``Mcp-Session-Id`` over streamable HTTP. It ends when stdin closes, on the
  client's ``DELETE``, on the HTTP idle timeout, or when the server stops;
  its sandboxes are deleted then (the connection's exit stack).
* the sessionless 2026-07-28 protocol (every request stands alone): calls
  share one process-wide session, deleted when ``atelier mcp`` exits. Over
  stdio that is still one client; over HTTP it is every sessionless client of
  this ``atelier mcp`` process (they act with the same token or pass their
  own, and the Atelier server authorizes every call either way).

A session owns the sandboxes it created (implicitly, or with
``create_sandbox(keep=False)``) and deletes them when it ends; a sandbox made
with ``keep=True`` outlives it.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio
from mcp.server.mcpserver import Context
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from atelier.errors import AtelierError, AuthenticationError, PermissionDenied
from atelier.sdk import AsyncSandbox
from atelier.sdk._base import DEFAULT_API_URL

__all__ = ["SESSION_LABEL", "McpConfig", "Session", "Sessions"]

logger = logging.getLogger("atelier.mcp")

SESSION_LABEL = "atelier.mcp-session"
_STATE_KEY = "atelier.mcp"


@dataclass(frozen=True)
class McpConfig:
    """How ``atelier mcp`` reaches Atelier and what it creates."""

    api_url: str = DEFAULT_API_URL
    token: str | None = field(default=None, repr=False)
    template: str = "base"
    sandbox_timeout: int = 1800
    """Seconds a session sandbox lives without being used (extended on every use)."""
    request_timeout: float = 120.0


@dataclass
class Session:
    """The sandboxes of one MCP session."""

    key: str
    token: str = field(repr=False)
    current: AsyncSandbox | None = None
    owned: dict[str, AsyncSandbox] = field(default_factory=dict)
    lock: anyio.Lock = field(default_factory=anyio.Lock)
    closed: bool = False

    def owns(self, sandbox_id: str) -> bool:
        return sandbox_id in self.owned

    async def close(self) -> None:
        """Delete every sandbox this session owns (``keep=False``); release the rest."""
        self.closed = True
        owned, self.owned = self.owned, {}
        current, self.current = self.current, None
        for sb in owned.values():
            try:
                await sb.kill()
                logger.info("deleted sandbox %s of MCP session %s", sb.id, self.key)
            except AtelierError as exc:
                logger.warning("could not delete sandbox %s: %s", sb.id, exc.message)
            finally:
                await sb.close()
        if current is not None and current.id not in owned:
            await current.close()


def bearer_token(headers: Any) -> str | None:
    """The token of an ``Authorization: Bearer`` header, if there is one."""
    if headers is None:
        return None
    value = headers.get("authorization") or headers.get("Authorization")
    if not isinstance(value, str):
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def _connection(ctx: Context[Any, Any]) -> Any:
    """The MCP SDK's per-client ``Connection`` behind a tool call, or ``None``.

    mcp 2.x has no public accessor from a tool's ``Context`` (the low-level
    ``Context.connection`` exists but is not what ``MCPServer`` hands tools),
    so this reads the request session's ``_connection`` - one place to change
    when the SDK grows one. Without it every call falls back to the
    process-wide session.
    """
    try:
        session = ctx.request_context.session
    except ValueError:
        return None
    return getattr(session, "_connection", None)


class Sessions:
    """Finds the :class:`Session` of a tool call; closes them all at shutdown."""

    def __init__(self, config: McpConfig) -> None:
        self.config = config
        self._live: dict[str, Session] = {}
        self._shared: Session | None = None

    def token_for(self, ctx: Context[Any, Any]) -> str:
        """The caller's own bearer token (HTTP) if it sent one, else the configured token."""
        token = bearer_token(_headers(ctx)) or self.config.token
        if not token:
            raise AuthenticationError(
                "no Atelier token: start `atelier mcp` with ATELIER_TOKEN / --token, "
                "or send `Authorization: Bearer <token>` with each HTTP request"
            )
        return token

    def session_for(self, ctx: Context[Any, Any]) -> Session:
        token = self.token_for(ctx)
        conn = _connection(ctx)
        if conn is None or conn.protocol_version in MODERN_PROTOCOL_VERSIONS:
            if self._shared is None or self._shared.closed:
                self._shared = self._new(f"shared-{uuid.uuid4().hex[:8]}", token)
            session = self._shared
        else:
            session = conn.state.get(_STATE_KEY)
            if session is None:
                key = conn.session_id or uuid.uuid4().hex
                session = self._new(key[:32], token)
                conn.state[_STATE_KEY] = session
                conn.exit_stack.push_async_callback(self._end, session)
        if token != session.token:
            raise PermissionDenied(
                "this MCP session was opened with another token: open a new session"
            )
        return session

    def _new(self, key: str, token: str) -> Session:
        session = Session(key=key, token=token)
        self._live[key] = session
        return session

    async def _end(self, session: Session) -> None:
        self._live.pop(session.key, None)
        with anyio.CancelScope(shield=True):
            await session.close()

    async def close_all(self) -> None:
        for session in list(self._live.values()):
            await self._end(session)
        self._shared = None

    # -- sandboxes -------------------------------------------------------------

    async def create(
        self,
        session: Session,
        *,
        template: str | None = None,
        timeout: int | None = None,
        env: dict[str, str] | None = None,
        keep: bool = False,
    ) -> AsyncSandbox:
        """Create a sandbox labelled with the session; it becomes the session's current one."""
        sb = await AsyncSandbox.create(
            template or self.config.template,
            timeout=timeout if timeout is not None else self.config.sandbox_timeout,
            env=env,
            labels={SESSION_LABEL: session.key},
            api_url=self.config.api_url,
            token=session.token,
            request_timeout=self.config.request_timeout,
        )
        if session.closed:  # the session ended while the sandbox was being made
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(AtelierError):
                    await sb.kill()
                await sb.close()
            raise AtelierError("the MCP session ended while its sandbox was being created")
        if not keep:
            session.owned[sb.id] = sb
        previous, session.current = session.current, sb
        if previous is not None and previous.id not in session.owned:
            await previous.close()
        return sb

    async def current(self, session: Session) -> AsyncSandbox:
        """The session's current sandbox, created on first use."""
        async with session.lock:
            if session.current is None:
                await self.create(session)
            assert session.current is not None
            return session.current

    def forget(self, session: Session, sandbox_id: str) -> AsyncSandbox | None:
        """Stop tracking a sandbox (it was deleted); the caller closes the returned handle."""
        handle = session.owned.pop(sandbox_id, None)
        if session.current is not None and session.current.id == sandbox_id:
            handle, session.current = session.current, None
        return handle

    async def keep_alive(self, sb: AsyncSandbox) -> None:
        """Push the sandbox's stop time out again once half its timeout has passed."""
        timeout, expires = sb.info.timeout, sb.info.expires_at
        if timeout is None or expires is None:
            return
        remaining = (expires - datetime.now(UTC)).total_seconds()
        if remaining < timeout / 2:
            with contextlib.suppress(AtelierError):
                await sb.set_timeout(timeout)


def _headers(ctx: Context[Any, Any]) -> Any:
    try:
        return ctx.headers
    except ValueError:
        return None
