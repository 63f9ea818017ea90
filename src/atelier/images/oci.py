"""Templates from OCI images: ``skopeo`` pulls, ``umoci`` unpacks.

Every pulled or imported image goes into ONE OCI image layout shared by all
templates, ``<data_dir>/oci/``, tagged with the template's name. Its blobs are
content-addressed (``blobs/sha256/<digest>``), so a layer that several images
share is downloaded and stored once; skopeo skips blobs it already has.

A pull, step by step (the template name's lock held throughout):

1. the reference is normalized and rewritten by the configured mirrors
   (:mod:`.registry_config`); a tag is resolved to a digest with
   ``skopeo inspect --raw`` so the template records exactly what it got;
2. ``skopeo copy`` writes into a private pull layout in ``<data_dir>/oci-work/``
   whose ``blobs`` is a link to the shared layout's: blobs land in the shared
   store, the shared ``index.json`` is not touched yet;
3. ``umoci unpack`` builds the root filesystem from that pull layout (it
   applies whiteouts and keeps file ownership) into
   ``templates/.<name>.build-<random>/``; ``rootfs`` is moved out of umoci's
   bundle and ``manifest.json`` (ref, digest, the image config's Env, User,
   WorkingDir, Entrypoint, Cmd, ExposedPorts) is written last;
4. the build directory is renamed into place as the template's next version
   (``templates/<name>/versions/<n>/``, made current atomically; older versions
   stay for the sandboxes pinned to them), and only then is the shared index
   tagged.

A failure at any step removes the build and pull directories: nothing
half-written is left (blobs already downloaded stay in the shared store
until the next garbage collection, which runs when no pull is in progress).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import tarfile
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from hashlib import sha256
from pathlib import Path
from typing import Any

from ..config import Settings
from ..errors import Conflict, InvalidRequest, NotFound, RuntimeFailure
from .debootstrap import ProgressCallback, ProgressEvent, directory_size
from .registry_config import ImageRef, apply_mirrors, is_insecure, parse_reference
from .skopeo import (
    Credentials,
    auth_file,
    classify_error,
    parse_credentials,
    run_tool,
    scrub,
)
from .store import (
    MANIFEST_NAME,
    ROOTFS_NAME,
    TemplateInfo,
    TemplateStore,
    publish_version,
    read_manifest,
    safe_rmtree,
    template_lock,
    validate_name,
)

__all__ = [
    "BUILDER_VERSION",
    "ImageConfig",
    "collect_garbage",
    "detect_archive_format",
    "image_config",
    "import_archive",
    "layout_blob",
    "now_iso",
    "publish_build",
    "pull_template",
    "remove_image_tag",
    "sweep_builds",
    "write_json_atomic",
]

BUILDER_VERSION = 1
REF_ANNOTATION = "org.opencontainers.image.ref.name"
_DIGEST_RE = re.compile(r"^(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$")
_INDEX_TYPES = {
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
}
_EMPTY_INDEX = {"schemaVersion": 2, "manifests": []}
PULL_TIMEOUT = 1800.0


@dataclass(frozen=True, slots=True)
class ImageConfig:
    """What the image says about how to run it (the OCI image config's ``config``)."""

    env: tuple[str, ...] = ()
    user: str | None = None
    working_dir: str | None = None
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    exposed_ports: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    stop_signal: str | None = None
    architecture: str | None = None
    os: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["labels"] = dict(self.labels)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}


def _strings(value: object) -> tuple[str, ...] | None:
    if isinstance(value, list):
        return tuple(str(v) for v in value)
    return None


