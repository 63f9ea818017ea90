"""What the port routes and the preview proxy share: key, visibility, URLs, caches."""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from ...config import Settings
from ...core.agent_client import TcpTunnel
from ...core.auth import Principal
from ...core.models import SandboxRecord
from ...errors import InvalidRequest
from ..deps import AppContext
from .signing import PreviewSigner, load_or_create_key

__all__ = [
    "PORT_LABEL_PREFIX",
    "PreviewState",
    "Visibility",
    "parse_preview_host",
    "preview_state",
    "visibility_of",
]

Visibility = Literal["private", "public"]
PORT_LABEL_PREFIX = "atelier.port."
_RECORD_TTL = 1.0  # seconds a sandbox record is reused by the proxy
_IDLE_MAX = 8  # idle upstream connections kept per (sandbox, port)
_IDLE_TTL = 30.0
_AUTH_TTL = 5.0  # seconds a checked bearer token is trusted without a database look-up
_HOST_RE = re.compile(r"^(?P<port>[0-9]{1,5})-(?P<sandbox>[a-z0-9][a-z0-9-]{0,62})$")


def visibility_of(labels: dict[str, str], port: int) -> Visibility:
    return "public" if labels.get(f"{PORT_LABEL_PREFIX}{port}") == "public" else "private"


def check_port(port: int) -> int:
    if not 1 <= port <= 65535:
        raise InvalidRequest(f"port must be between 1 and 65535, got {port}")
    return port


def _split_host(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):
        return host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def parse_preview_host(host: str | None, preview_domain: str | None) -> tuple[str, int] | None:
    """``3000-sb-1a2b.preview.example.com[:8080]`` → ``("sb-1a2b", 3000)``; else None."""
    if not host or not preview_domain:
        return None
    name = _split_host(host)
    suffix = "." + _split_host(preview_domain).lstrip(".")
    if not name.endswith(suffix):
        return None
    match = _HOST_RE.match(name[: -len(suffix)])
    if match is None:
        return None
    port = int(match["port"])
    if not 1 <= port <= 65535:
        return None
    return match["sandbox"], port


@dataclass
class _Idle:
    conn: Any  # http.Upstream (kept untyped here to avoid an import cycle)
    since: float


@dataclass
class PreviewState:
    settings: Settings
    signer: PreviewSigner
    _records: dict[str, tuple[float, SandboxRecord]] = field(default_factory=dict)
    _idle: dict[tuple[str, int], list[_Idle]] = field(default_factory=dict)
    _principals: dict[str, tuple[float, Principal]] = field(default_factory=dict)

    # -- tokens (short cache: a preview page fires many requests) -------------------
    async def principal(self, ctx: AppContext, token: str) -> Principal:
        """The token's principal; raises ``AuthenticationError``. A revoked token
        keeps working here for at most ``_AUTH_TTL`` seconds."""
        key = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        cached = self._principals.get(key)
        if cached is not None and now - cached[0] < _AUTH_TTL:
            return cached[1]
        principal = await ctx.tokens.authenticate(token)
        if len(self._principals) > 256:
            self._principals.clear()
        self._principals[key] = (now, principal)
        return principal

    # -- sandbox records (short cache: the proxy looks one up per request) ---------
    async def record(self, ctx: AppContext, sandbox_id: str) -> SandboxRecord:
        now = time.monotonic()
        cached = self._records.get(sandbox_id)
        if cached is not None and now - cached[0] < _RECORD_TTL:
            return cached[1]
        rec = await ctx.repo.get_sandbox(sandbox_id)
        if len(self._records) > 1024:
            self._records.clear()
        self._records[sandbox_id] = (now, rec)
        return rec

    def forget(self, sandbox_id: str) -> None:
        self._records.pop(sandbox_id, None)

    # -- URLs ----------------------------------------------------------------------
    def path_url(self, base_url: str, sandbox_id: str, port: int) -> str:
        return f"{base_url.rstrip('/')}/preview/{sandbox_id}/{port}/"

    def host_url(self, scheme: str, sandbox_id: str, port: int) -> str | None:
        domain = self.settings.preview_domain
        if not domain:
            return None
        return f"{scheme}://{port}-{sandbox_id}.{domain.lstrip('.')}/"

    # -- idle upstream connections (HTTP keep-alive through the tunnel) -----------
    def take_idle(self, sandbox_id: str, port: int) -> Any | None:
        pool = self._idle.get((sandbox_id, port))
        now = time.monotonic()
        while pool:
            item = pool.pop()
            if now - item.since < _IDLE_TTL and not item.conn.tunnel.closed:
                return item.conn
            _close_later(item.conn.tunnel)
        return None

    def put_idle(self, sandbox_id: str, port: int, conn: Any) -> None:
        pool = self._idle.setdefault((sandbox_id, port), [])
        if len(pool) >= _IDLE_MAX:
            _close_later(pool.pop(0).conn.tunnel)
        pool.append(_Idle(conn, time.monotonic()))


_closing: set[asyncio.Task[None]] = set()


def _close_later(tunnel: TcpTunnel) -> None:
    task = asyncio.get_running_loop().create_task(tunnel.close())
    _closing.add(task)
    task.add_done_callback(_closing.discard)


def preview_state(app: Any) -> PreviewState:
    """The app's preview state, made on first use (the key file is created then)."""
    state: PreviewState | None = getattr(app.state, "preview", None)
    if state is None:
        ctx: AppContext = app.state.ctx
        key = load_or_create_key(ctx.settings.data_dir / "preview-key")
        state = PreviewState(ctx.settings, PreviewSigner(key))
        app.state.preview = state
    return state
