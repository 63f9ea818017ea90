"""One live agent connection per running sandbox, opened lazily, reopened on loss."""

from __future__ import annotations

import asyncio
import contextlib

from ..runtimes.registry import RuntimeRegistry
from .agent_client import AgentClient

__all__ = ["AgentConnections"]


class AgentConnections:
    def __init__(self, runtimes: RuntimeRegistry) -> None:
        self._runtimes = runtimes
        self._clients: dict[str, AgentClient] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def get(self, sandbox_id: str, runtime: str, timeout: float = 30.0) -> AgentClient:
        """The sandbox's agent client, connecting (and waiting for it) if needed."""
        client = self._clients.get(sandbox_id)
        if client is not None and client.is_open:
            return client
        lock = self._locks.setdefault(sandbox_id, asyncio.Lock())
        async with lock:
            client = self._clients.get(sandbox_id)
            if client is not None and client.is_open:
                return client
            socket = self._runtimes.get(runtime).agent_socket(sandbox_id)
            client = await AgentClient.connect(socket, timeout=timeout)
            self._clients[sandbox_id] = client
            return client

    async def drop(self, sandbox_id: str) -> None:
        client = self._clients.pop(sandbox_id, None)
        self._locks.pop(sandbox_id, None)
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()

    async def close_all(self) -> None:
        for sandbox_id in list(self._clients):
            await self.drop(sandbox_id)