def image_config(blob: Mapping[str, Any]) -> ImageConfig:
    """The :class:`ImageConfig` of a parsed image config blob (lenient: the
    fields an image leaves out, or gets wrong, are left empty)."""
    cfg = blob.get("config")
    cfg = cfg if isinstance(cfg, dict) else {}
    ports = cfg.get("ExposedPorts")
    labels = cfg.get("Labels")

    def text(key: str) -> str | None:
        value = cfg.get(key)
        return str(value) if isinstance(value, str) and value else None

    arch = blob.get("architecture")
    os_name = blob.get("os")
    return ImageConfig(
        env=_strings(cfg.get("Env")) or (),
        user=text("User"),
        working_dir=text("WorkingDir"),
        entrypoint=_strings(cfg.get("Entrypoint")),
        cmd=_strings(cfg.get("Cmd")),
        exposed_ports=tuple(sorted(str(p) for p in ports)) if isinstance(ports, dict) else (),
        labels={str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {},
        stop_signal=text("StopSignal"),
        architecture=arch if isinstance(arch, str) else None,
        os=os_name if isinstance(os_name, str) else None,
    )


# -- the shared layout ---------------------------------------------------------------


def _work_dir(settings: Settings) -> Path:
    return settings.data_dir / "oci-work"


def layout_blob(layout: Path, digest: str) -> Path:
    """Path of a blob in a layout; InvalidRequest for anything but a plain digest
    (index and manifests come from images: never join an unchecked string)."""
    if not isinstance(digest, str) or not _DIGEST_RE.match(digest):
        raise InvalidRequest(f"malformed digest in image: {str(digest)[:100]!r}")
    algorithm, _, hexdigest = digest.partition(":")
    return layout / "blobs" / algorithm / hexdigest


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise RuntimeFailure(f"cannot read {what} ({path}): {exc}") from exc
    if not isinstance(data, dict):
        raise RuntimeFailure(f"{what} ({path}) is not a JSON object")
    return data


@contextlib.contextmanager
def _flock(path: Path, *, shared: bool = False, blocking: bool = True) -> Iterator[bool]:
    """A flock on ``path``; yields False (not holding it) if non-blocking and busy."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        try:
            fcntl.flock(fd, mode | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _ensure_layout(settings: Settings) -> Path:
    layout = settings.oci_dir
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    marker = layout / "oci-layout"
    if not marker.exists():
        write_json_atomic(marker, {"imageLayoutVersion": "1.0.0"})
    if not (layout / "index.json").exists():
        with _flock(_work_dir(settings) / "index.lock"):
            if not (layout / "index.json").exists():
                write_json_atomic(layout / "index.json", _EMPTY_INDEX)
    return layout


def _set_tag(settings: Settings, name: str, descriptor: Mapping[str, Any] | None) -> None:
    """Point the shared index's tag ``name`` at ``descriptor`` (None: remove it)."""
    layout = _ensure_layout(settings)
    with _flock(_work_dir(settings) / "index.lock"):
        index = _read_json(layout / "index.json", "the shared OCI index")
        manifests = [
            m
            for m in index.get("manifests") or []
            if isinstance(m, dict) and (m.get("annotations") or {}).get(REF_ANNOTATION) != name
        ]
        if descriptor is not None:
            entry = {k: descriptor[k] for k in ("mediaType", "digest", "size") if k in descriptor}
            entry["annotations"] = {REF_ANNOTATION: name}
            manifests.append(entry)
        index["manifests"] = manifests
        index.setdefault("schemaVersion", 2)
        write_json_atomic(layout / "index.json", index)


def remove_image_tag(settings: Settings, name: str) -> None:
    """Untag template ``name`` in the shared layout and collect unreferenced blobs
    (call after removing an OCI template)."""
    if (settings.oci_dir / "index.json").exists():
        _set_tag(settings, name, None)
        collect_garbage(settings, wait=True)


def collect_garbage(settings: Settings, *, wait: bool = False) -> bool:
    """``umoci gc`` on the shared layout: delete blobs no tag reaches, and the
    leftovers of crashed pulls. Pulls in progress hold a shared lock; without
    ``wait`` this returns False at once when one is running."""
    layout = settings.oci_dir
    if not (layout / "index.json").exists():
        return True
    with _flock(_work_dir(settings) / "gc.lock", blocking=wait) as held:
        if not held:
            return False
        for pattern in ("pull-*", "archive-*"):
            for stale in _work_dir(settings).glob(pattern):
                safe_rmtree(stale)  # no pull runs now: these are leftovers
        res = run_tool(["umoci", "gc", "--layout", str(layout)], timeout=600)
        if res.returncode != 0:
            raise RuntimeFailure(f"umoci gc failed: {res.stderr.strip()[-500:]}")
    return True


# -- archives ----------------------------------------------------------------------


def detect_archive_format(path: Path) -> str:
    """``"oci-archive"`` or ``"docker-archive"`` (``docker save``), by content."""
    try:
        with tarfile.open(path, "r:*") as tar:
            names = {m.name.removeprefix("./").rstrip("/") for m in tar}
    except FileNotFoundError as exc:
        raise NotFound(f"archive {path} not found", details={"archive": str(path)}) from exc
    except (tarfile.TarError, EOFError, OSError) as exc:
        reason = (str(exc).splitlines() or ["unreadable"])[0].rstrip(":")
        raise InvalidRequest(
            f"{path} is not a tar archive ({reason})", details={"archive": str(path)}
        ) from exc
    if "oci-layout" in names and "index.json" in names:
        return "oci-archive"  # (docker save >= 25 writes both; the OCI side is exact)
    if "manifest.json" in names:
        return "docker-archive"
    raise InvalidRequest(
        f"{path} is neither an OCI archive (oci-layout + index.json) nor a "
        "docker save archive (manifest.json)",
        details={"archive": str(path)},
    )


# -- the pipeline --------------------------------------------------------------------


class _Download:
    """skopeo's ``Copying blob``/``Copying config`` lines as download progress."""

    def __init__(self, emit: ProgressCallback, total: int | None) -> None:
        self.emit, self.total, self.done = emit, total, 0

    def __call__(self, line: str) -> None:
        words = line.split()
        if len(words) >= 3 and words[0] == "Copying" and words[1] in ("blob", "config"):
            self.done += 1
            total = max(self.total, self.done) if self.total is not None else None
            self.emit(ProgressEvent("download", self.done, total, f"{words[1]} {words[2][:19]}"))


@dataclass
class _Job:
    settings: Settings
    name: str
    what: str  # the image or archive, for messages
    emit: ProgressCallback
    timeout: float
    creds: Credentials | None = None
    registry: str | None = None  # contacted registry (None: an archive)

    def fail(self, stderr: str) -> Exception:
        return classify_error(scrub(stderr, self.creds), self.what, self.registry)

    def skopeo(self, args: list[str], **kw: Any) -> bytes:
        tmp = _work_dir(self.settings) / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        res = run_tool(["skopeo", *args], timeout=self.timeout, tmpdir=tmp, **kw)
        if res.returncode != 0:
            raise self.fail(res.stderr)
        return res.stdout


def _existing(
    settings: Settings, name: str, force: bool, same: Callable[[dict[str, Any]], bool]
) -> TemplateInfo | None:
    """The ready template to return instead of pulling, or None to (re)build;
    Conflict when ``name`` is another template and ``force`` is not set."""
    final = settings.templates_dir / name
    manifest = read_manifest(final) if final.is_dir() else None
    if manifest is None or force or not (final / ROOTFS_NAME).is_dir():
        return None
    if same(manifest):
        return TemplateStore(settings).get(name)
    origin = manifest.get("image_ref") or manifest.get("archive") or manifest.get("builder")
    raise Conflict(
        f"template {name!r} already exists (from {origin}); pass force=True "
        "(--force) to replace it",
        details={"template": name},
    )


def _install(
    job: _Job,
    source: str,
    copy_args: list[str],
    total_blobs: int | None,
    record: dict[str, Any],
) -> TemplateInfo:
    """skopeo copy ``source`` -> pull layout -> umoci unpack -> template ``job.name``."""
    settings, name = job.settings, job.name
    templates = settings.templates_dir
    layout = _ensure_layout(settings)
    work = templates / f".{name}.build-{uuid.uuid4().hex[:8]}"
    pull = _work_dir(settings) / f"pull-{uuid.uuid4().hex[:12]}"
    work.mkdir(mode=0o700, parents=True)
    try:
        with _flock(_work_dir(settings) / "gc.lock", shared=True):
            pull.mkdir(parents=True)
            (pull / "blobs").symlink_to(layout.resolve() / "blobs")
            job.emit(ProgressEvent("download", 0, total_blobs, f"copying {job.what}"))
            job.skopeo(
                ["copy", *copy_args, source, f"oci:{pull}:{name}"],
                on_line=_Download(job.emit, total_blobs),
            )
            index = _read_json(pull / "index.json", "the pulled image's index")
            descriptor = next(iter(index.get("manifests") or []), None)
            if not isinstance(descriptor, dict):
                raise RuntimeFailure(f"skopeo wrote no manifest for {job.what}")
            manifest = _read_json(layout_blob(pull, descriptor.get("digest", "")), "manifest")
            config_desc = manifest.get("config") or {}
            config = _read_json(layout_blob(pull, config_desc.get("digest", "")), "image config")
            layers = [d.get("digest") for d in manifest.get("layers") or [] if isinstance(d, dict)]

            job.emit(ProgressEvent("unpack", 0, 1, f"unpacking {len(layers)} layers"))
            argv = ["umoci", "unpack", "--image", f"{pull}:{name}", str(work / "bundle")]
            if os.geteuid() != 0:
                argv.insert(2, "--rootless")
            res = run_tool(argv, timeout=job.timeout)
            if res.returncode != 0:
                raise RuntimeFailure(
                    f"umoci could not unpack {job.what}: {res.stderr.strip()[-800:]}"
                )
            os.rename(work / "bundle" / ROOTFS_NAME, work / ROOTFS_NAME)
            safe_rmtree(work / "bundle")
            job.emit(ProgressEvent("unpack", 1, 1, "unpacked"))

            job.emit(ProgressEvent("finalize", 0, 1, "writing the manifest"))
            data = {
                "name": name,
                "runtime": "gvisor",
                "created_at": now_iso(),
                "builder": "oci",
                "builder_version": BUILDER_VERSION,
                **record,
                "manifest_digest": descriptor["digest"],
                "layers": layers,
                "image": image_config(config).to_json(),
                "size_bytes": directory_size(work / ROOTFS_NAME),
            }
            data.setdefault("digest", descriptor["digest"])
            write_json_atomic(work / MANIFEST_NAME, data)
            publish_build(work, templates / name, name)
            _set_tag(settings, name, descriptor)
    except BaseException:
        safe_rmtree(work)
        raise
    finally:
        safe_rmtree(pull)
    with contextlib.suppress(RuntimeFailure):  # the template is ready either way
        collect_garbage(settings)  # blobs a replaced tag no longer needs (skipped if busy)
    info = TemplateStore(settings).get(name)
    size = (info.size_bytes or 0) / 2**20
    ready = f"template {name!r} version {info.version} ready ({size:.0f} MiB)"
    job.emit(ProgressEvent("done", 1, 1, ready))
    return info


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def publish_build(work: Path, final: Path, name: str) -> int:
    """Install the build dir ``work`` as the next version of the template dir
    ``final`` and make it current (see :mod:`.store`); hold the name's lock.
    Returns the new version number."""
    return publish_version(final.parent, name, work)


def sweep_builds(settings: Settings, name: str) -> None:
    """Remove leftover ``.<name>.*-*`` dirs of crashed builds (hold the name's lock)."""
    for stale in settings.templates_dir.glob(f".{name}.*-*"):
        if stale.is_dir():
            safe_rmtree(stale)  # leftovers of crashed builds (we hold the name's lock)


def _noop(_event: ProgressEvent) -> None:
    pass


def pull_template(
    settings: Settings,
    name: str,
    image_ref: str,
    *,
    credentials: str | None = None,
    on_progress: ProgressCallback | None = None,
    force: bool = False,
    timeout: float = PULL_TIMEOUT,
) -> TemplateInfo:
    """Make template ``name`` from the registry image ``image_ref``.

    ``credentials`` is ``"user:token"`` for private registries. Mirrors
    (``settings.registry_mirrors``) rewrite the reference first; registries in
    ``settings.insecure_registries`` are reached without TLS verification.
    Returns the existing template when ``name`` was already pulled from the
    same reference (unless ``force``); Conflict if ``name`` is another one.

    Errors: InvalidRequest (bad name/reference), NotFound (no such image or
    tag), PermissionDenied (credentials missing, wrong or insufficient),
    ServiceUnavailable (registry unreachable), RuntimeFailure (anything else).
    """
    validate_name(name)
    requested = parse_reference(image_ref)
    creds = parse_credentials(credentials)
    source = apply_mirrors(requested, settings.registry_mirrors)
    emit = on_progress or _noop
    insecure = is_insecure(source.registry, settings.insecure_registries)
    job = _Job(settings, name, str(requested), emit, timeout, creds, source.registry)

    def same(manifest: dict[str, Any]) -> bool:
        return manifest.get("builder") == "oci" and manifest.get("image_ref") == str(requested)

    with template_lock(settings.templates_dir, name):
        sweep_builds(settings, name)
        existing = _existing(settings, name, force, same)
        if existing is not None:
            emit(ProgressEvent("done", 1, 1, "already pulled"))
            return existing
        with auth_file(creds, source.registry) as auth:
            inspect_args = ["--tls-verify=false"] if insecure else []
            copy_args = ["--retry-times", "2"] + (["--src-tls-verify=false"] if insecure else [])
            if auth is None:
                inspect_args.append("--no-creds")
                copy_args.append("--src-no-creds")
            else:
                inspect_args += ["--authfile", str(auth)]
                copy_args += ["--src-authfile", str(auth)]
            emit(ProgressEvent("resolve", 0, 1, f"resolving {source.pull_spec}"))
            digest, total = _resolve(job, source, inspect_args)
            emit(ProgressEvent("resolve", 1, 1, f"{source.pull_spec} is {digest[:19]}"))
            record = {
                "image_ref": str(requested),
                "source_ref": source.with_digest(digest).pull_spec,
                "digest": digest,
            }
            return _install(
                job, f"docker://{source.with_digest(digest).pull_spec}", copy_args, total, record
            )


def _resolve(job: _Job, ref: ImageRef, common: list[str]) -> tuple[str, int | None]:
    """(manifest digest, blobs to copy if known) of ``ref`` in its registry."""
    raw = job.skopeo(
        ["inspect", "--raw", "--retry-times", "2", *common, f"docker://{ref.pull_spec}"]
    )
    computed = f"sha256:{sha256(raw).hexdigest()}"
    digest = ref.digest or computed
    try:
        manifest = json.loads(raw)
    except ValueError:
        return digest, None
    if not isinstance(manifest, dict) or manifest.get("mediaType") in _INDEX_TYPES:
        return digest, None  # a multi-platform list: the platform's blob count comes later
    if "manifests" in manifest:
        return digest, None
    layers = manifest.get("layers") or manifest.get("fsLayers") or []
    return digest, len(layers) + 1 if isinstance(layers, list) else None


def import_archive(
    settings: Settings,
    name: str,
    path: Path | str,
    *,
    on_progress: ProgressCallback | None = None,
    force: bool = False,
    timeout: float = PULL_TIMEOUT,
) -> TemplateInfo:
    """Make template ``name`` from an image archive on disk: an OCI archive
    (``oci-archive``) or a ``docker save`` tarball (``docker-archive``),
    detected by content. For air-gapped hosts: no network is used."""
    validate_name(name)
    archive = Path(path).absolute()
    kind = detect_archive_format(archive)
    emit = on_progress or _noop
    job = _Job(settings, name, str(archive), emit, timeout)
    with template_lock(settings.templates_dir, name):
        sweep_builds(settings, name)
        _existing(settings, name, force, lambda _m: False)
        # skopeo splits "transport:path:ref" on colons: hand it a colon-free link
        link_dir = _work_dir(settings) / f"archive-{uuid.uuid4().hex[:12]}"
        link_dir.mkdir(parents=True)
        try:
            link = link_dir / "image.tar"
            link.symlink_to(archive)
            record = {"image_ref": None, "archive": str(archive), "archive_format": kind}
            return _install(job, f"{kind}:{link}", [], None, record)
        finally:
            safe_rmtree(link_dir)
