"""The initramfs of the VM runtimes: busybox, a few kernel modules, the agent, ``/init``.

Written as a ``newc`` cpio archive by this module (device nodes and
ownership need no root and no ``cpio`` binary), uncompressed: under TCG
decompressing costs more boot time than reading a few MB more.

``/init`` (busybox sh) mounts proc/sys/devtmpfs, loads the modules in
dependency order, mounts the root disk ``/dev/vda`` (ext4) at ``/newroot``,
grows its filesystem to the disk size with the rootfs's own ``resize2fs``,
puts the agent (copied into the archive at build time) on a read-only tmpfs
at ``/newroot/.atelier/agent``, mounts a tmpfs at ``/newroot/run/atelier``
and ``exec switch_root``\\ s into the agent (serial mode). A failure prints
``atelier-init: ...`` on the console and exits, which panics the kernel:
with ``panic=-1`` and QEMU's ``-no-reboot`` the VM ends and the log says why.

Archives are cached as ``<cache_dir>/<key>.cpio``, the key a hash of the
kernel version, the module files, busybox, the agent sources and the init
script, so any change builds a new one and running VMs keep theirs.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import py_compile
import re
import shlex
import stat
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import RuntimeFailure

__all__ = [
    "AGENT_PORT_NAME",
    "ALWAYS_MODULES",
    "DEVICE_MODULES",
    "BuiltInitramfs",
    "InitramfsSpec",
    "build_initramfs",
    "init_script",
    "module_depends",
    "module_order",
    "write_newc",
]

BUILDER_VERSION = 1
AGENT_PORT_NAME = "org.atelier.agent"
GUEST_AGENT_DIR = "/.atelier/agent"  # where /init puts the agent (bootstrap.AGENT_MOUNT)

# Modules loaded on every boot, and why (ext4, jbd2, mbcache, crc32c are built
# into Debian's cloud kernel: see modules.builtin).
ALWAYS_MODULES: tuple[tuple[str, str], ...] = (
    ("virtio_ring", "virtqueues, used by every virtio driver"),
    ("virtio", "the virtio bus"),
    ("virtio_mmio", "virtio-mmio transport: microvm has no PCI; devices found via ACPI"),
    ("virtio_blk", "the root disk /dev/vda (qcow2 overlay on the host)"),
    ("virtio_console", "virtio-serial: the agent's channel to the host"),
)
# Loaded only when a virtio device of that id is present (``/sys/bus/virtio``).
DEVICE_MODULES: tuple[tuple[int, str, str], ...] = (
    (1, "virtio_net", "the sandbox's NIC (a TAP in its netns; modes egress/open)"),
    (4, "virtio_rng", "entropy from the host: the guest CRNG is ready at once"),
    (19, "vmw_vsock_virtio_transport", "vsock, an alternative agent channel on KVM hosts"),
)
# Where to look in a busybox package or on the host.
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
APPLETS = (
    "sh", "mount", "umount", "insmod", "switch_root", "mkdir", "cat", "echo", "sleep",
    "ls", "chroot", "hostname", "cp", "ln", "chmod", "env", "poweroff", "test", "[",
    "ip", "rm",
)  # fmt: skip
_MODULE_SUFFIXES = (".ko", ".ko.xz")


@dataclass(frozen=True, slots=True)
class InitramfsSpec:
    kernel_version: str
    modules_dir: Path  # <tree>/lib/modules/<version>
    agent_dir: Path  # the agent package (its *.py files are copied)
    agent_argv: Sequence[str]  # argv of the agent inside the guest (after switch_root)
    busybox: Path | None = None  # default: the host's busybox-static


@dataclass(frozen=True, slots=True)
class BuiltInitramfs:
    path: Path
    key: str
    modules: tuple[str, ...]  # in load order


# -- modules -----------------------------------------------------------------------------


def _module_index(modules_dir: Path) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for suffix in _MODULE_SUFFIXES:
        for path in sorted((modules_dir / "kernel").rglob(f"*{suffix}")):
            name = path.name.removesuffix(suffix).replace("-", "_")
            index.setdefault(name, path)
    return index


def _module_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return lzma.decompress(data) if path.name.endswith(".xz") else data


def module_depends(image: bytes) -> list[str]:
    """The ``depends=`` list from a module's ``.modinfo`` strings."""
    match = re.search(rb"(?:^|\0)depends=([^\0]*)\0", image)
    if match is None:
        return []
    return [d.replace("-", "_") for d in match.group(1).decode().split(",") if d]


