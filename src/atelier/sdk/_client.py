"""The base of the SDK's resource clients that are not tied to one sandbox
(``Templates``, ``Secrets``, ``SSHKeys``...): connection settings, one HTTP
client, ``close`` and the context-manager protocol, sync and async."""

from __future__ import annotations

from types import TracebackType
from typing import Self

import httpx

from atelier.sdk._base import DEFAULT_REQUEST_TIMEOUT, ConnectionConfig
from atelier.sdk._http import AsyncHttp, SyncHttp

__all__ = ["ApiClient", "AsyncApiClient"]


class ApiClient:
    """``with Client(api_url=..., token=...) as client: ...`` (both default to
    ``$ATELIER_URL`` / ``$ATELIER_TOKEN``)."""

    def __init__(
        self,
        api_url: str | None = None,
        token: str | None = None,
        request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.config = ConnectionConfig.resolve(api_url, token, request_timeout)
        self._http = SyncHttp(self.config, transport)

    @property
    def api_url(self) -> str:
        return self.config.api_url

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncApiClient:
    """The async :class:`ApiClient`."""

    def __init__(
        self,
        api_url: str | None = None,
        token: str | None = None,
        request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = ConnectionConfig.resolve(api_url, token, request_timeout)
        self._http = AsyncHttp(self.config, transport)

    @property
    def api_url(self) -> str:
        return self.config.api_url

    async def close(self) -> None:
        await self._http.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
