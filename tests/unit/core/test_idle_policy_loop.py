"""The idle auto-stop policy (core/idle.py): validation, activity tracking, and
the loop's pause → hibernate → delete steps driven by an injected clock."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from lifecycle_harness import Harness, ProcessRuntime, harness

from atelier.core.idle import ActivityTracker, IdlePolicy, validate_auto_stop
from atelier.core.models import AutoStop
from atelier.errors import InvalidRequest
from atelier.store.repository import utcnow

POLICY = {"pause_after": 60, "hibernate_after": 120, "delete_after": 600}


class Clock:
    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def _setup(h: Harness) -> tuple[Clock, IdlePolicy]:
    clock = Clock()
    h.ctx.sandboxes.activity.clock = clock
    return clock, IdlePolicy(h.ctx.sandboxes, interval=3600)


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        (AutoStop(pause_after=60, hibernate_after=60), "hibernate_after (60 s) must be longer"),
        (AutoStop(pause_after=600, delete_after=60), "delete_after (60 s) must be longer"),
        (AutoStop(hibernate_after=120, delete_after=100), "delete_after"),
        (AutoStop(pause_after=-1), "positive"),
    ],
)
def test_inconsistent_policies_are_refused(policy: AutoStop, message: str) -> None:
    with pytest.raises(InvalidRequest, match=re.escape(message)):
        validate_auto_stop(policy)


def test_an_empty_policy_is_none_and_a_partial_one_is_kept() -> None:
    assert validate_auto_stop(AutoStop()) is None
    assert validate_auto_stop(AutoStop(delete_after=5)) == AutoStop(delete_after=5)


def test_attached_sessions_nest_and_count_as_activity() -> None:
    clock = Clock()
    tracker = ActivityTracker(clock)
    with tracker.attached("sb-1"):
        with tracker.attached("sb-1"):
            assert tracker.busy("sb-1")
        assert tracker.busy("sb-1")
        clock.advance(30)
    assert not tracker.busy("sb-1")
    assert tracker.last("sb-1") == clock.now  # touched when the session ended


async def test_idle_sandboxes_pause_then_hibernate_then_go(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        clock, loop = _setup(h)
        sid = (await h.create(auto_stop=POLICY))["id"]
        r = await h.http.get(f"/v1/sandboxes/{sid}")
        assert r.json()["auto_stop"] == {k: float(v) for k, v in POLICY.items()}
        steps: list[tuple[float, str]] = [
            (30, "running"), (31, "paused"), (61, "hibernated"), (480, "deleted")
        ]  # fmt: skip
        for seconds, expected in steps:
            clock.advance(seconds)
            await loop.tick()
            r = await h.http.get(f"/v1/sandboxes/{sid}")
            state = "deleted" if r.status_code == 404 else r.json()["state"]
            assert state == expected, seconds
        events = await h.ctx.repo.events(sid)
        kinds = [e["kind"] for e in events]
        assert kinds[-4:] == ["auto_pause", "auto_hibernate", "delete", "auto_delete"]
        assert events[-1]["actor"] == "system" and events[-1]["idle_seconds"] >= 600


async def test_use_and_open_sessions_keep_a_sandbox_awake(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        clock, loop = _setup(h)
        sid = (await h.create(auto_stop=POLICY))["id"]
        clock.advance(50)
        assert (await h.exec(sid, "true")).status_code == 200  # idle again from here
        clock.advance(50)
        await loop.tick()
        assert await h.state(sid) == "running"
        with h.ctx.sandboxes.activity.attached(sid):  # e.g. an open terminal
            clock.advance(10_000)
            await loop.tick()
            assert await h.state(sid) == "running"
        clock.advance(61)
        await loop.tick()
        assert await h.state(sid) == "paused"
        assert (await h.exec(sid, "true")).status_code == 200  # invisible to the caller
        assert await h.state(sid) == "running"


async def test_a_held_stream_counts_until_it_ends_and_is_closed() -> None:
    tracker = ActivityTracker(Clock())
    seen: list[bool] = []
    closed: list[bool] = []

    async def events() -> AsyncIterator[int]:
        try:
            for i in range(3):
                yield i
        finally:
            closed.append(True)

    held = tracker.hold("sb-1", events())
    async for _ in held:
        seen.append(tracker.busy("sb-1"))
        break  # the client went away mid-stream
    assert seen == [True]
    await held.aclose()  # type: ignore[attr-defined]
    assert closed == [True]
    assert not tracker.busy("sb-1")


async def test_policy_changes_and_validation_over_http(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        sid = (await h.create())["id"]
        assert (await h.http.get(f"/v1/sandboxes/{sid}")).json()["auto_stop"] is None
        r = await h.http.put(f"/v1/sandboxes/{sid}/auto-stop", json={"hibernate_after": 90})
        assert r.status_code == 200, r.text
        assert r.json()["auto_stop"]["hibernate_after"] == 90
        r = await h.http.put(
            f"/v1/sandboxes/{sid}/auto-stop", json={"pause_after": 90, "hibernate_after": 30}
        )
        assert r.status_code == 400 and r.json()["code"] == "invalid_request"
        r = await h.http.put(f"/v1/sandboxes/{sid}/auto-stop", json={"pause_after": 0})
        assert r.status_code == 422
        r = await h.http.put(f"/v1/sandboxes/{sid}/auto-stop", json={})
        assert r.status_code == 200 and r.json()["auto_stop"] is None
        r = await h.http.post(
            "/v1/sandboxes", json={"auto_stop": {"pause_after": 10, "delete_after": 5}}
        )
        assert r.status_code == 400
        assert len((await h.http.get("/v1/sandboxes")).json()["sandboxes"]) == 1


async def test_the_server_default_policy_applies_to_new_sandboxes(tmp_path: Path) -> None:
    async with harness(tmp_path, auto_stop_pause_after=30) as h:
        sandbox = await h.create()
        assert sandbox["auto_stop"] == {
            "pause_after": 30.0,
            "hibernate_after": None,
            "delete_after": None,
        }
        own = await h.create(auto_stop={"delete_after": 99})
        assert own["auto_stop"]["pause_after"] is None


async def test_last_activity_survives_a_restart_of_the_tracker(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        clock, loop = _setup(h)
        sid = (await h.create(auto_stop=POLICY))["id"]
        clock.advance(100)
        await h.exec(sid, "true")
        used_at = clock.now
        await loop.tick()  # saves last_active_at (over a minute newer than the row's)
        rec = await h.ctx.repo.get_sandbox(sid)
        assert rec.last_active_at == used_at
        fresh = ActivityTracker(clock)  # as after a server restart
        h.ctx.sandboxes.activity = fresh
        clock.advance(59)
        await loop.tick()
        assert await h.state(sid) == "running"
        clock.advance(2)
        await loop.tick()
        assert await h.state(sid) == "paused"


async def test_steps_the_runtime_cannot_do_are_skipped(tmp_path: Path) -> None:
    async with harness(tmp_path, ProcessRuntime(tmp_path / "plain")) as h:
        clock, loop = _setup(h)
        sid = (await h.create(auto_stop={"pause_after": 5, "hibernate_after": 10}))["id"]
        clock.advance(60)
        await loop.tick()
        assert await h.state(sid) == "running"  # no PAUSE / HIBERNATE here: nothing to do
        assert "auto_pause" not in [e["kind"] for e in await h.ctx.repo.events(sid)]
