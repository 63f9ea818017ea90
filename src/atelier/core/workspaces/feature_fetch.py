"""Dev Container Features from an OCI registry or a tarball URL, fetched and cached.

* **OCI** (``ghcr.io/devcontainers/features/node:1``): the Features
  distribution spec publishes a Feature as an OCI image manifest whose layer of
  media type ``application/vnd.devcontainers.layer.v1+tar`` is a tar of the
  Feature's folder (``devcontainer-feature.json``, ``install.sh``, ...). The
  reference goes through the registry mirrors and insecure registries exactly
  as template pulls do (``images/registry_config.py``); ``skopeo inspect --raw``
  resolves the tag to the manifest digest, ``skopeo copy docker://...@digest
  dir:...`` downloads the blobs (skopeo speaks the registries' token flows and
  verifies what it downloads), and the layer's sha256 is checked again against
  the manifest before anything is unpacked.
* **Tarball** (``https://.../devcontainer-feature-go.tgz``): downloaded with
  httpx (https only; plain http only for a ``host[:port]`` listed in
  ``insecure_registries``, whose TLS is not verified either), redirects
  followed under the same rule, at most :data:`MAX_ARCHIVE_BYTES`.

Archives are unpacked by :func:`safe_extract`, which writes every member
itself and refuses absolute paths, ``..``, links leaving the folder, device
files and FIFOs, more than :data:`MAX_MEMBERS` members or
:data:`MAX_EXTRACTED_BYTES` of content; setuid/setgid bits are dropped and
files belong to the server's user.

Cache, under ``<data_dir>/features/`` (``0700``)::

    sha256/<hex>/          unpacked Feature folders, by layer or tarball digest
    manifests/<hex>.json   OCI manifests by manifest digest
    tmp/                   downloads and unpacking in progress

A Feature pinned by digest that was fetched before needs no network at all; a
tag costs one manifest request; a tarball is downloaded again (its URL names no
digest), but unpacked only once. Entries are renamed into place when complete
and never change; nothing is evicted (Features are small: tens of KiB).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from ...config import Settings
from ...errors import (
    AtelierError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    RuntimeFailure,
    UpstreamFailure,
    ValidationFailed,
)
from ...images.registry_config import ImageRef, apply_mirrors, is_insecure, parse_reference
from ...images.skopeo import auth_file, classify_error, parse_credentials, run_tool, scrub
from ...workspaces import (
    DevContainerConfig,
    FeatureKind,
    FeatureRef,
    ResolvedFeature,
    load_feature_metadata,
    missing_dependencies,
)
from ...workspaces.features import FEATURE_METADATA_NAME

__all__ = [
    "FEATURE_LAYER_MEDIA_TYPE",
    "FETCH_TIMEOUT",
    "MAX_ARCHIVE_BYTES",
    "MAX_EXTRACTED_BYTES",
    "MAX_MEMBERS",
    "feature_source",
    "features_cache_dir",
    "fetch_feature",
    "fetch_features",
    "safe_extract",
]

FEATURE_LAYER_MEDIA_TYPE = "application/vnd.devcontainers.layer.v1+tar"
MAX_ARCHIVE_BYTES = 64 * 1024 * 1024  # a downloaded layer or tarball (real ones: ~30 KiB)
MAX_EXTRACTED_BYTES = 256 * 1024 * 1024  # the unpacked content, all files together
MAX_MEMBERS = 10_000
FETCH_TIMEOUT = 300.0  # seconds, per skopeo call or tarball download
MAX_REDIRECTS = 5
MAX_FEATURES = 64  # Features of one configuration, dependencies included
_INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
Log = Callable[[str], None]


def features_cache_dir(settings: Settings) -> Path:
    """``<data_dir>/features``: where fetched Features are kept."""
    return settings.data_dir / "features"


def _image_ref(ref: FeatureRef) -> ImageRef:
    """The OCI reference of ``ref`` as an image reference (tag ``latest`` if none)."""
    if ref.kind is not FeatureKind.OCI or not ref.registry or not ref.repository:
        raise InvalidRequest(f"Feature {ref.ref} is not an OCI reference", details=_d(ref))
    version = f"@{ref.digest}" if ref.digest else f":{ref.tag or 'latest'}"
    return parse_reference(f"{ref.registry}/{ref.repository}{version}")


def feature_source(settings: Settings, ref: FeatureRef) -> ImageRef:
    """Where an OCI Feature is fetched from: its reference after the registry mirrors."""
    return apply_mirrors(_image_ref(ref), settings.registry_mirrors)


def _d(ref: FeatureRef, **extra: Any) -> dict[str, Any]:
    return {"feature": ref.ref, **extra}


# --- safe extraction ------------------------------------------------------------------
def _member_path(name: str, what: str) -> str | None:
    """The normalized relative path of a tar member (None for the root itself)."""

    def refuse(why: str) -> ValidationFailed:
        return ValidationFailed(
            f"{what}: refusing archive member {name!r}: {why}",
            details={"feature": what, "member": name},
        )

    if "\0" in name:
        raise refuse("its name holds a NUL byte")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise refuse("absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise refuse("'..' in the path")
    return "/".join(parts) or None


def safe_extract(
    archive: Path,
    dest: Path,
    *,
    what: str,
    max_bytes: int = MAX_EXTRACTED_BYTES,
    max_members: int = MAX_MEMBERS,
) -> None:
    """Unpack the tar (plain or gzip-compressed) ``archive`` into the new folder ``dest``.

    Every member is written by this function (never ``tarfile.extract``):
    directories and regular files get their permission bits without
    setuid/setgid/sticky; a symbolic link must stay inside ``dest`` once
    resolved against its folder; a hard link must name an earlier file of the
    archive (its content is copied). Refused, with a ValidationFailed naming
    ``what`` and the member: absolute paths, ``..``, links leaving ``dest``,
    device files and FIFOs, a member under a symbolic link, more than
    ``max_members`` members or ``max_bytes`` of file content.
    """

    def refuse(name: str, why: str) -> ValidationFailed:
        return ValidationFailed(
            f"{what}: refusing archive member {name!r}: {why}",
            details={"feature": what, "member": name},
        )

    dest.mkdir(mode=0o755)
    written: dict[str, str] = {}  # relative path -> "dir" | "file" | "link"
    total = 0
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            for count, member in enumerate(tar, start=1):
                if count > max_members:
                    raise ValidationFailed(
                        f"{what}: the archive has more than {max_members} members",
                        details={"feature": what},
                    )
                rel = _member_path(member.name, what)
                if rel is None:
                    if not member.isdir():
                        raise refuse(member.name, "not a directory at the archive's root")
                    continue
                parent = posixpath.dirname(rel)
                # no member may go through a link or a file (a link planted first could point out)
                probe = parent
                while probe:
                    kind = written.get(probe)
                    if kind in ("link", "file"):
                        raise refuse(member.name, f"its parent {probe!r} is not a directory")
                    probe = posixpath.dirname(probe)
                target = dest / rel
                if member.isdir() and written.get(rel) == "dir":  # made for an earlier member
                    target.chmod((member.mode & 0o777) | 0o700)
                    continue
                if rel in written:
                    raise refuse(member.name, "it appears twice in the archive")
                if parent and written.get(parent) is None:
                    (dest / parent).mkdir(mode=0o755, parents=True, exist_ok=True)
                    probe = parent
                    while probe and probe not in written:
                        written[probe] = "dir"
                        probe = posixpath.dirname(probe)
                if member.isdir():
                    target.mkdir(mode=0o755)
                    target.chmod((member.mode & 0o777) | 0o700)
                    written[rel] = "dir"
                elif member.isreg():
                    total += member.size
                    if total > max_bytes:
                        raise ValidationFailed(
                            f"{what}: the archive unpacks to more than {max_bytes} bytes",
                            details={"feature": what, "limit": max_bytes},
                        )
                    source = tar.extractfile(member)
                    assert source is not None
                    _write_file(target, source, (member.mode & 0o777) | 0o600)
                    written[rel] = "file"
                elif member.issym():
                    link = member.linkname
                    resolved = posixpath.normpath(posixpath.join(parent, link))
                    if link.startswith("/") or resolved == ".." or resolved.startswith("../"):
                        raise refuse(member.name, f"symbolic link to {link!r} leaves the folder")
                    os.symlink(link, target)
                    written[rel] = "link"
                elif member.islnk():
                    linked = _member_path(member.linkname, what)
                    if linked is None or written.get(linked) != "file":
                        raise refuse(
                            member.name,
                            f"hard link to {member.linkname!r}, not an earlier file of the archive",
                        )
                    shutil.copyfile(dest / linked, target)
                    target.chmod((dest / linked).stat().st_mode & 0o777)
                    written[rel] = "file"
                else:
                    kind = "device file" if (member.ischr() or member.isblk()) else "special file"
                    if member.isfifo():
                        kind = "FIFO"
                    raise refuse(member.name, f"{kind}s are not allowed")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ValidationFailed(
            f"{what}: cannot unpack the archive: {exc}", details={"feature": what}
        ) from exc


def _write_file(target: Path, source: io.BufferedReader | Any, mode: int) -> None:
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(source, out)
    os.chmod(target, mode & ~(stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX))


# --- the cache ----------------------------------------------------------------------
class _Cache:
    def __init__(self, settings: Settings) -> None:
        self.root = features_cache_dir(settings)
        for sub in ("", "sha256", "manifests", "tmp"):
            (self.root / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        self.tmp = self.root / "tmp"

    def folder(self, digest: str) -> Path:
        return self.root / "sha256" / _hex(digest)

    def manifest(self, digest: str) -> bytes | None:
        path = self.root / "manifests" / f"{_hex(digest)}.json"
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        return raw if _sha256(raw) == digest else None

    def save_manifest(self, digest: str, raw: bytes) -> None:
        path = self.root / "manifests" / f"{_hex(digest)}.json"
        if path.exists():
            return
        fd, tmp = tempfile.mkstemp(dir=self.tmp, prefix="manifest-")
        with os.fdopen(fd, "wb") as out:
            out.write(raw)
        os.replace(tmp, path)

    def store(self, digest: str, archive: Path, what: str) -> Path:
        """Unpack ``archive`` (already verified to be ``digest``) into the cache."""
        final = self.folder(digest)
        if final.is_dir():
            return final
        work = Path(tempfile.mkdtemp(dir=self.tmp, prefix="unpack-"))
        try:
            folder = work / "feature"
            safe_extract(archive, folder, what=what)
            for required in (FEATURE_METADATA_NAME, "install.sh"):
                path = folder / required
                if path.is_symlink() or not path.is_file():
                    raise ValidationFailed(
                        f"{what}: the Feature has no {required} at the top of its archive",
                        details={"feature": what, "file": required},
                    )
            try:
                folder.rename(final)
            except OSError:
                if not final.is_dir():  # not lost to a concurrent fetch of the same digest
                    raise
            return final
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _hex(digest: str) -> str:
    algorithm, _, value = digest.partition(":")
    if algorithm != "sha256" or len(value) != 64 or not all(c in "0123456789abcdef" for c in value):
        raise ValidationFailed(f"unsupported digest {digest!r} (sha256 only)")
    return value


def _sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def _file_digest(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            hasher.update(chunk)
    return f"sha256:{hasher.hexdigest()}"


# --- OCI ----------------------------------------------------------------------------
def _feature_layer(ref: FeatureRef, manifest: Any) -> dict[str, Any]:
    def bad(why: str) -> ValidationFailed:
        return ValidationFailed(
            f"Feature {ref.ref}: not a Dev Container Feature artifact: {why}", details=_d(ref)
        )

    if not isinstance(manifest, dict):
        raise bad("the manifest is not a JSON object")
    if manifest.get("mediaType") in _INDEX_TYPES or "manifests" in manifest:
        raise bad("it is an image index (multi-platform image), not a Feature")
    layers = manifest.get("layers")
    if not isinstance(layers, list) or not layers:
        raise bad("the manifest has no layers")
    ours = [
        layer
        for layer in layers
        if isinstance(layer, dict) and layer.get("mediaType") == FEATURE_LAYER_MEDIA_TYPE
    ]
    if len(ours) != 1:
        raise bad(f"expected one layer of media type {FEATURE_LAYER_MEDIA_TYPE}, got {len(ours)}")
    layer = ours[0]
    if not isinstance(layer.get("digest"), str) or not isinstance(layer.get("size"), int):
        raise bad("its layer has no digest or size")
    _hex(layer["digest"])
    if layer["size"] > MAX_ARCHIVE_BYTES:
        raise ValidationFailed(
            f"Feature {ref.ref}: its layer is {layer['size']} bytes, more than the "
            f"{MAX_ARCHIVE_BYTES} allowed",
            details=_d(ref, limit=MAX_ARCHIVE_BYTES),
        )
    return layer


def _registry_error(ref: FeatureRef, exc: AtelierError, source: ImageRef) -> AtelierError:
    """A skopeo failure as the Feature's error: NotFound, PermissionDenied, else 502."""
    message = f"Feature {ref.ref}: {exc.message}"
    if str(source) != str(_image_ref(ref)):
        message += f" (fetched from {source}, a registry mirror)"
    details = {**exc.details, **_d(ref, source=str(source))}
    if isinstance(exc, NotFound | PermissionDenied | InvalidRequest):
        return type(exc)(message, details=details)
    return UpstreamFailure(message, details=details)


