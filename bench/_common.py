"""Helpers shared by the benchmarks in ``bench/`` (not a benchmark itself).

- :class:`Server`: an ``atelier server`` subprocess with its own data dir
  (the template cache is symlinked in), stopped and emptied by ``stop()``;
- :class:`RawRunsc`: plain ``runsc`` on a template rootfs, the yardstick;
- process/memory/CPU accounting from ``/proc``;
- :func:`sweep`: the backstop that removes whatever a run left under its
  temp dir (processes, mounts, loop devices, files);
- percentiles and plain-text tables.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from atelier import Sandbox
from atelier.config import Settings

__all__ = [
    "BenchError",
    "RawRunsc",
    "Server",
    "cpu_seconds",
    "default_templates",
    "mem_total_mib",
    "memory_of",
    "pct",
    "proc_table",
    "processes_of",
    "say",
    "sweep",
    "table",
]

PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class BenchError(Exception):
    """A failure that ends the run with one line (no traceback)."""


def say(msg: str) -> None:
    """Progress goes to stderr; stdout is for tables and the JSON line."""
    print(msg, file=sys.stderr, flush=True)


def pct(values: list[float], p: float) -> float:
    """The p-th percentile, linear interpolation between closest ranks."""
    xs = sorted(values)
    k = (len(xs) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def default_templates() -> Path:
    test_dir = os.environ.get("ATELIER_TEST_DATA_DIR")
    return Path(test_dir) / "templates" if test_dir else Path("/var/lib/atelier/templates")


def table(title: str, header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    """Print a plain-text table (floats with 2 decimals, None as '-')."""

    def cell(c: Any) -> str:
        if c is None:
            return "-"
        return f"{c:.2f}" if isinstance(c, float) else str(c)

    cells = [header] + [tuple(cell(c) for c in r) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n{title}")
    for n, row in enumerate(cells):
        parts = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        print("  " + "  ".join(parts))
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths))
    sys.stdout.flush()


# -- /proc accounting -----------------------------------------------------------------


def proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, command line) of every process on the host."""
    table: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            raw = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        table[int(entry)] = (ppid, raw.replace(b"\0", b" ").decode(errors="replace"))
    return table


def processes_of(needle: str, table: dict[int, tuple[int, str]] | None = None) -> set[int]:
    """Processes whose command line contains ``needle``, plus all their
    descendants (gVisor's ptrace stubs are forked children without a command line)."""
    table = table if table is not None else proc_table()
    found = {pid for pid, (_, cmd) in table.items() if needle in cmd}
    while more := {pid for pid, (ppid, _) in table.items() if ppid in found} - found:
        found |= more
    return found


def _kib_field(path: str, name: str) -> int | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def memory_of(pids: set[int]) -> tuple[float, float | None]:
    """(RSS, PSS) in MiB summed over ``pids``; PSS None without smaps_rollup."""
    rss, pss, have_pss = 0, 0, True
    for pid in pids:
        rss += _kib_field(f"/proc/{pid}/status", "VmRSS") or 0
        value = _kib_field(f"/proc/{pid}/smaps_rollup", "Pss")
        have_pss = have_pss and value is not None
        pss += value or 0
    return rss / 1024, (pss / 1024 if have_pss else None)


def cpu_seconds(pids: set[int]) -> float:
    """User + system CPU time of ``pids`` (all threads), in seconds."""
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def mem_total_mib() -> float:
    return (_kib_field("/proc/meminfo", "MemTotal") or 0) / 1024


# -- an Atelier server of our own -------------------------------------------------------


