"""Hibernate, wake, the idle policy, snapshots and fork in the SDK, sync and async:
the requests sent and the values returned."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from sdk_fakes import SANDBOX, URL, FakeApi, error

from atelier.errors import SnapshotInUse, SnapshotNotFound
from atelier.sdk import (
    AsyncSandbox,
    AsyncSnapshots,
    AutoStop,
    Sandbox,
    SandboxState,
    SnapshotInfo,
    Snapshots,
)

SB = "/v1/sandboxes/sb-1"
SNAPSHOT = {
    "id": "snap-1",
    "name": "deps",
    "sandbox_id": "sb-1",
    "template": "base",
    "template_version": 3,
    "runtime": "gvisor",
    "labels": {"v": "1"},
    "has_memory": True,
    "parent_id": None,
    "vcpus": 2,
    "memory_mib": 1024,
    "disk_mib": 2048,
    "size_bytes": 4096,
    "created_at": "2026-11-28T00:00:00Z",
}
POLICY = {"pause_after": 600.0, "hibernate_after": 3600.0, "delete_after": None}


def _echo_policy(request: httpx.Request) -> httpx.Response:
    policy = json.loads(request.content)
    shown = policy if any(v is not None for v in policy.values()) else None
    return httpx.Response(200, json={**SANDBOX, "auto_stop": shown})


def _fake() -> FakeApi:
    fake = FakeApi()
    fake.on("POST", "/v1/sandboxes", httpx.Response(201, json=SANDBOX))
    fake.on("GET", SB, httpx.Response(200, json=SANDBOX))
    fake.on("POST", f"{SB}/hibernate", httpx.Response(200, json={**SANDBOX, "state": "hibernated"}))
    fake.on("POST", f"{SB}/wake", httpx.Response(200, json=SANDBOX))
    fake.on("PUT", f"{SB}/auto-stop", _echo_policy)
    fake.on("POST", f"{SB}/snapshots", httpx.Response(201, json=SNAPSHOT))
    forks = [{**SANDBOX, "id": f"sb-f{i}", "snapshot_id": "snap-9"} for i in range(2)]
    fake.on("POST", f"{SB}/fork", httpx.Response(201, json={"sandboxes": forks}))
    fake.on("GET", "/v1/snapshots", httpx.Response(200, json={"snapshots": [SNAPSHOT]}))
    fake.on("GET", "/v1/snapshots/deps", httpx.Response(200, json=SNAPSHOT))
    fake.on(
        "DELETE",
        "/v1/snapshots/deps",
        error(409, "snapshot_in_use", "in use by sb-2"),
    )
    fake.on("GET", "/v1/snapshots/gone", error(404, "snapshot_not_found"))
    return fake


def _bodies(fake: FakeApi) -> list[tuple[str, str, Any]]:
    return [
        (r.method, r.url.path, json.loads(r.content) if r.content else None) for r in fake.requests
    ]


def _sync_session(fake: FakeApi) -> list[Any]:
    sb = Sandbox.connect("sb-1", transport=fake.transport)
    out: list[Any] = [
        sb.hibernate().state,
        sb.wake().state,
        sb.set_auto_stop(AutoStop(pause_after=600, hibernate_after=3600)).auto_stop,
        sb.set_auto_stop(None).auto_stop,
        sb.snapshot("deps", labels={"v": "1"}),
        sb.snapshot(memory=False).id,
    ]
    forks = sb.fork(2)
    out.append([(f.id, f.info.snapshot_id) for f in forks])
    for f in forks:
        f.close()
    sb.close()
    with Snapshots(transport=fake.transport) as snapshots:
        out.append(snapshots.list(labels={"v": "1"}))
        out.append(snapshots.get("deps").id)
        with pytest.raises(SnapshotInUse):
            snapshots.delete("deps")
        with pytest.raises(SnapshotNotFound):
            snapshots.get("gone")
    return out


async def _async_session(fake: FakeApi) -> list[Any]:
    sb = await AsyncSandbox.connect("sb-1", transport=fake.transport)
    out: list[Any] = [
        (await sb.hibernate()).state,
        (await sb.wake()).state,
        (await sb.set_auto_stop(AutoStop(pause_after=600, hibernate_after=3600))).auto_stop,
        (await sb.set_auto_stop(None)).auto_stop,
        await sb.snapshot("deps", labels={"v": "1"}),
        (await sb.snapshot(memory=False)).id,
    ]
    forks = await sb.fork(2)
    out.append([(f.id, f.info.snapshot_id) for f in forks])
    for f in forks:
        await f.close()
    await sb.close()
    async with AsyncSnapshots(transport=fake.transport) as snapshots:
        out.append(await snapshots.list(labels={"v": "1"}))
        out.append((await snapshots.get("deps")).id)
        with pytest.raises(SnapshotInUse):
            await snapshots.delete("deps")
        with pytest.raises(SnapshotNotFound):
            await snapshots.get("gone")
    return out


async def test_sync_and_async_send_the_same_requests_and_return_the_same() -> None:
    sync_fake, async_fake = _fake(), _fake()
    sync_out = _sync_session(sync_fake)
    async_out = await _async_session(async_fake)
    assert sync_out == async_out
    assert _bodies(sync_fake) == _bodies(async_fake)
    bodies = _bodies(sync_fake)
    assert bodies[1:5] == [
        ("POST", f"{SB}/hibernate", None),
        ("POST", f"{SB}/wake", None),
        ("PUT", f"{SB}/auto-stop", POLICY),
        ("PUT", f"{SB}/auto-stop", {k: None for k in POLICY}),
    ]
    assert bodies[5:8] == [
        ("POST", f"{SB}/snapshots", {"name": "deps", "labels": {"v": "1"}, "memory": None}),
        ("POST", f"{SB}/snapshots", {"name": None, "labels": {}, "memory": False}),
        ("POST", f"{SB}/fork", {"count": 2}),
    ]
    assert sync_fake.requests[8].url.params.get_list("label") == ["v=1"]
    hibernated, woken, policy, cleared, snap, _plain, forks, listed, got = sync_out
    assert (hibernated, woken) == (SandboxState.HIBERNATED, "running")
    assert policy == AutoStop(pause_after=600, hibernate_after=3600)
    assert cleared is None
    assert isinstance(snap, SnapshotInfo)
    assert (snap.name, snap.has_memory, snap.size_bytes, snap.vcpus) == ("deps", True, 4096, 2)
    assert snap.created_at is not None and snap.created_at.tzinfo is not None
    assert forks == [("sb-f0", "snap-9"), ("sb-f1", "snap-9")]
    assert listed == [snap] and got == "snap-1"


def test_create_from_a_snapshot_leaves_template_and_default_shape_to_it() -> None:
    fake = _fake()
    policy = AutoStop(pause_after=60, delete_after=86400)
    Sandbox.create(snapshot="deps", auto_stop=policy, transport=fake.transport).close()
    body = json.loads(fake.last.content)
    assert "template" not in body and "vcpus" not in body and "memory_mib" not in body
    assert body["snapshot"] == "deps"
    assert body["auto_stop"] == {"pause_after": 60, "hibernate_after": None, "delete_after": 86400}
    Sandbox.create(snapshot="deps", vcpus=4, transport=fake.transport).close()
    body = json.loads(fake.last.content)
    assert body["vcpus"] == 4 and "memory_mib" not in body
    Sandbox.create(auto_stop=policy, transport=fake.transport).close()
    body = json.loads(fake.last.content)
    assert body["template"] == "base" and body["vcpus"] == 1 and "snapshot" not in body


def test_snapshot_and_repo_cannot_be_combined() -> None:
    from atelier.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match="snapshot= and repo="):
        Sandbox.create(snapshot="deps", repo="https://h/r.git", transport=_fake().transport)


def test_sandbox_info_reads_the_policy_and_origin() -> None:
    from atelier.sdk import SandboxInfo

    info = SandboxInfo.from_json({**SANDBOX, "auto_stop": POLICY, "snapshot_id": "snap-1"})
    assert info.auto_stop == AutoStop(pause_after=600, hibernate_after=3600)
    assert info.snapshot_id == "snap-1"
    assert SandboxInfo.from_json(SANDBOX).auto_stop is None
    assert URL.startswith("http")
