"""A scripted fake of the REST API for SDK (and CLI) unit tests, on httpx.MockTransport."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

TOKEN = "test-token"
URL = "http://atelier.test"

SANDBOX = {
    "id": "sb-1",
    "template": "base",
    "runtime": "gvisor",
    "state": "running",
    "vcpus": 1,
    "memory_mib": 512,
    "disk_mib": 2048,
    "env": {"K": "V"},
    "labels": {"team": "ml"},
    "timeout": 300,
    "expires_at": "2026-11-27T18:30:00Z",
    "created_at": "2026-11-27T18:25:00Z",
    "started_at": "2026-11-27T18:25:01+00:00",
    "error": None,
}

FILE = {
    "name": "a.txt",
    "path": "/home/user/a.txt",
    "type": "file",
    "size": 5,
    "mode": "0644",
    "owner": "user",
    "group": "user",
    "modified_at": "2026-11-27T18:30:00Z",
    "symlink_target": None,
}

PROCESS = {
    "pid": 12,
    "cmd": "seq 3",
    "argv": None,
    "tag": None,
    "user": "user",
    "cwd": "/home/user",
    "background": True,
    "running": True,
    "exit_code": None,
    "started_at": "2026-11-27T18:30:00Z",
}


class Chunks(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A response body delivered in exactly these chunks, to sync and async clients."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk


def ndjson(*events: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(e).encode() + b"\n" for e in events)


def error(status: int, code: str, message: str = "boom") -> httpx.Response:
    return httpx.Response(status, json={"code": code, "message": message})


Reply = httpx.Response | Callable[[httpx.Request], httpx.Response]


@dataclass
class FakeApi:
    """Routes ``(METHOD, path)`` to canned answers and records every request."""

    routes: dict[tuple[str, str], Reply] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)

    def on(self, method: str, path: str, reply: Reply) -> None:
        self.routes[(method, path)] = reply

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        reply = self.routes.get((request.method, request.url.path))
        if reply is None:
            return error(404, "not_found", f"no fake route {request.method} {request.url.path}")
        if callable(reply):
            return reply(request)
        # Responses with a stream can be read once: rebuild them for every request.
        if isinstance(reply.stream, Chunks):
            return httpx.Response(reply.status_code, headers=reply.headers, stream=reply.stream)
        return httpx.Response(reply.status_code, headers=reply.headers, content=reply.content)

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handler)

    @property
    def last(self) -> httpx.Request:
        return self.requests[-1]

    def summary(self) -> list[tuple[str, str, bytes]]:
        return [(r.method, str(r.url), r.content) for r in self.requests]
