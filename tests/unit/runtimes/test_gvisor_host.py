"""Host-side helpers of the gVisor runtime: mount table, loop devices, files,
runsc flags and hints, process scan (all on fake inputs)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from atelier.errors import InvalidRequest
from atelier.runtimes.base import SandboxSpec
from atelier.runtimes.gvisor import files as sbfiles
from atelier.runtimes.gvisor import layers, proc
from atelier.runtimes.gvisor.runsc import Runsc, container_id, sandbox_id_of

MOUNTINFO = """\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
44 27 7:0 / /data/sandboxes/s1/layer rw,relatime - ext4 /dev/loop0 rw
47 27 0:45 / /data/sandboxes/s1/rootfs rw,relatime - overlay overlay rw,lowerdir=/t
48 27 0:46 / /data/sandboxes/s10/rootfs rw,relatime - overlay overlay rw
49 27 0:47 / /data/with\\040space rw shared:1 - tmpfs tmpfs rw
"""


def test_mount_table_parses_and_unescapes() -> None:
    table = layers.mount_table(MOUNTINFO)
    assert [str(m.target) for m in table][-1] == "/data/with space"
    layer = table[1]
    assert (layer.fstype, layer.source) == ("ext4", "/dev/loop0")


def test_mounts_under_is_deepest_first_and_exact() -> None:
    table = layers.mount_table(MOUNTINFO)
    found = layers.mounts_under(Path("/data/sandboxes/s1"), table)
    assert [str(m.target) for m in found] == [
        "/data/sandboxes/s1/rootfs",
        "/data/sandboxes/s1/layer",
    ]  # and not s10
    assert layers.mounts_under(Path("/nowhere"), table) == []


def test_layer_paths() -> None:
    p = layers.LayerPaths.of(Path("/d/s1"))
    assert p.upper == Path("/d/s1/layer/upper")
    assert p.tmp == Path("/d/s1/layer/tmp")
    assert p.rootfs == Path("/d/s1/rootfs")


def test_loop_devices_for(tmp_path: Path) -> None:
    sysblock = tmp_path / "block"
    for name, backing in (
        ("loop0", "/d/s1/disk.img"),
        ("loop1", "/d/s2/disk.img"),
        ("loop2", "/d/s1/disk.img (deleted)"),
    ):
        (sysblock / name / "loop").mkdir(parents=True)
        (sysblock / name / "loop" / "backing_file").write_text(backing + "\n")
    (sysblock / "loop3").mkdir()  # unused: no loop/ dir
    assert layers.loop_devices_for(Path("/d/s1/disk.img"), sysblock) == [
        "/dev/loop0",
        "/dev/loop2",
    ]


async def test_create_disk_rejects_tiny(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="too small"):
        await layers.create_disk(tmp_path / "d.img", 1)


def test_check_id() -> None:
    assert sbfiles.check_id("sb-1_a.b") == "sb-1_a.b"
    for bad in ("", "../x", "a/b", "-x", "x" * 65, "a b"):
        with pytest.raises(InvalidRequest):
            sbfiles.check_id(bad)


def test_spec_roundtrip(tmp_path: Path) -> None:
    spec = SandboxSpec("s1", "base", Path("/t/r"), 2, 256, 128, "h", {"a": "b"})
    files = sbfiles.SandboxFiles(tmp_path)
    assert not files.complete()
    files.save_spec(spec)
    assert files.complete()
    assert files.load_spec() == spec


def test_socket_path_length() -> None:
    sbfiles.SandboxFiles(Path("/var/lib/atelier/sandboxes/s1")).check_socket_path()
    with pytest.raises(InvalidRequest, match="unix socket"):
        sbfiles.SandboxFiles(Path("/" + "d" * 100)).check_socket_path()


def test_read_tail(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.write_text("old stuff\n")
    offset = log.stat().st_size
    with log.open("a") as fh:
        fh.write("new error\n")
    assert sbfiles.read_tail(log, offset) == "new error"
    assert sbfiles.read_tail(log, 0, limit=6) == "error"
    assert sbfiles.read_tail(tmp_path / "missing") == ""


def test_runsc_global_flags_are_the_same_for_every_command(tmp_path: Path) -> None:
    r = Runsc("runsc", tmp_path, "ptrace", default_log=tmp_path / "r.log")
    a = r.argv("create", "x")
    b = r.argv("start", "x")
    assert a[:-2] == b[:-2]
    assert f"--root={tmp_path}" in a
    assert "--platform=ptrace" in a
    assert "--network=none" in a
    assert "--host-uds=create" in a
    assert f"--log={tmp_path / 'r.log'}" in a
    assert r.argv("state", "x", log=tmp_path / "s.log")[-3] == f"--log={tmp_path / 's.log'}"


def test_runsc_might_exist(tmp_path: Path) -> None:
    root = tmp_path / "root"
    r = Runsc("runsc", root, "ptrace")
    assert not r.might_exist("a")  # no root yet
    root.mkdir()
    assert not r.might_exist("a")
    (root / "a_sandbox:a.state").write_text("{}")
    (root / "b_sandbox:b.lock").write_text("")
    assert r.might_exist("a")
    assert not r.might_exist("b")
    r.forget("b")
    assert not (root / "b_sandbox:b.lock").exists()
    r.forget("a")  # still known: kept
    assert (root / "a_sandbox:a.state").exists()
    (root / "something-else").write_text("")
    assert r.might_exist("b")  # unknown layout: ask runsc


async def test_run_command_reports_stderr() -> None:
    res = await proc.run_command(
        ["sh", "-c", "echo out; echo bad >&2; exit 3"], timeout=10, check=False
    )
    assert (res.returncode, res.stdout, res.stderr) == (3, "out\n", "bad\n")
    with pytest.raises(Exception, match="exited 3: bad"):
        await proc.run_command(["sh", "-c", "echo bad >&2; exit 3"], timeout=10)
    with pytest.raises(Exception, match="timed out"):
        await proc.run_command(["sleep", "5"], timeout=0.1)
    with pytest.raises(Exception, match="cannot run"):
        await proc.run_command(["/no/such/tool"], timeout=1)


async def test_processes_with_arg_and_kill(tmp_path: Path) -> None:
    marker = str(tmp_path / "bundle")
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "--bundle", marker]
    )
    other = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", f"--bundle={marker}"]
    )
    try:
        found = proc.processes_with_arg(marker)
        assert sorted(found) == sorted([child.pid, other.pid])
        assert proc.processes_with_arg(marker + "x") == []
        assert await proc.kill_processes(found) == []
    finally:
        for p in (child, other):
            p.kill()
            p.wait()
    assert proc.processes_with_arg(marker) == []
    assert os.getpid() not in found


def test_container_ids_never_prefix_each_other() -> None:
    ids = ["a", "ab", "a.b", "a-b", "a_b", "ab1"]
    cids = [container_id(i) for i in ids]
    for x in cids:
        assert sandbox_id_of(x) in ids
        for y in cids:
            assert x == y or not y.startswith(x)
    assert sandbox_id_of("foreign") is None
    assert sandbox_id_of("a+b+") is None
    assert sbfiles.SandboxFiles(Path("/d/s1")).cid == "s1+"
