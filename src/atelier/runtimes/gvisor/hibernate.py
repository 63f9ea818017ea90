"""Hibernate, wake, snapshots and sandboxes made from snapshots (gVisor).

Files (beside the others of a sandbox dir, see files.py)::

    hibernate.tmp/   a hibernation being written (a crash leaves it: removed
                     by the next hibernate, start, stop or destroy)
    hibernate/       a complete hibernation: checkpoint.img + image.json
                     (renamed from hibernate.tmp once complete)
    restore.json     {"snapshot": <dir>}: the first start restores that
                     snapshot's memory instead of booting

A snapshot directory (shared read-only by every sandbox made from it)::

    layer/           the sandbox's own changes (its overlay upper dir, with
                     whiteouts, opaque dirs, owners, modes, xattrs, hard links
                     and holes) and its /tmp as layer/tmp
    memory/          checkpoint.img (memory snapshots only)
    snapshot.json    format, runtime, has_memory, layers (the ancestors'),
                     vcpus, memory_mib, disk_mib, template, source, hostname

The sandbox is consistent at the captured instant: a memory capture copies
the layer while the sandbox is checkpointed (no process runs), a file-only
capture flushes the sandbox's caches (``sync`` inside) and copies under
``runsc pause``. See docs/hibernate.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import (
    AtelierError,
    Conflict,
    InvalidRequest,
    InvalidStateTransition,
    RuntimeFailure,
)
from ..base import SandboxSpec
from ..common import boot_id
from . import checkpoint, layers
from .files import SandboxFiles
from .proc import run_command

if TYPE_CHECKING:
    from .runtime import GVisorRuntime

__all__ = [
    "FORMAT_VERSION",
    "SNAPSHOT_META",
    "create_from_snapshot",
    "discard_image",
    "hibernate",
    "is_hibernated",
    "load_snapshot_meta",
    "pending_restore",
    "restore_snapshot",
    "snapshot",
    "wake",
]

FORMAT_VERSION = 1
SNAPSHOT_META = "snapshot.json"
_IMAGE_META = "image.json"
_RESTORE = "restore.json"
_RUNNING = ("running", "paused")


def _image(files: SandboxFiles) -> Path:
    return files.base / "hibernate"


def _image_tmp(files: SandboxFiles) -> Path:
    return files.base / "hibernate.tmp"


def is_hibernated(files: SandboxFiles) -> bool:
    """A complete hibernation image exists (the dir is renamed into place last)."""
    return (_image(files) / checkpoint.IMAGE_FILE).is_file()


def discard_image(files: SandboxFiles) -> None:
    for path in (_image(files), _image_tmp(files)):
        if path.exists():
            shutil.rmtree(path)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _refuse_network(spec: SandboxSpec, what: str) -> None:
    if spec.network is not None and spec.network.enabled:
        raise InvalidRequest(
            f"{what} is not supported for sandboxes with a network (mode "
            f"{spec.network.mode!r}) on gVisor: runsc cannot restore a sandbox into "
            "its re-made network namespace"
        )


# -- capture ----------------------------------------------------------------------------
async def _capture_memory(rt: GVisorRuntime, files: SandboxFiles, image_dir: Path) -> None:
    """Checkpoint the running sandbox into ``image_dir``; afterwards its
    container is stopped (no process runs). On failure the sandbox runs on
    with its agent listening, or -- if gVisor gave up on it -- is stopped."""
    runsc = rt.runsc
    await checkpoint.release_agent(runsc, files)
    try:
        result = await checkpoint.checkpoint(runsc, files, image_dir)
    except BaseException:
        with contextlib.suppress(Exception):
            await _retake_if_running(rt, files)
        raise
    if result.ok:
        return
    detail = checkpoint.first_error(result)
    if await _retake_if_running(rt, files):
        raise RuntimeFailure(f"runsc checkpoint of {files.base.name} failed: {detail}")
    raise RuntimeFailure(
        f"runsc checkpoint of {files.base.name} failed and gVisor stopped the sandbox "
        f"(its files are kept; start boots it again): {detail}"
    )


async def _retake_if_running(rt: GVisorRuntime, files: SandboxFiles) -> bool:
    current = await rt.runsc.state(files.cid, log=files.runsc_log)
    if current is not None and current.status in _RUNNING:
        await checkpoint.retake_agent(rt.runsc, files)
        return True
    return False


async def _running(rt: GVisorRuntime, files: SandboxFiles) -> str:
    current = await rt._current(files)
    if current is None or current.status not in _RUNNING:
        raise InvalidStateTransition(f"sandbox {files.base.name} is not running")
    if current.status == "paused":
        await rt._unpause(files)
    return current.status


async def _restore(rt: GVisorRuntime, files: SandboxFiles, image_dir: Path) -> None:
    """Restore ``image_dir`` into the sandbox's (absent) container and let
    the agent listen; on failure nothing of the attempt is left running."""
    runsc = rt.runsc
    current = await rt._current(files)
    if current is not None:
        await runsc.delete(files.cid, force=True, log=files.runsc_log)
    spec = rt._load_spec(files)
    await layers.ensure_mounted(files.layers, spec.rootfs, spec.layers)
    await rt._write_bundle(spec, files)
    with contextlib.suppress(FileNotFoundError):
        files.agent_socket.unlink()
    _ensure_file(files.agent_log)  # the restored agent reopens its log by path
    try:
        result = await checkpoint.restore(runsc, files, image_dir)
        if not result.ok:
            raise RuntimeFailure(
                f"runsc restore of {files.base.name} failed: {checkpoint.first_error(result)}",
                details={"console": str(files.console), "runsc_log": str(files.runsc_log)},
            )
        await checkpoint.retake_agent(runsc, files)
    except BaseException:
        with contextlib.suppress(Exception):
            await rt._abort_start(files.base.name, files)
            await layers.unmount_all(files.base)
        raise
    files.started.write_text(boot_id())


def _ensure_file(path: Path) -> None:
    """Create ``path`` if missing, never through a link the sandbox planted."""
    with contextlib.suppress(OSError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640))


# -- hibernate / wake ---------------------------------------------------------------------
async def hibernate(rt: GVisorRuntime, files: SandboxFiles) -> None:
    """Running/paused -> hibernated (the caller holds the sandbox's lock)."""
    current = await rt._current(files)
    if is_hibernated(files) and (current is None or current.status == "stopped"):
        if current is not None:  # a crash between rename and delete
            await rt.runsc.delete(files.cid, force=True, log=files.runsc_log)
        return
    spec = rt._load_spec(files)
    _refuse_network(spec, "hibernate")
    await _running(rt, files)
    tmp = _image_tmp(files)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(mode=0o700)
    try:
        await _capture_memory(rt, files, tmp)
        _write_json(
            tmp / _IMAGE_META,
            {"format": FORMAT_VERSION, "created_at": _now(), "memory_mib": spec.memory_mib},
        )
        _fsync_dir(tmp)
        tmp.rename(_image(files))  # complete from here on
        _fsync_dir(files.base)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    await rt.runsc.delete(files.cid, force=True, log=files.runsc_log, check=False)
    await rt._kill_strays(files)
    await layers.unmount_all(files.base)


async def wake(rt: GVisorRuntime, files: SandboxFiles) -> None:
    """Hibernated -> running (the caller holds the sandbox's lock). The
    image is removed once the sandbox runs from it again."""
    current = await rt._current(files)
    if current is not None and current.status in _RUNNING:
        return
    if not is_hibernated(files):
        raise InvalidStateTransition(f"sandbox {files.base.name} is not hibernated")
    await _restore(rt, files, _image(files))
    shutil.rmtree(_image(files), ignore_errors=True)


# -- snapshots -----------------------------------------------------------------------------
def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def _copy_tree(src: Path, dest: Path) -> None:
    """``src``'s contents into the new dir ``dest``, preserving everything an
    overlay layer carries (cp -a: owners, modes, xattrs incl. trusted.overlay.*,
    hard links, device nodes = whiteouts; sparse files stay sparse)."""
    await run_command(
        ["cp", "-a", "--sparse=always", "--no-target-directory", str(src), str(dest)],
        timeout=3600,
    )


async def _copy_layer(files: SandboxFiles, dest: Path) -> None:
    paths = files.layers
    await _copy_tree(paths.upper, dest)
    tmp = dest / "tmp"
    if tmp.is_symlink() or tmp.exists():
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp)
        else:
            tmp.unlink()
    await _copy_tree(paths.tmp, tmp)


