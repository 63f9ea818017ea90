"""The QEMU runtime's host-side logic without booting anything: layout, state
from files, validation, cgroups, snapshot metadata, availability reasons."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from atelier.config import Settings
from atelier.errors import InvalidRequest, RuntimeFailure
from atelier.runtimes.base import Capability, Runtime, RuntimeState, SandboxSpec
from atelier.runtimes.qemu import QemuRuntime
from atelier.runtimes.qemu.accel import AccelChoice
from atelier.runtimes.qemu.boot import spawn
from atelier.runtimes.qemu.cgroups import VmCgroup, memory_limit_mib
from atelier.runtimes.qemu.cmdline import DiskLayer, VmConfig
from atelier.runtimes.qemu.files import SandboxFiles, spec_from_json, spec_to_json
from atelier.runtimes.qemu.files import validate_spec as _validate
from atelier.runtimes.qemu.snapshots import agent_connected, load_snapshot


@pytest.fixture
def runtime(tmp_path: Path) -> QemuRuntime:
    return QemuRuntime(Settings(data_dir=tmp_path))


def spec(tmp_path: Path, **kw: object) -> SandboxSpec:
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir(exist_ok=True)
    return SandboxSpec(sandbox_id="sb-1", template="base", rootfs=rootfs, **kw)  # type: ignore[arg-type]


def test_contract(runtime: QemuRuntime, tmp_path: Path) -> None:
    assert isinstance(runtime, Runtime)
    assert runtime.name == "qemu"
    caps = runtime.capabilities()
    assert caps == (
        Capability.PAUSE
        | Capability.MEMORY_SNAPSHOT
        | Capability.PERSISTENT_DISK
        | Capability.HIBERNATE
        | Capability.NETWORK
    )
    assert runtime.agent_socket("sb-1") == tmp_path / "qemu/sb-1/run/agent.sock"
    assert runtime.log_path("sb-1") == tmp_path / "qemu/sb-1/console.log"
    with pytest.raises(InvalidRequest):
        runtime.files("../etc")


def test_missing_qemu_is_unavailable(tmp_path: Path) -> None:
    rt = QemuRuntime(Settings(data_dir=tmp_path), qemu_bin="qemu-system-does-not-exist")
    status = rt.availability()
    assert not status.available
    assert "not found" in status.reason or "root" in status.reason


async def test_state_from_files(runtime: QemuRuntime, tmp_path: Path) -> None:
    assert await runtime.state("sb-1") == RuntimeState.ABSENT
    files = runtime.files("sb-1")
    files.base.mkdir(parents=True)
    assert await runtime.state("sb-1") == RuntimeState.ABSENT  # half-created
    files.save_spec(spec(tmp_path))
    assert await runtime.state("sb-1") == RuntimeState.CREATED
    files.started.write_text("boot")
    assert await runtime.state("sb-1") == RuntimeState.STOPPED
    files.pidfile.write_text("1\n")  # pid 1 is not this sandbox's QEMU
    assert await runtime.state("sb-1") == RuntimeState.STOPPED
    assert await runtime.list_ids() == ["sb-1"]


async def test_destroy_is_idempotent(runtime: QemuRuntime, tmp_path: Path) -> None:
    await runtime.destroy("never-made")
    files = runtime.files("sb-1")
    files.run_dir.mkdir(parents=True)
    files.save_spec(spec(tmp_path))
    await runtime.destroy("sb-1")
    await runtime.destroy("sb-1")
    assert not files.base.exists()
    assert await runtime.list_ids() == []


def test_validate(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    _validate(spec(tmp_path), settings)
    for bad in ({"vcpus": 0}, {"memory_mib": 64}, {"disk_mib": 10}, {"hostname": "a b"}):
        with pytest.raises(InvalidRequest):
            _validate(spec(tmp_path, **bad), settings)
    with pytest.raises(InvalidRequest):
        _validate(SandboxSpec("x", "t", tmp_path / "missing"), settings)


def test_spec_roundtrip(tmp_path: Path) -> None:
    s = spec(tmp_path, labels={"a": "b"}, vcpus=2)
    assert spec_from_json(json.loads(json.dumps(spec_to_json(s)))) == s


def test_socket_paths_must_fit(tmp_path: Path) -> None:
    files = SandboxFiles(tmp_path / ("x" * 100))
    with pytest.raises(InvalidRequest, match="107 bytes"):
        files.check_socket_paths()


def cgroup_v1(root: Path) -> Path:
    for controller in ("cpu", "memory"):
        (root / controller).mkdir(parents=True)
    return root


def test_cgroup_v1(tmp_path: Path) -> None:
    root = cgroup_v1(tmp_path / "cg")
    group = VmCgroup("sb-1", root)
    assert not group.unified and group.available()
    procs = group.create(vcpus=2, memory_limit=768 * 1024 * 1024)
    assert procs == [
        root / "cpu/atelier/sb-1/cgroup.procs",
        root / "memory/atelier/sb-1/cgroup.procs",
    ]
    assert (root / "cpu/atelier/sb-1/cpu.cfs_quota_us").read_text() == "200000"
    assert (root / "cpu/atelier/sb-1/cpu.cfs_period_us").read_text() == "100000"
    assert (root / "memory/atelier/sb-1/memory.limit_in_bytes").read_text() == str(768 << 20)
    # a real cgroupfs dir is empty of files once no process is left; fake that
    for group_dir in group.dirs():
        for f in group_dir.iterdir():
            f.unlink()
    assert group.remove() == []
    assert not (root / "cpu/atelier/sb-1").exists()


def test_cgroup_v2(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpu memory pids\n")
    group = VmCgroup("sb-1", root)
    assert group.unified
    procs = group.create(vcpus=1, memory_limit=1 << 30)
    assert procs == [root / "atelier/sb-1/cgroup.procs"]
    assert (root / "atelier/sb-1/cpu.max").read_text() == "100000 100000"
    assert (root / "atelier/sb-1/memory.max").read_text() == str(1 << 30)


def test_memory_limit() -> None:
    assert memory_limit_mib(512, "kvm", 256) == 768
    assert memory_limit_mib(512, "tcg", 256) == 1024


def test_agent_connected(tmp_path: Path) -> None:
    table = tmp_path / "unix"
    sock = "/var/lib/atelier/qemu/sb-1/run/agent.sock"
    header = "Num       RefCount Protocol Flags    Type St Inode Path\n"
    listening = f"0000000000000000: 00000002 00000000 00010000 0001 01 1234 {sock}\n"
    accepted = f"0000000000000000: 00000003 00000000 00000000 0001 03 1240 {sock}\n"
    table.write_text(header + listening)
    assert not agent_connected(Path(sock), table)
    table.write_text(header + listening + accepted)
    assert agent_connected(Path(sock), table)
    assert not agent_connected(Path(sock + "x"), table)


def test_load_snapshot_checks(tmp_path: Path) -> None:
    snap = tmp_path / "snap"
    snap.mkdir()
    with pytest.raises(InvalidRequest, match="not a complete"):
        load_snapshot(snap)
    base = tmp_path / "base.ext4"
    base.write_bytes(b"")
    meta = {
        "format": 1,
        "runtime": "qemu",
        "chain": [{"path": str(base), "format": "raw"}],
        "vcpus": 1,
    }
    (snap / "snapshot.json").write_text(json.dumps(meta))
    with pytest.raises(InvalidRequest, match="missing state"):
        load_snapshot(snap)
    for name in ("state", "memory", "disk.qcow2"):
        (snap / name).write_bytes(b"")
    info = load_snapshot(snap)
    assert info.get_int("vcpus") == 1 and info.chain[0].path == base
    base.unlink()
    with pytest.raises(InvalidRequest, match="base disk"):
        load_snapshot(snap)
    (snap / "snapshot.json").write_text(json.dumps({**meta, "format": 99}))
    with pytest.raises(InvalidRequest, match="format"):
        load_snapshot(snap)


async def test_spawn_reports_an_early_exit(tmp_path: Path) -> None:
    """QEMU dying at start-up: its stderr ends up in the error, nothing is left running."""
    fake = tmp_path / "qemu"
    fake.write_text("#!/bin/sh\necho 'qemu: could not load kernel' >&2\nexit 1\n")
    fake.chmod(0o755)
    files = SandboxFiles(tmp_path / "sb")
    files.run_dir.mkdir(parents=True)
    (tmp_path / "disk").write_bytes(b"")
    cfg = VmConfig(
        name="sb",
        qemu=str(fake),
        accel=AccelChoice("tcg", "test"),
        vcpus=1,
        memory_mib=128,
        kernel=tmp_path / "vmlinux",
        initrd=tmp_path / "initrd",
        append="",
        memory_file=files.memory,
        memory_shared=True,
        disks=(DiskLayer(tmp_path / "disk", "raw", writable=True),),
        console=files.console,
        qmp=files.qmp,
        agent_socket=files.agent_socket,
        control_socket=files.control,
        pidfile=files.pidfile,
    )
    with pytest.raises(RuntimeFailure, match="could not load kernel"):
        await spawn(cfg, files, None, 0)
    assert "ended with status 1" in files.qemu_log.read_text()