def _fetch_oci(settings: Settings, ref: FeatureRef, credentials: str | None, log: Log) -> Path:
    cache = _Cache(settings)
    requested = _image_ref(ref)
    source = apply_mirrors(requested, settings.registry_mirrors)
    if ref.digest:  # pinned: the cache answers without the registry
        raw = cache.manifest(ref.digest)
        if raw is not None:
            layer = _feature_layer(ref, json.loads(raw))
            if cache.folder(layer["digest"]).is_dir():
                log(f"Feature {ref.ref}: {ref.digest[:19]} (cached)")
                return cache.folder(layer["digest"])
    creds = parse_credentials(credentials)
    insecure = is_insecure(source.registry, settings.insecure_registries)

    def skopeo(args: list[str]) -> bytes:
        try:
            res = run_tool(["skopeo", *args], timeout=FETCH_TIMEOUT, tmpdir=cache.tmp)
        except RuntimeFailure as exc:  # timed out
            raise UpstreamFailure(
                f"Feature {ref.ref}: {exc.message} (registry {source.registry})",
                details=_d(ref, source=str(source)),
            ) from exc
        if res.returncode != 0:
            error = classify_error(scrub(res.stderr, creds), str(source), source.registry)
            raise _registry_error(ref, error, source)
        return res.stdout

    with auth_file(creds, source.registry) as auth:
        inspect_args = ["--tls-verify=false"] if insecure else []
        copy_args = ["--retry-times", "2"] + (["--src-tls-verify=false"] if insecure else [])
        if auth is None:
            inspect_args.append("--no-creds")
            copy_args.append("--src-no-creds")
        else:
            inspect_args += ["--authfile", str(auth)]
            copy_args += ["--src-authfile", str(auth)]
        raw = skopeo(
            [
                "inspect",
                "--raw",
                "--retry-times",
                "2",
                *inspect_args,
                f"docker://{source.pull_spec}",
            ]
        )
        digest = _sha256(raw)
        if ref.digest and digest != ref.digest:
            raise ValidationFailed(
                f"Feature {ref.ref}: the registry sent a manifest of digest {digest}, "
                f"not {ref.digest}",
                details=_d(ref, expected=ref.digest, actual=digest),
            )
        try:
            manifest = json.loads(raw)
        except ValueError as exc:
            raise ValidationFailed(
                f"Feature {ref.ref}: the registry sent a manifest that is not JSON",
                details=_d(ref),
            ) from exc
        layer = _feature_layer(ref, manifest)
        cache.save_manifest(digest, raw)
        folder = cache.folder(layer["digest"])
        if folder.is_dir():
            log(f"Feature {ref.ref}: {source.pull_spec} is {digest[:19]} (cached)")
            return folder
        log(f"Feature {ref.ref}: fetching {source.with_digest(digest).pull_spec}")
        work = Path(tempfile.mkdtemp(dir=cache.tmp, prefix="oci-"))
        try:
            skopeo(
                [
                    "copy",
                    "--quiet",
                    *copy_args,
                    f"docker://{source.with_digest(digest).pull_spec}",
                    f"dir:{work / 'dir'}",
                ]
            )
            blob = work / "dir" / _hex(layer["digest"])
            if not blob.is_file() or blob.stat().st_size > MAX_ARCHIVE_BYTES:
                raise UpstreamFailure(
                    f"Feature {ref.ref}: the registry sent no usable layer {layer['digest']}",
                    details=_d(ref, source=str(source)),
                )
            actual = _file_digest(blob)
            if actual != layer["digest"]:
                raise ValidationFailed(
                    f"Feature {ref.ref}: the layer's digest is {actual}, the manifest says "
                    f"{layer['digest']}",
                    details=_d(ref, expected=layer["digest"], actual=actual),
                )
            return cache.store(layer["digest"], blob, f"Feature {ref.ref}")
        finally:
            shutil.rmtree(work, ignore_errors=True)