async def _sync_inside(rt: GVisorRuntime, files: SandboxFiles) -> None:
    """Flush the sandbox's file caches to its disk (best effort: an image
    without ``sync`` still gets what gVisor already wrote)."""
    with contextlib.suppress(AtelierError):
        await rt.runsc.exec(files.cid, ["sync"], log=files.runsc_log, timeout=60)


async def snapshot(rt: GVisorRuntime, files: SandboxFiles, dest: Path, *, memory: bool) -> None:
    """Capture the running sandbox into ``dest`` (caller holds the lock)."""
    dest = Path(os.path.abspath(dest))
    made_dest = not dest.exists()
    if not made_dest and (not dest.is_dir() or any(dest.iterdir())):
        raise Conflict(f"snapshot destination {dest} exists and is not empty")
    spec = rt._load_spec(files)
    if memory:
        _refuse_network(spec, "a memory snapshot")
    status = await _running(rt, files)
    dest.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        if memory:
            await _snapshot_with_memory(rt, files, dest)
        else:
            await _snapshot_files(rt, files, dest)
        meta = {
            "format": FORMAT_VERSION,
            "runtime": rt.name,
            "has_memory": memory,
            "layers": [str(p) for p in spec.layers],
            "vcpus": spec.vcpus,
            "memory_mib": spec.memory_mib,
            "disk_mib": spec.disk_mib,
            "template": spec.template,
            "hostname": spec.hostname,
            "source": files.base.name,
            "created_at": _now(),
        }
        _write_json(dest / SNAPSHOT_META, meta)
    except BaseException:
        if made_dest:
            shutil.rmtree(dest, ignore_errors=True)
        else:
            for child in list(dest.iterdir()):
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        raise
    finally:
        if status == "paused":
            with contextlib.suppress(AtelierError):
                current = await rt._current(files)
                if current is not None and current.status == "running":
                    await rt._freeze(files)


