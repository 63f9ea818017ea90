"""Host probes, fed fake /proc and /sys contents."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from atelier import hostinfo

INTEL_FLAGS = "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr vmx ept vpid"
PVM_FLAGS = "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr hypervisor"


def cpuinfo(tmp_path: Path, flags: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(
        f"processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: {flags}\n\n"
        f"processor\t: 1\nflags\t\t: {flags}\n"
    )
    return path


def sys_module(tmp_path: Path, *modules: str) -> Path:
    root = tmp_path / "module"
    for name in ("kvm", *modules):
        (root / name).mkdir(parents=True)
    return root


def fake_dev(tmp_path: Path) -> Path:
    dev = tmp_path / "kvm"
    dev.touch()
    return dev


def api12(_: Path) -> int:
    return 12


def test_kvm_pvm_host_cannot_boot_standard_guest(tmp_path: Path) -> None:
    ok, reason = hostinfo.kvm_status(
        dev=fake_dev(tmp_path),
        sys_module=sys_module(tmp_path, "kvm_pvm"),
        cpuinfo=cpuinfo(tmp_path, PVM_FLAGS),
        api_version=api12,
    )
    assert not ok
    assert reason.startswith("kvm: ")
    assert "PVM host that cannot boot a standard guest" in reason


def test_kvm_real_intel_host_is_usable(tmp_path: Path) -> None:
    ok, reason = hostinfo.kvm_status(
        dev=fake_dev(tmp_path),
        sys_module=sys_module(tmp_path, "kvm_intel"),
        cpuinfo=cpuinfo(tmp_path, INTEL_FLAGS),
        api_version=api12,
    )
    assert ok
    assert "usable (vmx)" in reason


def test_kvm_pvm_loaded_next_to_real_kvm_module_is_still_usable(tmp_path: Path) -> None:
    ok, _ = hostinfo.kvm_status(
        dev=fake_dev(tmp_path),
        sys_module=sys_module(tmp_path, "kvm_pvm", "kvm_intel"),
        cpuinfo=cpuinfo(tmp_path, INTEL_FLAGS),
        api_version=api12,
    )
    assert ok


def test_kvm_without_device(tmp_path: Path) -> None:
    ok, reason = hostinfo.kvm_status(
        dev=tmp_path / "missing-kvm",
        sys_module=sys_module(tmp_path, "kvm_intel"),
        cpuinfo=cpuinfo(tmp_path, INTEL_FLAGS),
    )
    assert not ok
    assert "does not exist" in reason


def test_kvm_without_vmx_or_svm(tmp_path: Path) -> None:
    ok, reason = hostinfo.kvm_status(
        dev=fake_dev(tmp_path),
        sys_module=sys_module(tmp_path),
        cpuinfo=cpuinfo(tmp_path, PVM_FLAGS),
        api_version=api12,
    )
    assert not ok
    assert "no vmx/svm" in reason


def test_kvm_permission_denied(tmp_path: Path) -> None:
    def denied(_: Path) -> int:
        raise PermissionError(errno.EACCES, "Permission denied")

    ok, reason = hostinfo.kvm_status(
        dev=fake_dev(tmp_path),
        sys_module=sys_module(tmp_path, "kvm_intel"),
        cpuinfo=cpuinfo(tmp_path, INTEL_FLAGS),
        api_version=denied,
    )
    assert not ok
    assert "no permission" in reason


def test_kvm_real_ioctl_on_a_regular_file_is_not_a_kvm_device(tmp_path: Path) -> None:
    ok, reason = hostinfo.kvm_status(
        dev=fake_dev(tmp_path),
        sys_module=sys_module(tmp_path, "kvm_intel"),
        cpuinfo=cpuinfo(tmp_path, INTEL_FLAGS),
    )
    assert not ok
    assert "not a KVM device" in reason


def test_cpu_flags(tmp_path: Path) -> None:
    assert "vmx" in hostinfo.cpu_flags(cpuinfo(tmp_path, INTEL_FLAGS))
    assert hostinfo.cpu_flags(tmp_path / "nope") == set()


MOUNTS_V2 = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n"
MOUNTS_V1 = (
    "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n"
    "cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n"
    "cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n"
)
MOUNTS_HYBRID = MOUNTS_V1 + "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (MOUNTS_V2, "v2"),
        (MOUNTS_V1, "v1"),
        (MOUNTS_HYBRID, "hybrid"),
        ("proc /proc proc 0 0\n", "none"),
    ],
)
def test_cgroup_version(tmp_path: Path, text: str, expected: str) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text(text)
    assert hostinfo.cgroup_version(mounts) == expected


def test_overlayfs_supported(tmp_path: Path) -> None:
    fs = tmp_path / "filesystems"
    fs.write_text("nodev\tsysfs\nnodev\ttmpfs\n\text4\nnodev\toverlay\n")
    assert hostinfo.overlayfs_supported(fs, modules_dir=tmp_path)
    fs.write_text("nodev\tsysfs\n\text4\n")
    assert not hostinfo.overlayfs_supported(fs, modules_dir=tmp_path)
    module = tmp_path / "kernel/fs/overlayfs/overlay.ko.xz"
    module.parent.mkdir(parents=True)
    module.touch()
    assert hostinfo.overlayfs_supported(fs, modules_dir=tmp_path)


def test_loop_devices_available(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    dev.mkdir()
    assert not hostinfo.loop_devices_available(dev / "loop-control", dev)
    (dev / "loop0").touch()
    assert hostinfo.loop_devices_available(dev / "loop-control", dev)


def test_tool_version(tmp_path: Path) -> None:
    tool = tmp_path / "faketool"
    tool.write_text("#!/bin/sh\necho\necho 'faketool version 1.2.3'\necho more\n")
    tool.chmod(0o755)
    assert hostinfo.tool_version("faketool", which=lambda _: str(tool)) == "faketool version 1.2.3"
    assert hostinfo.tool_version("faketool", which=lambda _: None) is None
    failing = tmp_path / "failing"
    failing.write_text("#!/bin/sh\nexit 3\n")
    failing.chmod(0o755)
    assert hostinfo.tool_version("failing", which=lambda _: str(failing)) is None


def test_is_root() -> None:
    assert hostinfo.is_root(lambda: 0)
    assert not hostinfo.is_root(lambda: 1000)


def test_systemd_running(tmp_path: Path) -> None:
    run_dir = tmp_path / "run/systemd/system"
    comm = tmp_path / "comm"
    comm.write_text("systemd\n")
    assert not hostinfo.systemd_running(run_dir, comm)  # not booted by systemd
    run_dir.mkdir(parents=True)
    assert hostinfo.systemd_running(run_dir, comm)
    comm.write_text("process_api\n")  # a leftover dir, but PID 1 is something else
    assert not hostinfo.systemd_running(run_dir, comm)


def test_dir_writable(tmp_path: Path) -> None:
    assert hostinfo.dir_writable(tmp_path)[0]
    ok, detail = hostinfo.dir_writable(tmp_path / "a" / "b")
    assert ok
    assert "will be created" in detail
    assert not (tmp_path / "a").exists()
    afile = tmp_path / "file"
    afile.touch()
    assert not hostinfo.dir_writable(afile / "sub")[0]
    assert os.listdir(tmp_path) == ["file"]
