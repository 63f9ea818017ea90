"""The QEMU runtime's network pieces: TAP argv, guest kernel arguments, ip script, policy file."""

from __future__ import annotations

import ipaddress
import subprocess
from pathlib import Path

import pytest

from atelier.config import Settings
from atelier.errors import InvalidRequest, RuntimeFailure
from atelier.images import initramfs as ir
from atelier.network import NetworkInfo, NetworkPolicy
from atelier.runtimes.base import Capability, SandboxSpec
from atelier.runtimes.qemu import net
from atelier.runtimes.qemu.accel import AccelChoice
from atelier.runtimes.qemu.cmdline import DiskLayer, VmConfig, build_argv, kernel_cmdline
from atelier.runtimes.qemu.runtime import QemuRuntime

NIC = net.GuestNic(
    netns_path=Path("/run/netns/atl-sb-1"),
    tap="tap0",
    mac="02:11:22:33:44:55",
    address="10.0.0.6/30",
    gateway="10.0.0.5",
    mtu=1500,
    nameservers=("10.0.255.254", "192.0.2.53"),
)


def config(tmp: Path, nic: net.GuestNic | None) -> VmConfig:
    return VmConfig(
        name="sb-1",
        qemu="qemu-system-x86_64",
        accel=AccelChoice("tcg", "no kvm"),
        vcpus=1,
        memory_mib=256,
        kernel=tmp / "vmlinux",
        initrd=tmp / "initrd.cpio",
        append="console=ttyS0",
        memory_file=tmp / "memory",
        memory_shared=True,
        disks=(DiskLayer(tmp / "base.ext4", "raw"), DiskLayer(tmp / "d.qcow2", "qcow2", True)),
        console=tmp / "console.log",
        qmp=tmp / "qmp.sock",
        agent_socket=tmp / "agent.sock",
        control_socket=tmp / "control.sock",
        pidfile=tmp / "qemu.pid",
        nic=nic,
    )


def test_argv_with_a_nic_runs_in_the_namespace(tmp_path: Path) -> None:
    argv = build_argv(config(tmp_path, NIC), [[10], [11, 12]])
    assert argv[:4] == ["nsenter", "--net=/run/netns/atl-sb-1", "--", "qemu-system-x86_64"]
    assert "-nic" not in argv
    netdev = argv[argv.index("-netdev") + 1]
    assert netdev == "tap,id=net0,ifname=tap0,script=no,downscript=no"
    devices = [argv[i + 1] for i, a in enumerate(argv) if a == "-device"]
    assert "virtio-net-device,netdev=net0,mac=02:11:22:33:44:55" in devices


def test_argv_without_a_nic_has_no_network_device(tmp_path: Path) -> None:
    argv = build_argv(config(tmp_path, None), [[10], [11, 12]])
    assert argv[0] == "qemu-system-x86_64"
    assert argv[argv.index("-nic") + 1] == "none"
    assert "-netdev" not in argv
    assert not any("virtio-net" in a for a in argv)


def test_guest_kernel_arguments() -> None:
    line = kernel_cmdline(accel="tcg", tsc_khz=None, hostname="sb-1", nic=NIC)
    words = line.split()
    assert "atelier.net=10.0.0.6/30,10.0.0.5,02:11:22:33:44:55,1500" in words
    assert "atelier.dns=10.0.255.254,192.0.2.53" in words
    plain = kernel_cmdline(accel="tcg", tsc_khz=None, hostname="sb-1")
    assert "atelier.net" not in plain and "atelier.dns" not in plain
    no_dns = net.guest_args(
        net.GuestNic(NIC.netns_path, "tap0", NIC.mac, NIC.address, NIC.gateway, 9000, ())
    )
    assert no_dns == ["atelier.net=10.0.0.6/30,10.0.0.5,02:11:22:33:44:55,9000"]


def test_guest_nic_from_network_info() -> None:
    info = NetworkInfo(
        sandbox_id="sb-1",
        mode="egress",
        netns="atl-sb-1",
        netns_path=Path("/run/netns/atl-sb-1"),
        host_ifname="atl-does-not-exist",
        address=ipaddress.IPv4Address("10.0.0.6"),
        gateway=ipaddress.IPv4Address("10.0.0.5"),
        prefixlen=30,
        nameservers=tuple(ipaddress.IPv4Address(f"192.0.2.{i}") for i in range(1, 6)),
    )
    nic = net.guest_nic(info)
    assert nic.address == "10.0.0.6/30" and nic.gateway == "10.0.0.5"
    assert nic.mac == net.mac_address("sb-1") and nic.tap == "tap0"
    assert nic.mtu == net.DEFAULT_MTU  # the host interface is gone: the default
    assert nic.nameservers == ("192.0.2.1", "192.0.2.2", "192.0.2.3")  # glibc reads 3
    with pytest.raises(RuntimeFailure):
        net.guest_nic(NetworkInfo("sb-1", "none"))


def test_mac_is_stable_unicast_and_local() -> None:
    mac = net.mac_address("sb-1")
    assert mac == net.mac_address("sb-1") != net.mac_address("sb-2")
    first = int(mac.split(":")[0], 16)
    assert first & 0x01 == 0 and first & 0x02  # unicast, locally administered
    assert len(mac.split(":")) == 6


def test_tap_script_adds_only_what_is_missing() -> None:
    fresh = net.tap_script({"lo", "eth0"}).splitlines()
    assert fresh[0] == "addr flush dev eth0"
    assert "link add br0 type bridge" in fresh
    assert "tuntap add dev tap0 mode tap" in fresh
    assert "link set eth0 master br0" in fresh and "link set tap0 master br0" in fresh
    again = net.tap_script({"lo", "eth0", "br0", "tap0"})
    assert "link add" not in again and "tuntap add" not in again
    assert "link set tap0 master br0" in again


def test_policy_file_roundtrip(tmp_path: Path) -> None:
    assert net.load_policy(tmp_path) is None
    net.save_policy(tmp_path, None)
    assert not (tmp_path / net.NETWORK_FILE).exists()
    policy = NetworkPolicy(mode="egress", allow=("10.1.0.0/16",))
    net.save_policy(tmp_path, policy)
    assert net.load_policy(tmp_path) == policy
    (tmp_path / net.NETWORK_FILE).write_text("{not json")
    with pytest.raises(RuntimeFailure):
        net.load_policy(tmp_path)


def test_init_script_configures_the_nic() -> None:
    script = ir.init_script(["virtio_ring"], {1: ["virtio_net"]}, ["/usr/bin/python3", "-m", "x"])
    assert "atelier.net=*" in script and "atelier.dns=*" in script
    assert 'ip route add default via "$2"' in script
    assert "/newroot/etc/resolv.conf" in script
    assert "ip" in ir.APPLETS and "rm" in ir.APPLETS
    checked = subprocess.run(["sh", "-n"], input=script, text=True, capture_output=True)
    assert checked.returncode == 0, checked.stderr


async def test_runtime_has_network_and_refuses_memory_state(tmp_path: Path) -> None:
    rt = QemuRuntime(Settings(data_dir=tmp_path))
    assert Capability.NETWORK in rt.capabilities()
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    spec = SandboxSpec(
        sandbox_id="sb-1",
        template="base",
        rootfs=rootfs,
        network=NetworkPolicy(mode="open"),
    )
    with pytest.raises(InvalidRequest, match="network"):
        await rt.create_from_snapshot(spec, tmp_path / "snap")
    assert not rt.files("sb-1").base.exists()
