"""The server side of the code interpreter: one gateway per sandbox, cells through it.

The gateway (``guest/gateway.py``) runs inside the sandbox under the template's
``python3``, started on first use through the agent as a background process
(tag ``atelier-interpreter``). It listens on a random loopback port inside
the sandbox and demands a per-gateway token; the server reaches it through
the agent's TCP tunnel (``tcp.connect``), one tunnel per request. So a cell
costs one agent stream and no process start.

* **Install**: the guest files go to ``/opt/atelier-interpreter/<version>/``
  with the agent's file API; ``<version>`` is a hash of their content, so a
  server with other guest files installs beside, never over, them.
* **Discovery**: the gateway writes ``gateway.json`` (port, token, pid,
  version) into its state directory; a restarted server reads it back (as
  root, through the agent) instead of starting a second gateway.
* **Cache**: per sandbox, keyed by its ``started_at``: a restarted sandbox has
  no gateway, and the next call starts one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import secrets
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from ..core.agent_client import AgentClient, Exit, Output, PortUnreachable, TcpTunnel
from ..core.models import SandboxRecord
from ..errors import (
    AgentFailure,
    AtelierError,
    FileNotFound,
    InvalidRequest,
    NotFound,
    error_class_for,
)
from .events import START_WAIT, api_event, deadlines

__all__ = [
    "GATEWAY_TAG",
    "GUEST_FILES",
    "INSTALL_ROOT",
    "CellStream",
    "InterpreterService",
    "guest_bundle",
    "state_dir_for",
]

GATEWAY_TAG = "atelier-interpreter"
INSTALL_ROOT = "/opt/atelier-interpreter"
GUEST_FILES = ("gateway.py", "js_kernel.js")
READY_PREFIX = b"ATELIER-GATEWAY-READY "
GATEWAY_START_WAIT = 60.0
MAX_CACHED = 4096
_LINE_LIMIT = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class GuestBundle:
    version: str
    files: Mapping[str, bytes]

    @property
    def directory(self) -> str:
        return f"{INSTALL_ROOT}/{self.version}"


_bundle: GuestBundle | None = None


def guest_bundle() -> GuestBundle:
    """The guest files shipped with this package and their content hash."""
    global _bundle
    if _bundle is None:
        root = resources.files("atelier.interpreter").joinpath("guest")
        files = {name: root.joinpath(name).read_bytes() for name in GUEST_FILES}
        digest = hashlib.sha256()
        for name in GUEST_FILES:
            digest.update(name.encode() + b"\0" + files[name] + b"\0")
        _bundle = GuestBundle(digest.hexdigest()[:16], files)
    return _bundle


def state_dir_for(user: str) -> str:
    """The gateway's private directory (0700) for the user it runs as."""
    return f"/tmp/.atelier-interpreter-{user}"


@dataclass(frozen=True, slots=True)
class Gateway:
    port: int
    token: str
    pid: int | None
    epoch: str  # the sandbox's started_at when found


class _Lines:
    """NDJSON lines from a tunnel."""

    def __init__(self, tunnel: TcpTunnel) -> None:
        self._tunnel = tunnel
        self._buffer = bytearray()
        self._eof = False

    async def next(self) -> dict[str, Any] | None:
        while True:
            at = self._buffer.find(b"\n")
            if at >= 0:
                line = bytes(self._buffer[:at])
                del self._buffer[: at + 1]
                if not line.strip():
                    continue
                return _decode(line)
            if self._eof:
                if self._buffer.strip():
                    line, self._buffer = bytes(self._buffer), bytearray()
                    return _decode(line)
                return None
            chunk = await self._tunnel.read()
            if not chunk:
                self._eof = True
            elif len(self._buffer) + len(chunk) > _LINE_LIMIT:
                raise AgentFailure("the interpreter sent an oversized event")
            else:
                self._buffer.extend(chunk)