# --- tarballs -----------------------------------------------------------------------
def _check_url(settings: Settings, ref: FeatureRef, url: httpx.URL) -> bool:
    """Whether ``url`` may be fetched; True when TLS is to be verified."""
    host = url.host if url.port is None else f"{url.host}:{url.port}"
    insecure = is_insecure(host, settings.insecure_registries) or is_insecure(
        url.host, settings.insecure_registries
    )
    if url.scheme == "https":
        return not insecure
    if url.scheme == "http" and insecure:
        return False
    raise InvalidRequest(
        f"Feature {ref.ref}: {url} is not https (plain http only for hosts listed in "
        "ATELIER_INSECURE_REGISTRIES)",
        details=_d(ref, url=str(url)),
    )


async def _download(settings: Settings, ref: FeatureRef, target: Path) -> str:
    """Download the tarball of ``ref`` into ``target``; its sha256 digest."""
    url = httpx.URL(ref.ref)
    for _ in range(MAX_REDIRECTS + 1):
        verify = _check_url(settings, ref, url)
        try:
            async with (
                httpx.AsyncClient(verify=verify, timeout=30.0) as client,
                client.stream("GET", url) as response,
            ):
                if response.is_redirect and "location" in response.headers:
                    url = url.join(response.headers["location"])
                    continue
                _check_status(ref, response)
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > MAX_ARCHIVE_BYTES:
                    raise _too_big(ref)
                hasher, size = hashlib.sha256(), 0
                with target.open("wb") as out:
                    async with asyncio.timeout(FETCH_TIMEOUT):
                        async for chunk in response.aiter_bytes():
                            size += len(chunk)
                            if size > MAX_ARCHIVE_BYTES:
                                raise _too_big(ref)
                            hasher.update(chunk)
                            out.write(chunk)
                return f"sha256:{hasher.hexdigest()}"
        except (httpx.HTTPError, TimeoutError) as exc:
            raise UpstreamFailure(
                f"Feature {ref.ref}: cannot download {url}: {exc or type(exc).__name__}",
                details=_d(ref, url=str(url)),
            ) from exc
    raise UpstreamFailure(
        f"Feature {ref.ref}: more than {MAX_REDIRECTS} redirects", details=_d(ref)
    )


