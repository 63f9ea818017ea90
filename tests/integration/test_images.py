"""The real debootstrap build produces a usable rootfs (built once per machine,
see the ``base_template`` fixture in tests/conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from atelier.config import Settings
from atelier.images.debootstrap import build_template
from atelier.images.store import TemplateInfo, TemplateStore
from ci_support import skip_unless_ci

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def chroot(rootfs: Path, *argv: str) -> str:
    result = subprocess.run(
        ["chroot", str(rootfs), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_base_rootfs_has_tools_and_user(base_template: TemplateInfo) -> None:
    root = base_template.rootfs
    assert base_template.ready and base_template.runtime == "gvisor"
    for tool in ("bin/bash", "usr/bin/python3", "usr/bin/git", "usr/bin/curl", "usr/bin/ps"):
        assert (root / tool).exists(), tool
    assert (root / "usr/sbin/ip").exists() or (root / "bin/ip").exists()
    passwd = (root / "etc/passwd").read_text().splitlines()
    assert "user:x:1000:1000::/home/user:/bin/bash" in passwd
    home = (root / "home/user").stat()
    assert (home.st_uid, home.st_gid) == (1000, 1000)
    assert (root / "root").is_dir()
    for mount_point in ("run/atelier", ".atelier/agent"):
        assert (root / mount_point).is_dir()
        assert list((root / mount_point).iterdir()) == []
    assert [p.name for p in (root / "var/lib/apt/lists").glob("*_Packages*")] == []
    assert list((root / "var/cache/apt/archives").glob("*.deb")) == []


def test_base_rootfs_runs(base_template: TemplateInfo) -> None:
    if os.geteuid() != 0:
        skip_unless_ci("chroot needs root")
    root = base_template.rootfs
    assert chroot(root, "python3", "-c", "print(6*7)").strip() == "42"
    assert chroot(root, "git", "--version").startswith("git version")
    assert "uid=1000(user) gid=1000(user)" in chroot(root, "su", "-", "user", "-c", "id")
    assert chroot(root, "ls", "/etc/ssl/certs/ca-certificates.crt").strip()


def test_manifest_and_store(base_template: TemplateInfo, test_data_dir: Path) -> None:
    manifest = json.loads((base_template.rootfs.parent / "manifest.json").read_text())
    assert manifest["name"] == "base" and manifest["runtime"] == "gvisor"
    assert {"python3", "git", "curl"} <= set(manifest["packages"])
    assert any(p.startswith("python3=") for p in manifest["installed_packages"])
    assert 50 * 2**20 < manifest["size_bytes"] < 600 * 2**20
    store = TemplateStore(Settings(data_dir=test_data_dir))
    assert store.get("base") == base_template
    assert store.rootfs("base") == base_template.rootfs


def test_second_build_is_a_no_op(base_template: TemplateInfo, test_data_dir: Path) -> None:
    started = time.monotonic()
    again = build_template(Settings(data_dir=test_data_dir), "base")
    assert time.monotonic() - started < 5
    assert again.created_at == base_template.created_at