@dataclass
class Server:
    data_dir: Path
    templates: Path
    pool_size: int = 0
    template: str = "base"
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token(self) -> str:
        return (self.data_dir / "admin-token").read_text().strip()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 90.0) -> None:
        self.data_dir.mkdir(parents=True)
        (self.data_dir / "templates").symlink_to(self.templates)
        env = dict(os.environ)
        env.update(
            ATELIER_DATA_DIR=str(self.data_dir),
            ATELIER_PORT=str(self.port),
            ATELIER_HOST="127.0.0.1",
            ATELIER_POOL_SIZE=str(self.pool_size),
            ATELIER_DEFAULT_TEMPLATE=self.template,
        )
        with (self.data_dir / "server.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "atelier.server"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C goes to the bench, which cleans up
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"server exited at start-up:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise BenchError(f"server did not become healthy in {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            text = (self.data_dir / "server.log").read_text(errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        return "(no server log)"

    def create(self, **kw: Any) -> Sandbox:
        kw.setdefault("timeout", 900)  # a safety net if the bench dies badly
        return Sandbox.create(self.template, api_url=self.url, token=self.token, **kw)

    def pool_members(self) -> set[str]:
        """Ids of the running pooled sandboxes (a read-only look at the WAL database)."""
        uri = f"file:{self.data_dir / 'atelier.db'}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=5)) as db:
            rows = db.execute(
                "SELECT id FROM sandboxes WHERE pooled = 1 AND state = 'running'"
            ).fetchall()
        return {r[0] for r in rows}

    def wait_pool_full(self, timeout: float = 180.0, settle: float = 0.5) -> set[str]:
        """Wait until the warm pool has ``pool_size`` running members; return their ids."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise BenchError(f"pool server died:\n{self.log_tail()}")
            with contextlib.suppress(sqlite3.Error):
                members = self.pool_members()
                if len(members) >= self.pool_size:
                    time.sleep(settle)  # let the last boot's agent go idle
                    return members
            time.sleep(0.05)
        raise BenchError(f"warm pool not full after {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop the server, then destroy every sandbox it leaves behind (the
        warm pool's members are not listed by the API, and sandboxes outlive
        the server by design)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self.proc = None
        if not (self.data_dir / "sandboxes").is_dir():
            return
        from atelier.runtimes.gvisor import GVisorRuntime

        runtime = GVisorRuntime(Settings(data_dir=self.data_dir))

        async def destroy_all() -> None:
            for sid in await runtime.list_ids():
                await runtime.destroy(sid)

        asyncio.run(destroy_all())


# -- raw runsc ------------------------------------------------------------------------------


class RawRunsc:
    """Plain ``runsc`` on a template rootfs mounted read-only, with the given
    platform and ``--network=none``. ``/tmp`` is a host directory bind-mounted
    read-write, so file I/O goes through the gofer as Atelier's /tmp does."""

    def __init__(self, workdir: Path, rootfs: Path, platform: str, runsc_bin: str) -> None:
        self.dir = workdir / "raw"
        self.state = self.dir / "state"
        self.state.mkdir(parents=True)
        self.rootfs = rootfs
        self.platform = platform
        self.bin = runsc_bin
        self.live: set[str] = set()

    def argv(self, *args: str) -> list[str]:
        flags = [f"--root={self.state}", f"--platform={self.platform}", "--network=none"]
        return [self.bin, *flags, *args]

    def bundle(self, name: str, args: list[str]) -> Path:
        """A minimal OCI bundle running ``args``; returns its directory."""
        bundle, tmp = self.dir / name, self.dir / f"{name}-tmp"
        bundle.mkdir()
        tmp.mkdir()
        ro = ["nosuid", "noexec", "nodev", "ro"]
        config = {
            "ociVersion": "1.0.2",
            "process": {
                "user": {"uid": 0, "gid": 0},
                "args": args,
                "env": [PATH_ENV, "HOME=/root", "LANG=C.UTF-8"],
                "cwd": "/",
            },
            "root": {"path": str(self.rootfs), "readonly": True},
            "hostname": "raw",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ro},
                {
                    "destination": "/tmp",
                    "type": "bind",
                    "source": str(tmp),
                    "options": ["rbind", "rw"],
                },
            ],
            "linux": {"namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount")]},
        }
        (bundle / "config.json").write_text(json.dumps(config, indent=2))
        return bundle

    def run_first_output(self, bundle: Path, cid: str, expect: bytes = b"hi") -> float:
        """Seconds from launching ``runsc run`` to ``expect`` on its stdout."""
        self.live.add(cid)
        with (self.dir / "runsc-run.err").open("ab") as err:
            t0 = time.perf_counter()
            proc = subprocess.Popen(
                self.argv("run", f"--bundle={bundle}", cid),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                start_new_session=True,
            )
            assert proc.stdout is not None
            out, first = b"", None
            try:
                while chunk := os.read(proc.stdout.fileno(), 65536):
                    out += chunk
                    if first is None and expect in out:
                        first = time.perf_counter()
                proc.wait(timeout=60)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                proc.stdout.close()
        if proc.returncode != 0 or first is None:
            raise BenchError(f"runsc run {cid} exited {proc.returncode}, stdout {out[:200]!r}")
        self.live.discard(cid)  # runsc run deletes the container when it ends
        return first - t0

    def start_detached(self, bundle: Path, cid: str) -> None:
        """``runsc create`` + ``runsc start``: a running container to exec in."""
        self.live.add(cid)
        errlog = self.dir / f"{cid}.err"  # a file: the sandbox inherits it, a pipe never closes
        for args in (("create", f"--bundle={bundle}", cid), ("start", cid)):
            with errlog.open("ab") as err:
                res = subprocess.run(
                    self.argv(*args),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                    timeout=60,
                    start_new_session=True,
                )
            if res.returncode != 0:
                said = errlog.read_text(errors="replace")[-500:]
                raise BenchError(f"runsc {args[0]} {cid}: {said}")

    def exec(self, cid: str, *argv: str, input: bytes | None = None) -> bytes:
        res = subprocess.run(
            self.argv("exec", cid, *argv),
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            timeout=300,
        )
        if res.returncode != 0:
            raise BenchError(f"runsc exec {argv}: exit {res.returncode}: {res.stderr[-500:]!r}")
        return res.stdout

    def destroy_all(self) -> None:
        listed = subprocess.run(
            self.argv("list", "--quiet"), capture_output=True, text=True, timeout=60
        )
        for cid in set(listed.stdout.split()) | self.live:
            for args in (("kill", cid, "KILL"), ("delete", "--force", cid)):
                subprocess.run(self.argv(*args), capture_output=True, timeout=60, check=False)
        self.live.clear()


