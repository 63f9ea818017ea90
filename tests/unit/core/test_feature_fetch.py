"""Fetching Features without a registry: safe extraction, digests, the cache,
mirrors and error mapping (skopeo replaced by a fake that serves one artifact)."""

from __future__ import annotations

import hashlib
import io
import json
import stat
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from atelier.config import Settings
from atelier.core.workspaces import feature_fetch
from atelier.core.workspaces.feature_fetch import (
    FEATURE_LAYER_MEDIA_TYPE,
    feature_source,
    fetch_feature,
    fetch_features,
    safe_extract,
)
from atelier.core.workspaces.templates import resolve_features
from atelier.errors import (
    InvalidRequest,
    NotFound,
    PermissionDenied,
    UpstreamFailure,
    ValidationFailed,
)
from atelier.images.skopeo import ToolResult
from atelier.workspaces import FeatureKind, FeatureRef, load_devcontainer, parse_feature_ref

METADATA = {"id": "hello", "version": "1.0.0", "options": {}}


def tar_bytes(
    members: Sequence[tuple[tarfile.TarInfo, bytes | None]], *, gz: bool = False
) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def entry(name: str, kind: bytes = tarfile.REGTYPE, *, link: str = "", mode: int = 0o644) -> Any:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, mode
    return info


def feature_tar(metadata: dict[str, Any] | None = None, *, gz: bool = False) -> bytes:
    return tar_bytes(
        [
            (entry("./", tarfile.DIRTYPE, mode=0o755), None),
            (entry("./devcontainer-feature.json"), json.dumps(metadata or METADATA).encode()),
            (entry("./install.sh", mode=0o755), b"#!/bin/sh\necho hi > /hello\n"),
        ],
        gz=gz,
    )


def write_archive(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "archive.tar"
    path.write_bytes(data)
    return path


# --- safe extraction ----------------------------------------------------------------
def test_a_feature_archive_unpacks_with_its_modes(tmp_path: Path) -> None:
    data = tar_bytes(
        [
            (entry("./", tarfile.DIRTYPE, mode=0o755), None),
            (entry("./devcontainer-feature.json"), b"{}"),
            (entry("./install.sh", mode=0o4755), b"#!/bin/sh\n"),  # setuid dropped
            (entry("./lib/helper.sh", mode=0o600), b"x"),  # parent made implicitly
            (entry("./lib", tarfile.DIRTYPE, mode=0o750), None),  # then listed
            (entry("./lib/alias", tarfile.SYMTYPE, link="helper.sh"), None),
            (entry("./up", tarfile.SYMTYPE, link="lib/../install.sh"), None),
            (entry("./copy.sh", tarfile.LNKTYPE, link="./install.sh"), None),
        ],
        gz=True,
    )
    dest = tmp_path / "out"
    safe_extract(write_archive(tmp_path, data), dest, what="Feature x")
    assert stat.S_IMODE((dest / "install.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "lib").stat().st_mode) == 0o750
    assert (dest / "lib/alias").read_text() == "x"
    assert (dest / "copy.sh").read_text() == "#!/bin/sh\n" and not (dest / "copy.sh").is_symlink()
    assert (dest / "up").is_symlink()


@pytest.mark.parametrize(
    ("members", "why"),
    [
        ([(entry("/etc/evil"), b"x")], "absolute path"),
        ([(entry("../evil"), b"x")], r"'\.\.' in the path"),
        ([(entry("a/../../evil"), b"x")], r"'\.\.' in the path"),
        ([(entry("l", tarfile.SYMTYPE, link="/etc/passwd"), None)], "leaves the folder"),
        ([(entry("a/l", tarfile.SYMTYPE, link="../../x"), None)], "leaves the folder"),
        ([(entry("h", tarfile.LNKTYPE, link="/etc/passwd"), None)], "absolute path"),
        ([(entry("h", tarfile.LNKTYPE, link="missing"), None)], "not an earlier file"),
        ([(entry("d", tarfile.CHRTYPE), None)], "device files are not allowed"),
        ([(entry("d", tarfile.BLKTYPE), None)], "device files are not allowed"),
        ([(entry("f", tarfile.FIFOTYPE), None)], "FIFOs are not allowed"),
        (  # a link planted first, then a file written through it
            [(entry("l", tarfile.SYMTYPE, link="."), None), (entry("l/x"), b"x")],
            "is not a directory",
        ),
        ([(entry("a"), b"1"), (entry("a"), b"2")], "appears twice"),
    ],
)
def test_unsafe_archive_members_are_refused(
    tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], why: str
) -> None:
    archive = write_archive(tmp_path, tar_bytes(members))
    with pytest.raises(ValidationFailed, match=why) as caught:
        safe_extract(archive, tmp_path / "out", what="Feature x")
    assert caught.value.message.startswith("Feature x: ")
    assert not (tmp_path / "evil").exists()


def test_extraction_limits(tmp_path: Path) -> None:
    big = write_archive(tmp_path, tar_bytes([(entry("a"), b"x" * 600), (entry("b"), b"y" * 600)]))
    with pytest.raises(ValidationFailed, match="more than 1000 bytes"):
        safe_extract(big, tmp_path / "o1", what="F", max_bytes=1000)
    many = write_archive(tmp_path, tar_bytes([(entry(f"f{i}"), b"") for i in range(5)]))
    with pytest.raises(ValidationFailed, match="more than 3 members"):
        safe_extract(many, tmp_path / "o2", what="F", max_members=3)
    garbage = write_archive(tmp_path, b"not a tar at all" * 100)
    with pytest.raises(ValidationFailed, match="cannot unpack"):
        safe_extract(garbage, tmp_path / "o3", what="F")


# --- OCI through a fake skopeo ------------------------------------------------------
def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class FakeSkopeo:
    """Serves one Feature artifact for any reference; records every call."""

    def __init__(self, layer: bytes, *, tamper: bool = False) -> None:
        self.layer, self.tamper = layer, tamper
        self.manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.devcontainers",
                    "digest": sha(b""),
                    "size": 0,
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": sha(b""),
                        "size": 0,
                    },
                    {
                        "mediaType": FEATURE_LAYER_MEDIA_TYPE,
                        "digest": sha(layer),
                        "size": len(layer),
                    },
                ],
            }
        ).encode()
        self.calls: list[list[str]] = []
        self.fail: str | None = None

    def __call__(self, argv: Sequence[str], **_kw: Any) -> ToolResult:
        self.calls.append(list(argv))
        if self.fail is not None:
            return ToolResult(1, b"", f'time="x" level=fatal msg="{self.fail}"\n')
        if argv[1] == "inspect":
            return ToolResult(0, self.manifest, "")
        assert argv[1] == "copy"
        out = Path(argv[-1].removeprefix("dir:"))
        out.mkdir(parents=True)
        (out / "manifest.json").write_bytes(self.manifest)
        (out / sha(b"")[7:]).write_bytes(b"")
        (out / sha(self.layer)[7:]).write_bytes(self.layer + (b"\0" if self.tamper else b""))
        return ToolResult(0, b"", "")

    def verbs(self) -> list[str]:
        return [call[1] for call in self.calls]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        registry_mirrors={"ghcr.io/*": "mirror.local:5000/gh/*"},
        insecure_registries=["mirror.local:5000"],
    )


