"""Pure parts of gVisor hibernate/snapshots: markers, layers, metadata, freezer files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from atelier.errors import InvalidRequest, RuntimeFailure
from atelier.network import NetworkPolicy
from atelier.runtimes.base import SandboxSpec
from atelier.runtimes.common import spec_from_json, spec_to_json
from atelier.runtimes.gvisor import checkpoint, freezer, layers
from atelier.runtimes.gvisor import hibernate as hib
from atelier.runtimes.gvisor.files import SandboxFiles
from atelier.runtimes.gvisor.proc import CommandResult


def test_spec_json_keeps_layers() -> None:
    spec = SandboxSpec("s1", "t", Path("/r"), layers=(Path("/a/layer"), Path("/b/layer")))
    assert spec_from_json(json.loads(json.dumps(spec_to_json(spec)))) == spec
    old = spec_to_json(SandboxSpec("s1", "t", Path("/r")))
    del old["layers"]  # a spec saved before layers existed
    assert spec_from_json(old).layers == ()


def test_overlay_options_stack_layers_topmost_first(tmp_path: Path) -> None:
    paths = layers.LayerPaths.of(tmp_path / "sb")
    opts = layers.overlay_options(paths, [Path("/s/2/layer"), Path("/s/1/layer"), Path("/rootfs")])
    assert opts.startswith("lowerdir=/s/2/layer:/s/1/layer:/rootfs,upperdir=")
    with pytest.raises(RuntimeFailure, match="too deep"):
        layers.overlay_options(paths, [Path(f"/snapshots/{'x' * 60}/{i}") for i in range(80)])
    with pytest.raises(RuntimeFailure, match="cannot be used"):
        layers.overlay_options(paths, [Path("/a:b"), Path("/rootfs")])


def test_release_marker_is_read_safely(tmp_path: Path) -> None:
    marker = tmp_path / "agent.released"
    assert checkpoint.read_release_marker(marker) is None
    marker.write_text('{"pid": 1, "sock')  # still being written
    assert checkpoint.read_release_marker(marker) is None
    marker.write_text('{"pid": 1, "sockets": ["/tmp/app.sock"]}')
    assert checkpoint.read_release_marker(marker) == {"pid": 1, "sockets": ["/tmp/app.sock"]}
    marker.unlink()
    (tmp_path / "elsewhere").write_text('{"pid": 1, "sockets": []}')
    marker.symlink_to(tmp_path / "elsewhere")  # planted by the sandbox: never followed
    assert checkpoint.read_release_marker(marker) is None


def test_blocking_sockets() -> None:
    listed = ["/tmp/app.sock", "/dev/shm/x", "/dev/log2", "relative", 3, "/run/db.sock"]
    assert checkpoint.blocking_sockets(listed) == ["/run/db.sock", "/tmp/app.sock"]
    assert checkpoint.blocking_sockets(None) == []
    assert checkpoint.blocking_sockets("/tmp/x") == []


def test_first_error_finds_the_gist_of_a_panic() -> None:
    panic = (
        '{"msg":"checkpoint failed: encoding error at object ...: Cannot save endpoint with '
        'bound host socket:\\ngoroutine 221 [running]:\\n..."}\nmore'
    )
    result = CommandResult(("runsc",), 128, "", panic)
    assert checkpoint.first_error(result) == "Cannot save endpoint with bound host socket:"
    plain = CommandResult(("runsc",), 1, "", "\nrestore failed: EOF\nstack")
    assert checkpoint.first_error(plain) == "restore failed: EOF"


def _snapshot(tmp_path: Path, **meta: object) -> Path:
    snap = tmp_path / "snap"
    (snap / "layer").mkdir(parents=True)
    (snap / "memory").mkdir()
    (snap / "memory" / checkpoint.IMAGE_FILE).write_bytes(b"img")
    data = {
        "format": hib.FORMAT_VERSION,
        "runtime": "gvisor",
        "has_memory": True,
        "layers": ["/older/layer"],
        "vcpus": 1,
        "memory_mib": 256,
    }
    data.update(meta)
    (snap / hib.SNAPSHOT_META).write_text(json.dumps(data))
    return snap


def test_snapshot_spec_checks_shape_and_layers(tmp_path: Path) -> None:
    snap = _snapshot(tmp_path)
    meta = hib.load_snapshot_meta(snap)
    spec = SandboxSpec("c1", "t", Path("/r"), memory_mib=256)
    # no layers given: the snapshot's own over its recorded ancestors
    assert hib.snapshot_spec(spec, snap, meta).layers == (snap / "layer", Path("/older/layer"))
    given = SandboxSpec("c1", "t", Path("/r"), memory_mib=256, layers=(snap / "layer",))
    assert hib.snapshot_spec(given, snap, meta) == given
    with pytest.raises(InvalidRequest, match="must start"):
        hib.snapshot_spec(SandboxSpec("c1", "t", Path("/r"), layers=(Path("/x"),)), snap, meta)
    with pytest.raises(InvalidRequest, match="memory_mib"):
        hib.snapshot_spec(SandboxSpec("c1", "t", Path("/r"), memory_mib=512), snap, meta)
    netted = SandboxSpec("c1", "t", Path("/r"), memory_mib=256, network=NetworkPolicy("open"))
    with pytest.raises(InvalidRequest, match="network"):
        hib.snapshot_spec(netted, snap, meta)
    files_only = {**meta, "has_memory": False}
    assert hib.snapshot_spec(netted, snap, files_only).network == netted.network


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": 99}, "format"),
        ({"runtime": "qemu"}, "qemu"),
    ],
)
def test_load_snapshot_meta_refuses(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidRequest, match=message):
        hib.load_snapshot_meta(_snapshot(tmp_path, **change))


def test_load_snapshot_meta_needs_its_parts(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="not a complete snapshot"):
        hib.load_snapshot_meta(tmp_path)
    snap = _snapshot(tmp_path)
    (snap / "memory" / checkpoint.IMAGE_FILE).unlink()
    with pytest.raises(InvalidRequest, match="no memory image"):
        hib.load_snapshot_meta(snap)


def test_hibernation_is_complete_only_once_renamed(tmp_path: Path) -> None:
    files = SandboxFiles(tmp_path / "sb")
    (files.base / "hibernate.tmp").mkdir(parents=True)
    (files.base / "hibernate.tmp" / checkpoint.IMAGE_FILE).write_bytes(b"partial")
    assert not hib.is_hibernated(files)
    (files.base / "hibernate.tmp").rename(files.base / "hibernate")
    assert hib.is_hibernated(files)
    hib.discard_image(files)
    assert not hib.is_hibernated(files) and not (files.base / "hibernate").exists()


def test_pending_restore_only_before_the_first_start(tmp_path: Path) -> None:
    files = SandboxFiles(tmp_path / "sb")
    files.base.mkdir()
    assert hib.pending_restore(files) is None
    (files.base / "restore.json").write_text(json.dumps({"snapshot": "/snaps/s1"}))
    assert hib.pending_restore(files) == Path("/snaps/s1/memory")
    files.started.write_text("boot")
    assert hib.pending_restore(files) is None


async def test_freezer_files(tmp_path: Path) -> None:
    state = freezer.state_file("sb1", tmp_path)
    assert not freezer.available("sb1", tmp_path)
    state.parent.mkdir(parents=True)
    state.write_text("THAWED\n")
    (state.parent / "cgroup.procs").write_text("")
    assert freezer.available("sb1", tmp_path) and not freezer.has_tasks("sb1", tmp_path)
    (state.parent / "cgroup.procs").write_text("42\n")
    assert freezer.has_tasks("sb1", tmp_path) and not freezer.is_frozen("sb1", tmp_path)
    await freezer.freeze("sb1", tmp_path)  # a plain file reads back FROZEN at once
    assert freezer.is_frozen("sb1", tmp_path)
    await freezer.thaw("sb1", tmp_path)
    assert state.read_text() == "THAWED"
    await freezer.thaw("gone", tmp_path)  # no cgroup: nothing to thaw
