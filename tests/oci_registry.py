"""A real OCI registry on loopback and a tiny busybox image for tests
(a unique module name: import as ``oci_registry``).

``start_registry`` runs Debian's ``docker-registry`` on a free loopback port
(optionally with htpasswd auth); ``busybox_rootfs`` lays out a minimal root
filesystem (busybox-static, users root and user, no Python) that tests turn
into images with ``umoci`` and push with ``skopeo``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from ci_support import skip_unless_ci

__all__ = ["BUSYBOX", "TOOLS", "Registry", "busybox_rootfs", "need_tools", "run", "start_registry"]

TOOLS = ("skopeo", "umoci", "docker-registry", "htpasswd")
BUSYBOX = Path("/bin/busybox")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def need_tools() -> None:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        skip_unless_ci(f"missing {', '.join(missing)} (scripts/setup.sh test-deps installs them)")
    if not BUSYBOX.exists():
        skip_unless_ci("busybox-static is not installed")
    if os.geteuid() != 0:
        skip_unless_ci("unpacking images with their ownership needs root")


def run(*argv: str | Path) -> str:
    res = subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=False)
    assert res.returncode == 0, f"{argv} failed: {res.stdout}{res.stderr}"
    return res.stdout


@dataclass
class Registry:
    addr: str
    proc: subprocess.Popen[bytes]
    log: Path


def start_registry(workdir: Path, name: str, storage: Path, auth: Path | None) -> Registry:
    port = free_port()
    config = workdir / f"{name}.yml"
    lines = [
        "version: 0.1",
        "log:",
        "  level: warn",
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {storage}",
        "http:",
        f"  addr: 127.0.0.1:{port}",
        f"  secret: atelier-test-{name}",
    ]
    if auth is not None:
        lines += ["auth:", "  htpasswd:", "    realm: atelier-test", f"    path: {auth}"]
    config.write_text("\n".join(lines) + "\n")
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["docker-registry", "serve", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    reg = Registry(f"127.0.0.1:{port}", proc, log)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"docker-registry exited: {log.read_text()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://{reg.addr}/v2/", timeout=1).status_code in (200, 401):
                return reg
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"docker-registry did not answer: {log.read_text()}")


def busybox_rootfs(root: Path) -> None:
    (root / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, root / "bin/busybox")
    applets = run(BUSYBOX, "--list").split()
    for applet in applets:
        if applet != "busybox":
            (root / "bin" / applet).symlink_to("busybox")
    (root / "etc").mkdir()
    (root / "etc/passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n"
    )
    (root / "etc/group").write_text("root:x:0:\nuser:x:1000:\n")
    (root / "etc/doomed").write_text("deleted by an upper layer\n")
    (root / "home/user").mkdir(parents=True)
    (root / "home/user/owned").write_text("mine\n")
    os.chown(root / "home/user", 1000, 1000)
    os.chown(root / "home/user/owned", 1000, 1000)
    (root / "root").mkdir(mode=0o700)
    (root / "tmp").mkdir()
    (root / "tmp").chmod(0o1777)
