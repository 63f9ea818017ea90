"""Templates from OCI images, against a real registry on loopback.

Nothing here reaches the network: the test builds its own images (a
busybox-static root filesystem, no Python) with umoci, pushes them with skopeo
to a Debian ``docker-registry`` it starts on a free loopback port (and a second
one with htpasswd auth over the same storage), then pulls them back as
templates, through a mirror rewrite of a name that does not exist
(``registry.example.com``) when checking the air-gapped path. The last tests
boot sandboxes from such a template through a real server: the agent runs on
the bundled interpreter, since the image has none.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from server_harness import free_port, new_server, shut_down

from atelier import Sandbox
from atelier.config import Settings
from atelier.errors import NotFound, PermissionDenied, ServiceUnavailable
from atelier.images.oci import import_archive, pull_template, remove_image_tag
from atelier.images.store import TemplateInfo, TemplateStore
from oci_registry import Registry, busybox_rootfs, need_tools, run, start_registry

pytestmark = pytest.mark.integration

USER, SECRET = "alice", "s3cret-token"


@dataclass
class World:
    registry: Registry  # open, plain HTTP
    secured: Registry  # htpasswd auth, same storage
    oci_archive: Path  # tiny:1 as an OCI archive
    docker_archive: Path  # tiny:2 as a `docker save` tarball

    def settings(self, data_dir: Path, **kw: object) -> Settings:
        options: dict[str, object] = {
            "insecure_registries": [self.registry.addr, self.secured.addr],
            "registry_mirrors": {"registry.example.com/*": f"{self.registry.addr}/*"},
            **kw,
        }
        return Settings(data_dir=data_dir, **options)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    need_tools()
    work = tmp_path_factory.mktemp("oci-world")
    storage = work / "storage"
    htpasswd = work / "htpasswd"
    htpasswd.write_text(run("htpasswd", "-Bbn", USER, SECRET))
    open_reg = start_registry(work, "open", storage, None)
    secured = start_registry(work, "secured", storage, htpasswd)
    try:
        layout = work / "layout"
        rootfs = work / "rootfs"
        busybox_rootfs(rootfs)
        run("umoci", "init", "--layout", layout)
        run("umoci", "new", "--image", f"{layout}:one")
        run("umoci", "insert", "--image", f"{layout}:one", rootfs, "/")
        run(
            "umoci", "config", "--image", f"{layout}:one",
            "--config.env", "GREETING=hello", "--config.workingdir", "/home/user",
            "--config.cmd", "/bin/sh", "--config.exposedports", "8080/tcp",
        )  # fmt: skip
        # tiny:2 = tiny:1 + a file + a whiteout of /etc/doomed (shares tiny:1's layer)
        run("umoci", "tag", "--image", f"{layout}:one", "two")
        hello = work / "hello.txt"
        hello.write_text("hello from layer two\n")
        run("umoci", "insert", "--image", f"{layout}:two", hello, "/hello.txt")
        run("umoci", "insert", "--image", f"{layout}:two", "--whiteout", "/etc/doomed")
        for tag, name in (("one", "tiny:1"), ("two", "tiny:2")):
            run(
                "skopeo", "copy", "--dest-tls-verify=false",
                f"oci:{layout}:{tag}", f"docker://{open_reg.addr}/{name}",
            )  # fmt: skip
        oci_archive = work / "tiny-oci.tar"
        docker_archive = work / "tiny-docker.tar"
        run("skopeo", "copy", f"oci:{layout}:one", f"oci-archive:{oci_archive}")
        run("skopeo", "copy", f"oci:{layout}:two", f"docker-archive:{docker_archive}:tiny:2")
        yield World(open_reg, secured, oci_archive, docker_archive)
    finally:
        for reg in (open_reg, secured):
            reg.proc.terminate()
            try:
                reg.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                reg.proc.kill()
                reg.proc.wait()


def _manifest(info: TemplateInfo) -> dict[str, object]:
    data = json.loads((info.rootfs.parent / "manifest.json").read_text())
    assert isinstance(data, dict)
    return data


def _no_leftovers(settings: Settings) -> None:
    hidden = [p.name for p in settings.templates_dir.glob(".*") if not p.name.endswith(".lock")]
    assert hidden == []
    work = settings.data_dir / "oci-work"
    assert not list(work.glob("pull-*")) and not list(work.glob("archive-*"))


# -- pulls ---------------------------------------------------------------------------


def test_pull_through_a_mirror(world: World, tmp_path: Path) -> None:
    """The air-gapped path: a name nobody can reach, rewritten to the local mirror."""
    settings = world.settings(tmp_path)
    info = pull_template(settings, "tiny", "registry.example.com/tiny:1")
    assert info.ready
    root = info.rootfs
    assert (root / "bin/busybox").is_file()
    assert os.readlink(root / "bin/sh") == "busybox"
    assert not (root / "usr/bin/python3").exists()
    owned = (root / "home/user/owned").stat()
    assert (owned.st_uid, owned.st_gid) == (1000, 1000)  # ownership kept
    assert (root / "tmp").stat().st_mode & 0o7777 == 0o1777
    manifest = _manifest(info)
    assert manifest["builder"] == "oci"
    assert manifest["image_ref"] == "registry.example.com/tiny:1"
    assert str(manifest["source_ref"]).startswith(f"{world.registry.addr}/tiny@sha256:")
    assert str(manifest["digest"]).startswith("sha256:")
    image = manifest["image"]
    assert isinstance(image, dict)
    assert "GREETING=hello" in image["env"]
    assert image["working_dir"] == "/home/user"
    assert image["cmd"] == ["/bin/sh"]
    assert image["exposed_ports"] == ["8080/tcp"]
    assert TemplateStore(settings).get("tiny").size_bytes == manifest["size_bytes"]
    # the same ref again: nothing to do
    assert pull_template(settings, "tiny", "registry.example.com/tiny:1").rootfs == root
    _no_leftovers(settings)


def test_whiteouts_and_shared_layers(world: World, tmp_path: Path) -> None:
    settings = world.settings(tmp_path)
    one = pull_template(settings, "one", f"{world.registry.addr}/tiny:1")
    two = pull_template(settings, "two", f"{world.registry.addr}/tiny:2")
    assert (one.rootfs / "etc/doomed").exists()
    assert not (two.rootfs / "etc/doomed").exists()  # deleted in an upper layer
    assert (two.rootfs / "hello.txt").read_text() == "hello from layer two\n"
    layers_one = _manifest(one)["layers"]
    layers_two = _manifest(two)["layers"]
    assert isinstance(layers_one, list) and isinstance(layers_two, list)
    assert len(layers_two) == 3 and layers_two[0] == layers_one[0]
    # one shared layout: each blob once, the shared layer stored once
    blobs = settings.oci_dir / "blobs/sha256"
    stored = {p.name for p in blobs.iterdir()}
    assert str(layers_one[0]).split(":")[1] in stored
    expected = {str(d).split(":")[1] for d in {*layers_one, *layers_two}}
    manifests = json.loads((settings.oci_dir / "index.json").read_text())["manifests"]
    assert {m["annotations"]["org.opencontainers.image.ref.name"] for m in manifests} == {
        "one",
        "two",
    }
    assert expected <= stored
    assert len(stored) == len(expected) + 2 + 2  # + a manifest and a config per image
    # removing one template frees only what nobody else uses
    TemplateStore(settings).remove("two")
    remove_image_tag(settings, "two")
    left = {p.name for p in blobs.iterdir()}
    assert str(layers_one[0]).split(":")[1] in left
    assert not {str(d).split(":")[1] for d in layers_two[1:]} & left


def test_missing_tag_is_not_found(world: World, tmp_path: Path) -> None:
    settings = world.settings(tmp_path)
    with pytest.raises(NotFound) as err:
        pull_template(settings, "nope", "registry.example.com/tiny:does-not-exist")
    assert "registry.example.com/tiny:does-not-exist" in err.value.message
    assert "not found" in err.value.message
    assert not (settings.templates_dir / "nope").exists()
    _no_leftovers(settings)


def test_unreachable_registry(world: World, tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    settings = world.settings(
        tmp_path, registry_mirrors={"gone.example.com/*": f"127.0.0.1:{port}/*"}
    )
    with pytest.raises(ServiceUnavailable, match="cannot reach registry"):
        pull_template(settings, "gone", "gone.example.com/tiny:1", timeout=60)
    assert not (settings.templates_dir / "gone").exists()


def test_registry_with_auth(world: World, tmp_path: Path) -> None:
    settings = world.settings(tmp_path)
    ref = f"{world.secured.addr}/tiny:1"
    with pytest.raises(PermissionDenied) as anonymous:
        pull_template(settings, "private", ref)
    assert "credentials" in anonymous.value.message
    with pytest.raises(PermissionDenied) as wrong:
        pull_template(settings, "private", ref, credentials=f"{USER}:not-{SECRET}")
    assert SECRET not in wrong.value.message and SECRET not in json.dumps(wrong.value.details)
    assert not (settings.templates_dir / "private").exists()
    info = pull_template(settings, "private", ref, credentials=f"{USER}:{SECRET}")
    assert (info.rootfs / "bin/busybox").is_file()
    # the secret is nowhere on disk
    for path in (settings.templates_dir / "private/manifest.json", settings.oci_dir / "index.json"):
        assert SECRET not in path.read_text()
    _no_leftovers(settings)


def test_import_oci_and_docker_archives(world: World, tmp_path: Path) -> None:
    settings = world.settings(tmp_path)
    from_oci = import_archive(settings, "from-oci", world.oci_archive)
    assert (from_oci.rootfs / "etc/doomed").exists()
    assert _manifest(from_oci)["archive_format"] == "oci-archive"
    from_docker = import_archive(settings, "from-docker", world.docker_archive)
    assert _manifest(from_docker)["archive_format"] == "docker-archive"
    assert (from_docker.rootfs / "hello.txt").exists()
    assert not (from_docker.rootfs / "etc/doomed").exists()  # whiteout in a docker archive
    image = _manifest(from_docker)["image"]
    assert isinstance(image, dict) and "GREETING=hello" in image["env"]
    _no_leftovers(settings)


def test_cli_pull_import_ls(world: World, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "ATELIER_INSECURE_REGISTRIES": world.registry.addr,
        "ATELIER_REGISTRY_MIRRORS": json.dumps(
            {"registry.example.com/*": f"{world.registry.addr}/*"}
        ),
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "atelier.images", *args, "--data-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            env={**env, "COLUMNS": "250"},
            check=False,
        )

    pulled = cli("pull", "tiny", "registry.example.com/tiny:1")
    assert pulled.returncode == 0, pulled.stderr
    assert "template 'tiny' ready" in pulled.stdout
    imported = cli("import", "arch", str(world.docker_archive))
    assert imported.returncode == 0, imported.stderr
    listed = cli("ls")
    assert "registry.example.com/tiny:1" in listed.stdout
    assert "tiny-docker.tar" in listed.stdout
    missing = cli("pull", "nope", "registry.example.com/tiny:404")
    assert missing.returncode == 1
    assert "not found" in missing.stderr


# -- sandboxes from an image without Python -----------------------------------------------


def test_sandbox_from_an_image_without_python(
    world: World, base_template: TemplateInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    srv = new_server(base_template)
    templates = srv.data_dir / "templates"
    templates.mkdir(parents=True)  # the server's own templates dir, with base linked in
    (templates / "base").symlink_to(base_template.rootfs.parent)
    settings = world.settings(srv.data_dir)
    pull_template(settings, "busybox", "registry.example.com/tiny:1")
    srv.start()
    try:
        monkeypatch.setenv("ATELIER_URL", srv.url)
        monkeypatch.setenv("ATELIER_TOKEN", srv.token)
        with Sandbox.create(template="busybox", labels={"test": "oci"}) as sb:
            res = sb.commands.run("echo hi")
            assert (res.exit_code, res.stdout) == (0, "hi\n")
            probe = sb.commands.run("command -v python3 || echo none; cat /hello.txt 2>&1 || true")
            assert probe.stdout.startswith("none\n")
            init = sb.commands.run("tr '\\0' ' ' < /proc/1/cmdline")
            assert init.stdout.startswith("/.atelier/runtime/bin/ld-linux"), init.stdout
            # commands run as the image's "user" (uid 1000, the file's owner) by default
            as_user = sb.commands.run("id -u; echo $HOME; cat /home/user/owned")
            assert as_user.stdout == "1000\n/home/user\nmine\n"
            assert sb.commands.run("id -u", user="root").stdout == "0\n"
        with Sandbox.create(template="base", labels={"test": "oci"}) as sb:
            res = sb.commands.run("python3 -c 'print(6*7)'")
            assert (res.exit_code, res.stdout) == (0, "42\n")
    finally:
        shut_down(srv)
