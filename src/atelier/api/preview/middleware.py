"""The preview proxy as an ASGI middleware, matched before the API routes.

* path-based: ``/preview/<sandbox-id>/<port>/<path>`` on the API's own host;
* host-based: ``<port>-<sandbox-id>.<preview_domain>`` (any path), when
  ``preview_domain`` is set.

Private ports (the default) need one of: a valid preview cookie, the owner's
(or an admin's) token as ``Authorization: Bearer`` or ``?token=``, or a signed
link ``?atelier_link=``. A token or link in the query is exchanged for a
cookie scoped to that preview (path-based: ``Path=/preview/<id>/<port>/``;
host-based: a host-only cookie) and, for GET/HEAD, the client is redirected
to the same URL without it. Public ports need nothing.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

from ...errors import AtelierError, AuthenticationError, SandboxNotFound
from ..deps import AppContext, bearer_token
from .http import Forwarding, proxy_http
from .state import PreviewState, parse_preview_host, preview_state, visibility_of
from .websocket import proxy_websocket

__all__ = ["COOKIE", "SESSION_TTL", "PreviewMiddleware"]

COOKIE = "atelier_preview"
SESSION_TTL = 8 * 3600  # seconds a cookie issued for a token stays valid
_PREFIX = "/preview/"
Scope = dict[str, Any]


@dataclass
class _Target:
    sandbox_id: str
    port: int
    prefix: str  # "" for host-based
    rest: bytes  # the path to ask the in-sandbox server for ("/..." raw)


def _match_path(scope: Scope) -> _Target | str | None:
    """A path-based target; ``"redirect"`` for ``/preview/<id>/<port>`` without a slash."""
    path: str = scope["path"]
    if not path.startswith(_PREFIX):
        return None
    parts = path[len(_PREFIX) :].split("/", 2)
    if len(parts) < 2 or not parts[0] or not parts[1].isdigit():
        return None
    sandbox_id, port_text = parts[0], parts[1]
    port = int(port_text)
    if not 1 <= port <= 65535:
        return None
    prefix = f"{_PREFIX}{sandbox_id}/{port_text}"
    if len(parts) == 2:
        return "redirect"
    raw: bytes = scope.get("raw_path") or path.encode()
    raw = raw.split(b"?", 1)[0]
    raw_prefix = prefix.encode()
    rest = raw[len(raw_prefix) :] if raw.startswith(raw_prefix) else ("/" + parts[2]).encode()
    return _Target(sandbox_id, port, prefix, rest or b"/")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


def _cookies(scope: Scope) -> list[str]:
    values = []
    for key, value in scope["headers"]:
        if key.lower() == b"cookie":
            for part in value.decode("latin-1").split(";"):
                name, _, val = part.strip().partition("=")
                if name == COOKIE and val:
                    values.append(val)
    return values


async def _json_response(send: Any, status: int, body: dict[str, Any], headers: Any = ()) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


class PreviewMiddleware:
    """Serves preview requests itself; passes everything else to the app."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        app = scope.get("app")
        ctx: AppContext | None = getattr(getattr(app, "state", None), "ctx", None)
        if ctx is None:
            await self.app(scope, receive, send)
            return
        target: _Target | str | None = None
        host_match = parse_preview_host(_header(scope, b"host"), ctx.settings.preview_domain)
        if host_match is not None:
            raw: bytes = scope.get("raw_path") or scope["path"].encode()
            target = _Target(host_match[0], host_match[1], "", raw.split(b"?", 1)[0] or b"/")
        else:
            target = _match_path(scope)
        if target is None:
            await self.app(scope, receive, send)
            return
        if target == "redirect":
            if scope["type"] == "http":
                query = scope.get("query_string", b"")
                location = scope["path"] + "/" + (("?" + query.decode("latin-1")) if query else "")
                await send(
                    {
                        "type": "http.response.start",
                        "status": 308,
                        "headers": [(b"location", location.encode()), (b"content-length", b"0")],
                    }
                )
                await send({"type": "http.response.body", "body": b""})
            else:
                await send({"type": "websocket.close", "code": 4404})
            return
        assert isinstance(target, _Target)
        await self._serve(scope, receive, send, ctx, preview_state(app), target)

    async def _serve(
        self,
        scope: Scope,
        receive: Any,
        send: Any,
        ctx: AppContext,
        state: PreviewState,
        target: _Target,
    ) -> None:
        is_ws = scope["type"] == "websocket"

        async def fail(exc: AtelierError) -> None:
            if is_ws:
                from .websocket import _deny

                await _deny(send, scope, exc.status, json.dumps(exc.to_payload()).encode())
            else:
                await _json_response(send, exc.status, exc.to_payload())

        try:
            rec = await state.record(ctx, target.sandbox_id)
            if rec.pooled:
                raise SandboxNotFound(f"sandbox {target.sandbox_id} does not exist")
            auth = await self._authorize(scope, ctx, state, target, rec)
        except AtelierError as exc:
            await fail(exc)
            return
        cookie_headers: list[tuple[bytes, bytes]] = []
        if auth.cookie is not None:
            cookie_headers.append((b"set-cookie", auth.cookie.encode("latin-1")))
        query = auth.query
        if auth.redirect and not is_ws and scope["method"] in ("GET", "HEAD"):
            rest = target.rest.decode("latin-1")
            location = target.prefix + rest + (f"?{query}" if query else "")
            await send(
                {
                    "type": "http.response.start",
                    "status": 303,
                    "headers": [
                        (b"location", location.encode("latin-1")),
                        (b"content-length", b"0"),
                        (b"cache-control", b"no-store"),
                        *cookie_headers,
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        try:  # a paused or hibernated sandbox is woken first; counts as activity
            rec, agent = await ctx.sandboxes.use(rec.id)
        except AtelierError as exc:
            await fail(exc)
            return
        with ctx.sandboxes.activity.attached(rec.id):  # not idle while a request or
            # a WebSocket to its preview is open
            scheme = scope.get("scheme", "http")
            client = scope.get("client")
            fwd = Forwarding(
                client_ip=client[0] if client else None,
                proto="https" if scheme in ("https", "wss") else "http",
                host=_header(scope, b"host"),
                prefix=target.prefix,
                port=target.port,
            )
            path = target.rest.decode("latin-1")
            upstream_target = path + (f"?{query}" if query else "")
            drop = (b"authorization",) if auth.used_header else ()
            if is_ws:
                await proxy_websocket(
                    scope,
                    receive,
                    send,
                    agent=agent,
                    port=target.port,
                    fwd=fwd,
                    target=upstream_target,
                    drop_headers=drop,
                    strip_cookie=COOKIE.encode(),
                    deny=fail,
                )
                return
            try:
                await proxy_http(
                    scope,
                    receive,
                    send,
                    agent=agent,
                    sandbox_id=target.sandbox_id,
                    port=target.port,
                    fwd=fwd,
                    target=upstream_target,
                    pool=state,
                    extra_response_headers=cookie_headers,
                    drop_headers=drop,
                    strip_cookie=COOKIE.encode(),
                )
            except AtelierError as exc:
                await fail(exc)  # only raised before the response started

    async def _authorize(
        self, scope: Scope, ctx: AppContext, state: PreviewState, target: _Target, rec: Any
    ) -> _Auth:
        query_items = parse_qsl(scope.get("query_string", b"").decode("latin-1"), True)
        original_query = scope.get("query_string", b"").decode("latin-1")
        auth = _Auth(query=original_query)
        if visibility_of(rec.labels, target.port) == "public":
            return auth
        signer = state.signer
        for grant in _cookies(scope):
            if signer.verify(grant, rec.id, target.port) is not None:
                return auth

        def owns(principal: Any) -> bool:
            return bool(principal.admin or rec.owner == principal.token_id)

        header_token = bearer_token(_header(scope, b"authorization"))
        if header_token:
            try:
                principal = await state.principal(ctx, header_token)
            except AuthenticationError:
                principal = None
            if principal is not None and owns(principal):
                auth.used_header = True
                return auth
        remaining = [(k, v) for k, v in query_items if k not in ("token", "atelier_link")]
        clean_query = urlencode(remaining) if len(remaining) != len(query_items) else original_query
        cookie_path = f"{target.prefix}/" if target.prefix else "/"
        secure = "; Secure" if scope.get("scheme") in ("https", "wss") else ""
        for key, value in query_items:
            if key == "token":
                try:
                    principal = await state.principal(ctx, value)
                except AuthenticationError:
                    continue
                if owns(principal):
                    grant = signer.issue("s", rec.id, target.port, SESSION_TTL)
                    auth.cookie = _cookie(grant, cookie_path, SESSION_TTL, secure)
                    auth.query, auth.redirect = clean_query, True
                    return auth
            elif key == "atelier_link":
                expires = signer.verify(value, rec.id, target.port)
                if expires is not None:
                    max_age = max(int(expires - time.time()), 1)
                    auth.cookie = _cookie(value, cookie_path, max_age, secure)
                    auth.query, auth.redirect = clean_query, True
                    return auth
        raise AuthenticationError(
            f"port {target.port} of sandbox {rec.id} is private: send the owner's token "
            "(Authorization: Bearer, or ?token= once) or open a signed preview link"
        )


def _cookie(value: str, path: str, max_age: int, secure: str) -> str:
    return f"{COOKIE}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}"


@dataclass
class _Auth:
    query: str
    cookie: str | None = None
    redirect: bool = False
    used_header: bool = False