# -- the backstop ---------------------------------------------------------------------------


def leaks(workdir: Path) -> tuple[set[int], list[str], list[str]]:
    """Processes, mounts and loop devices that name ``workdir``."""
    root = str(workdir)
    pids = processes_of(root) - {os.getpid()}
    mounts = [
        ln.split()[1]
        for ln in Path("/proc/mounts").read_text().splitlines()
        if ln.split()[1].startswith(root)
    ]
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    loops = [ln.split(":")[0] for ln in out.splitlines() if root in ln]
    return pids, mounts, loops


def sweep(workdir: Path) -> list[str]:
    """Kill processes whose command line names ``workdir`` (and their children),
    unmount what is mounted under it, detach its loop devices, remove it; return
    what is left. Everything touched carries the run's unique temp dir name."""
    pids, mounts, loops = leaks(workdir)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if pids:
        time.sleep(0.5)
    for mnt in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", mnt], capture_output=True, check=False)
    for dev in loops:
        subprocess.run(["losetup", "-d", dev], capture_output=True, check=False)
    pids, mounts, loops = leaks(workdir)
    left = [f"process {p}" for p in sorted(pids)]
    left += [f"mount {m}" for m in mounts] + [f"loop {d}" for d in loops]
    if not mounts:
        shutil.rmtree(workdir, ignore_errors=True)
        if workdir.exists():
            left.append(f"directory {workdir}")
    return left
