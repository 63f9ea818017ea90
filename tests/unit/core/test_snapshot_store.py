"""Snapshots in the control plane (core/snapshots.py): the store on disk, names,
sandboxes made from them, the in-use rules, fork, and the errors -- on the
host-process runtime with faked snapshots (tests/unit/fakes.py)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from lifecycle_harness import HibernatingRuntime, ProcessRuntime, harness

from atelier.core.auth import Principal
from atelier.core.models import CreateRequest, SandboxRecord


def _dir(tmp_path: Path, snapshot_id: str) -> Path:
    return tmp_path / "data" / "snapshots" / snapshot_id


async def test_snapshot_is_stored_sized_and_found_by_id_or_name(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        sid = (await h.create(labels={"team": "a"}, env={"K": "V"}))["id"]
        r = await h.http.post(
            f"/v1/sandboxes/{sid}/snapshots", json={"name": "base-1", "labels": {"v": "1"}}
        )
        assert r.status_code == 201, r.text
        snap = r.json()
        assert snap["id"].startswith("snap-") and snap["name"] == "base-1"
        assert snap["has_memory"] is True  # memory: null and the runtime can
        assert snap["sandbox_id"] == sid and snap["template"] == "base"
        assert snap["size_bytes"] >= 8192  # the fake's memory image
        on_disk = _dir(tmp_path, snap["id"])
        assert (on_disk / "layer" / "marker").read_text() == sid
        assert not list(on_disk.parent.glob(".tmp-*"))
        assert await h.state(sid) == "running"  # it kept running
        assert (await h.exec(sid, "true")).status_code == 200  # agent reconnected
        for ref in (snap["id"], "base-1"):
            r = await h.http.get(f"/v1/snapshots/{ref}")
            assert r.status_code == 200 and r.json()["id"] == snap["id"]
        r = await h.http.get("/v1/snapshots", params={"label": "v=1"})
        assert [s["id"] for s in r.json()["snapshots"]] == [snap["id"]]
        r = await h.http.get("/v1/snapshots", params={"label": "v=2"})
        assert r.json()["snapshots"] == []
        assert "snapshot" in await h.events(sid)


async def test_names_are_unique_and_checked(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        sid = (await h.create())["id"]
        url = f"/v1/sandboxes/{sid}/snapshots"
        assert (await h.http.post(url, json={"name": "x"})).status_code == 201
        r = await h.http.post(url, json={"name": "x"})
        assert r.status_code == 409 and r.json()["code"] == "conflict"
        for bad in ("snap-1", "a b", "-x"):
            r = await h.http.post(url, json={"name": bad})
            assert r.status_code == 400 and r.json()["code"] == "invalid_request", bad
        # nothing half-made: one row, one directory
        assert len((await h.http.get("/v1/snapshots")).json()["snapshots"]) == 1
        assert len(list((tmp_path / "data" / "snapshots").iterdir())) == 1


async def test_memory_false_and_refused_memory_save_files_only(tmp_path: Path) -> None:
    async with harness(tmp_path, HibernatingRuntime(tmp_path / "rt", memory=False)) as h:
        sid = (await h.create())["id"]
        url = f"/v1/sandboxes/{sid}/snapshots"
        r = await h.http.post(url, json={})
        assert r.status_code == 201 and r.json()["has_memory"] is False
        r = await h.http.post(url, json={"memory": True})  # asked for explicitly: an error
        assert r.status_code == 400
        r = await h.http.post(url, json={"memory": False})
        assert r.status_code == 201 and r.json()["has_memory"] is False


async def test_a_failed_snapshot_leaves_nothing(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        sid = (await h.create())["id"]
        h.runtime.fail_on.add("snapshot")
        r = await h.http.post(f"/v1/sandboxes/{sid}/snapshots", json={"name": "n"})
        assert r.status_code == 500 and r.json()["code"] == "runtime_error"
        assert (await h.http.get("/v1/snapshots")).json()["snapshots"] == []
        assert list((tmp_path / "data" / "snapshots").iterdir()) == []
        h.runtime.fail_on.clear()
        r = await h.http.post(f"/v1/sandboxes/{sid}/snapshots", json={"name": "n"})
        assert r.status_code == 201  # the name was not kept


async def test_sandboxes_from_a_snapshot_stack_its_layers_and_keep_it(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        src = (await h.create(vcpus=2, memory_mib=1024, env={"K": "V"}))["id"]
        parent = (await h.http.post(f"/v1/sandboxes/{src}/snapshots", json={"name": "p"})).json()
        child_sb = await h.create(snapshot="p")
        assert child_sb["template"] == "base" and child_sb["snapshot_id"] == parent["id"]
        assert (child_sb["vcpus"], child_sb["memory_mib"]) == (2, 1024)  # the snapshot's
        assert child_sb["env"] == {"K": "V"}
        assert h.runtime.layers[child_sb["id"]] == (_dir(tmp_path, parent["id"]) / "layer",)
        r = await h.exec(child_sb["id"], "echo ok")  # renamed and usable
        assert r.status_code == 200
        url = f"/v1/sandboxes/{child_sb['id']}/snapshots"
        child = (await h.http.post(url, json={"name": "c"})).json()
        assert child["parent_id"] == parent["id"]
        # a memory image restores only into a machine of its own shape
        r = await h.http.post("/v1/sandboxes", json={"snapshot": child["id"], "vcpus": 1})
        assert r.status_code == 400 and "2 vcpus" in r.json()["message"]
        grand = await h.create(snapshot=child["id"])
        assert grand["vcpus"] == 2
        assert h.runtime.layers[grand["id"]] == (
            _dir(tmp_path, child["id"]) / "layer",
            _dir(tmp_path, parent["id"]) / "layer",
        )
        # in use: by the sandbox made from it and by the child snapshot
        r = await h.http.delete("/v1/snapshots/p")
        assert r.status_code == 409 and r.json()["code"] == "snapshot_in_use"
        assert set(r.json()["details"]["users"]) == {child_sb["id"], child["id"]}
        await h.http.delete(f"/v1/sandboxes/{grand['id']}")
        assert (await h.http.delete("/v1/snapshots/c")).status_code == 204
        assert not _dir(tmp_path, child["id"]).exists()
        r = await h.http.delete("/v1/snapshots/p")
        assert r.json()["details"]["users"] == [child_sb["id"]]
        await h.http.delete(f"/v1/sandboxes/{child_sb['id']}")
        assert (await h.http.delete("/v1/snapshots/p")).status_code == 204
        assert not _dir(tmp_path, parent["id"]).exists()
        r = await h.http.get("/v1/snapshots/p")
        assert r.status_code == 404 and r.json()["code"] == "snapshot_not_found"


async def test_bad_creates_from_snapshots_are_refused_before_anything_exists(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path) as h:
        src = (await h.create(disk_mib=4096))["id"]
        await h.http.post(f"/v1/sandboxes/{src}/snapshots", json={"name": "s"})
        before = set(await h.runtime.list_ids())
        r = await h.http.post("/v1/sandboxes", json={"snapshot": "nope"})
        assert r.status_code == 404 and r.json()["code"] == "snapshot_not_found"
        r = await h.http.post("/v1/sandboxes", json={"snapshot": "s", "template": "other"})
        assert r.status_code == 400 and "template" in r.json()["message"]
        r = await h.http.post("/v1/sandboxes", json={"snapshot": "s", "disk_mib": 1024})
        assert r.status_code == 400 and "disk_mib" in r.json()["message"]
        r = await h.http.post("/v1/sandboxes", json={"snapshot": "s", "runtime": "qemu"})
        assert r.status_code == 400
        h.runtime.fail_on.add("start")
        r = await h.http.post("/v1/sandboxes", json={"snapshot": "s"})
        assert r.status_code == 500
        assert set(await h.runtime.list_ids()) == before
        h.runtime.fail_on.clear()
        assert (await h.http.delete("/v1/snapshots/s")).status_code == 204  # no user left


async def test_snapshots_are_private_to_their_owner(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        sid = (await h.create())["id"]
        snap = (await h.http.post(f"/v1/sandboxes/{sid}/snapshots", json={"name": "mine"})).json()
        tokens = h.ctx.tokens
        _, secret = await tokens.create("bob", admin=False)
        bob = {"Authorization": f"Bearer {secret}"}
        for ref in (snap["id"], "mine"):
            r = await h.http.get(f"/v1/snapshots/{ref}", headers=bob)
            assert r.status_code == 404
        assert (await h.http.get("/v1/snapshots", headers=bob)).json()["snapshots"] == []
        r = await h.http.post("/v1/sandboxes", json={"snapshot": "mine"}, headers=bob)
        assert r.status_code == 404


async def test_fork_makes_independent_copies_from_a_hidden_snapshot(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        src = (await h.create(labels={"app": "x"}, auto_stop={"pause_after": 60}))["id"]
        r = await h.http.post(f"/v1/sandboxes/{src}/fork", json={"count": 2})
        assert r.status_code == 201, r.text
        forks = r.json()["sandboxes"]
        assert len(forks) == 2 and len({f["id"] for f in forks}) == 2
        for fork in forks:
            assert fork["labels"] == {"app": "x", "atelier.fork": src}
            assert fork["auto_stop"]["pause_after"] == 60
            assert (await h.exec(fork["id"], "true")).status_code == 200
        assert (await h.http.get("/v1/snapshots")).json()["snapshots"] == []  # internal
        snap_id = forks[0]["snapshot_id"]
        assert _dir(tmp_path, snap_id).is_dir()
        await h.http.delete(f"/v1/sandboxes/{src}")  # the forks do not need their parent
        assert (await h.exec(forks[1]["id"], "true")).status_code == 200
        service = h.ctx.snapshots
        assert await service.collect_garbage() == []  # still used by the forks
        for fork in forks:
            await h.http.delete(f"/v1/sandboxes/{fork['id']}")
        assert await service.collect_garbage() == [snap_id]
        assert not _dir(tmp_path, snap_id).exists()


async def test_the_collector_leaves_a_fork_in_progress_alone(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        src = (await h.create())["id"]
        service, sandboxes = h.ctx.snapshots, h.ctx.sandboxes
        original = sandboxes.create_unpooled
        collected: list[list[str]] = []

        async def collect_first(principal: Principal, req: CreateRequest) -> SandboxRecord:
            collected.append(await service.collect_garbage())  # the idle loop's pass
            return await original(principal, req)

        sandboxes.create_unpooled = collect_first  # type: ignore[method-assign]
        r = await h.http.post(f"/v1/sandboxes/{src}/fork", json={"count": 2})
        assert r.status_code == 201, r.text
        assert collected == [[], []]


async def test_a_failed_fork_creates_nothing(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        src = (await h.create())["id"]
        before = set(await h.runtime.list_ids())
        starts = 0
        original = h.runtime.start

        async def second_start_fails(sandbox_id: str) -> None:
            nonlocal starts
            starts += 1
            if starts == 2:
                raise RuntimeError("boom")
            await original(sandbox_id)

        h.runtime.start = second_start_fails  # type: ignore[method-assign]
        r = await h.http.post(f"/v1/sandboxes/{src}/fork", json={"count": 3})
        assert r.status_code == 500
        assert set(await h.runtime.list_ids()) == before
        listed = (await h.http.get("/v1/sandboxes")).json()["sandboxes"]
        assert [s["id"] for s in listed] == [src]
        assert list((tmp_path / "data" / "snapshots").iterdir()) == []
        r = await h.http.post(f"/v1/sandboxes/{src}/fork", json={"count": 0})
        assert r.status_code == 422


async def test_runtimes_without_snapshots_refuse_clearly(tmp_path: Path) -> None:
    async with harness(tmp_path, ProcessRuntime(tmp_path / "plain")) as h:
        sid = (await h.create())["id"]
        for url, body in (
            (f"/v1/sandboxes/{sid}/snapshots", {}),
            (f"/v1/sandboxes/{sid}/fork", {"count": 1}),
        ):
            r = await h.http.post(url, json=body)
            assert r.status_code == 400 and "cannot snapshot" in r.json()["message"]


async def test_a_snapshot_pins_its_template_version(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        sid = (await h.create())["id"]
        snap = (await h.http.post(f"/v1/sandboxes/{sid}/snapshots", json={})).json()
        await h.http.delete(f"/v1/sandboxes/{sid}")
        users, _versions = await h.ctx.repo.template_usage("base")
        assert users == [snap["id"]]


async def test_recovery_drops_interrupted_captures(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        sid = (await h.create())["id"]
        snap = (await h.http.post(f"/v1/sandboxes/{sid}/snapshots", json={})).json()
        service = h.ctx.snapshots
        ready = await service.repo.get(snap["id"])
        assert ready is not None
        # a crash mid-capture: the row still "creating", its data half-written
        half = replace(ready, id="snap-dead", name="half", state="creating")
        await service.repo.add(half)
        stray = service.root / ".tmp-snap-dead"
        stray.mkdir()
        await service.recover()
        assert not stray.exists()
        assert await service.repo.get("snap-dead") is None
        assert service.path(snap["id"]).is_dir()
        assert await service.repo.get(snap["id"]) == ready