async def _snapshot_with_memory(rt: GVisorRuntime, files: SandboxFiles, dest: Path) -> None:
    image = dest / "memory"
    image.mkdir(mode=0o700)
    await _capture_memory(rt, files, image)
    # The container is stopped: nothing writes the disk while it is copied.
    try:
        await _copy_layer(files, dest / "layer")
    finally:
        await _restore(rt, files, image)


async def _snapshot_files(rt: GVisorRuntime, files: SandboxFiles, dest: Path) -> None:
    await _sync_inside(rt, files)
    await rt.runsc.pause(files.cid, log=files.runsc_log)
    try:
        await _copy_layer(files, dest / "layer")
    finally:
        await rt.runsc.resume(files.cid, log=files.runsc_log)


def load_snapshot_meta(snapshot: Path) -> dict[str, Any]:
    """The snapshot's ``snapshot.json``, checked (InvalidRequest if unusable)."""
    path = snapshot / SNAPSHOT_META
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InvalidRequest(f"{snapshot} is not a complete snapshot (no {SNAPSHOT_META})") from exc
    except (OSError, ValueError) as exc:
        raise InvalidRequest(f"cannot read {path}: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
        raise InvalidRequest(f"{path}: not a snapshot of format {FORMAT_VERSION}")
    if meta.get("runtime") != "gvisor":
        raise InvalidRequest(f"{snapshot} is a {meta.get('runtime')!r} snapshot, not a gvisor one")
    if not (snapshot / "layer").is_dir():
        raise InvalidRequest(f"snapshot {snapshot} has no layer/")
    if meta.get("has_memory") and not (snapshot / "memory" / checkpoint.IMAGE_FILE).is_file():
        raise InvalidRequest(f"snapshot {snapshot} has no memory image")
    return meta


def snapshot_spec(spec: SandboxSpec, snapshot: Path, meta: dict[str, Any]) -> SandboxSpec:
    """``spec`` checked against the snapshot. Empty ``spec.layers`` (a caller
    that only knows the snapshot dir, e.g. pre-booting) become the snapshot's
    layer over its recorded ancestors; otherwise they must start with it."""
    layer = snapshot / "layer"
    if not spec.layers:
        ancestors = meta.get("layers") or []
        spec = dataclasses.replace(spec, layers=(layer, *(Path(str(p)) for p in ancestors)))
    elif Path(os.path.abspath(spec.layers[0])) != layer:
        raise InvalidRequest(f"spec.layers must start with the snapshot's layer {layer}")
    if meta.get("has_memory"):
        _refuse_network(spec, "restoring a memory snapshot")
        for key in ("vcpus", "memory_mib"):
            if getattr(spec, key) != meta.get(key):
                raise InvalidRequest(
                    f"{key}={getattr(spec, key)} differs from the memory snapshot's "
                    f"{meta.get(key)}; a restored sandbox keeps the snapshot's shape"
                )
    return spec


async def create_from_snapshot(rt: GVisorRuntime, spec: SandboxSpec, snapshot: Path) -> None:
    """Create ``spec`` (whose layers start with ``snapshot/layer``) with the
    snapshot's /tmp; with a memory image, the first start restores it."""
    snapshot = Path(os.path.abspath(snapshot))
    meta = await asyncio.to_thread(load_snapshot_meta, snapshot)
    spec = snapshot_spec(spec, snapshot, meta)
    files = rt.files(spec.sandbox_id)
    if files.complete() and rt._load_spec(files) == spec:
        return  # already created (create's own idempotence)
    await rt.create(spec)
    try:
        async with rt._locked(spec.sandbox_id):
            tmp = files.layers.tmp
            shutil.rmtree(tmp)
            source_tmp = snapshot / "layer" / "tmp"
            if source_tmp.is_dir() and not source_tmp.is_symlink():
                await _copy_tree(source_tmp, tmp)
            else:
                tmp.mkdir()
                os.chmod(tmp, 0o1777)
            if meta.get("has_memory"):
                _write_json(files.base / _RESTORE, {"snapshot": str(snapshot)})
    except BaseException:
        with contextlib.suppress(Exception):
            await rt.destroy(spec.sandbox_id)
        raise


def pending_restore(files: SandboxFiles) -> Path | None:
    """The memory image the next start restores (only before the first start)."""
    if files.started.exists():
        return None
    try:
        data = json.loads((files.base / _RESTORE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise RuntimeFailure(f"corrupt {files.base / _RESTORE}: {exc}") from exc
    return Path(str(data["snapshot"])) / "memory"


async def restore_snapshot(rt: GVisorRuntime, files: SandboxFiles, image: Path) -> None:
    """The first start of a sandbox made from a memory snapshot."""
    if not (image / checkpoint.IMAGE_FILE).is_file():
        raise RuntimeFailure(f"the memory image {image} of sandbox {files.base.name} is gone")
    await _restore(rt, files, image)
