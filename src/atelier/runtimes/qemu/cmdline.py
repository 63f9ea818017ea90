"""The QEMU command line of one VM, and the guest kernel's command line.

Everything here is pure (inputs in, argv out) so unit tests can check it.
The shape::

    qemu-system-x86_64 -machine microvm,memory-backend=mem -accel tcg|kvm -cpu qemu64|host
      -m <MiB> -smp <vcpus> -nodefaults -no-user-config -nographic -no-reboot -nic none
      -object memory-backend-file,id=mem,size=<MiB>M,mem-path=<file>,share=on|off
      -kernel vmlinux -initrd initramfs.cpio -append "<kernel cmdline>"
      -chardev file,id=console,... -serial chardev:console        console.log
      -chardev socket,id=qmp,... -mon chardev=qmp,mode=control    qmp.sock
      -add-fd ... -blockdev ... -device virtio-blk-device,drive=root   the disk chain
      -device virtio-serial-device
      -chardev socket,id=agent,...   -device virtserialport,...org.atelier.agent
      -chardev socket,id=control,... -device virtserialport,...org.atelier.control
      -object rng-random,... -device virtio-rng-device
      -pidfile qemu.pid [-runas <user>] [-sandbox on,...] [-incoming defer]

With a network (net.py) the argv starts with ``nsenter --net=<netns> --``
(QEMU runs in the sandbox's namespace) and ``-nic none`` becomes
``-netdev tap,ifname=tap0,script=no,downscript=no,id=net0 -device
virtio-net-device,netdev=net0,mac=<mac>`` (microvm: virtio-mmio, no PCI).

Disks are handed over as file descriptors (``-add-fd`` + ``/dev/fdset/N``)
and wired explicitly with ``-blockdev``: QEMU drops root (``-runas``) after
start-up and must still reopen images by itself (continuing after a
snapshot re-activates the disk, which reopens its file read-write), and the
backing chain never depends on paths written inside qcow2 headers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .accel import AccelChoice
from .net import GuestNic, guest_args

__all__ = [
    "AGENT_PORT",
    "CONTROL_PORT",
    "SECCOMP",
    "DiskLayer",
    "VmConfig",
    "build_argv",
    "host_tsc_khz",
    "kernel_cmdline",
    "open_disk_fds",
]

AGENT_PORT = "org.atelier.agent"
CONTROL_PORT = "org.atelier.control"
# QEMU's seccomp filter. elevateprivileges must allow set*uid: the filter is
# installed before -runas drops root (and a process without capabilities
# cannot elevate anyway).
SECCOMP = "on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny"


@dataclass(frozen=True, slots=True)
class DiskLayer:
    path: Path
    format: str  # "raw" or "qcow2"
    writable: bool = False


@dataclass(frozen=True, slots=True)
class VmConfig:
    name: str  # the sandbox id (QEMU's -name)
    qemu: str
    accel: AccelChoice
    vcpus: int
    memory_mib: int
    kernel: Path
    initrd: Path
    append: str
    memory_file: Path
    memory_shared: bool  # share=on (snapshottable) or a private copy-on-write map
    disks: tuple[DiskLayer, ...]  # base first, the sandbox's writable overlay last
    console: Path
    qmp: Path
    agent_socket: Path
    control_socket: Path
    pidfile: Path
    run_as: str | None = None
    seccomp: bool = True
    incoming: bool = False  # -incoming defer: wait for migrate-incoming (restore)
    rng: bool = True
    nic: GuestNic | None = None  # None: no network device at all (mode none)


def _chardev_socket(ident: str, path: Path) -> list[str]:
    return ["-chardev", f"socket,id={ident},path={path},server=on,wait=off"]


def _disk_args(disks: Sequence[DiskLayer], layer_fds: Sequence[Sequence[int]]) -> list[str]:
    if not disks or len(disks) != len(layer_fds):
        raise ValueError("one list of descriptors per disk layer is needed")
    args: list[str] = []
    previous: str | None = None
    for index, (layer, fds) in enumerate(zip(disks, layer_fds, strict=True)):
        if layer.format not in ("raw", "qcow2"):
            raise ValueError(f"unsupported disk format {layer.format!r}")
        if layer.format == "raw" and previous is not None:
            raise ValueError("a raw layer can only be the base of the chain")
        fdset = index + 1
        node = "root" if index == len(disks) - 1 else f"layer{index}"
        for fd in fds:
            args += ["-add-fd", f"fd={fd},set={fdset},opaque={node}"]
        ro = "" if layer.writable else ",read-only=on"
        args += ["-blockdev", f"driver=file,node-name={node}-file,filename=/dev/fdset/{fdset}{ro}"]
        backing = ""
        if layer.format == "qcow2":
            backing = f",backing={previous}" if previous else ",backing=null"
        args += [
            "-blockdev",
            f"driver={layer.format},node-name={node},file={node}-file{backing}{ro}",
        ]
        previous = node
    return [*args, "-device", "virtio-blk-device,drive=root"]


def build_argv(cfg: VmConfig, layer_fds: Sequence[Sequence[int]]) -> list[str]:
    """The QEMU argv for ``cfg``; ``layer_fds[i]`` are the open descriptors of
    ``cfg.disks[i]`` (read-write and read-only ones for a writable layer)."""
    share = "on" if cfg.memory_shared else "off"
    prefix = ["nsenter", f"--net={cfg.nic.netns_path}", "--"] if cfg.nic else []
    argv = [
        *prefix,
        cfg.qemu,
        "-name", f"atelier-{cfg.name}",
        "-machine", "microvm,memory-backend=mem",
        "-accel", cfg.accel.machine_accel,
        "-cpu", cfg.accel.cpu,
        "-m", f"{cfg.memory_mib}M",
        "-smp", str(cfg.vcpus),
        "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
        *_nic_args(cfg.nic),
        "-object",
        f"memory-backend-file,id=mem,size={cfg.memory_mib}M,mem-path={cfg.memory_file},share={share}",
        "-kernel", str(cfg.kernel),
        "-initrd", str(cfg.initrd),
        "-append", cfg.append,
        "-chardev", f"file,id=console,path={cfg.console},append=on",
        "-serial", "chardev:console",
        *_chardev_socket("qmp", cfg.qmp),
        "-mon", "chardev=qmp,mode=control",
        *_disk_args(cfg.disks, layer_fds),
        "-device", "virtio-serial-device",
        *_chardev_socket("agent", cfg.agent_socket),
        "-device", f"virtserialport,chardev=agent,name={AGENT_PORT},id=agentport",
        *_chardev_socket("control", cfg.control_socket),
        "-device", f"virtserialport,chardev=control,name={CONTROL_PORT},id=controlport",
    ]  # fmt: skip
    if cfg.rng:
        argv += [
            "-object", "rng-random,id=rng0,filename=/dev/urandom",
            "-device", "virtio-rng-device,rng=rng0",
        ]  # fmt: skip
    argv += ["-pidfile", str(cfg.pidfile)]
    if cfg.run_as:
        argv += ["-runas", cfg.run_as]
    if cfg.seccomp:
        argv += ["-sandbox", SECCOMP]
    if cfg.incoming:
        argv += ["-incoming", "defer"]
    return argv


def _nic_args(nic: GuestNic | None) -> list[str]:
    if nic is None:
        return ["-nic", "none"]
    return [
        "-netdev", f"tap,id=net0,ifname={nic.tap},script=no,downscript=no",
        "-device", f"virtio-net-device,netdev=net0,mac={nic.mac}",
    ]  # fmt: skip


def open_disk_fds(disks: Sequence[DiskLayer]) -> list[list[int]]:
    """Open every layer: read-only, plus read-write for a writable one (QEMU
    picks the descriptor whose access mode it needs). The caller closes them."""
    opened: list[list[int]] = []
    try:
        for layer in disks:
            modes = (os.O_RDWR, os.O_RDONLY) if layer.writable else (os.O_RDONLY,)
            fds: list[int] = []
            opened.append(fds)
            for mode in modes:
                fds.append(os.open(layer.path, mode | os.O_CLOEXEC))
    except BaseException:
        for fds in opened:
            for fd in fds:
                os.close(fd)
        raise
    return opened


def host_tsc_khz(cpuinfo: Path = Path("/proc/cpuinfo")) -> int | None:
    """The host CPU clock in kHz (``cpu MHz`` of the first processor)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "cpu MHz":
            try:
                khz = round(float(value.strip()) * 1000)
            except ValueError:
                return None
            return khz if khz > 0 else None
    return None