def _too_big(ref: FeatureRef) -> ValidationFailed:
    return ValidationFailed(
        f"Feature {ref.ref}: the tarball is larger than {MAX_ARCHIVE_BYTES} bytes",
        details=_d(ref, limit=MAX_ARCHIVE_BYTES),
    )


def _check_status(ref: FeatureRef, response: httpx.Response) -> None:
    code = response.status_code
    if code < 300:
        return
    where = f"{response.url} answered {code}"
    if code in (404, 410):
        raise NotFound(f"Feature {ref.ref} not found: {where}", details=_d(ref, status=code))
    if code in (401, 403):
        raise PermissionDenied(
            f"Feature {ref.ref}: access refused: {where}", details=_d(ref, status=code)
        )
    raise UpstreamFailure(f"Feature {ref.ref}: {where}", details=_d(ref, status=code))


async def _fetch_tarball(settings: Settings, ref: FeatureRef, log: Log) -> Path:
    cache = _Cache(settings)
    log(f"Feature {ref.ref}: downloading")
    fd, name = tempfile.mkstemp(dir=cache.tmp, prefix="tarball-")
    os.close(fd)
    archive = Path(name)
    try:
        digest = await _download(settings, ref, archive)
        if cache.folder(digest).is_dir():
            log(f"Feature {ref.ref}: {digest[:19]} (cached)")
            return cache.folder(digest)
        return await asyncio.to_thread(cache.store, digest, archive, f"Feature {ref.ref}")
    finally:
        archive.unlink(missing_ok=True)