def module_order(wanted: Iterable[str], index: dict[str, bytes]) -> list[str]:
    """``wanted`` plus their dependencies, each after everything it depends on."""
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in order:
            return
        if name in visiting:
            raise RuntimeFailure(f"kernel module dependency cycle through {name}")
        if name not in index:
            raise RuntimeFailure(f"kernel module {name} not found")
        visiting.add(name)
        for dep in module_depends(index[name]):
            visit(dep)
        visiting.discard(name)
        order.append(name)

    for name in wanted:
        visit(name)
    return order


def _builtin(modules_dir: Path) -> set[str]:
    try:
        lines = (modules_dir / "modules.builtin").read_text().split()
    except OSError:
        return set()
    return {Path(line).name.removesuffix(".ko").replace("-", "_") for line in lines}


# -- /init ---------------------------------------------------------------------------------

_INIT = r"""#!/bin/sh
# Atelier guest init (generated by atelier.images.initramfs; runs as PID 1)
export PATH=/bin
fail() {
    echo "atelier-init: $*" >/dev/console
    exit 1
}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev || fail "cannot mount devtmpfs"
for m in @ALWAYS@; do
    insmod "/lib/modules/$m.ko" || fail "cannot load module $m"
done
for dev in /sys/bus/virtio/devices/*; do
    [ -r "$dev/device" ] || continue
    case "$(cat "$dev/device")" in
@DEVICE_CASES@
    esac
done
hostname_arg=
net_arg=
dns_arg=
for word in $(cat /proc/cmdline); do
    case "$word" in
        atelier.hostname=*) hostname_arg="${word#atelier.hostname=}" ;;
        atelier.net=*) net_arg="${word#atelier.net=}" ;;
        atelier.dns=*) dns_arg="${word#atelier.dns=}" ;;
    esac
done
ip link set lo up 2>/dev/null
if [ -n "$net_arg" ]; then
    # atelier.net=<address>/<prefixlen>,<gateway>,<mac>,<mtu>: the NIC with that MAC
    old_ifs=$IFS
    IFS=,
    set -- $net_arg
    IFS=$old_ifs
    net_if=
    n=0
    while [ -z "$net_if" ]; do
        for dev in /sys/class/net/*; do
            [ "$(cat "$dev/address" 2>/dev/null)" = "$3" ] && net_if="${dev##*/}"
        done
        [ -n "$net_if" ] && break
        n=$((n + 1))
        [ "$n" -gt 250 ] && fail "no network interface with MAC $3"
        sleep 0.02
    done
    ip link set "$net_if" mtu "$4" up || fail "cannot bring up $net_if"
    ip addr add "$1" dev "$net_if" || fail "cannot give $net_if the address $1"
    ip route add default via "$2" dev "$net_if" || fail "cannot route via $2"
    set --
fi
n=0
while [ ! -b /dev/vda ]; do
    n=$((n + 1))
    [ "$n" -gt 500 ] && fail "no root disk /dev/vda"
    sleep 0.02
done
mount -t ext4 -o rw,noatime /dev/vda /newroot || fail "cannot mount /dev/vda"
mkdir -p /newroot/.atelier /newroot/run/atelier /newroot/dev /newroot/proc /newroot/sys
mount -t tmpfs -o mode=0755,size=16m atelier /newroot/.atelier || fail "cannot mount /.atelier"
mkdir /newroot/.atelier/agent
cp -a /atelier/agent/. /newroot/.atelier/agent/ || fail "cannot copy the agent"
mount -o remount,ro /newroot/.atelier
mount -t tmpfs -o mode=0755,size=64m atelier-run /newroot/run/atelier
if [ -n "$dns_arg" ] && [ -d /newroot/etc ] && [ ! -L /newroot/etc ]; then
    rm -f /newroot/etc/resolv.conf  # a link from the image is replaced, not followed
    old_ifs=$IFS
    IFS=,
    {
        echo "# written by Atelier (docs/network.md)"
        for ns in $dns_arg; do echo "nameserver $ns"; done
        echo "options timeout:2 attempts:2"
    } >/newroot/etc/resolv.conf
    IFS=$old_ifs
fi
mount --move /dev /newroot/dev
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
if [ -x /newroot/sbin/resize2fs ]; then
    chroot /newroot /sbin/resize2fs /dev/vda >/dev/null 2>&1 ||
        echo "atelier-init: resize2fs /dev/vda failed; the filesystem keeps its size" >/dev/console
fi
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /newroot/dev/pts
mount -t tmpfs -o mode=1777,nosuid,nodev shm /newroot/dev/shm
for link in fd:/proc/self/fd stdin:/proc/self/fd/0 stdout:/proc/self/fd/1 stderr:/proc/self/fd/2; do
    [ -e "/newroot/dev/${link%%:*}" ] || ln -s "${link#*:}" "/newroot/dev/${link%%:*}"
done
if [ -n "$hostname_arg" ]; then
    hostname "$hostname_arg"
    echo "$hostname_arg" >/newroot/etc/hostname
    printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t%s\n' \
        "$hostname_arg" >/newroot/etc/hosts
fi
[ -x /newroot@PYTHON@ ] || fail "no @PYTHON@ in the root filesystem"
ulimit -n 65536
read -r up _ </newroot/proc/uptime
echo "atelier-init: starting the agent (uptime ${up}s)" >/dev/console
exec env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 HOME=/root TERM=linux \
    switch_root /newroot @ARGV@
"""


