"""The in-sandbox daemon e2b's SDK talks to ("envd"), served by the Atelier server.

The SDK sends every envd request to ``E2B_SANDBOX_URL`` with the headers
``E2b-Sandbox-Id`` and ``E2b-Sandbox-Port: 49983``; without that variable it
addresses ``<port>-<sandbox id>.<E2B_DOMAIN>`` (a TLS proxy in front of
Atelier). :class:`EnvdRouter` sends such requests to this app and everything
else to Atelier's own API, so one server port serves both.

Routes: ``GET /health``, ``GET|POST /files`` and ``POST /<service>/<method>``
for the Connect-RPC services ``process.Process`` and ``filesystem.Filesystem``.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ..api.deps import AppContext
from ..errors import AtelierError, InvalidRequest
from .calls import Call, Handler, StreamHandler, open_call, stream_body
from .connect import (
    STREAM_CONTENT_TYPE,
    UNARY_CONTENT_TYPE,
    Status,
    decode_message,
    encode_envelope,
    end_stream,
    error_body,
    from_atelier,
    read_envelopes,
)
from .filesystem import FilesystemService, download, upload
from .process import ProcessService

__all__ = ["ENVD_PORT", "EnvdRouter", "EnvdServices", "build_envd_app"]

ENVD_PORT = 49983
_HOST = re.compile(r"^(\d+)-([A-Za-z0-9-]+)\.")
_ID_HEADER = b"e2b-sandbox-id"
_PORT_HEADER = b"e2b-sandbox-port"
SCOPE_KEY = "atelier.e2b"  # (sandbox id, port) of an envd request


def envd_target(scope: Scope) -> tuple[str, int] | None:
    """The (sandbox id, port) an e2b SDK request is for, or ``None`` for Atelier's API."""
    headers = dict(scope.get("headers") or [])
    sandbox_id = headers.get(_ID_HEADER)
    if sandbox_id:
        try:
            port = int(headers.get(_PORT_HEADER) or ENVD_PORT)
        except ValueError:
            port = 0
        return sandbox_id.decode("latin-1"), port
    # other ports of <port>-<id>.<domain> are Atelier's host-based previews
    match = _HOST.match(headers.get(b"host", b"").decode("latin-1"))
    if match and int(match.group(1)) == ENVD_PORT:
        return match.group(2), ENVD_PORT
    return None


class EnvdRouter:
    """ASGI middleware: e2b envd traffic to the envd app, the rest to Atelier."""

    def __init__(self, app: ASGIApp, envd: ASGIApp) -> None:
        self.app = app
        self.envd = envd

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = envd_target(scope) if scope["type"] == "http" else None
        if target is None:
            await self.app(scope, receive, send)
            return
        await self.envd({**scope, SCOPE_KEY: target}, receive, send)


class EnvdServices:
    """The two Connect services and their method table."""

    def __init__(self) -> None:
        self.process = ProcessService()
        self.filesystem = FilesystemService()
        p, f = self.process, self.filesystem
        self.unary: dict[str, Handler] = {
            "process.Process/List": p.list,
            "process.Process/SendInput": p.send_input,
            "process.Process/SendSignal": p.send_signal,
            "process.Process/CloseStdin": p.close_stdin,
            "process.Process/Update": p.update,
            "filesystem.Filesystem/Stat": f.stat,
            "filesystem.Filesystem/MakeDir": f.make_dir,
            "filesystem.Filesystem/Move": f.move,
            "filesystem.Filesystem/ListDir": f.list_dir,
            "filesystem.Filesystem/Remove": f.remove,
            "filesystem.Filesystem/CreateWatcher": f.create_watcher,
            "filesystem.Filesystem/GetWatcherEvents": f.get_watcher_events,
            "filesystem.Filesystem/RemoveWatcher": f.remove_watcher,
        }
        self.streams: dict[str, tuple[StreamHandler, dict[str, Any]]] = {
            "process.Process/Start": (p.start, {"event": {"keepalive": {}}}),
            "process.Process/Connect": (p.connect, {"event": {"keepalive": {}}}),
            "filesystem.Filesystem/WatchDir": (f.watch_dir, {"keepalive": {}}),
        }

    async def close(self) -> None:
        await self.filesystem.close()


