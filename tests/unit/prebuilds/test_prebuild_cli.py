"""``atelier prebuild ...`` over the SDK over a fake API transport."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sdk"))
from sdk_fakes import TOKEN, URL, FakeApi

from atelier.cli.context import CliState
from atelier.cli.main import app

CONFIG = {
    "id": "pb-1",
    "repo": "https://git.example.com/app.git",
    "branch": "main",
    "keep": 3,
    "has_webhook_secret": True,
    "webhook_provider": "github",
    "webhook_path": "/v1/webhooks/github/pb-1",
    "vcpus": 1,
    "memory_mib": 1024,
    "disk_mib": 4096,
    "created_at": "2026-11-28T00:00:00Z",
    "latest_ready": None,
}
BUILD = {
    "id": "pbb-1",
    "prebuild_id": "pb-1",
    "commit": "a" * 40,
    "state": "failed",
    "trigger": "webhook:github",
    "error": "onCreateCommand failed",
    "duration_seconds": 2.5,
}


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ATELIER_URL", URL)
    monkeypatch.setenv("ATELIER_TOKEN", TOKEN)
    monkeypatch.setenv("ATELIER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("ATELIER_CONFIG", str(tmp_path / "no-config.toml"))


def _run(fake: FakeApi, *args: str) -> object:
    return CliRunner().invoke(app, list(args), obj=CliState(transport=fake.transport))


def test_add_sends_the_configuration_and_prints_the_webhook(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeApi()
    fake.on("POST", "/v1/prebuilds", httpx.Response(201, json=CONFIG))
    monkeypatch.setenv("HOOK", "s3cret")
    result = _run(
        fake, "prebuild", "add", CONFIG["repo"], "--branch", "main", "--webhook", "github",
        "--webhook-secret-env", "HOOK", "--env-secret", "NPM_TOKEN=npm", "--keep", "2",
    )  # fmt: skip
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    assert "pb-1" in result.output and "/v1/webhooks/github/pb-1" in result.output  # type: ignore[attr-defined]
    body = json.loads(fake.last.content)
    assert body == {
        "repo": CONFIG["repo"],
        "branch": "main",
        "env_secrets": {"NPM_TOKEN": "npm"},
        "keep": 2,
        "webhook_provider": "github",
        "webhook_secret": "s3cret",
    }


def test_bad_env_secret_and_unset_webhook_secret_are_usage_errors() -> None:
    fake = FakeApi()
    result = _run(fake, "prebuild", "add", "https://h/a.git", "--env-secret", "NOPE")
    assert result.exit_code != 0 and not fake.requests  # type: ignore[attr-defined]
    result = _run(fake, "prebuild", "add", "https://h/a.git", "--webhook-secret-env", "UNSET_X")
    assert result.exit_code != 0 and not fake.requests  # type: ignore[attr-defined]


def test_builds_logs_run_and_rm() -> None:
    fake = FakeApi()
    fake.on("GET", "/v1/prebuilds/pb-1/builds", httpx.Response(200, json={"builds": [BUILD]}))
    fake.on(
        "GET",
        "/v1/prebuilds/pb-1/builds/pbb-1/logs",
        httpx.Response(200, text="[onCreateCommand] exit 3\n"),
    )
    fake.on("POST", "/v1/prebuilds/pb-1/run", httpx.Response(202, json={"build": BUILD}))
    fake.on("DELETE", "/v1/prebuilds/pb-1", httpx.Response(204))
    fake.on("GET", "/v1/prebuilds", httpx.Response(200, json={"prebuilds": [CONFIG]}))
    listed = _run(fake, "prebuild", "builds", "pb-1")
    assert "failed" in listed.output and "aaaaaaaaaaaa" in listed.output  # type: ignore[attr-defined]
    logs = _run(fake, "prebuild", "logs", "pb-1")  # the newest build
    assert logs.output == "[onCreateCommand] exit 3\n"  # type: ignore[attr-defined]
    assert fake.last.url.params["format"] == "text"
    assert "pbb-1" in _run(fake, "prebuild", "run", "pb-1").output  # type: ignore[attr-defined]
    assert "pb-1" in _run(fake, "prebuild", "ls").output  # type: ignore[attr-defined]
    assert _run(fake, "prebuild", "rm", "pb-1").exit_code == 0  # type: ignore[attr-defined]
    assert fake.last.method == "DELETE"
