"""The QEMU argv and the guest kernel command line (pure functions)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from atelier.runtimes.qemu.accel import AccelChoice
from atelier.runtimes.qemu.cmdline import (
    SECCOMP,
    DiskLayer,
    VmConfig,
    build_argv,
    host_tsc_khz,
    kernel_cmdline,
    open_disk_fds,
)

TCG = AccelChoice("tcg", "no kvm here")
KVM = AccelChoice("kvm", "kvm: /dev/kvm usable (vmx)")


def config(tmp: Path, accel: AccelChoice = TCG, **kw: object) -> VmConfig:
    base = {
        "name": "sb-1",
        "qemu": "qemu-system-x86_64",
        "accel": accel,
        "vcpus": 2,
        "memory_mib": 512,
        "kernel": tmp / "vmlinux",
        "initrd": tmp / "initrd.cpio",
        "append": "console=ttyS0 panic=-1",
        "memory_file": tmp / "memory",
        "memory_shared": True,
        "disks": (
            DiskLayer(tmp / "base.ext4", "raw"),
            DiskLayer(tmp / "disk.qcow2", "qcow2", True),
        ),
        "console": tmp / "console.log",
        "qmp": tmp / "qmp.sock",
        "agent_socket": tmp / "run/agent.sock",
        "control_socket": tmp / "control.sock",
        "pidfile": tmp / "qemu.pid",
        "run_as": "nobody",
    }
    base.update(kw)
    return VmConfig(**base)  # type: ignore[arg-type]


def value(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def values(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_tcg_machine(tmp_path: Path) -> None:
    argv = build_argv(config(tmp_path), [[10], [11, 12]])
    assert argv[0] == "qemu-system-x86_64"
    assert value(argv, "-machine") == "microvm,memory-backend=mem"
    assert value(argv, "-accel").startswith("tcg")
    assert value(argv, "-cpu") == "qemu64"
    assert value(argv, "-m") == "512M"
    assert value(argv, "-smp") == "2"
    for flag in ("-nodefaults", "-no-user-config", "-nographic", "-no-reboot"):
        assert flag in argv
    assert value(argv, "-nic") == "none"
    assert value(argv, "-pidfile") == str(tmp_path / "qemu.pid")
    assert value(argv, "-runas") == "nobody"
    assert value(argv, "-sandbox") == SECCOMP
    assert "-incoming" not in argv


def test_kvm_uses_host_cpu(tmp_path: Path) -> None:
    argv = build_argv(config(tmp_path, KVM), [[10], [11, 12]])
    assert value(argv, "-accel") == "kvm"
    assert value(argv, "-cpu") == "host"


def test_memory_backend(tmp_path: Path) -> None:
    shared = build_argv(config(tmp_path), [[10], [11, 12]])
    backend = next(v for v in values(shared, "-object") if v.startswith("memory-backend-file"))
    assert "id=mem" in backend and "size=512M" in backend
    assert f"mem-path={tmp_path / 'memory'}" in backend and backend.endswith("share=on")
    private = build_argv(config(tmp_path, memory_shared=False, incoming=True), [[10], [11, 12]])
    backend = next(v for v in values(private, "-object") if v.startswith("memory-backend-file"))
    assert backend.endswith("share=off")
    assert value(private, "-incoming") == "defer"


def test_channels(tmp_path: Path) -> None:
    argv = build_argv(config(tmp_path), [[10], [11, 12]])
    chardevs = values(argv, "-chardev")
    assert f"file,id=console,path={tmp_path / 'console.log'},append=on" in chardevs
    assert value(argv, "-serial") == "chardev:console"
    assert f"socket,id=agent,path={tmp_path / 'run/agent.sock'},server=on,wait=off" in chardevs
    assert f"socket,id=qmp,path={tmp_path / 'qmp.sock'},server=on,wait=off" in chardevs
    assert "chardev=qmp,mode=control" in values(argv, "-mon")
    devices = values(argv, "-device")
    assert "virtio-serial-device" in devices
    assert "virtserialport,chardev=agent,name=org.atelier.agent,id=agentport" in devices
    assert "virtserialport,chardev=control,name=org.atelier.control,id=controlport" in devices
    assert "virtio-rng-device,rng=rng0" in devices
    # the serial bus exists before its ports
    assert devices.index("virtio-serial-device") < devices.index(
        "virtserialport,chardev=agent,name=org.atelier.agent,id=agentport"
    )


def test_disk_chain_by_descriptor(tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        disks=(
            DiskLayer(tmp_path / "base.ext4", "raw"),
            DiskLayer(tmp_path / "snap.qcow2", "qcow2"),
            DiskLayer(tmp_path / "disk.qcow2", "qcow2", True),
        ),
    )
    argv = build_argv(cfg, [[10], [11], [12, 13]])
    assert values(argv, "-add-fd") == [
        "fd=10,set=1,opaque=layer0",
        "fd=11,set=2,opaque=layer1",
        "fd=12,set=3,opaque=root",
        "fd=13,set=3,opaque=root",
    ]
    assert values(argv, "-blockdev") == [
        "driver=file,node-name=layer0-file,filename=/dev/fdset/1,read-only=on",
        "driver=raw,node-name=layer0,file=layer0-file,read-only=on",
        "driver=file,node-name=layer1-file,filename=/dev/fdset/2,read-only=on",
        "driver=qcow2,node-name=layer1,file=layer1-file,backing=layer0,read-only=on",
        "driver=file,node-name=root-file,filename=/dev/fdset/3",
        "driver=qcow2,node-name=root,file=root-file,backing=layer1",
    ]
    assert "virtio-blk-device,drive=root" in values(argv, "-device")
    assert not any(str(tmp_path / "disk.qcow2") in a for a in argv)  # no paths: descriptors


def test_bad_chains(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        build_argv(config(tmp_path), [[10]])  # one fd list per layer
    raw_on_top = (DiskLayer(tmp_path / "a", "qcow2"), DiskLayer(tmp_path / "b", "raw", True))
    with pytest.raises(ValueError):
        build_argv(config(tmp_path, disks=raw_on_top), [[1], [2]])
    with pytest.raises(ValueError):
        build_argv(config(tmp_path, disks=(DiskLayer(tmp_path / "a", "vmdk"),)), [[1]])


def test_root_and_no_seccomp(tmp_path: Path) -> None:
    argv = build_argv(config(tmp_path, run_as=None, seccomp=False, rng=False), [[1], [2, 3]])
    assert "-runas" not in argv and "-sandbox" not in argv
    assert "virtio-rng-device,rng=rng0" not in values(argv, "-device")


def test_open_disk_fds(tmp_path: Path) -> None:
    (tmp_path / "base").write_bytes(b"x")
    (tmp_path / "top").write_bytes(b"y")
    layers = (DiskLayer(tmp_path / "base", "raw"), DiskLayer(tmp_path / "top", "qcow2", True))
    fds = open_disk_fds(layers)
    try:
        assert [len(f) for f in fds] == [1, 2]
        modes = [fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE for fd in fds[1]]
        assert modes == [os.O_RDWR, os.O_RDONLY]
    finally:
        for group in fds:
            for fd in group:
                os.close(fd)
    with pytest.raises(FileNotFoundError):
        open_disk_fds((DiskLayer(tmp_path / "base", "raw"), DiskLayer(tmp_path / "gone", "qcow2")))


def test_kernel_cmdline() -> None:
    line = kernel_cmdline(accel="tcg", tsc_khz=2445426, hostname="box-1")
    words = line.split()
    assert words[:2] == ["console=ttyS0", "panic=-1"]
    assert "tsc_early_khz=2445426" in words and "tsc=reliable" in words
    assert "mitigations=off" in words and "quiet" in words
    assert "atelier.hostname=box-1" in words
    assert "acpi=off" not in words
    kvm = kernel_cmdline(accel="kvm", tsc_khz=None, quiet=False).split()
    assert "mitigations=off" not in kvm and "quiet" not in kvm
    assert not any(w.startswith("tsc_early_khz") for w in kvm)


def test_host_tsc_khz(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC\ncpu MHz\t\t: 2445.426\n\n")
    assert host_tsc_khz(cpuinfo) == 2445426
    cpuinfo.write_text("processor\t: 0\n")
    assert host_tsc_khz(cpuinfo) is None
    assert host_tsc_khz(tmp_path / "missing") is None
