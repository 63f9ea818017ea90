"""The versioned template layout: publish, pinning paths, legacy migration, GC, leases."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from atelier.config import Settings
from atelier.errors import TemplateNotFound
from atelier.images.store import TemplateStore, publish_version, read_manifest


def _settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data")


def _publish(settings: Settings, name: str, marker: str) -> int:
    work = settings.templates_dir / f".{name}.build-{marker}"
    (work / "rootfs").mkdir(parents=True)
    (work / "rootfs" / "marker").write_text(marker)
    (work / "manifest.json").write_text(
        json.dumps({"name": name, "runtime": "gvisor", "created_at": "2026-11-28T10:00:00Z"})
    )
    return publish_version(settings.templates_dir, name, work)


def _legacy(settings: Settings, name: str, marker: str) -> Path:
    tdir = settings.templates_dir / name
    (tdir / "rootfs").mkdir(parents=True)
    (tdir / "rootfs" / "marker").write_text(marker)
    (tdir / "manifest.json").write_text(json.dumps({"name": name, "runtime": "gvisor"}))
    return tdir


def test_every_publish_is_a_new_immutable_version(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    store = TemplateStore(settings)
    assert _publish(settings, "web", "one") == 1
    first = store.get("web")
    assert first.version == 1 and first.ready
    assert first.rootfs == settings.templates_dir / "web/versions/1/rootfs"
    assert _publish(settings, "web", "two") == 2
    second = store.get("web")
    assert second.version == 2 and second.versions == (1, 2)
    assert (second.rootfs / "marker").read_text() == "two"
    # the first version's files are untouched: a sandbox pinned to it sees them
    assert (first.rootfs / "marker").read_text() == "one"
    assert store.get_version("web", 1).rootfs == first.rootfs
    # the compatibility links follow the current version
    tdir = settings.templates_dir / "web"
    assert (tdir / "rootfs" / "marker").read_text() == "two"
    assert read_manifest(tdir) is not None
    assert os.readlink(tdir / "current") == "versions/2"
    assert [t.name for t in store.list()] == ["web"]
    assert first.stamp != second.stamp
    with pytest.raises(TemplateNotFound):
        store.get_version("web", 9)


def test_collect_garbage_keeps_current_pinned_and_leased(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    store = TemplateStore(settings)
    for marker in ("a", "b", "c", "d"):
        _publish(settings, "web", marker)
    assert store.collect_garbage("web", None) == []  # unknown users: keep everything
    store.checkout("web", lease=60)  # version 4, current anyway
    assert store.collect_garbage("web", {2}) == [1, 3]
    assert store.get("web").versions == (2, 4)
    assert not (settings.templates_dir / "web/versions/1").exists()
    assert not list((settings.templates_dir / "web").glob(".gc-*"))
    _publish(settings, "web", "e")
    # version 4 was handed out for a create a moment ago: protected by its lease
    assert store.collect_garbage("web", set()) == [2]
    assert store.get("web").versions == (4, 5)


def test_legacy_layout_reads_as_version_one_and_migrates(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    store = TemplateStore(settings)
    tdir = _legacy(settings, "base", "old")
    info = store.get("base")
    assert (info.version, info.versions, info.ready) == (1, (1,), True)
    assert info.rootfs == tdir / "rootfs"  # what sandboxes made before the upgrade mount
    assert store.collect_garbage("base", set()) == []  # nothing to collect in a legacy dir
    assert _publish(settings, "base", "new") == 2
    new = store.get("base")
    assert new.version == 2 and new.versions == (1, 2)
    assert (new.rootfs / "marker").read_text() == "new"
    old = store.get_version("base", 1)
    assert old.rootfs == tdir / "rootfs" and (old.rootfs / "marker").read_text() == "old"
    assert old.ready
    # the legacy tree stays in place while version 1 is in use ...
    assert store.collect_garbage("base", {1}) == []
    assert (tdir / "rootfs").is_dir() and not (tdir / "rootfs").is_symlink()
    # ... and goes with it; <name>/rootfs then follows the current version
    assert store.collect_garbage("base", set()) == [1]
    assert (tdir / "rootfs").is_symlink()
    assert (tdir / "rootfs" / "marker").read_text() == "new"
    assert store.get("base").versions == (2,)


def test_template_dir_may_be_a_symlink_to_a_shared_cache(tmp_path: Path) -> None:
    cache = _settings(tmp_path / "cache")
    _legacy(cache, "base", "shared")
    settings = _settings(tmp_path)
    settings.templates_dir.mkdir(parents=True)
    (settings.templates_dir / "base").symlink_to(cache.templates_dir / "base")
    info = TemplateStore(settings).checkout("base", lease=0)
    assert info.version == 1 and (info.rootfs / "marker").read_text() == "shared"


def test_remove_deletes_every_version(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    _publish(settings, "web", "a")
    _publish(settings, "web", "b")
    TemplateStore(settings).remove("web")
    assert not (settings.templates_dir / "web").exists()
    assert [p.name for p in settings.templates_dir.iterdir() if not p.name.endswith(".lock")] == []