def init_script(
    always: Sequence[str],
    device_modules: dict[int, list[str]],
    agent_argv: Sequence[str],
) -> str:
    """The text of ``/init``: load ``always``, then per present virtio device
    id the modules in ``device_modules``, ..., then exec the agent."""
    if not agent_argv or not agent_argv[0].startswith("/"):
        raise RuntimeFailure("the agent argv must start with an absolute interpreter path")
    cases = []
    for device_id, names in sorted(device_modules.items()):
        loads = "; ".join(
            f'insmod /lib/modules/{n}.ko || echo "atelier-init: cannot load {n}" >/dev/console'
            for n in names
        )
        cases.append(f"        0x{device_id:04x}) {loads} ;;")
    return (
        _INIT.replace("@ALWAYS@", " ".join(always))
        .replace("@DEVICE_CASES@", "\n".join(cases) if cases else "        *) ;;")
        .replace("@PYTHON@", agent_argv[0])
        .replace("@ARGV@", shlex.join(agent_argv))
    )


# -- cpio (newc) ---------------------------------------------------------------------------


def write_newc(entries: Iterable[tuple[str, int, bytes, tuple[int, int]]], out: Path) -> None:
    """Write ``(name, mode, data, (rdev major, minor))`` entries as a newc cpio
    archive owned by root, mtime 0 (reproducible)."""

    def pad(n: int) -> bytes:
        return b"\0" * (-n % 4)

    with out.open("wb") as fh:
        ino = 1
        for name, mode, data, (major, minor) in [*entries, ("TRAILER!!!", 0, b"", (0, 0))]:
            encoded = name.encode() + b"\0"
            fields = (
                ino if name != "TRAILER!!!" else 0,
                mode,
                0,  # uid
                0,  # gid
                2 if stat.S_ISDIR(mode) else 1,
                0,  # mtime
                len(data),
                0,
                0,
                major,
                minor,
                len(encoded),
                0,
            )
            header = b"070701" + b"".join(b"%08x" % f for f in fields)
            fh.write(header + encoded + pad(len(header) + len(encoded)))
            fh.write(data + pad(len(data)))
            ino += 1


# -- build -------------------------------------------------------------------------------------


def _find_busybox(given: Path | None) -> Path:
    candidates = [given] if given is not None else [Path(p) for p in BUSYBOX_CANDIDATES]
    for path in candidates:
        if path.is_file():
            head = path.read_bytes()[:4096]
            if head.startswith(b"\x7fELF") and b"/lib64/ld-linux" not in head:
                return path
    raise RuntimeFailure(
        "a static busybox is needed for the VM initramfs (apt-get install busybox-static)"
    )


def _agent_files(agent_dir: Path) -> list[Path]:
    files = sorted(p for p in agent_dir.glob("*.py") if p.is_file())
    if not any(p.name == "__main__.py" for p in files):
        raise RuntimeFailure(f"{agent_dir} is not the agent package (no __main__.py)")
    return files