# --- the entry point ----------------------------------------------------------------
def _noop(_line: str) -> None:
    pass


async def fetch_feature(
    settings: Settings,
    ref: FeatureRef,
    dest: Path,
    *,
    credentials: str | None = None,
    log: Log | None = None,
) -> Path:
    """Materialize the folder of the OCI or tarball Feature ``ref`` at ``dest``; returns ``dest``.

    ``dest`` must not exist (its parent must). ``credentials`` (``"user:token"``)
    are for the OCI registry (never sent to a tarball URL). Errors, each naming
    the Feature: NotFound (no such artifact or tag, HTTP 404), PermissionDenied
    (credentials refused), UpstreamFailure (registry or server unreachable or
    failing), ValidationFailed (not a Feature artifact, digest mismatch, unsafe
    or oversized archive, no ``devcontainer-feature.json`` or ``install.sh``),
    InvalidRequest (a local Feature, or an http URL for a host not listed in
    ``insecure_registries``).
    """
    emit = log or _noop
    if ref.kind is FeatureKind.OCI:
        folder = await asyncio.to_thread(_fetch_oci, settings, ref, credentials, emit)
    elif ref.kind is FeatureKind.TARBALL:
        folder = await _fetch_tarball(settings, ref, emit)
    else:
        raise InvalidRequest(
            f"Feature {ref.ref} is a local folder: nothing to fetch", details=_d(ref)
        )
    with contextlib.suppress(FileNotFoundError):
        if dest.exists() and not any(dest.iterdir()):
            dest.rmdir()
    await asyncio.to_thread(shutil.copytree, folder, dest, symlinks=True)
    return dest


