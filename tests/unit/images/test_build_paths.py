"""build_template's control flow, with a fake debootstrap on PATH (no network).

The real build is covered by tests/integration/test_images.py.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from atelier.config import Settings
from atelier.errors import InvalidRequest, RuntimeFailure
from atelier.images.debootstrap import BUILDER_VERSION, ProgressEvent, build_template

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="build_template needs root")

FAILING = """#!/bin/sh
echo "I: Retrieving InRelease "
echo "I: Resolving dependencies of required packages..."
echo "E: Couldn't find these debs: nosuchpkg" >&2
exit 1
"""


@pytest.fixture
def fake_debootstrap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "debootstrap"
    script.write_text(FAILING)
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    return script


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data")


def ready_template(
    settings: Settings, name: str = "base", builder_version: int = BUILDER_VERSION
) -> Path:
    tdir = settings.templates_dir / name
    (tdir / "rootfs").mkdir(parents=True)
    (tdir / "rootfs/marker").write_text("old")
    manifest = {"name": name, "runtime": "gvisor", "builder_version": builder_version}
    (tdir / "manifest.json").write_text(json.dumps(manifest))
    return tdir


def leftovers(settings: Settings) -> list[str]:
    return sorted(p.name for p in settings.templates_dir.iterdir() if p.is_dir())


def test_failure_reports_the_log_tail_and_leaves_nothing_half_built(
    settings: Settings, fake_debootstrap: Path
) -> None:
    events: list[ProgressEvent] = []
    with pytest.raises(RuntimeFailure) as exc:
        build_template(settings, "base", on_progress=events.append)
    assert "debootstrap exited with status 1" in exc.value.message
    assert "Couldn't find these debs: nosuchpkg" in exc.value.message
    assert leftovers(settings) == []  # no base/, no .base.build-*/
    assert (settings.templates_dir / ".base.build.log").exists()
    assert events[0].phase == "prepare"


def test_ready_template_is_a_no_op(settings: Settings, fake_debootstrap: Path) -> None:
    ready_template(settings)
    events: list[ProgressEvent] = []
    info = build_template(settings, "base", on_progress=events.append)
    assert info.ready
    assert events == [ProgressEvent("done", 1, 1, "already built")]


def test_template_from_an_older_builder_is_rebuilt(
    settings: Settings, fake_debootstrap: Path
) -> None:
    ready_template(settings, builder_version=BUILDER_VERSION - 1)
    events: list[ProgressEvent] = []
    with pytest.raises(RuntimeFailure):  # the fake debootstrap fails: proof a build was tried
        build_template(settings, "base", on_progress=events.append)
    assert ProgressEvent("done", 1, 1, "already built") not in events


def test_failed_forced_rebuild_keeps_the_old_template(
    settings: Settings, fake_debootstrap: Path
) -> None:
    tdir = ready_template(settings)
    with pytest.raises(RuntimeFailure):
        build_template(settings, "base", force=True)
    assert (tdir / "rootfs/marker").read_text() == "old"
    assert leftovers(settings) == ["base"]


def test_stale_build_dirs_are_swept(settings: Settings, fake_debootstrap: Path) -> None:
    stale = settings.templates_dir / ".base.build-deadbeef/rootfs"
    stale.mkdir(parents=True)
    with pytest.raises(RuntimeFailure):
        build_template(settings, "base")
    assert leftovers(settings) == []


def test_timeout_kills_debootstrap(settings: Settings, fake_debootstrap: Path) -> None:
    fake_debootstrap.write_text("#!/bin/sh\necho 'I: Retrieving InRelease '\nexec sleep 60\n")
    started = time.monotonic()
    with pytest.raises(RuntimeFailure, match="longer than"):
        build_template(settings, "base", timeout=0.5)
    assert time.monotonic() - started < 20
    assert leftovers(settings) == []


def test_bad_names(settings: Settings) -> None:
    with pytest.raises(InvalidRequest):
        build_template(settings, "../evil")
    with pytest.raises(InvalidRequest):
        build_template(settings, "base", packages=["ok", "bad;rm -rf"])