def _http_error(err: AtelierError) -> JSONResponse:
    """envd's plain-HTTP error shape (``/files``, ``/health``)."""
    status = err.status
    message = err.message
    if err.code in ("sandbox_not_found", "invalid_state"):
        status, message = 502, f"{message}: the sandbox was not found or is not running"
    return JSONResponse({"code": status, "message": message}, status_code=status)


def _rpc_error(status: Status) -> JSONResponse:
    return JSONResponse(error_body(status), status_code=status.http_status)


def _stream_error(status: Status) -> Response:
    return Response(end_stream(status), media_type=STREAM_CONTENT_TYPE)


def build_envd_app(context: Callable[[], AppContext], services: EnvdServices) -> Starlette:
    async def call_for(request: Request) -> Call:
        sandbox_id, port = request.scope[SCOPE_KEY]
        if port != ENVD_PORT:
            raise InvalidRequest(
                f"port {port} of {sandbox_id} is not served through the e2b adapter: "
                "use Atelier's port previews (docs/ports.md)"
            )
        return await open_call(context(), request, sandbox_id)

    def plain(
        handler: Callable[[Request], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except AtelierError as exc:
                return _http_error(exc)

        return endpoint

    async def health(request: Request) -> Response:
        await call_for(request)
        return Response(status_code=204)

    async def get_file(request: Request) -> Response:
        size, chunks = await download(await call_for(request), request)
        headers = {"content-length": str(size)}
        return StreamingResponse(chunks, media_type="application/octet-stream", headers=headers)

    async def post_file(request: Request) -> Response:
        return JSONResponse(await upload(await call_for(request), request))

    async def rpc(request: Request) -> Response:
        name = f"{request.path_params['service']}/{request.path_params['method']}"
        content_type = request.headers.get("content-type", "").split(";")[0].strip()
        if name in services.streams or name == "process.Process/StreamInput":
            if content_type != STREAM_CONTENT_TYPE:
                return _unsupported_codec(content_type)
            try:
                call = await call_for(request)
                if name == "process.Process/StreamInput":
                    await services.process.stream_input(call, request.stream())
                    reply = encode_envelope({}) + end_stream()
                    return Response(reply, media_type=STREAM_CONTENT_TYPE)
                handler, keepalive = services.streams[name]
                message = await _first_message(request)
            except AtelierError as exc:
                return _stream_error(from_atelier(exc))
            body = stream_body(call, handler(call, message), keepalive)
            return StreamingResponse(body, media_type=STREAM_CONTENT_TYPE)
        unary = services.unary.get(name)
        if unary is None:
            return _rpc_error(Status("unimplemented", f"{name} is not implemented"))
        if content_type != UNARY_CONTENT_TYPE:
            return _unsupported_codec(content_type)
        try:
            call = await call_for(request)
            result = await unary(call, decode_message(await request.body()))
        except AtelierError as exc:
            return _rpc_error(from_atelier(exc))
        return JSONResponse(result)

    return Starlette(
        routes=[
            Route("/health", plain(health), methods=["GET"]),
            Route("/files", plain(get_file), methods=["GET"]),
            Route("/files", plain(post_file), methods=["POST"]),
            Route("/{service}/{method}", rpc, methods=["POST"]),
        ]
    )


def _unsupported_codec(content_type: str) -> Response:
    return JSONResponse(
        error_body(
            Status(
                "unimplemented",
                f"content type {content_type or '(none)'} is not served: "
                "the e2b adapter speaks Connect with the JSON codec",
            )
        ),
        status_code=415,
    )


async def _first_message(request: Request) -> dict[str, Any]:
    async for message in read_envelopes(request.stream()):
        return message
    return {}
