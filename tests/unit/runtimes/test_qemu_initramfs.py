"""The VM initramfs: module order, /init, the newc archive, caching."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from atelier.agent import bootstrap
from atelier.errors import RuntimeFailure
from atelier.images import initramfs as ir
from atelier.images.kernel import find_kernel
from ci_support import skip_unless_ci

BUSYBOX = next((Path(p) for p in ir.BUSYBOX_CANDIDATES if Path(p).is_file()), None)
needs_busybox = pytest.mark.skipif(BUSYBOX is None, reason="busybox-static is not installed")
ARGV = ["/usr/bin/python3", "-c", "print('it''s')", "--serial", ir.AGENT_PORT_NAME]


def module(name: str, depends: str = "") -> bytes:
    return (
        b"\x7fELF....\0license=GPL\0depends="
        + depends.encode()
        + b"\0name="
        + name.encode()
        + b"\0"
    )


def read_newc(path: Path) -> dict[str, tuple[int, bytes, tuple[int, int]]]:
    data = path.read_bytes()
    entries: dict[str, tuple[int, bytes, tuple[int, int]]] = {}
    pos = 0
    while True:
        assert data[pos : pos + 6] == b"070701"
        fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, rmaj, rmin, namesize = fields[1], fields[6], fields[9], fields[10], fields[11]
        name = data[pos + 110 : pos + 110 + namesize - 1].decode()
        pos += 110 + namesize
        pos += -pos % 4
        body = data[pos : pos + size]
        pos += size + (-size % 4)
        if name == "TRAILER!!!":
            return entries
        entries[name] = (mode, body, (rmaj, rmin))


def test_module_depends() -> None:
    assert ir.module_depends(module("virtio_blk", "virtio,virtio_ring")) == [
        "virtio",
        "virtio_ring",
    ]
    assert ir.module_depends(module("virtio_ring")) == []
    assert ir.module_depends(b"no modinfo") == []


def test_module_order() -> None:
    index = {
        "virtio_ring": module("virtio_ring"),
        "virtio": module("virtio", "virtio_ring"),
        "virtio_mmio": module("virtio_mmio", "virtio,virtio_ring"),
        "virtio_blk": module("virtio_blk", "virtio,virtio_ring"),
    }
    order = ir.module_order(["virtio_blk", "virtio_mmio"], index)
    assert order == ["virtio_ring", "virtio", "virtio_blk", "virtio_mmio"]
    with pytest.raises(RuntimeFailure, match="not found"):
        ir.module_order(["virtio_net"], index)
    cyclic = {"a": module("a", "b"), "b": module("b", "a")}
    with pytest.raises(RuntimeFailure, match="cycle"):
        ir.module_order(["a"], cyclic)


def test_init_script_is_valid_sh() -> None:
    script = ir.init_script(["virtio_ring", "virtio"], {1: ["failover", "virtio_net"]}, ARGV)
    assert "for m in virtio_ring virtio; do" in script
    assert "0x0001) insmod /lib/modules/failover.ko" in script
    assert "switch_root /newroot /usr/bin/python3 -c " in script
    assert "atelier.hostname=" in script and "resize2fs /dev/vda" in script
    assert "/newroot/.atelier/agent" in script and "/newroot/run/atelier" in script
    shell = shutil.which("sh")
    assert shell is not None
    subprocess.run([shell, "-n"], input=script.encode(), check=True)
    with pytest.raises(RuntimeFailure):
        ir.init_script([], {}, ["python3"])  # the interpreter path must be absolute


def test_newc_roundtrip(tmp_path: Path) -> None:
    out = tmp_path / "a.cpio"
    ir.write_newc(
        [
            ("bin", stat.S_IFDIR | 0o755, b"", (0, 0)),
            ("bin/x", stat.S_IFREG | 0o755, b"hello", (0, 0)),
            ("bin/y", stat.S_IFLNK | 0o777, b"x", (0, 0)),
            ("dev/console", stat.S_IFCHR | 0o600, b"", (5, 1)),
        ],
        out,
    )
    entries = read_newc(out)
    assert entries["bin/x"] == (stat.S_IFREG | 0o755, b"hello", (0, 0))
    assert entries["bin/y"][1] == b"x"
    assert entries["dev/console"][2] == (5, 1)
    if shutil.which("cpio"):
        listing = subprocess.run(["cpio", "-it"], stdin=out.open("rb"), capture_output=True)
        assert listing.stdout.decode().split() == ["bin", "bin/x", "bin/y", "dev/console"]


def fake_modules(root: Path) -> Path:
    modules = root / "lib/modules/6.1.0-test"
    for rel, name, deps in (
        ("drivers/virtio/virtio_ring.ko", "virtio_ring", ""),
        ("drivers/virtio/virtio.ko", "virtio", "virtio_ring"),
        ("drivers/virtio/virtio_mmio.ko", "virtio_mmio", "virtio,virtio_ring"),
        ("drivers/block/virtio_blk.ko", "virtio_blk", "virtio,virtio_ring"),
        ("drivers/char/virtio_console.ko", "virtio_console", "virtio,virtio_ring"),
        ("drivers/char/hw_random/virtio-rng.ko", "virtio_rng", "virtio,virtio_ring"),
    ):
        path = modules / "kernel" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(module(name, deps))
    (modules / "modules.builtin").write_text("kernel/fs/ext4/ext4.ko\n")
    return modules


@needs_busybox
def test_build_and_cache(tmp_path: Path) -> None:
    agent = tmp_path / "agent"
    shutil.copytree(bootstrap.package_dir(), agent, ignore=shutil.ignore_patterns("__pycache__"))
    spec = ir.InitramfsSpec("6.1.0-test", fake_modules(tmp_path), agent, ARGV, busybox=BUSYBOX)
    built = ir.build_initramfs(spec, tmp_path / "cache")
    assert built.modules[:5] == (
        "virtio_ring",
        "virtio",
        "virtio_mmio",
        "virtio_blk",
        "virtio_console",
    )
    assert "virtio_rng" in built.modules  # loaded when a virtio-rng device is present
    entries = read_newc(built.path)
    assert entries["init"][0] == stat.S_IFREG | 0o755
    assert entries["dev/console"][2] == (5, 1)
    assert entries["bin/sh"][1] == b"busybox" and entries["bin/busybox"][1][:4] == b"\x7fELF"
    assert "lib/modules/virtio_blk.ko" in entries
    assert "atelier/agent/serial_channel.py" in entries
    pycs = [n for n in entries if n.startswith("atelier/agent/__pycache__/") and n.endswith(".pyc")]
    assert any("serial_channel" in n for n in pycs)
    assert not any(n.endswith(".pyc") and "__pycache__" not in n for n in entries)
    # cached: same inputs, same file; a changed agent source, a new archive
    again = ir.build_initramfs(spec, tmp_path / "cache")
    assert again.path == built.path and again.key == built.key
    (agent / "common.py").write_text((agent / "common.py").read_text() + "\n# changed\n")
    changed = ir.build_initramfs(spec, tmp_path / "cache")
    assert changed.key != built.key and built.path.exists()
    assert sorted(os.listdir(tmp_path / "cache")) == sorted([built.path.name, changed.path.name])


def test_missing_agent(tmp_path: Path) -> None:
    if BUSYBOX is None:
        skip_unless_ci("busybox-static is not installed")
    spec = ir.InitramfsSpec("6.1.0-test", fake_modules(tmp_path), tmp_path, ARGV, busybox=BUSYBOX)
    with pytest.raises(RuntimeFailure, match="not the agent package"):
        ir.build_initramfs(spec, tmp_path / "cache")


def test_real_kernel_module_order() -> None:
    root = Path(os.environ.get("ATELIER_TEST_DATA_DIR") or "/var/tmp/atelier-test") / "kernels"
    kernel = find_kernel(root)
    if kernel is None:
        skip_unless_ci(f"no guest kernel fetched into {root} yet")
    builtin = (kernel.modules_dir / "modules.builtin").read_text()
    assert "kernel/fs/ext4/ext4.ko" in builtin  # ext4 needs no module
    index = {}
    for name, rel in (
        ("virtio_ring", "drivers/virtio/virtio_ring.ko"),
        ("virtio", "drivers/virtio/virtio.ko"),
        ("virtio_mmio", "drivers/virtio/virtio_mmio.ko"),
        ("virtio_blk", "drivers/block/virtio_blk.ko"),
        ("virtio_console", "drivers/char/virtio_console.ko"),
    ):
        index[name] = (kernel.modules_dir / "kernel" / rel).read_bytes()
    order = ir.module_order([n for n, _ in ir.ALWAYS_MODULES], index)
    assert order == ["virtio_ring", "virtio", "virtio_mmio", "virtio_blk", "virtio_console"]
