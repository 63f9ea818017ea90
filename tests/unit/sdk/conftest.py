"""Fixtures of the SDK unit tests."""

from __future__ import annotations

import httpx
import pytest
from sdk_fakes import SANDBOX, TOKEN, URL, FakeApi


@pytest.fixture
def fake() -> FakeApi:
    api = FakeApi()
    api.on("POST", "/v1/sandboxes", httpx.Response(201, json=SANDBOX))
    api.on("GET", "/v1/sandboxes/sb-1", httpx.Response(200, json=SANDBOX))
    return api


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATELIER_URL", URL)
    monkeypatch.setenv("ATELIER_TOKEN", TOKEN)
