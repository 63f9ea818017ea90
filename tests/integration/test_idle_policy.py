"""The idle auto-stop policy against a real server (its idle loop running every
half second) and a real gVisor sandbox: left alone, it is paused, then
hibernated; the next call wakes it with its processes intact."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from server_harness import ServerProcess, new_server, shut_down

from atelier import Sandbox
from atelier.images.store import TemplateInfo
from atelier.sdk import AutoStop

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def idle_server(base_template: TemplateInfo) -> Iterator[ServerProcess]:
    srv = new_server(base_template, ATELIER_IDLE_CHECK_INTERVAL="0.5")
    srv.start()
    try:
        yield srv
    finally:
        shut_down(srv)


def _poll_state(sb: Sandbox, wanted: str, deadline_s: float = 180) -> list[str]:
    """The states seen until ``wanted`` (or the deadline): reading does not count as use."""
    seen = [sb.get_info().state]
    deadline = time.monotonic() + deadline_s
    while seen[-1] != wanted and time.monotonic() < deadline:
        time.sleep(0.25)
        state = sb.get_info().state
        if state != seen[-1]:
            seen.append(state)
    return seen


def test_an_idle_sandbox_is_paused_then_hibernated_and_wakes_on_use(
    idle_server: ServerProcess,
) -> None:
    options = {"api_url": idle_server.url, "token": idle_server.token}
    policy = AutoStop(pause_after=2, hibernate_after=6)
    with Sandbox.create(auto_stop=policy, **options) as sb:
        assert sb.info.auto_stop == policy
        handle = sb.commands.run("sleep 100000", background=True)
        seen = _poll_state(sb, "paused")
        assert seen[-1] == "paused", seen
        seen = _poll_state(sb, "hibernated")
        assert seen[-1] == "hibernated", seen
        result = sb.commands.run(f"kill -0 {handle.pid} && echo alive")
        assert result.stdout == "alive\n"
        assert sb.get_info().state == "running"
        with idle_server.client() as http:
            kinds = [e["kind"] for e in http.get(f"/v1/sandboxes/{sb.id}/events").json()["events"]]
        assert "auto_pause" in kinds and "auto_hibernate" in kinds and "auto_wake" in kinds
        assert sb.set_auto_stop(None).auto_stop is None
