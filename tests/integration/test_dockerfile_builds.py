"""Dockerfile builds against the real runsc: RUN in gVisor sandboxes, the step
cache, COPY/ADD on the host, multi-stage, failure cleanup.

One data dir for the module (``templates/base`` links to the suite's shared
base template); the main Dockerfile is built once cold, then rebuilt.
"""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from server_harness import find_leaks

from atelier.config import Settings
from atelier.errors import BuildFailed, InvalidDockerfile
from atelier.images.dockerfile import build_dockerfile
from atelier.images.dockerfile.cache import BuildCache
from atelier.images.store import TemplateInfo, TemplateStore, read_manifest
from atelier.runtimes.gvisor import GVisorRuntime
from ci_support import skip_unless_ci

pytestmark = pytest.mark.integration

DOCKERFILE = """\
# syntax=docker/dockerfile:1
ARG BASE=base
FROM ${BASE} AS tools
RUN mkdir -p /out && echo built-in-tools > /out/tool.txt

FROM base
ARG GREETING=hello
ENV FOO=bar
# delete a base file, replace a base directory, add files and a user
RUN rm /etc/issue \\
 && rm -rf /etc/apt/apt.conf.d && mkdir /etc/apt/apt.conf.d \\
 && echo new > /etc/apt/apt.conf.d/99new \\
 && echo "$GREETING" > /greeting \\
 && useradd -m -u 1500 builder
COPY --chown=builder:builder --chmod=0640 app/config.txt /srv/app/
COPY --from=tools /out/tool.txt /opt/tool.txt
ADD files.tar.gz /opt/extracted/
USER builder
WORKDIR /srv/work
RUN test "$FOO" = bar && id -un | grep -qx builder && test "$GREETING" = hello \\
 && test "$(pwd)" = /srv/work && touch mine
EXPOSE 8080
LABEL org.example.kind=test
CMD ["sleep", "infinity"]
"""


@pytest.fixture(scope="module")
def settings(base_template: TemplateInfo) -> Iterator[Settings]:
    if os.geteuid() != 0:
        skip_unless_ci("Dockerfile builds need root")
    data = Path(tempfile.mkdtemp(prefix="atl-df-", dir="/var/tmp"))
    (data / "templates").mkdir()
    (data / "templates" / "base").symlink_to(base_template.rootfs.parent)
    s = Settings(data_dir=data)
    status = GVisorRuntime(s).availability()
    if not status.available:
        skip_unless_ci(f"gvisor runtime unavailable: {status.reason}")
    yield s
    leaks = find_leaks(data / "builds")
    shutil.rmtree(data, ignore_errors=True)
    assert leaks.empty(), leaks


@pytest.fixture(scope="module")
def context() -> Iterator[Path]:
    ctx = Path(tempfile.mkdtemp(prefix="atl-df-ctx-", dir="/var/tmp"))
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    (ctx / "app").mkdir()
    (ctx / "app" / "config.txt").write_text("v1\n")
    (ctx / "notes.log").write_text("ignored\n")
    (ctx / ".dockerignore").write_text("*.log\n")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = b"from the archive\n"
        info = tarfile.TarInfo("pkg/data.txt")
        info.size, info.uid, info.gid, info.mode = len(data), 7, 8, 0o600
        tar.addfile(info, io.BytesIO(data))
    (ctx / "files.tar.gz").write_bytes(buf.getvalue())
    yield ctx
    shutil.rmtree(ctx, ignore_errors=True)


class Counter:
    def __init__(self) -> None:
        self.created = 0


