"""Sandbox lifecycle: request shapes, configuration, error mapping."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime

import httpx
import pytest
from sdk_fakes import SANDBOX, TOKEN, URL, FakeApi, error

from atelier import Sandbox, SandboxInfo
from atelier.errors import (
    ApiConnectionError,
    AtelierError,
    AuthenticationError,
    InvalidStateTransition,
    NotFound,
    SandboxNotFound,
    TemplateNotFound,
    ValidationFailed,
)


def test_create_sends_the_documented_body_and_bearer_token(fake: FakeApi) -> None:
    sb = Sandbox.create(
        template="py",
        vcpus=2,
        memory_mib=1024,
        env={"A": "1"},
        labels={"x": "y"},
        transport=fake.transport,
    )
    request = fake.last
    assert (request.method, str(request.url)) == ("POST", f"{URL}/v1/sandboxes")
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert json.loads(request.content) == {
        "template": "py",
        "vcpus": 2,
        "memory_mib": 1024,
        "disk_mib": 2048,
        "env": {"A": "1"},
        "labels": {"x": "y"},
        "timeout": 300,
    }
    assert sb.id == "sb-1"
    info = sb.info
    assert isinstance(info, SandboxInfo)
    assert info.state == "running" and info.labels == {"team": "ml"}
    assert info.expires_at == datetime(2026, 11, 27, 18, 30, tzinfo=UTC)
    assert info.started_at is not None and info.started_at.tzinfo is not None


def test_create_sends_runtime_only_when_given(fake: FakeApi) -> None:
    Sandbox.create(runtime="qemu", timeout=None, transport=fake.transport)
    body = json.loads(fake.last.content)
    assert body["runtime"] == "qemu" and body["timeout"] is None


def test_missing_token_fails_before_any_request(
    fake: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ATELIER_TOKEN")
    with pytest.raises(AuthenticationError, match="ATELIER_TOKEN"):
        Sandbox.create(transport=fake.transport)
    assert fake.requests == []


def test_explicit_url_and_token_override_the_environment(fake: FakeApi) -> None:
    fake.on("GET", "/v1/sandboxes", httpx.Response(200, json={"sandboxes": []}))
    Sandbox.list(api_url="http://other:9000/", token="t2", transport=fake.transport)
    assert str(fake.last.url) == "http://other:9000/v1/sandboxes"
    assert fake.last.headers["authorization"] == "Bearer t2"


def test_list_filters_by_state_and_repeated_labels(fake: FakeApi) -> None:
    fake.on("GET", "/v1/sandboxes", httpx.Response(200, json={"sandboxes": [SANDBOX, SANDBOX]}))
    found = Sandbox.list(state="running", labels={"a": "1", "b": "2"}, transport=fake.transport)
    assert [s.id for s in found] == ["sb-1", "sb-1"]
    params = fake.last.url.params
    assert params["state"] == "running"
    assert params.get_list("label") == ["a=1", "b=2"]


def test_lifecycle_calls(fake: FakeApi) -> None:
    stopped = {**SANDBOX, "state": "stopped"}
    fake.on("POST", "/v1/sandboxes/sb-1/stop", httpx.Response(200, json=stopped))
    fake.on("POST", "/v1/sandboxes/sb-1/start", httpx.Response(200, json=SANDBOX))
    fake.on("POST", "/v1/sandboxes/sb-1/timeout", httpx.Response(200, json=SANDBOX))
    fake.on("GET", "/v1/sandboxes/sb-1/logs", httpx.Response(200, text="booted\n"))
    fake.on("DELETE", "/v1/sandboxes/sb-1", httpx.Response(204))
    sb = Sandbox.connect("sb-1", transport=fake.transport)
    assert sb.stop().state == "stopped" and sb.info.state == "stopped"
    assert sb.start().state == "running"
    sb.set_timeout(600)
    assert json.loads(fake.last.content) == {"timeout": 600}
    sb.set_timeout(None)
    assert json.loads(fake.last.content) == {"timeout": None}
    assert sb.logs(tail=5) == "booted\n"
    assert fake.last.url.params["tail"] == "5"
    assert sb.kill() is True
    assert sb.info.state == "deleted"
    fake.on("DELETE", "/v1/sandboxes/sb-1", error(404, "sandbox_not_found"))
    assert sb.delete() is False


def test_context_manager_deletes_the_sandbox(fake: FakeApi) -> None:
    fake.on("DELETE", "/v1/sandboxes/sb-1", httpx.Response(204))
    with Sandbox.create(transport=fake.transport) as sb:
        assert sb.id == "sb-1"
    assert fake.last.method == "DELETE"


def test_context_manager_does_not_mask_the_original_error(fake: FakeApi) -> None:
    fake.on("DELETE", "/v1/sandboxes/sb-1", error(500, "internal"))
    with pytest.raises(KeyError), Sandbox.create(transport=fake.transport):
        raise KeyError("original")


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (404, "sandbox_not_found", SandboxNotFound),
        (404, "template_not_found", TemplateNotFound),
        (401, "unauthenticated", AuthenticationError),
        (409, "invalid_state", InvalidStateTransition),
        (422, "validation_error", ValidationFailed),
    ],
)
def test_error_bodies_map_to_the_error_hierarchy(
    fake: FakeApi, status: int, code: str, cls: type[AtelierError]
) -> None:
    fake.on("GET", "/v1/sandboxes/sb-x", error(status, code, "nope"))
    with pytest.raises(cls) as caught:
        Sandbox.connect("sb-x", transport=fake.transport)
    assert caught.value.message == "nope"
    assert caught.value.code == code


def test_details_are_kept(fake: FakeApi) -> None:
    body = {"code": "validation_error", "message": "bad", "details": {"errors": [1]}}
    fake.on("POST", "/v1/sandboxes", httpx.Response(422, json=body))
    with pytest.raises(ValidationFailed) as caught:
        Sandbox.create(transport=fake.transport)
    assert caught.value.details == {"errors": [1]}


def test_unknown_code_falls_back_on_status_and_non_json_bodies(fake: FakeApi) -> None:
    fake.on("GET", "/v1/sandboxes/a", error(404, "weird_code"))
    with pytest.raises(NotFound):
        Sandbox.connect("a", transport=fake.transport)
    fake.on("GET", "/v1/sandboxes/b", httpx.Response(502, text="Bad Gateway"))
    with pytest.raises(AtelierError, match="HTTP 502: Bad Gateway"):
        Sandbox.connect("b", transport=fake.transport)


def test_unreachable_server_is_an_api_connection_error() -> None:
    with pytest.raises(ApiConnectionError, match="cannot reach"):
        Sandbox.list(api_url="http://127.0.0.1:1")


def test_transport_timeouts_are_api_connection_errors() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("read timed out", request=request)

    with pytest.raises(ApiConnectionError) as caught:
        Sandbox.list(transport=httpx.MockTransport(slow))
    assert caught.value.details == {"timeout": True}


def test_unexpected_answer_is_an_atelier_error(fake: FakeApi) -> None:
    fake.on("GET", "/v1/sandboxes/sb-1", httpx.Response(200, text="<html>"))
    with pytest.raises(AtelierError, match="unexpected answer"):
        Sandbox.connect("sb-1", transport=fake.transport)


def test_sandbox_ids_are_path_quoted(fake: FakeApi) -> None:
    with pytest.raises(NotFound):
        Sandbox.connect("a/b", transport=fake.transport)
    assert fake.last.url.raw_path == b"/v1/sandboxes/a%2Fb"


def test_importing_atelier_stays_cheap() -> None:
    code = (
        "import sys, atelier, atelier.errors\n"
        "assert 'httpx' not in sys.modules and 'atelier.sdk' not in sys.modules\n"
        "from atelier import Sandbox, AsyncSandbox\n"
        "assert 'websockets' not in sys.modules\n"
        "import atelier.cli.main\n"
        "server = ('atelier.api', 'atelier.core', 'atelier.store', 'atelier.runtimes')\n"
        "assert not [m for m in sys.modules if m.startswith(server)], 'server code imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
