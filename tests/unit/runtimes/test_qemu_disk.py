"""Template rootfs -> ext4 image (mkfs.ext4 -d), cached; qcow2 overlays."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from atelier.errors import InvalidRequest
from atelier.images.diskimage import (
    create_overlay,
    ensure_base_disk,
    image_size_mib,
    tree_usage,
)

SBIN = "/usr/local/sbin:/usr/sbin:/sbin:/usr/bin:/bin"
needs_mkfs = pytest.mark.skipif(
    shutil.which("mkfs.ext4", path=SBIN) is None or shutil.which("debugfs", path=SBIN) is None,
    reason="e2fsprogs is not installed",
)
needs_qemu_img = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="no qemu-img")


def template(root: Path, created: str = "2026-01-01T00:00:00Z") -> Path:
    rootfs = root / "tpl" / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "hostname").write_text("sandbox\n")
    (rootfs / "bin").mkdir()
    (rootfs / "bin" / "tool").write_bytes(b"\x7fELF" + b"\0" * 5000)
    (rootfs / "bin" / "tool").chmod(0o755)
    (rootfs / "lib").symlink_to("usr/lib")
    (root / "tpl" / "manifest.json").write_text(json.dumps({"created_at": created}))
    return rootfs


def test_sizes(tmp_path: Path) -> None:
    rootfs = template(tmp_path)
    used, entries = tree_usage(rootfs)
    assert entries == 5  # etc, etc/hostname, bin, bin/tool, lib
    assert used == 4096 * 4 + 8192  # whole 4 KiB blocks: 2 dirs, a file, a link; tool: 2
    assert image_size_mib(0, 0) == 128
    assert image_size_mib(220 * 1024 * 1024, 9000) % 64 == 0
    assert image_size_mib(220 * 1024 * 1024, 9000) >= 220 * 5 // 4 + 96


def debugfs(image: Path, request: str) -> str:
    out = subprocess.run(
        [shutil.which("debugfs", path=SBIN) or "debugfs", "-R", request, str(image)],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout


@needs_mkfs
def test_base_disk_built_once(tmp_path: Path) -> None:
    rootfs = template(tmp_path)
    disk = ensure_base_disk(rootfs)
    assert disk.path.parent == rootfs.parent and disk.path.name == f"disk-{disk.key}.ext4"
    assert disk.path.stat().st_size == disk.size_mib * 1024 * 1024
    assert debugfs(disk.path, "cat /etc/hostname") == "sandbox\n"
    assert "usr/lib" in debugfs(disk.path, "stat /lib")
    assert ensure_base_disk(rootfs) == disk  # cached
    stamp = json.loads((rootfs.parent / f"disk-{disk.key}.json").read_text())
    assert stamp["size_mib"] == disk.size_mib
    # a rebuilt template (new manifest) gets a new image; the old one stays for its users
    (rootfs.parent / "manifest.json").write_text(json.dumps({"created_at": "2027"}))
    newer = ensure_base_disk(rootfs)
    assert newer.key != disk.key and disk.path.exists()
    assert not list(rootfs.parent.glob(".disk-*"))  # no temp files left


@needs_mkfs
def test_incomplete_image_is_rebuilt(tmp_path: Path) -> None:
    rootfs = template(tmp_path)
    disk = ensure_base_disk(rootfs)
    (rootfs.parent / f"disk-{disk.key}.json").unlink()  # a crash before the stamp
    again = ensure_base_disk(rootfs)
    assert again.path == disk.path and (rootfs.parent / f"disk-{disk.key}.json").exists()


def test_missing_rootfs(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest):
        ensure_base_disk(tmp_path / "nope")


@needs_mkfs
@needs_qemu_img
def test_overlay(tmp_path: Path) -> None:
    disk = ensure_base_disk(template(tmp_path))
    overlay = tmp_path / "disk.qcow2"
    create_overlay(disk.path, overlay, 2048)
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", "-U", str(overlay)],
            capture_output=True,
            check=True,
        ).stdout
    )
    assert info["format"] == "qcow2"
    assert info["virtual-size"] == 2048 * 1024 * 1024
    assert info["backing-filename"] == str(disk.path)
    assert info["backing-filename-format"] == "raw"
    assert overlay.stat().st_size < 1024 * 1024  # nothing copied
