"""TemplateStore: ready vs half-built directories, lookup errors, removal."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from atelier.config import Settings
from atelier.errors import InvalidRequest, TemplateNotFound
from atelier.images.store import TemplateStore, safe_rmtree
from ci_support import skip_unless_ci


def make_template(root: Path, name: str, *, manifest: bool = True, rootfs: bool = True) -> Path:
    tdir = root / "templates" / name
    tdir.mkdir(parents=True)
    if rootfs:
        (tdir / "rootfs/usr/bin").mkdir(parents=True)
    if manifest:
        (tdir / "manifest.json").write_text(
            json.dumps(
                {
                    "name": name,
                    "runtime": "gvisor",
                    "created_at": "2026-11-27T18:22:26Z",
                    "suite": "bookworm",
                    "packages": ["bash", "python3"],
                    "size_bytes": 1234,
                }
            )
        )
    return tdir


@pytest.fixture
def store(tmp_path: Path) -> TemplateStore:
    return TemplateStore(Settings(data_dir=tmp_path))


def test_empty_store(store: TemplateStore) -> None:
    assert store.list() == []
    with pytest.raises(TemplateNotFound, match="known templates: none"):
        store.get("base")


def test_ready_and_half_built(store: TemplateStore, tmp_path: Path) -> None:
    make_template(tmp_path, "base")
    make_template(tmp_path, "crashed", manifest=False)  # no manifest: never ready
    make_template(tmp_path, "norootfs", rootfs=False)
    make_template(tmp_path, ".base.build-1234abcd", manifest=False)  # build in progress
    (tmp_path / "templates/.base.lock").touch()
    (tmp_path / "templates/stray-file").touch()
    infos = {t.name: t for t in store.list()}
    assert sorted(infos) == ["base", "crashed", "norootfs"]
    base = infos["base"]
    assert base.ready and base.runtime == "gvisor" and base.size_bytes == 1234
    assert base.created_at is not None and base.created_at.year == 2026
    assert base.suite == "bookworm" and base.packages == ("bash", "python3")
    assert base.rootfs == tmp_path / "templates/base/rootfs"
    assert not infos["crashed"].ready and infos["crashed"].size_bytes is None
    assert not infos["norootfs"].ready
    assert store.rootfs("base") == base.rootfs
    assert store.get("crashed").ready is False
    with pytest.raises(TemplateNotFound, match="not built yet"):
        store.rootfs("crashed")


def test_corrupt_manifest_is_not_ready(store: TemplateStore, tmp_path: Path) -> None:
    tdir = make_template(tmp_path, "base")
    (tdir / "manifest.json").write_text('{"name": "ba')
    assert not store.get("base").ready


def test_unknown_template_lists_known_ones(store: TemplateStore, tmp_path: Path) -> None:
    make_template(tmp_path, "base")
    make_template(tmp_path, "ml")
    with pytest.raises(TemplateNotFound) as exc:
        store.get("nope")
    assert "known templates: base, ml" in exc.value.message
    assert exc.value.details == {"template": "nope"}
    with pytest.raises(TemplateNotFound):
        store.get("../etc")  # never a path outside the store


def test_remove(store: TemplateStore, tmp_path: Path) -> None:
    make_template(tmp_path, "base")
    store.remove("base")
    assert store.list() == []
    assert [p.name for p in (tmp_path / "templates").iterdir()] == [".base.lock"]
    with pytest.raises(TemplateNotFound):
        store.remove("base")
    with pytest.raises(InvalidRequest):
        store.remove("../x")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to bind-mount")
def test_safe_rmtree_never_deletes_through_a_mount(tmp_path: Path) -> None:
    precious = tmp_path / "host-dev"
    precious.mkdir()
    (precious / "sentinel").write_text("keep me")
    tree = tmp_path / "rootfs"
    (tree / "dev").mkdir(parents=True)
    mounted = subprocess.run(["mount", "--bind", str(precious), str(tree / "dev")], check=False)
    if mounted.returncode != 0:
        skip_unless_ci("bind mount not permitted here")
    try:
        safe_rmtree(tree)
    finally:
        subprocess.run(["umount", "-l", str(tree / "dev")], check=False, capture_output=True)
    assert not tree.exists()
    assert (precious / "sentinel").read_text() == "keep me"
