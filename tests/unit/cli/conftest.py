"""Fixtures of the CLI unit tests: the CLI over the SDK over a fake API transport."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sdk"))

from sdk_fakes import SANDBOX, TOKEN, URL, FakeApi


@pytest.fixture
def fake() -> FakeApi:
    api = FakeApi()
    api.on("GET", "/v1/sandboxes/sb-1", httpx.Response(200, json=SANDBOX))
    return api


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ATELIER_URL", URL)
    monkeypatch.setenv("ATELIER_TOKEN", TOKEN)
    monkeypatch.setenv("ATELIER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("ATELIER_CONFIG", str(tmp_path / "no-config.toml"))
