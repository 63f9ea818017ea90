"""Sandbox lifecycle, auth and bad input against a real server."""

from __future__ import annotations

import time

import httpx
import pytest
from server_harness import ServerProcess

from atelier import Sandbox
from atelier.errors import (
    AuthenticationError,
    InvalidRequest,
    InvalidStateTransition,
    SandboxNotFound,
    TemplateNotFound,
)

pytestmark = pytest.mark.integration


def wait_for_state(sb: Sandbox, state: str, deadline_s: float = 60) -> str:
    deadline = time.monotonic() + deadline_s
    current = sb.get_info().state
    while current != state and time.monotonic() < deadline:
        time.sleep(0.2)
        current = sb.get_info().state
    return current


def test_get_and_list_by_label_and_state(make_sandbox) -> None:  # type: ignore[no-untyped-def]
    a = make_sandbox(labels={"team": "ml"}, env={"X": "1"}, vcpus=1, memory_mib=256)
    b = make_sandbox(labels={"team": "web"})
    info = a.get_info()
    assert (info.state, info.memory_mib, info.labels["team"], info.env) == (
        "running",
        256,
        "ml",
        {"X": "1"},
    )
    ml = {s.id for s in Sandbox.list(labels={"team": "ml"})}
    assert a.id in ml and b.id not in ml
    b.stop()
    stopped = {s.id for s in Sandbox.list(state="stopped")}
    assert b.id in stopped and a.id not in stopped


def test_stop_start_keeps_files_and_illegal_moves_are_409(sb: Sandbox) -> None:
    sb.files.write("/home/user/keep.txt", "persisted")
    assert sb.stop().state == "stopped"
    with pytest.raises(InvalidStateTransition) as info:
        sb.commands.run("true")
    assert "stopped" in info.value.message
    with pytest.raises(InvalidStateTransition):
        sb.stop()
    assert sb.start().state == "running"
    with pytest.raises(InvalidStateTransition):
        sb.start()
    assert sb.files.read_text("/home/user/keep.txt") == "persisted"


def test_resource_limits_are_enforced_inside(make_sandbox) -> None:  # type: ignore[no-untyped-def]
    sb = make_sandbox(memory_mib=256, disk_mib=128, vcpus=1)
    mem_kb = int(sb.commands.run("awk '/MemTotal/ {print $2}' /proc/meminfo").stdout)
    assert 200 * 1024 <= mem_kb <= 300 * 1024
    fill = sb.commands.run("dd if=/dev/zero of=/home/user/fill bs=1M count=200 2>&1; echo rc=$?")
    assert "No space left on device" in fill.stdout and "rc=1" in fill.stdout


def test_timeout_auto_stops_and_can_be_extended(make_sandbox) -> None:  # type: ignore[no-untyped-def]
    sb = make_sandbox(timeout=3)
    extended = sb.set_timeout(600)
    assert extended.timeout == 600 and extended.expires_at is not None
    time.sleep(4)  # past the original timeout: the extension must hold
    assert sb.get_info().state == "running"
    sb.set_timeout(1)
    assert wait_for_state(sb, "stopped") == "stopped"


def test_bad_input(sdk_env: ServerProcess) -> None:
    with pytest.raises(TemplateNotFound):
        Sandbox.create(template="no-such-template")
    with pytest.raises(InvalidRequest):
        Sandbox.create(vcpus=1000)
    with pytest.raises(SandboxNotFound):
        Sandbox.connect("sb-doesnotexist")
    with sdk_env.client() as http:
        r = http.post("/v1/sandboxes", json={"memory_mib": -5})
        assert r.status_code == 422 and r.json()["code"] == "validation_error"
        assert "memory_mib" in r.json()["message"]
        r = http.post("/v1/sandboxes/sb-nope/commands", json={"cmd": "true"})
        assert r.status_code == 404 and r.json()["code"] == "sandbox_not_found"
        r = http.post("/v1/sandboxes", json={"template": "base", "bogus": 1})
        assert r.status_code == 422


def test_auth(sdk_env: ServerProcess) -> None:
    r = httpx.get(f"{sdk_env.url}/v1/sandboxes")
    assert r.status_code == 401 and r.json()["code"] == "unauthenticated"
    r = httpx.get(f"{sdk_env.url}/v1/sandboxes", headers={"Authorization": "Bearer atl_x_wrong"})
    assert r.status_code == 401
    with pytest.raises(AuthenticationError):
        Sandbox.list(token="atl_x_wrong")
    assert httpx.get(f"{sdk_env.url}/healthz").status_code == 200


def test_tokens_scope_sandboxes(make_sandbox, sdk_env: ServerProcess) -> None:  # type: ignore[no-untyped-def]
    mine = make_sandbox()
    with sdk_env.client() as admin:
        created = admin.post("/v1/tokens", json={"name": "dev"}).json()
    user_token = created["token"]
    try:
        # a non-admin token neither sees nor reaches the admin's sandbox, nor manages tokens
        assert Sandbox.list(token=user_token) == []
        with pytest.raises(SandboxNotFound):
            Sandbox.connect(mine.id, token=user_token)
        r = httpx.get(f"{sdk_env.url}/v1/tokens", headers={"Authorization": f"Bearer {user_token}"})
        assert r.status_code == 403 and r.json()["code"] == "forbidden"
        own = Sandbox.create(token=user_token)
        try:
            assert [s.id for s in Sandbox.list(token=user_token)] == [own.id]
            assert own.commands.run("echo mine").stdout == "mine\n"
        finally:
            own.kill()
    finally:
        with sdk_env.client() as admin:
            assert admin.delete(f"/v1/tokens/{created['id']}").status_code == 204
    with pytest.raises(AuthenticationError):
        Sandbox.list(token=user_token)


def test_delete_is_final(make_sandbox) -> None:  # type: ignore[no-untyped-def]
    sb = make_sandbox()
    sid = sb.id
    assert sb.kill() is True
    with pytest.raises(SandboxNotFound):
        Sandbox.connect(sid)
    assert sb.kill() is False


def test_pause_freezes_processes_and_resume_continues(sb: Sandbox) -> None:
    sb.commands.run(
        "for i in $(seq 100000); do echo $i > /home/user/tick; sleep 0.1; done",
        background=True,
    )
    time.sleep(1)
    assert sb.pause().state == "paused"
    with pytest.raises(InvalidStateTransition):
        sb.pause()
    frozen = sb.get_info()  # reading the record does not resume it
    assert frozen.state == "paused"
    time.sleep(1.5)  # a running loop would tick ~15 times meanwhile
    # a call that needs the sandbox resumes it by itself (docs/lifecycle.md)
    at_resume = int(sb.files.read_text("/home/user/tick"))
    assert sb.get_info().state == "running"
    time.sleep(1)
    later = int(sb.files.read_text("/home/user/tick"))
    assert later > at_resume  # it goes on from where it was
    assert at_resume < 40  # ~1 s before the pause plus nothing while paused
    assert sb.pause().state == "paused"
    assert sb.resume().state == "running"  # the explicit verb still works
    with pytest.raises(InvalidStateTransition):
        sb.resume()