def kernel_cmdline(
    *,
    accel: str,
    tsc_khz: int | None,
    hostname: str | None = None,
    quiet: bool = True,
    nic: GuestNic | None = None,
) -> str:
    """The guest kernel's command line.

    * ``console=ttyS0``: kernel and init messages go to console.log;
    * ``panic=-1``: a panic (the agent, PID 1, died) reboots at once, and
      ``-no-reboot`` turns that into QEMU exiting;
    * ``tsc_early_khz``: without it the guest can hang in TSC calibration
      under TCG; ``tsc=reliable``: no clocksource watchdog (TCG's TSC follows
      the host's);
    * ``cryptomgr.notests``: no crypto self-tests (about 0.4 s under TCG);
    * ``mitigations=off`` under TCG only: TCG does not speculate;
    * no ``acpi=off``: virtio-mmio devices are found through ACPI (this
      kernel lacks ``VIRTIO_MMIO_CMDLINE_DEVICES``);
    * ``atelier.net=`` / ``atelier.dns=`` with a NIC: the guest's address,
      gateway, MAC, MTU and resolvers, applied by ``/init`` (net.guest_args).
    """
    words = ["console=ttyS0", "panic=-1"]
    if tsc_khz:
        words += [f"tsc_early_khz={tsc_khz}", "tsc=reliable"]
    words.append("cryptomgr.notests")
    if accel == "tcg":
        words.append("mitigations=off")
    if quiet:
        words.append("quiet")
    if hostname:
        words.append(f"atelier.hostname={hostname}")
    words += guest_args(nic)
    return " ".join(words)
