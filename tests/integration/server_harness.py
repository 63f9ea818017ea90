"""A real Atelier server in a subprocess, for integration and end-to-end tests.

Each server gets its own data dir (database, sandboxes, runsc state) and
shares the session's template cache through a symlink, so the base template
is built once per machine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from atelier.images.store import TemplateInfo

__all__ = ["LeakReport", "ServerProcess", "find_leaks", "free_port", "new_server", "shut_down"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    data_dir: Path
    templates_cache: Path
    pool_size: int = 0
    port: int = field(default_factory=free_port)
    extra_env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token(self) -> str:
        return (self.data_dir / "admin-token").read_text().strip()

    @property
    def log_file(self) -> Path:
        return self.data_dir / "server.log"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            ATELIER_DATA_DIR=str(self.data_dir),
            ATELIER_PORT=str(self.port),
            ATELIER_HOST="127.0.0.1",
            ATELIER_POOL_SIZE=str(self.pool_size),
            **self.extra_env,
        )
        return env

    def start(self, timeout: float = 60.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        link = self.data_dir / "templates"
        if not link.exists():
            link.symlink_to(self.templates_cache)
        log = self.log_file.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "atelier.server"],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"server did not become healthy:\n{self.log_tail()}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Kill the server process only (sandboxes live in their own sessions)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)
        self.proc = None

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=120
        )


@dataclass
class LeakReport:
    runsc_processes: list[str]
    mounts: list[str]
    loop_devices: list[str]
    sandbox_dirs: list[str]

    def empty(self) -> bool:
        return not (self.runsc_processes or self.mounts or self.loop_devices or self.sandbox_dirs)


def find_leaks(data_dir: Path) -> LeakReport:
    """Everything on the host that still belongs to sandboxes of ``data_dir``."""
    root = str(data_dir.resolve())
    procs = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    runsc = [
        line.strip()
        for line in procs.splitlines()
        if ("runsc" in line or "qemu-system" in line or "firecracker" in line) and root in line
    ]
    mounts = [
        line.split()[1]
        for line in Path("/proc/mounts").read_text().splitlines()
        if line.split()[1].startswith(root)
    ]
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    loop_devices = [line for line in loops.splitlines() if root in line]
    sandboxes = data_dir / "sandboxes"
    dirs = [p.name for p in sandboxes.iterdir()] if sandboxes.exists() else []
    return LeakReport(runsc, mounts, loop_devices, dirs)


def new_server(base_template: TemplateInfo, pool_size: int = 0, **env: str) -> ServerProcess:
    data_dir = Path(tempfile.mkdtemp(prefix="atl-srv-", dir="/var/tmp"))
    return ServerProcess(
        data_dir=data_dir,
        templates_cache=base_template.rootfs.parent.parent,
        pool_size=pool_size,
        extra_env=env,
    )


def shut_down(srv: ServerProcess) -> None:
    """Delete every sandbox, stop the server, assert nothing leaked, remove the data dir."""
    if srv.proc is not None:
        with srv.client() as http:
            for sb in http.get("/v1/sandboxes").json().get("sandboxes", []):
                http.delete(f"/v1/sandboxes/{sb['id']}")
        srv.stop()
    # pooled sandboxes are not listed; restart-free cleanup of whatever remains
    leaks = find_leaks(srv.data_dir)
    if not leaks.empty():
        import asyncio

        from atelier.config import Settings
        from atelier.runtimes.gvisor import GVisorRuntime

        rt = GVisorRuntime(Settings(data_dir=srv.data_dir))

        async def destroy_all() -> None:
            for sid in await rt.list_ids():
                await rt.destroy(sid)

        asyncio.run(destroy_all())
    remaining = find_leaks(srv.data_dir)
    shutil.rmtree(srv.data_dir, ignore_errors=True)
    assert remaining.empty(), f"leaked after cleanup: {remaining}"
