"""The warm pool: pre-started sandboxes handed out on create, refilled behind."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from server_harness import ServerProcess

from atelier import Sandbox
from atelier.images.store import TemplateInfo
from conftest import new_server, shut_down

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def pooled_server(base_template: TemplateInfo) -> Iterator[ServerProcess]:
    srv = new_server(base_template, pool_size=2)
    srv.start()
    try:
        yield srv
    finally:
        shut_down(srv)


def wait_pool_ready(srv: ServerProcess, ready: int, deadline_s: float = 120) -> int:
    deadline = time.monotonic() + deadline_s
    with srv.client() as http:
        while True:
            now = http.get("/v1/info").json()["pool"]["ready"]
            if now >= ready or time.monotonic() > deadline:
                return int(now)
            time.sleep(0.2)


def pooled_ids(srv: ServerProcess) -> set[str]:
    return {p.name for p in (srv.data_dir / "sandboxes").iterdir()}


def test_create_claims_a_pooled_sandbox_and_the_pool_refills(pooled_server: ServerProcess) -> None:
    srv = pooled_server
    assert wait_pool_ready(srv, 2) == 2
    before = pooled_ids(srv)
    with srv.client() as http:
        assert http.get("/v1/sandboxes").json()["sandboxes"] == []  # pooled ones are hidden
    sb = Sandbox.create(
        api_url=srv.url, token=srv.token, env={"WHO": "claimer"}, labels={"k": "v"}, timeout=120
    )
    assert sb.id in before  # it was one of the pre-started sandboxes
    info = sb.get_info()
    assert (info.labels, info.env, info.timeout) == ({"k": "v"}, {"WHO": "claimer"}, 120)
    assert info.expires_at is not None
    assert sb.commands.run("echo $WHO").stdout == "claimer\n"
    assert [s.id for s in Sandbox.list(api_url=srv.url, token=srv.token)] == [sb.id]
    assert wait_pool_ready(srv, 2) == 2  # refilled behind the claim
    sb.kill()


def test_non_default_resources_boot_a_fresh_sandbox(pooled_server: ServerProcess) -> None:
    srv = pooled_server
    assert wait_pool_ready(srv, 2) == 2
    before = pooled_ids(srv)
    sb = Sandbox.create(api_url=srv.url, token=srv.token, memory_mib=256)
    assert sb.id not in before
    with srv.client() as http:
        assert http.get("/v1/info").json()["pool"]["ready"] == 2
    sb.kill()