async def fetch_features(
    settings: Settings,
    config: DevContainerConfig,
    work_dir: Path,
    *,
    credentials: str | None = None,
    log: Log | None = None,
) -> list[FeatureRef]:
    """``config.features`` with every OCI and tarball Feature fetched into a fresh
    folder under ``work_dir`` (its ``path``), followed by the Features they
    ``dependsOn`` (transitively, fetched the same way) that the configuration
    does not list. Local Features are returned as they are. At most
    :data:`MAX_FEATURES` in all."""
    count = 0

    async def fetched(ref: FeatureRef) -> FeatureRef:
        nonlocal count
        if ref.kind is FeatureKind.LOCAL:
            return ref
        work_dir.mkdir(parents=True, exist_ok=True)
        dest = work_dir / f"feature-{count}"
        count += 1
        folder = await fetch_feature(settings, ref, dest, credentials=credentials, log=log)
        return replace(ref, path=folder)

    refs = [await fetched(ref) for ref in config.features]
    while True:
        present = [
            ResolvedFeature(ref, load_feature_metadata(ref.path))
            for ref in refs
            if ref.path is not None
        ]
        missing = missing_dependencies(present, config_dir=config.config_dir)
        if not missing:
            return refs
        if len(refs) + len(missing) > MAX_FEATURES:
            raise ValidationFailed(
                f"more than {MAX_FEATURES} Features with their dependencies "
                f"({', '.join(ref.ref for ref in missing[:5])}, ...)",
                details={"property": "features"},
            )
        if emit := log:
            emit(f"fetching dependencies: {', '.join(ref.ref for ref in missing)}")
        refs += [await fetched(ref) for ref in missing]
