"""Guest kernel: vmlinux out of an LZ4 bzImage (synthetic and the real Debian one)."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from atelier.errors import RuntimeFailure
from atelier.images.kernel import (
    LZ4_LEGACY_MAGIC,
    extract_vmlinux,
    find_kernel,
    inspect_vmlinux,
)
from ci_support import skip_unless_ci

needs_lz4 = pytest.mark.skipif(shutil.which("lz4") is None, reason="lz4 is not installed")


def tiny_elf(pvh: bool = True) -> bytes:
    """A 64-bit x86-64 ELF executable with a PT_NOTE (the Xen PVH entry note) and a PT_LOAD."""
    note = b""
    if pvh:
        desc = struct.pack("<Q", 0x1000030)
        note = struct.pack("<III", 4, len(desc), 18) + b"Xen\0" + desc
    body = b"\x90" * 64
    phoff, phnum = 64, 2
    data_off = phoff + 56 * phnum
    header = b"\x7fELF" + bytes([2, 1, 1]) + b"\0" * 9
    header += struct.pack(
        "<HHIQQQIHHHHHH", 2, 62, 1, 0x1000000, phoff, 0, 0, 64, 56, phnum, 64, 0, 0
    )
    notes = struct.pack("<IIQQQQQQ", 4, 4, data_off, 0, 0, len(note), len(note), 4)
    load = struct.pack(
        "<IIQQQQQQ", 1, 5, data_off + len(note), 0x1000000, 0x1000000, len(body), len(body), 16
    )
    return header + notes + load + note + body


def lz4_legacy(data: bytes) -> bytes:
    out = subprocess.run(["lz4", "-l", "-c", "-q"], input=data, capture_output=True, check=True)
    assert out.stdout.startswith(LZ4_LEGACY_MAGIC)
    return out.stdout


def bzimage(compressed: bytes, size: int) -> bytes:
    setup_sects = 1
    image = bytearray((setup_sects + 1) * 512)
    image[0x1F1] = setup_sects
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", image, 0x206, 0x20F)
    payload = compressed + struct.pack("<I", size)
    struct.pack_into("<II", image, 0x248, 100, len(payload))
    return bytes(image) + b"\0" * 100 + payload + b"trailing setup data"


def test_inspect(tmp_path: Path) -> None:
    path = tmp_path / "vmlinux"
    path.write_bytes(tiny_elf())
    info = inspect_vmlinux(path)
    assert info.pvh_entry == 0x1000030 and info.entry == 0x1000000
    path.write_bytes(tiny_elf(pvh=False))
    assert inspect_vmlinux(path).pvh_entry is None
    path.write_bytes(tiny_elf()[:150])
    with pytest.raises(RuntimeFailure, match="truncated"):
        inspect_vmlinux(path)
    path.write_bytes(b"MZ not an elf" * 10)
    with pytest.raises(RuntimeFailure, match="not a 64-bit ELF"):
        inspect_vmlinux(path)


@needs_lz4
def test_extract_by_boot_header(tmp_path: Path) -> None:
    elf = tiny_elf()
    (tmp_path / "vmlinuz").write_bytes(bzimage(lz4_legacy(elf), len(elf)))
    info = extract_vmlinux(tmp_path / "vmlinuz", tmp_path / "out" / "vmlinux")
    assert (tmp_path / "out" / "vmlinux").read_bytes() == elf
    assert info.pvh_entry == 0x1000030
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["vmlinux"]  # no temp left


@needs_lz4
def test_extract_by_magic_without_header(tmp_path: Path) -> None:
    elf = tiny_elf()
    (tmp_path / "vmlinuz").write_bytes(b"\0" * 777 + lz4_legacy(elf) + b"\x01\x02\x03\x04junk")
    extract_vmlinux(tmp_path / "vmlinuz", tmp_path / "vmlinux")
    assert (tmp_path / "vmlinux").read_bytes() == elf


@needs_lz4
def test_extract_refuses_bad_kernels(tmp_path: Path) -> None:
    (tmp_path / "plain").write_bytes(b"no lz4 in here" * 100)
    with pytest.raises(RuntimeFailure, match="no LZ4 payload"):
        extract_vmlinux(tmp_path / "plain", tmp_path / "vmlinux")
    elf = tiny_elf(pvh=False)
    (tmp_path / "nopvh").write_bytes(bzimage(lz4_legacy(elf), len(elf)))
    with pytest.raises(RuntimeFailure, match="no PVH entry"):
        extract_vmlinux(tmp_path / "nopvh", tmp_path / "vmlinux")
    elf = tiny_elf()
    (tmp_path / "size").write_bytes(bzimage(lz4_legacy(elf), len(elf) + 1))
    with pytest.raises(RuntimeFailure, match="expected"):
        extract_vmlinux(tmp_path / "size", tmp_path / "vmlinux")
    assert not (tmp_path / "vmlinux").exists()


def test_find_kernel_ignores_unready(tmp_path: Path) -> None:
    (tmp_path / "6.1.0-1-cloud-amd64").mkdir()  # no kernel.json: an interrupted fetch
    (tmp_path / ".build-x").mkdir()
    assert find_kernel(tmp_path) is None


@pytest.fixture(scope="module")
def real_kernel_dir() -> Path:
    root = Path(os.environ.get("ATELIER_TEST_DATA_DIR") or "/var/tmp/atelier-test") / "kernels"
    kernel = find_kernel(root)
    if kernel is None:
        skip_unless_ci(f"no guest kernel in {root} yet (the qemu integration tests fetch it)")
    return kernel.root


@needs_lz4
def test_real_debian_kernel(real_kernel_dir: Path, tmp_path: Path) -> None:
    kernel = find_kernel(real_kernel_dir.parent, real_kernel_dir.name)
    assert kernel is not None and kernel.version.endswith("cloud-amd64")
    assert kernel.modules_dir.is_dir() and kernel.config.is_file()
    bzimage_path = kernel.tree / "boot" / f"vmlinuz-{kernel.version}"
    assert LZ4_LEGACY_MAGIC in bzimage_path.read_bytes()
    info = extract_vmlinux(bzimage_path, tmp_path / "vmlinux")
    assert info.pvh_entry is not None
    assert info.size > 20 * 1024 * 1024  # the uncompressed kernel
    assert (tmp_path / "vmlinux").read_bytes()[:4] == b"\x7fELF"
    assert info == inspect_vmlinux(kernel.vmlinux)
    config = kernel.config.read_text()
    assert "CONFIG_PVH=y" in config and "CONFIG_KERNEL_LZ4=y" in config
