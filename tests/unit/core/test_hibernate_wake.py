"""Hibernate and wake in the control plane: the state machine, explicit verbs,
auto-wake on use (one wake for concurrent callers), failures and recovery --
on the host-process runtime with faked hibernation (tests/unit/fakes.py)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from lifecycle_harness import ProcessRuntime, harness

from atelier.core.models import SandboxState, check_transition
from atelier.core.reconciler import Reconciler
from atelier.errors import InvalidStateTransition

S = SandboxState


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (S.RUNNING, S.HIBERNATED),
        (S.PAUSED, S.HIBERNATED),
        (S.HIBERNATED, S.RUNNING),
        (S.HIBERNATED, S.STOPPING),
        (S.HIBERNATED, S.DELETED),
    ],
)
def test_hibernation_transitions_are_legal(current: SandboxState, target: SandboxState) -> None:
    check_transition("sb-1", current, target)


@pytest.mark.parametrize(
    ("current", "target"),
    [(S.STOPPED, S.HIBERNATED), (S.HIBERNATED, S.PAUSED), (S.CREATING, S.HIBERNATED)],
)
def test_illegal_hibernation_moves_are_409(current: SandboxState, target: SandboxState) -> None:
    with pytest.raises(InvalidStateTransition):
        check_transition("sb-1", current, target)


def _stdout(text: str) -> str:
    events = [json.loads(line) for line in text.splitlines()]
    return "".join(e["data"] for e in events if e["type"] == "stdout")


async def test_exec_wakes_a_hibernated_sandbox_and_keeps_its_processes(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        sid = (await h.create())["id"]
        r = await h.http.post(f"/v1/sandboxes/{sid}/hibernate")
        assert r.status_code == 200, r.text
        assert r.json()["state"] == "hibernated"
        assert sid in h.runtime.hibernated
        r = await h.exec(sid, "echo $((6*7))")
        assert r.status_code == 200, r.text
        assert _stdout(r.text) == "42\n"
        assert await h.state(sid) == "running"
        assert h.runtime.calls.count(("wake", sid)) == 1
        kinds = await h.events(sid)
        assert kinds[-2:] == ["hibernate", "auto_wake"]


async def test_concurrent_callers_share_one_wake(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        sid = (await h.create())["id"]
        await h.http.post(f"/v1/sandboxes/{sid}/hibernate")
        h.runtime.wake_delay = 0.3  # every caller arrives while the wake runs
        results = await asyncio.gather(*(h.exec(sid, f"echo {i}") for i in range(5)))
        assert [_stdout(r.text) for r in results] == [f"{i}\n" for i in range(5)]
        assert h.runtime.calls.count(("wake", sid)) == 1


async def test_exec_resumes_a_paused_sandbox(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        sid = (await h.create())["id"]
        r = await h.http.post(f"/v1/sandboxes/{sid}/pause")
        assert r.json()["state"] == "paused"
        r = await h.http.get(f"/v1/sandboxes/{sid}/files/exists", params={"path": "/"})
        assert r.status_code == 200, r.text
        assert await h.state(sid) == "running"
        assert ("resume", sid) in h.runtime.calls
        assert "auto_resume" in await h.events(sid)


async def test_explicit_wake_start_and_resume_all_wake(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        sid = (await h.create())["id"]
        for verb in ("wake", "start", "resume"):
            await h.http.post(f"/v1/sandboxes/{sid}/hibernate")
            r = await h.http.post(f"/v1/sandboxes/{sid}/{verb}")
            assert r.status_code == 200, (verb, r.text)
            assert r.json()["state"] == "running"
        assert h.runtime.calls.count(("wake", sid)) == 3
        r = await h.http.post(f"/v1/sandboxes/{sid}/wake")  # running: as is
        assert r.status_code == 200 and r.json()["state"] == "running"
        assert h.runtime.calls.count(("wake", sid)) == 3


async def test_a_hibernated_sandbox_stops_and_deletes(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        sid = (await h.create())["id"]
        await h.http.post(f"/v1/sandboxes/{sid}/hibernate")
        r = await h.http.post(f"/v1/sandboxes/{sid}/pause")
        assert r.status_code == 409 and r.json()["code"] == "invalid_state"
        r = await h.http.post(f"/v1/sandboxes/{sid}/stop")
        assert r.json()["state"] == "stopped"
        assert sid not in h.runtime.hibernated
        r = await h.http.post(f"/v1/sandboxes/{sid}/hibernate")
        assert r.status_code == 409 and r.json()["code"] == "invalid_state"
        r = await h.exec(sid, "true")  # stopped sandboxes are not started by a call
        assert r.status_code == 409 and "start it first" in r.json()["message"]
        sid2 = (await h.create())["id"]
        await h.http.post(f"/v1/sandboxes/{sid2}/hibernate")
        assert (await h.http.delete(f"/v1/sandboxes/{sid2}")).status_code == 204
        assert ("destroy", sid2) in h.runtime.calls


async def test_failed_hibernate_leaves_the_sandbox_as_the_runtime_has_it(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        sid = (await h.create())["id"]
        h.runtime.fail_on.add("hibernate")
        r = await h.http.post(f"/v1/sandboxes/{sid}/hibernate")
        assert r.status_code == 500 and r.json()["code"] == "runtime_error"
        assert await h.state(sid) == "running"
        r = await h.exec(sid, "echo still")
        assert _stdout(r.text) == "still\n"


async def test_failed_wake_keeps_the_state_the_runtime_reports(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        sid = (await h.create())["id"]
        await h.http.post(f"/v1/sandboxes/{sid}/hibernate")
        h.runtime.fail_on.add("wake")
        r = await h.exec(sid, "true")
        assert r.status_code == 500 and r.json()["code"] == "runtime_error"
        # the fake still holds the image: the runtime's word (hibernated) stands
        assert await h.state(sid) == "hibernated"
        h.runtime.fail_on.clear()
        r = await h.exec(sid, "echo back")
        assert _stdout(r.text) == "back\n"


async def test_a_runtime_without_hibernation_refuses_with_400(tmp_path: Path) -> None:
    async with harness(tmp_path, ProcessRuntime(tmp_path / "plain")) as h:
        sid = (await h.create())["id"]
        r = await h.http.post(f"/v1/sandboxes/{sid}/hibernate")
        assert r.status_code == 400 and r.json()["code"] == "invalid_request"
        assert "cannot hibernate" in r.json()["message"]
        assert await h.state(sid) == "running"


async def test_recovery_keeps_hibernated_sandboxes_and_settles_half_done_ones(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path) as h:
        service = h.ctx.sandboxes
        kept = (await h.create())["id"]
        await h.http.post(f"/v1/sandboxes/{kept}/hibernate")
        crashed = (await h.create())["id"]
        # a crash after the runtime hibernated it but before the row said so
        await h.runtime.hibernate(crashed)
        await Reconciler(service).recover()
        assert await h.state(kept) == "hibernated"
        assert await h.state(crashed) == "hibernated"
        assert kept in await h.runtime.list_ids()
