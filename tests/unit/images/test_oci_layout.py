"""The OCI pipeline's pure parts: image config, digests, archives, the shared index."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from atelier.config import Settings
from atelier.errors import Conflict, InvalidRequest, NotFound
from atelier.images import oci
from atelier.images.debootstrap import ProgressEvent

DIGEST = "sha256:" + "0" * 64


def test_image_config_fields() -> None:
    blob = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/bin:/bin", "FOO=bar"],
            "User": "1000:1000",
            "WorkingDir": "/work",
            "Entrypoint": ["/bin/tini", "--"],
            "Cmd": ["sh"],
            "ExposedPorts": {"8080/tcp": {}, "53/udp": {}},
            "Labels": {"org.opencontainers.image.title": "tiny"},
            "StopSignal": "SIGINT",
        },
    }
    cfg = oci.image_config(blob)
    assert cfg.env == ("PATH=/usr/bin:/bin", "FOO=bar")
    assert cfg.user == "1000:1000"
    assert cfg.working_dir == "/work"
    assert cfg.entrypoint == ("/bin/tini", "--")
    assert cfg.cmd == ("sh",)
    assert cfg.exposed_ports == ("53/udp", "8080/tcp")
    assert cfg.stop_signal == "SIGINT"
    data = cfg.to_json()
    assert data["entrypoint"] == ["/bin/tini", "--"]
    assert data["labels"] == {"org.opencontainers.image.title": "tiny"}
    assert json.loads(json.dumps(data)) == data


def test_image_config_tolerates_missing_and_wrong_fields() -> None:
    cfg = oci.image_config({"config": {"Env": "not-a-list", "User": "", "ExposedPorts": []}})
    assert cfg == oci.ImageConfig()
    assert oci.image_config({}) == oci.ImageConfig()
    assert oci.image_config({"config": None}).cmd is None


def test_layout_blob_only_takes_digests(tmp_path: Path) -> None:
    assert oci.layout_blob(tmp_path, DIGEST) == tmp_path / "blobs/sha256" / ("0" * 64)
    for bad in ("sha256:../../etc/passwd", "../x", "sha256:" + "0" * 63, "md5:" + "0" * 32, ""):
        with pytest.raises(InvalidRequest):
            oci.layout_blob(tmp_path, bad)


def _tar(path: Path, names: list[str], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tar:  # type: ignore[call-overload]
        for name in names:
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"{}"))
    return path


def test_detect_archive_format(tmp_path: Path) -> None:
    oci_tar = _tar(tmp_path / "o.tar", ["oci-layout", "index.json", f"blobs/sha256/{'0' * 64}"])
    assert oci.detect_archive_format(oci_tar) == "oci-archive"
    docker = _tar(
        tmp_path / "d.tar", ["abc/layer.tar", "abc.json", "manifest.json", "repositories"]
    )
    assert oci.detect_archive_format(docker) == "docker-archive"
    # docker save >= 25 writes both layouts: the OCI side wins
    both = _tar(tmp_path / "b.tar", ["./oci-layout", "./index.json", "./manifest.json"])
    assert oci.detect_archive_format(both) == "oci-archive"
    gz = _tar(tmp_path / "o.tar.gz", ["oci-layout", "index.json"], "w:gz")
    assert oci.detect_archive_format(gz) == "oci-archive"


def test_detect_archive_format_errors(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        oci.detect_archive_format(tmp_path / "missing.tar")
    text = tmp_path / "x.txt"
    text.write_text("hello\n" * 200)
    with pytest.raises(InvalidRequest, match="not a tar archive"):
        oci.detect_archive_format(text)
    other = _tar(tmp_path / "other.tar", ["etc/passwd"])
    with pytest.raises(InvalidRequest, match="neither"):
        oci.detect_archive_format(other)


def test_download_progress() -> None:
    events: list[ProgressEvent] = []
    progress = oci._Download(events.append, 2)
    for line in (
        "Getting image source signatures",
        "Copying blob sha256:d7f2db9deb7d41884c1ba29ef306f36fe7df0d762d494e65172bafeb5682c49d",
        "Copying blob sha256:aaaa",
        "Copying config sha256:c3fd",
        "Writing manifest to image destination",
    ):
        progress(line)
    assert [(e.phase, e.done, e.total) for e in events] == [
        ("download", 1, 2),
        ("download", 2, 2),
        ("download", 3, 3),  # a low hint grows with the count
    ]
    assert events[0].message == "blob sha256:d7f2db9deb7d"


def test_tags_in_the_shared_index(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    desc = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": DIGEST, "size": 2}
    oci._set_tag(settings, "a", desc)
    oci._set_tag(settings, "b", desc)
    oci._set_tag(settings, "a", {**desc, "size": 3})  # retagging replaces
    index = json.loads((settings.oci_dir / "index.json").read_text())
    refs = {m["annotations"][oci.REF_ANNOTATION]: m["size"] for m in index["manifests"]}
    assert refs == {"a": 3, "b": 2}
    assert json.loads((settings.oci_dir / "oci-layout").read_text()) == {
        "imageLayoutVersion": "1.0.0"
    }
    oci._set_tag(settings, "a", None)
    index = json.loads((settings.oci_dir / "index.json").read_text())
    assert [m["annotations"][oci.REF_ANNOTATION] for m in index["manifests"]] == ["b"]


@pytest.mark.skipif(shutil.which("umoci") is None, reason="umoci is not installed")
def test_garbage_collection_keeps_tagged_blobs(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    layout = oci._ensure_layout(settings)

    def blob(data: bytes) -> dict[str, object]:
        from hashlib import sha256

        digest = sha256(data).hexdigest()
        (layout / "blobs/sha256" / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    config = blob(b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}')
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
            "layers": [],
        }
    ).encode()
    kept = blob(manifest)
    orphan = blob(b"nobody points at me")
    oci._set_tag(settings, "t", {"mediaType": "application/vnd.oci.image.manifest.v1+json", **kept})
    stale_pull = tmp_path / "oci-work" / "pull-123"
    stale_pull.mkdir(parents=True)
    assert oci.collect_garbage(settings, wait=True)
    names = {p.name for p in (layout / "blobs/sha256").iterdir()}
    assert str(kept["digest"]).split(":")[1] in names
    assert str(config["digest"]).split(":")[1] in names
    assert str(orphan["digest"]).split(":")[1] not in names
    assert not stale_pull.exists()
    oci.remove_image_tag(settings, "t")
    assert not list((layout / "blobs/sha256").iterdir())


def _fake_template(settings: Settings, name: str, manifest: dict[str, object]) -> None:
    d = settings.templates_dir / name
    (d / "rootfs").mkdir(parents=True)
    (d / "manifest.json").write_text(json.dumps({"name": name, **manifest}))


def test_pull_returns_the_template_already_pulled(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    _fake_template(settings, "t", {"builder": "oci", "image_ref": "docker.io/library/alpine:3"})
    events: list[ProgressEvent] = []
    info = oci.pull_template(settings, "t", "alpine:3", on_progress=events.append)
    assert info.name == "t"
    assert events[-1].message == "already pulled"


def test_pull_refuses_to_replace_another_template(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    _fake_template(settings, "t", {"builder": "debootstrap"})
    with pytest.raises(Conflict, match="force"):
        oci.pull_template(settings, "t", "alpine:3")
    with pytest.raises(Conflict):
        oci.import_archive(settings, "t", _tar(tmp_path / "o.tar", ["oci-layout", "index.json"]))


def test_pull_validates_before_touching_anything(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    with pytest.raises(InvalidRequest, match="template name"):
        oci.pull_template(settings, "Bad/Name", "alpine")
    with pytest.raises(InvalidRequest, match="image reference"):
        oci.pull_template(settings, "ok", "UPPER/case")
    with pytest.raises(InvalidRequest, match="USER:TOKEN"):
        oci.pull_template(settings, "ok", "alpine", credentials="no-colon")
    bad_mirror = Settings(data_dir=tmp_path, registry_mirrors={"docker.io/*": "exact"})
    with pytest.raises(InvalidRequest, match="mirror"):
        oci.pull_template(bad_mirror, "ok", "alpine")
    assert not (tmp_path / "templates" / "ok").exists()
    assert not (tmp_path / "oci").exists()


def test_identity_files_never_follow_an_image_symlink(tmp_path: Path) -> None:
    """Image rootfs trees are untrusted: a sandbox's /etc/hostname is written by
    host code, which must not follow an ``etc`` link out of the rootfs."""
    from atelier.runtimes.gvisor.runtime import write_identity

    outside = tmp_path / "host-etc"
    outside.mkdir()
    (outside / "hostname").write_text("the host\n")
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "etc").symlink_to(outside)
    write_identity(evil, "sb-1")
    assert (outside / "hostname").read_text() == "the host\n"
    assert not (outside / "hosts").exists()

    linked = tmp_path / "linked"
    (linked / "etc").mkdir(parents=True)
    (linked / "etc/hostname").symlink_to(outside / "hostname")
    write_identity(linked, "sb-2")
    assert (outside / "hostname").read_text() == "the host\n"
    assert (linked / "etc/hostname").read_text() == "sb-2\n"
    assert not (linked / "etc/hostname").is_symlink()

    bare = tmp_path / "bare"  # an image without /etc (a static binary, say)
    bare.mkdir()
    write_identity(bare, "sb-3")
    assert (bare / "etc/hostname").read_text() == "sb-3\n"
    assert "sb-3" in (bare / "etc/hosts").read_text()
