"""Snapshots and fork against a real server and real gVisor sandboxes: files in a
sandbox made from a snapshot, a process restored from a memory snapshot, forks
that diverge and outlive their parent, and the ``snapshot_in_use`` refusal."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
from server_harness import ServerProcess

from atelier import Sandbox
from atelier.errors import SnapshotInUse, SnapshotNotFound
from atelier.sdk import Snapshots
from conftest import MakeSandbox

pytestmark = pytest.mark.integration


@pytest.fixture
def snapshots(sdk_env: ServerProcess) -> Iterator[Snapshots]:
    with Snapshots() as client:
        yield client


def _cleanup(snapshots: Snapshots, made: list[Sandbox], snapshot_ids: list[str]) -> None:
    for sb in made:
        sb.kill()
        sb.close()
    for ref in reversed(snapshot_ids):
        with contextlib.suppress(SnapshotNotFound):
            snapshots.delete(ref)


def test_a_sandbox_from_a_snapshot_has_its_files_and_the_snapshot_is_kept(
    make_sandbox: MakeSandbox, snapshots: Snapshots
) -> None:
    src = make_sandbox()
    src.files.write("/home/user/state.txt", "before the snapshot")
    src.commands.run("mkdir -p /home/user/dir && echo x > /home/user/dir/f")
    assert src.files.exists("/etc/motd")
    src.commands.run("rm /etc/motd", user="root")
    snap = src.snapshot("files-only", labels={"kind": "test"}, memory=False)
    made: list[Sandbox] = []
    try:
        assert (snap.has_memory, snap.name, snap.sandbox_id) == (False, "files-only", src.id)
        assert snap.size_bytes > 0
        assert [s.id for s in snapshots.list(labels={"kind": "test"})] == [snap.id]
        src.files.write("/home/user/state.txt", "after the snapshot")  # not in it
        clone = Sandbox.create(snapshot="files-only")
        made.append(clone)
        assert clone.info.snapshot_id == snap.id
        assert clone.files.read_text("/home/user/state.txt") == "before the snapshot"
        assert clone.files.read_text("/home/user/dir/f") == "x\n"
        assert not clone.files.exists("/etc/motd")  # deletions are kept too
        assert clone.commands.run("hostname").stdout.strip() == clone.id  # booted afresh
        with pytest.raises(SnapshotInUse) as refused:
            snapshots.delete("files-only")
        assert refused.value.details is not None
        assert refused.value.details["users"] == [clone.id]
        clone.files.write("/home/user/state.txt", "the clone's own")
        assert src.files.read_text("/home/user/state.txt") == "after the snapshot"
    finally:
        _cleanup(snapshots, made, [snap.id])
    with pytest.raises(SnapshotNotFound):
        snapshots.get(snap.id)


def test_a_memory_snapshot_restores_running_processes(
    make_sandbox: MakeSandbox, snapshots: Snapshots
) -> None:
    src = make_sandbox()
    pid = src.commands.run("sleep 100000", background=True).pid
    snap = src.snapshot("with-memory")
    made: list[Sandbox] = []
    try:
        assert snap.has_memory
        clone = Sandbox.create(snapshot=snap.id)
        made.append(clone)
        assert clone.commands.run(f"kill -0 {pid} && echo running").stdout == "running\n"
        assert clone.files.read_text("/etc/hostname") == clone.id + "\n"
    finally:
        _cleanup(snapshots, made, [snap.id])


def test_forks_diverge_and_survive_their_parent(
    make_sandbox: MakeSandbox, snapshots: Snapshots
) -> None:
    parent = make_sandbox()
    parent.files.write("/home/user/shared.txt", "from the parent")
    forks = parent.fork(2)
    try:
        assert len({f.id for f in forks} | {parent.id}) == 3
        for i, fork in enumerate(forks):
            fork.files.write("/home/user/own.txt", f"fork {i}")
        for i, fork in enumerate(forks):
            assert fork.files.read_text("/home/user/shared.txt") == "from the parent"
            assert fork.files.read_text("/home/user/own.txt") == f"fork {i}"
        assert not parent.files.exists("/home/user/own.txt")
        parent.kill()
        for i, fork in enumerate(forks):
            assert fork.commands.run("cat /home/user/own.txt").stdout == f"fork {i}"
        assert snapshots.list() == []  # a fork's snapshot is internal
    finally:
        _cleanup(snapshots, forks, [])