@pytest.fixture
def sandboxes(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """Counts the sandboxes builds create."""
    counter = Counter()
    original = GVisorRuntime.create

    async def create(self: GVisorRuntime, spec: Any) -> None:
        counter.created += 1
        await original(self, spec)

    monkeypatch.setattr(GVisorRuntime, "create", create)
    return counter


def build(settings: Settings, name: str, context: Path, **kw: Any) -> tuple[TemplateInfo, float]:
    lines: list[str] = []
    started = time.monotonic()
    info = asyncio.run(build_dockerfile(settings, name, context=context, on_log=lines.append, **kw))
    return info, time.monotonic() - started


def steps(info: TemplateInfo) -> list[dict[str, Any]]:
    manifest = read_manifest(info.rootfs.parent)
    assert manifest is not None
    return list(manifest["steps"])


def assert_clean(settings: Settings) -> None:
    builds = settings.data_dir / "builds"
    leaks = find_leaks(builds)
    assert leaks.empty(), leaks
    assert not [p for p in builds.iterdir() if p.name.startswith("work-")]
    runsc_root = builds / "runsc"
    listed = subprocess.run(
        ["runsc", "--root", str(runsc_root), "list", "--quiet"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    assert listed.strip() == ""
    cache = settings.data_dir / "build-cache"
    assert not [p for p in cache.iterdir() if p.name.startswith(".tmp-")]
    assert str(settings.data_dir) not in Path("/proc/mounts").read_text()


@pytest.fixture(scope="module")
def cold(settings: Settings, context: Path) -> tuple[TemplateInfo, float]:
    return build(settings, "app", context)


def test_cold_build_result(settings: Settings, cold: tuple[TemplateInfo, float]) -> None:
    info, seconds = cold
    print(f"cold build: {seconds:.1f} s")
    root = info.rootfs
    assert info.ready and info.name == "app"
    # the deleted base file is gone, the replaced directory holds only the new file
    assert not os.path.lexists(root / "etc/issue")
    assert os.listdir(root / "etc/apt/apt.conf.d") == ["99new"]
    assert (root / "greeting").read_text() == "hello\n"
    cfg = os.stat(root / "srv/app/config.txt")
    assert (cfg.st_uid, cfg.st_gid, stat.S_IMODE(cfg.st_mode)) == (1500, 1500, 0o640)
    assert (root / "opt/tool.txt").read_text() == "built-in-tools\n"  # COPY --from
    extracted = os.stat(root / "opt/extracted/pkg/data.txt")  # ADD of a local archive
    assert (extracted.st_uid, extracted.st_gid, stat.S_IMODE(extracted.st_mode)) == (7, 8, 0o600)
    assert os.stat(root / "srv/work").st_uid == 1500  # WORKDIR made as the USER
    assert os.stat(root / "srv/work/mine").st_uid == 1500
    assert not (root / "out").exists()  # the tools stage is not in the result
    assert not (root / ".atelier/runtime").exists()  # no runtime leftovers
    manifest = read_manifest(info.rootfs.parent)
    assert manifest is not None
    assert manifest["builder"] == "dockerfile" and manifest["runtime"] == "gvisor"
    image = manifest["image"]
    assert "FOO=bar" in image["env"]
    assert image["user"] == "builder" and image["working_dir"] == "/srv/work"
    assert image["cmd"] == ["sleep", "infinity"]
    assert image["exposed_ports"] == ["8080/tcp"]
    assert image["labels"] == {"org.example.kind": "test"}
    runs = [s for s in manifest["steps"] if s["instruction"].startswith("RUN")]
    assert len(runs) == 3 and not any(s["cached"] for s in runs)
    assert {s["stage"] for s in manifest["steps"]} == {"tools", "1"}
    assert_clean(settings)


def test_run_diff_keeps_whiteouts_and_opaque_dirs(
    settings: Settings, cold: tuple[TemplateInfo, float]
) -> None:
    info, _ = cold
    step = next(s for s in steps(info) if "rm /etc/issue" in s["instruction"])
    diff = BuildCache(settings).path(step["key"]) / "diff"
    whiteout = os.lstat(diff / "etc/issue")
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0
    assert os.getxattr(diff / "etc/apt/apt.conf.d", "trusted.overlay.opaque") == b"y"
    assert not (diff / "etc/hostname").exists()  # the runtime's identity files are not in it


def test_rebuild_is_fully_cached(
    settings: Settings, context: Path, cold: tuple[TemplateInfo, float], sandboxes: Counter
) -> None:
    (context / "notes.log").write_text("changed, but ignored\n")
    info, seconds = build(settings, "app", context)
    print(f"cached rebuild: {seconds:.1f} s (cold {cold[1]:.1f} s)")
    assert all(s["cached"] for s in steps(info)), steps(info)
    assert sandboxes.created == 0
    assert not os.path.lexists(info.rootfs / "etc/issue")
    assert_clean(settings)


def test_copy_change_invalidates_from_that_step(
    settings: Settings, context: Path, cold: tuple[TemplateInfo, float], sandboxes: Counter
) -> None:
    (context / "app" / "config.txt").write_text("v2\n")
    try:
        info, _ = build(settings, "app2", context)
    finally:
        (context / "app" / "config.txt").write_text("v1\n")
    done = [s for s in steps(info) if s["stage"] == "1"]  # (the tools stage: all cached)
    first = next(i for i, s in enumerate(done) if "app/config.txt" in s["instruction"])
    assert all(s["cached"] for s in done[:first])
    assert not any(s["cached"] for s in done[first:])
    assert sandboxes.created == 1  # only the last RUN ran again
    assert (info.rootfs / "srv/app/config.txt").read_text() == "v2\n"
    assert_clean(settings)


def test_target_stage(settings: Settings, context: Path, cold: tuple[TemplateInfo, float]) -> None:
    info, _ = build(settings, "tools-only", context, target="tools")
    assert (info.rootfs / "out/tool.txt").exists()
    assert not (info.rootfs / "greeting").exists()
    assert all(s["stage"] == "tools" for s in steps(info))


def test_run_failure_leaves_nothing(settings: Settings, tmp_path: Path, sandboxes: Counter) -> None:
    (tmp_path / "Dockerfile").write_text(
        "FROM base\nENV X=1\nRUN echo about to fail && echo on stderr >&2 && exit 3\n"
    )
    with pytest.raises(BuildFailed) as err:
        build(settings, "broken", tmp_path)
    exc = err.value
    assert "Dockerfile:3" in exc.message and "exit code 3" in exc.message
    assert exc.details["exit_code"] == 3
    assert "about to fail" in exc.details["output"]
    assert "on stderr" in exc.details["output"]
    assert "no network" in exc.details["hint"]
    assert sandboxes.created == 1
    store = TemplateStore(settings)
    assert "broken" not in [t.name for t in store.list()]
    assert not list(settings.templates_dir.glob(".broken.*-*"))
    assert_clean(settings)


def test_invalid_dockerfile_is_refused_before_any_work(
    settings: Settings, tmp_path: Path, sandboxes: Counter
) -> None:
    (tmp_path / "Dockerfile").write_text("FROM base\nRUN true\nHEALTHCHECK CMD true\n")
    with pytest.raises(InvalidDockerfile, match="Dockerfile:3: HEALTHCHECK"):
        build(settings, "invalid", tmp_path)
    assert sandboxes.created == 0