def _compiled(sources: list[Path], guest_dir: str) -> list[tuple[str, bytes]]:
    """``__pycache__`` entries for ``sources``, compiled by this Python.

    Compiling the agent costs about 2 s of a TCG boot. The files are
    unchecked-hash pycs (valid whatever the mtimes; built from the very
    sources shipped beside them) named with this interpreter's cache tag, so
    a guest Python of another version simply ignores them.
    """
    tag = sys.implementation.cache_tag
    if tag is None:
        return []
    out: list[tuple[str, bytes]] = []
    with tempfile.TemporaryDirectory(prefix="atelier-pyc-") as tmp:
        for source in sources:
            target = Path(tmp) / f"{source.stem}.{tag}.pyc"
            try:
                py_compile.compile(
                    str(source),
                    cfile=str(target),
                    dfile=f"{guest_dir}/{source.name}",
                    doraise=True,
                    invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
                )
            except py_compile.PyCompileError as exc:
                raise RuntimeFailure(f"cannot compile {source}: {exc.msg}") from exc
            out.append((f"__pycache__/{target.name}", target.read_bytes()))
    return out


def build_initramfs(spec: InitramfsSpec, cache_dir: Path) -> BuiltInitramfs:
    """The initramfs for ``spec``, from ``cache_dir`` or built into it."""
    busybox = _find_busybox(spec.busybox)
    builtin = _builtin(spec.modules_dir)
    paths = _module_index(spec.modules_dir)
    images: dict[str, bytes] = {}

    def image(name: str) -> bytes:
        if name not in images:
            if name not in paths:
                raise RuntimeFailure(f"kernel module {name} not in {spec.modules_dir}")
            images[name] = _module_bytes(paths[name])
        return images[name]

    always = [name for name, _ in ALWAYS_MODULES if name not in builtin]
    for name in always:
        image(name)
    # closure over the dependencies (reading each module once)
    pending = list(always)
    while pending:
        for dep in module_depends(image(pending.pop())):
            if dep not in images and dep not in builtin:
                image(dep)
                pending.append(dep)
    always_order = module_order(always, images)
    device: dict[int, list[str]] = {}
    for device_id, name, _ in DEVICE_MODULES:
        if name in builtin or name not in paths:
            continue
        todo = [name]
        while todo:
            for dep in module_depends(image(todo.pop())):
                if dep not in images and dep not in builtin:
                    image(dep)
                    todo.append(dep)
        device[device_id] = [m for m in module_order([name], images) if m not in always_order]
    script = init_script(always_order, device, spec.agent_argv)
    agent = _agent_files(spec.agent_dir)

    digest = hashlib.sha256()
    for part in (
        str(BUILDER_VERSION),
        spec.kernel_version,
        script,
        str(sys.implementation.cache_tag),
    ):
        digest.update(part.encode() + b"\0")
    digest.update(hashlib.sha256(busybox.read_bytes()).digest())
    for name in sorted(images):
        digest.update(name.encode() + b"\0" + hashlib.sha256(images[name]).digest())
    for path in agent:
        digest.update(path.name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    key = digest.hexdigest()[:24]
    out = cache_dir / f"{key}.cpio"
    loaded = tuple(always_order + [m for ms in device.values() for m in ms])
    if out.is_file():
        return BuiltInitramfs(out, key, loaded)

    entries: list[tuple[str, int, bytes, tuple[int, int]]] = []

    def add_dir(name: str) -> None:
        entries.append((name, stat.S_IFDIR | 0o755, b"", (0, 0)))

    for d in ("bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules", "atelier"):
        add_dir(d)
    add_dir("atelier/agent")
    entries.append(("dev/console", stat.S_IFCHR | 0o600, b"", (5, 1)))
    entries.append(("dev/null", stat.S_IFCHR | 0o666, b"", (1, 3)))
    entries.append(("bin/busybox", stat.S_IFREG | 0o755, busybox.read_bytes(), (0, 0)))
    for applet in APPLETS:
        entries.append((f"bin/{applet}", stat.S_IFLNK | 0o777, b"busybox", (0, 0)))
    for name in sorted(images):
        entries.append((f"lib/modules/{name}.ko", stat.S_IFREG | 0o644, images[name], (0, 0)))
    for path in agent:
        entries.append(
            (f"atelier/agent/{path.name}", stat.S_IFREG | 0o644, path.read_bytes(), (0, 0))
        )
    add_dir("atelier/agent/__pycache__")
    for name, data in _compiled(agent, f"{GUEST_AGENT_DIR}"):
        entries.append((f"atelier/agent/{name}", stat.S_IFREG | 0o644, data, (0, 0)))
    entries.append(("init", stat.S_IFREG | 0o755, script.encode(), (0, 0)))

    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".initramfs-", dir=cache_dir)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write_newc(entries, tmp)
        tmp.chmod(0o644)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return BuiltInitramfs(out, key, loaded)