def fake(monkeypatch: pytest.MonkeyPatch, skopeo: FakeSkopeo) -> FakeSkopeo:
    monkeypatch.setattr(feature_fetch, "run_tool", skopeo)
    return skopeo


def oci(ref: str) -> FeatureRef:
    parsed = parse_feature_ref(ref, {})
    assert parsed is not None and parsed.kind is FeatureKind.OCI
    return parsed


def test_references_go_through_the_mirrors(settings: Settings) -> None:
    source = feature_source(settings, oci("ghcr.io/acme/features/hello:1"))
    assert source.pull_spec == "mirror.local:5000/gh/acme/features/hello:1"
    assert feature_source(settings, oci("example.com/f/x")).pull_spec == "example.com/f/x:latest"
    pinned = feature_source(settings, oci(f"ghcr.io/a/b@{sha(b'm')}"))
    assert pinned.pull_spec == f"mirror.local:5000/gh/a/b@{sha(b'm')}"


async def test_an_oci_feature_is_fetched_verified_and_cached(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    skopeo = fake(monkeypatch, FakeSkopeo(feature_tar()))
    ref = oci("ghcr.io/acme/features/hello:1")
    lines: list[str] = []
    dest = await fetch_feature(settings, ref, tmp_path / "one", log=lines.append)
    assert json.loads((dest / "devcontainer-feature.json").read_text())["id"] == "hello"
    assert (dest / "install.sh").stat().st_mode & 0o111
    inspect, copy = skopeo.calls
    assert inspect[-1] == "docker://mirror.local:5000/gh/acme/features/hello:1"
    assert "--tls-verify=false" in inspect and "--no-creds" in inspect
    digest = sha(skopeo.manifest)
    assert copy[-2] == f"docker://mirror.local:5000/gh/acme/features/hello@{digest}"
    assert "--src-tls-verify=false" in copy
    # a tag: one manifest request, then the cache
    await fetch_feature(settings, ref, tmp_path / "two", log=lines.append)
    assert skopeo.verbs() == ["inspect", "copy", "inspect"]
    assert lines[-1].endswith("(cached)")
    # a digest fetched before: no registry at all
    await fetch_feature(settings, oci(f"ghcr.io/acme/features/hello@{digest}"), tmp_path / "three")
    assert skopeo.verbs() == ["inspect", "copy", "inspect"]
    assert (tmp_path / "three/install.sh").read_bytes() == (dest / "install.sh").read_bytes()
    cached = list((settings.data_dir / "features/sha256").iterdir())
    assert [p.name for p in cached] == [hashlib.sha256(skopeo.layer).hexdigest()]
    assert not list((settings.data_dir / "features/tmp").iterdir())


async def test_a_layer_that_does_not_match_its_digest_is_refused(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake(monkeypatch, FakeSkopeo(feature_tar(), tamper=True))
    with pytest.raises(ValidationFailed, match="the layer's digest is") as caught:
        await fetch_feature(settings, oci("ghcr.io/acme/features/hello:1"), tmp_path / "x")
    assert caught.value.details["feature"] == "ghcr.io/acme/features/hello:1"
    assert not list((settings.data_dir / "features/sha256").iterdir())
    assert not (tmp_path / "x").exists()


async def test_a_manifest_that_does_not_match_the_pinned_digest_is_refused(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake(monkeypatch, FakeSkopeo(feature_tar()))
    with pytest.raises(ValidationFailed, match="not sha256:"):
        await fetch_feature(settings, oci(f"ghcr.io/a/b@{sha(b'other')}"), tmp_path / "x")


async def test_an_artifact_that_is_not_a_feature_is_refused(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    skopeo = fake(monkeypatch, FakeSkopeo(feature_tar()))
    skopeo.manifest = json.dumps({"schemaVersion": 2, "layers": [{"mediaType": "x"}]}).encode()
    with pytest.raises(ValidationFailed, match="not a Dev Container Feature artifact"):
        await fetch_feature(settings, oci("ghcr.io/a/b:1"), tmp_path / "x")
    no_install = fake(
        monkeypatch, FakeSkopeo(tar_bytes([(entry("devcontainer-feature.json"), b"{}")]))
    )
    assert no_install is not skopeo
    with pytest.raises(ValidationFailed, match=r"no install\.sh"):
        await fetch_feature(settings, oci("ghcr.io/a/c:1"), tmp_path / "y")


@pytest.mark.parametrize(
    ("stderr", "error"),
    [
        ("reading manifest 1 in mirror.local:5000/gh/a/b: manifest unknown", NotFound),
        ("reading manifest 1 in x: unauthorized: authentication required", PermissionDenied),
        (
            "pinging container registry x: dial tcp 1.2.3.4:5000: connection refused",
            UpstreamFailure,
        ),
    ],
)
async def test_registry_errors_name_the_feature(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    stderr: str,
    error: type[Exception],
) -> None:
    skopeo = fake(monkeypatch, FakeSkopeo(feature_tar()))
    skopeo.fail = stderr
    with pytest.raises(error) as caught:
        await fetch_feature(settings, oci("ghcr.io/a/b:1"), tmp_path / "x")
    message = str(caught.value)
    assert message.startswith("Feature ghcr.io/a/b:1: ") and "registry mirror" in message


async def test_tarball_urls_must_be_https_unless_listed_insecure(
    settings: Settings, tmp_path: Path
) -> None:
    ref = FeatureRef(FeatureKind.TARBALL, "http://example.com/devcontainer-feature-x.tgz")
    with pytest.raises(InvalidRequest, match="is not https"):
        await fetch_feature(settings, ref, tmp_path / "x")
    with pytest.raises(InvalidRequest, match="nothing to fetch"):
        await fetch_feature(settings, FeatureRef(FeatureKind.LOCAL, "./x"), tmp_path / "y")


async def test_fetched_features_bring_their_dependencies(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A fetched Feature's dependsOn is fetched too, and installs first."""
    base = feature_tar({"id": "base", "version": "1.0.0"})
    top = feature_tar(
        {"id": "top", "version": "1.0.0", "dependsOn": {"ghcr.io/acme/features/base:1": {}}}
    )
    skopeos = {"top": FakeSkopeo(top), "base": FakeSkopeo(base)}

    def route(argv: Sequence[str], **kw: Any) -> ToolResult:
        name = "base" if "/base" in argv[-1] or "/base" in argv[-2] else "top"
        return skopeos[name](argv, **kw)

    monkeypatch.setattr(feature_fetch, "run_tool", route)
    repo = tmp_path / "app"
    (repo / ".devcontainer").mkdir(parents=True)
    (repo / ".devcontainer/devcontainer.json").write_text(
        json.dumps({"image": "debian:12", "features": {"ghcr.io/acme/features/top:1": {}}})
    )
    config = load_devcontainer(repo)
    assert config is not None
    refs = await fetch_features(settings, config, tmp_path / "work")
    assert [r.ref for r in refs] == ["ghcr.io/acme/features/top:1", "ghcr.io/acme/features/base:1"]
    ordered = resolve_features(config, refs)
    assert [f.metadata.id for f in ordered] == ["base", "top"]
    assert all(
        f.ref.path is not None and f.ref.path.is_relative_to(tmp_path / "work") for f in ordered
    )
