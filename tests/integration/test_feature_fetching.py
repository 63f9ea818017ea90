"""Features from a real OCI registry and a real HTTP server, on loopback only.

The test lays out a Feature artifact by hand (the Features distribution spec:
an OCI manifest whose ``application/vnd.devcontainers.layer.v1+tar`` layer is a
tar of the Feature's folder), pushes it with skopeo to a Debian
``docker-registry`` on a free loopback port (and a second one with htpasswd
auth over the same storage), and fetches it as ``ghcr.io/acme/features/hello:1``
through the mirror rule ``ghcr.io/*`` -> the loopback registry: the
air-gapped path. Tarball Features come from a tiny ``http.server``, allowed
over plain http because its address is listed in ``insecure_registries``.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import re
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from atelier.config import Settings
from atelier.core.workspaces.feature_fetch import FEATURE_LAYER_MEDIA_TYPE, fetch_feature
from atelier.errors import NotFound, PermissionDenied, UpstreamFailure, ValidationFailed
from atelier.workspaces import FeatureKind, FeatureRef, parse_feature_ref
from oci_registry import Registry, free_port, need_tools, run, start_registry

pytestmark = pytest.mark.integration

USER, SECRET = "alice", "s3cret-token"
HELLO = {
    "id": "hello",
    "version": "1.0.0",
    "options": {"greeting": {"type": "string", "default": "hi"}},
}
INSTALL = '#!/bin/sh\nset -e\necho "$GREETING" > /usr/local/share/hello-greeting\n'


def feature_tar(metadata: dict[str, Any], install: str = INSTALL, *, gz: bool = False) -> bytes:
    """A Feature folder as a tar, the way ``devcontainer features publish`` packs it."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tar:
        root = tarfile.TarInfo("./")
        root.type, root.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(root)
        for name, text, mode in (
            ("./devcontainer-feature.json", json.dumps(metadata), 0o644),
            ("./install.sh", install, 0o755),
        ):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def feature_layout(layout: Path, tags: dict[str, bytes]) -> None:
    """An OCI image layout holding one Feature artifact per tag (blobs, manifests, index)."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def blob(data: bytes) -> dict[str, Any]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    manifests = []
    for tag, layer in tags.items():
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.devcontainers", **blob(b"")},
            "layers": [
                {
                    "mediaType": FEATURE_LAYER_MEDIA_TYPE,
                    **blob(layer),
                    "annotations": {"org.opencontainers.image.title": "devcontainer-feature.tgz"},
                }
            ],
            "annotations": {"com.github.package.type": "devcontainer_feature"},
        }
        manifests.append(
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                **blob(json.dumps(manifest).encode()),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        )
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": manifests}))


def push_feature(layout: Path, tag: str, registry: str, repository: str) -> None:
    run(
        "skopeo", "copy", "--dest-tls-verify=false",
        f"oci:{layout}:{tag}", f"docker://{registry}/{repository}:{tag}",
    )  # fmt: skip


class _Files(http.server.SimpleHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.startswith("/moved/"):  # a redirect, as release downloads do
            self.send_response(302)
            self.send_header("Location", "/" + self.path.removeprefix("/moved/"))
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class World:
    registry: Registry  # open, plain HTTP
    secured: Registry  # htpasswd auth, same storage
    files: str  # host:port of the tarball server
    served: Path  # what it serves

    def settings(self, data_dir: Path, *, mirror: str | None = None) -> Settings:
        return Settings(
            data_dir=data_dir,
            registry_mirrors={"ghcr.io/*": f"{mirror or self.registry.addr}/*"},
            insecure_registries=[self.registry.addr, self.secured.addr, self.files],
        )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    need_tools()
    work = tmp_path_factory.mktemp("features")
    htpasswd = work / "htpasswd"
    htpasswd.write_text(run("htpasswd", "-Bbn", USER, SECRET))
    open_reg = start_registry(work, "open", work / "storage", None)
    secured = start_registry(work, "secured", work / "storage", htpasswd)
    served = work / "served"
    served.mkdir()
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", free_port()),
        lambda *a: _Files(*a, directory=str(served)),  # type: ignore[misc]
    )
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        feature_layout(
            work / "layout",
            {"1": feature_tar(HELLO), "2": feature_tar({**HELLO, "version": "2.0.0"}, gz=True)},
        )
        push_feature(work / "layout", "1", open_reg.addr, "acme/features/hello")
        push_feature(work / "layout", "2", open_reg.addr, "acme/features/hello")
        (served / "devcontainer-feature-hello.tgz").write_bytes(feature_tar(HELLO, gz=True))
        (served / "devcontainer-feature-evil.tgz").write_bytes(_evil_tar())
        host, port = httpd.server_address[:2]
        yield World(open_reg, secured, f"{host}:{port}", served)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)
        for reg in (open_reg, secured):
            reg.proc.terminate()
            try:
                reg.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                reg.proc.kill()
                reg.proc.wait()


def _evil_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("../../escaped")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    return buf.getvalue()


def oci(ref: str) -> FeatureRef:
    parsed = parse_feature_ref(ref, {})
    assert parsed is not None
    return parsed


async def test_a_feature_from_a_mirrored_registry_is_fetched_then_cached(
    world: World, tmp_path: Path
) -> None:
    settings = world.settings(tmp_path / "data")
    lines: list[str] = []
    ref = oci("ghcr.io/acme/features/hello:1")
    dest = await fetch_feature(settings, ref, tmp_path / "one", log=lines.append)
    assert json.loads((dest / "devcontainer-feature.json").read_text()) == HELLO
    assert (dest / "install.sh").read_text() == INSTALL
    assert (dest / "install.sh").stat().st_mode & 0o111
    assert any(f"fetching {world.registry.addr}/acme/features/hello@sha256:" in x for x in lines)
    cache = settings.data_dir / "features" / "sha256"
    (entry,) = cache.iterdir()
    stamp = entry.stat().st_mtime_ns

    # the second fetch resolves the tag and finds the layer in the cache
    lines.clear()
    await fetch_feature(settings, ref, tmp_path / "two", log=lines.append)
    assert lines[-1].endswith("(cached)") and not any("fetching" in x for x in lines)
    assert [p.name for p in cache.iterdir()] == [entry.name] and entry.stat().st_mtime_ns == stamp
    assert (tmp_path / "two" / "install.sh").read_text() == INSTALL

    # pinned by digest, fetched before: not even the registry is asked (here: a dead mirror)
    (manifest,) = (settings.data_dir / "features" / "manifests").iterdir()
    pinned = oci(f"ghcr.io/acme/features/hello@sha256:{manifest.stem}")
    offline = world.settings(settings.data_dir, mirror=f"127.0.0.1:{free_port()}")
    await fetch_feature(offline, pinned, tmp_path / "three")
    assert (tmp_path / "three" / "devcontainer-feature.json").exists()

    # a gzip-compressed layer (tag 2) unpacks as well
    await fetch_feature(settings, oci("ghcr.io/acme/features/hello:2"), tmp_path / "four")
    metadata = json.loads((tmp_path / "four" / "devcontainer-feature.json").read_text())
    assert metadata["version"] == "2.0.0"
    assert not list((settings.data_dir / "features" / "tmp").iterdir())


async def test_registry_failures_name_the_feature(world: World, tmp_path: Path) -> None:
    settings = world.settings(tmp_path / "data")
    with pytest.raises(NotFound, match=re.escape("Feature ghcr.io/acme/features/hello:9")):
        await fetch_feature(settings, oci("ghcr.io/acme/features/hello:9"), tmp_path / "a")
    with pytest.raises(NotFound, match=re.escape("Feature ghcr.io/acme/features/nope:1")):
        await fetch_feature(settings, oci("ghcr.io/acme/features/nope:1"), tmp_path / "b")
    dead = world.settings(tmp_path / "data", mirror=f"127.0.0.1:{free_port()}")
    with pytest.raises(UpstreamFailure, match=re.escape("Feature ghcr.io/acme/features/hello:1")):
        await fetch_feature(dead, oci("ghcr.io/acme/features/hello:1"), tmp_path / "c")
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


async def test_a_private_registry_needs_credentials(world: World, tmp_path: Path) -> None:
    settings = world.settings(tmp_path / "data", mirror=world.secured.addr)
    ref = oci("ghcr.io/acme/features/hello:1")
    with pytest.raises(
        PermissionDenied, match=re.escape("Feature ghcr.io/acme/features/hello:1")
    ) as caught:
        await fetch_feature(settings, ref, tmp_path / "a")
    with pytest.raises(PermissionDenied) as wrong:
        await fetch_feature(settings, ref, tmp_path / "b", credentials=f"{USER}:nope-{SECRET}")
    assert SECRET not in str(wrong.value) and SECRET not in str(caught.value)
    dest = await fetch_feature(settings, ref, tmp_path / "c", credentials=f"{USER}:{SECRET}")
    assert (dest / "install.sh").read_text() == INSTALL


async def test_tarball_features(world: World, tmp_path: Path) -> None:
    settings = world.settings(tmp_path / "data")
    base = f"http://{world.files}"

    def tarball(path: str) -> FeatureRef:
        return FeatureRef(FeatureKind.TARBALL, f"{base}/{path}")

    lines: list[str] = []
    dest = await fetch_feature(
        settings, tarball("moved/devcontainer-feature-hello.tgz"), tmp_path / "a", log=lines.append
    )
    assert json.loads((dest / "devcontainer-feature.json").read_text()) == HELLO
    await fetch_feature(
        settings, tarball("devcontainer-feature-hello.tgz"), tmp_path / "b", log=lines.append
    )
    assert lines[-1].endswith("(cached)")  # downloaded again, unpacked once
    assert len(list((settings.data_dir / "features" / "sha256").iterdir())) == 1
    with pytest.raises(NotFound, match=re.escape("devcontainer-feature-gone.tgz")):
        await fetch_feature(settings, tarball("devcontainer-feature-gone.tgz"), tmp_path / "c")
    with pytest.raises(ValidationFailed, match=r"refusing archive member '\.\./\.\./escaped'"):
        await fetch_feature(settings, tarball("devcontainer-feature-evil.tgz"), tmp_path / "d")
    assert not (tmp_path.parent / "escaped").exists()
    strict = Settings(data_dir=tmp_path / "data")  # the server is not listed as insecure
    with pytest.raises(Exception, match="is not https"):
        await fetch_feature(strict, tarball("devcontainer-feature-hello.tgz"), tmp_path / "e")