def _decode(line: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except ValueError as exc:
        raise AgentFailure(f"malformed event from the interpreter: {line[:200]!r}") from exc
    if not isinstance(obj, dict):
        raise AgentFailure(f"malformed event from the interpreter: {line[:200]!r}")
    return obj


class _Rejected(Exception):
    """The gateway refused the token (a stale cache entry)."""


def _failure(reply: dict[str, Any]) -> AtelierError:
    code = str(reply.get("code", "sandbox_error"))
    return error_class_for(code)(str(reply.get("message", "the interpreter failed")))


class CellStream:
    """The events of one running cell (after ``started``), as API event dicts.

    Iterate to the ``end`` event; ``aclose()`` (or leaving early) closes the
    tunnel, which makes the gateway interrupt the cell.
    """

    def __init__(
        self, tunnel: TcpTunnel, lines: _Lines, context: str, language: str, host: float | None
    ) -> None:
        self._tunnel = tunnel
        self._lines = lines
        self.context = context
        self.language = language
        loop = asyncio.get_running_loop()
        self._deadline = None if host is None else loop.time() + host
        self._done = False

    def __aiter__(self) -> CellStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        while not self._done:
            try:
                raw = await self._next()
            except AtelierError as exc:
                await self.aclose()
                return {"type": "error", **exc.to_payload()}
            if raw is None:
                await self.aclose()
                failure = AgentFailure("the interpreter ended the cell without an answer")
                return {"type": "error", **failure.to_payload()}
            if raw.get("type") == "failure":
                await self.aclose()
                return {"type": "error", **_failure(raw).to_payload()}
            event = api_event(raw)
            if event is None:
                continue
            if event["type"] == "end":
                await self.aclose()
            return event
        raise StopAsyncIteration

    async def _next(self) -> dict[str, Any] | None:
        if self._deadline is None:
            return await self._lines.next()
        remaining = self._deadline - asyncio.get_running_loop().time()
        try:
            return await asyncio.wait_for(self._lines.next(), max(remaining, 0.001))
        except TimeoutError:
            raise AgentFailure(
                "the interpreter did not finish the cell after its timeout; "
                "restart the context if it is stuck"
            ) from None

    async def aclose(self) -> None:
        self._done = True
        await self._tunnel.close()


class InterpreterService:
    """Gateways of running sandboxes (in-process cache) and the requests to them."""

    def __init__(self) -> None:
        self._gateways: OrderedDict[str, Gateway] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}

    # -- public operations -------------------------------------------------------------
    async def execute(
        self,
        rec: SandboxRecord,
        agent: AgentClient,
        code: str,
        *,
        language: str = "python",
        context: str | None = None,
        timeout: float | None = 60.0,
    ) -> CellStream:
        """Start a cell; errors before it runs (bad context, kernel failed to start) raise."""
        limits = deadlines(timeout)
        request = {
            "op": "execute",
            "code": code,
            "language": language,
            "context": context,
            "timeout": limits.gateway,
        }
        tunnel, lines, first = await self._open(rec, agent, request)
        if first.get("type") != "started":
            await tunnel.close()
            raise AgentFailure(f"unexpected first answer from the interpreter: {first!r}")
        return CellStream(
            tunnel,
            lines,
            str(first.get("context", context)),
            str(first.get("language", language)),
            limits.host,
        )

    async def list_contexts(self, rec: SandboxRecord, agent: AgentClient) -> list[dict[str, Any]]:
        """The contexts of the sandbox's gateway; none (and no gateway started) if it has none."""
        if await self._find(rec, agent) is None:
            return []
        reply = await self._request(rec, agent, {"op": "contexts.list"})
        contexts = reply.get("contexts")
        return [c for c in contexts if isinstance(c, dict)] if isinstance(contexts, list) else []

    async def create_context(
        self,
        rec: SandboxRecord,
        agent: AgentClient,
        *,
        language: str = "python",
        name: str | None = None,
        cwd: str | None = None,
    ) -> dict[str, Any]:
        request = {"op": "contexts.create", "language": language, "name": name, "cwd": cwd}
        return _context(await self._request(rec, agent, request))

    async def restart_context(
        self, rec: SandboxRecord, agent: AgentClient, name: str
    ) -> dict[str, Any]:
        if await self._find(rec, agent) is None:
            raise NotFound(f"no code context {name!r} (the interpreter is not running)")
        return _context(await self._request(rec, agent, {"op": "contexts.restart", "name": name}))

    async def delete_context(self, rec: SandboxRecord, agent: AgentClient, name: str) -> None:
        if await self._find(rec, agent) is None:
            raise NotFound(f"no code context {name!r} (the interpreter is not running)")
        await self._request(rec, agent, {"op": "contexts.delete", "name": name})

    def forget(self, sandbox_id: str) -> None:
        self._gateways.pop(sandbox_id, None)

    # -- requests ------------------------------------------------------------------------
    async def _request(
        self, rec: SandboxRecord, agent: AgentClient, request: dict[str, Any]
    ) -> dict[str, Any]:
        tunnel, _, reply = await self._open(rec, agent, request)
        await tunnel.close()
        return reply

    async def _open(
        self, rec: SandboxRecord, agent: AgentClient, request: dict[str, Any]
    ) -> tuple[TcpTunnel, _Lines, dict[str, Any]]:
        """Send ``request`` and read the first answer; a failure answer raises.

        A stale gateway (gone, or another token) is forgotten and the request
        retried once on a fresh one: nothing ran yet in either case.
        """
        for attempt in (1, 2):
            gateway = await self._ensure(rec, agent)
            try:
                tunnel, lines, first = await self._send(agent, gateway, request)
            except (PortUnreachable, _Rejected):
                self.forget(rec.id)
                if attempt == 2:
                    raise AgentFailure("the interpreter gateway does not answer") from None
                continue
            if first.get("type") == "failure":
                await tunnel.close()
                raise _failure(first)
            return tunnel, lines, first
        raise AssertionError("unreachable")

    async def _send(
        self, agent: AgentClient, gateway: Gateway, request: dict[str, Any]
    ) -> tuple[TcpTunnel, _Lines, dict[str, Any]]:
        tunnel = await agent.open_tunnel(gateway.port)
        try:
            payload = {**request, "token": gateway.token}
            await tunnel.write(json.dumps(payload, separators=(",", ":")).encode() + b"\n")
            lines = _Lines(tunnel)
            try:
                first = await asyncio.wait_for(lines.next(), START_WAIT)
            except TimeoutError:
                raise AgentFailure("the interpreter did not answer in time") from None
            if first is None:
                raise PortUnreachable("the interpreter gateway closed the connection")
            if first.get("type") == "failure" and first.get("code") == "forbidden":
                raise _Rejected()
        except BaseException:
            await tunnel.close()
            raise
        return tunnel, lines, first

    # -- the gateway ---------------------------------------------------------------------
    def _lock(self, sandbox_id: str) -> asyncio.Lock:
        lock = self._locks.get(sandbox_id)
        if lock is None:
            if len(self._locks) > MAX_CACHED:
                for key in [k for k, v in self._locks.items() if not v.locked()]:
                    del self._locks[key]
            lock = self._locks[sandbox_id] = asyncio.Lock()
        return lock

    def _remember(self, sandbox_id: str, gateway: Gateway) -> Gateway:
        self._gateways[sandbox_id] = gateway
        self._gateways.move_to_end(sandbox_id)
        while len(self._gateways) > MAX_CACHED:
            self._gateways.popitem(last=False)
        return gateway

    async def _find(self, rec: SandboxRecord, agent: AgentClient) -> Gateway | None:
        """The running gateway (cached or discovered), or None without starting one."""
        epoch = _epoch(rec)
        async with self._lock(rec.id):
            cached = self._gateways.get(rec.id)
            if cached is not None and cached.epoch == epoch:
                return cached
            found = await self._discover(rec, agent, epoch)
            return None if found is None else self._remember(rec.id, found)

    async def _ensure(self, rec: SandboxRecord, agent: AgentClient) -> Gateway:
        epoch = _epoch(rec)
        async with self._lock(rec.id):
            cached = self._gateways.get(rec.id)
            if cached is not None and cached.epoch == epoch:
                return cached
            gateway = await self._discover(rec, agent, epoch)
            if gateway is None:
                gateway = await self._start(rec, agent, epoch)
            return self._remember(rec.id, gateway)

    async def _discover(self, rec: SandboxRecord, agent: AgentClient, epoch: str) -> Gateway | None:
        """A gateway a previous server process started (its ``gateway.json``)."""
        path = f"{state_dir_for(_user(rec))}/gateway.json"
        try:
            _, chunks = await agent.read_file(path)
            raw = b"".join([chunk async for chunk in chunks])
        except (FileNotFound, NotFound):
            return None
        try:
            state = json.loads(raw)
            gateway = Gateway(int(state["port"]), str(state["token"]), state.get("pid"), epoch)
        except (ValueError, KeyError, TypeError):
            return None
        try:
            tunnel, _, reply = await self._send(agent, gateway, {"op": "ping"})
        except (PortUnreachable, _Rejected, AgentFailure):
            return None
        await tunnel.close()
        if reply.get("type") != "pong":
            return None
        return gateway

    async def _install(self, agent: AgentClient) -> str:
        bundle = guest_bundle()
        stamp = f"{bundle.directory}/.complete"
        if await agent.exists(stamp):
            return bundle.directory
        for name, data in bundle.files.items():
            await agent.write_file(f"{bundle.directory}/{name}", data, mode="0644", user="root")
        await agent.write_file(stamp, bundle.version.encode() + b"\n", mode="0644", user="root")
        return bundle.directory

    async def _start(self, rec: SandboxRecord, agent: AgentClient, epoch: str) -> Gateway:
        directory = await self._install(agent)
        token = secrets.token_urlsafe(24)
        config = {"token": token, "state_dir": state_dir_for(_user(rec))}
        session = await agent.exec(
            argv=["python3", "-I", f"{directory}/gateway.py"],
            env=rec.env,
            cwd=rec.default_cwd,
            user=rec.default_user,
            stdin=True,
            background=True,
            tag=GATEWAY_TAG,
        )
        pid = session.pid
        try:
            await session.send_stdin(json.dumps(config).encode() + b"\n")
            await session.close_stdin()
        finally:
            await session.detach()
        port = await self._wait_ready(agent, pid)
        return Gateway(port, token, pid, epoch)

    async def _wait_ready(self, agent: AgentClient, pid: int) -> int:
        """Follow the gateway's output until it says which port it listens on."""
        session = await agent.attach(pid)
        output = bytearray()
        exit_event: Exit | None = None

        async def follow() -> int | None:
            nonlocal exit_event
            async for event in session:
                if isinstance(event, Output):
                    output.extend(event.data)
                    for line in bytes(output).splitlines():
                        if line.startswith(READY_PREFIX):
                            return int(line[len(READY_PREFIX) :].split()[0])
                elif isinstance(event, Exit):
                    exit_event = event
                    return None
            return None

        try:
            port = await asyncio.wait_for(follow(), GATEWAY_START_WAIT)
        except TimeoutError:
            with contextlib.suppress(AtelierError):
                await agent.signal(pid, "SIGKILL")
            raise AgentFailure(
                f"the interpreter gateway did not start within {GATEWAY_START_WAIT:g}s",
                details={"output": output.decode(errors="replace")[-2000:]},
            ) from None
        finally:
            await session.detach()
        if port is not None:
            return port
        text = output.decode(errors="replace").strip()
        if exit_event is not None and exit_event.exit_code == 127:
            raise InvalidRequest(
                "this sandbox's template has no python3: the code interpreter needs "
                "python3 (and for python cells jupyter_client and ipykernel); "
                "use the code-interpreter template"
            )
        code = None if exit_event is None else exit_event.exit_code
        raise AgentFailure(
            f"the interpreter gateway exited (status {code}): {text[-500:] or 'no output'}",
            details={"output": text[-2000:]},
        )


def _user(rec: SandboxRecord) -> str:
    return rec.default_user or "user"


def _epoch(rec: SandboxRecord) -> str:
    return rec.started_at.isoformat() if rec.started_at is not None else ""


def _context(reply: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in reply.items() if k != "type"}
