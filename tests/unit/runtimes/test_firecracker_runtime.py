"""The firecracker runtime's whole lifecycle against a test double of
Firecracker that validates every request against Firecracker's API document.

``ATELIER_FIRECRACKER_BIN`` points at a script that runs the fake
(``test_firecracker_spec.fake_firecracker_main``) on the ``--api-sock`` it is
given, as the real binary would; KVM is injected as usable. Run twice: plain,
and under a fake ``jailer`` next to the binary (which checks its command line
and the ownership of the files linked into the chroot, then execs the fake).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from test_firecracker_spec import read_record, write_fake_binaries

from atelier.config import Settings
from atelier.errors import Conflict, InvalidRequest, InvalidStateTransition, SandboxNotFound
from atelier.runtimes.base import Capability, Runtime, RuntimeState, SandboxSpec
from atelier.runtimes.firecracker import (
    FirecrackerOptions,
    FirecrackerRuntime,
    RateLimiter,
    TokenBucket,
)
from atelier.runtimes.firecracker.files import ProcessRecord
from atelier.runtimes.firecracker.jailer import jail_id
from ci_support import skip_unless_ci

MKFS = shutil.which("mkfs.ext4", path="/usr/sbin:/sbin:/usr/bin:/bin")
KVM_OK = (True, "kvm: usable (injected by the test)")

REQUIRED_ENDPOINTS = {
    ("PUT", "/machine-config"),
    ("PUT", "/boot-source"),
    ("PUT", "/drives/{drive_id}"),
    ("PUT", "/vsock"),
    ("PUT", "/balloon"),
    ("PUT", "/actions"),
    ("PATCH", "/vm"),
    ("PUT", "/snapshot/create"),
    ("PUT", "/snapshot/load"),
    ("PUT", "/logger"),
    ("PUT", "/metrics"),
}


@dataclass
class Env:
    runtime: FirecrackerRuntime
    record: Path
    data_dir: Path
    rootfs: Path
    jailed: bool
    initrd: Path

    def spec(self, sandbox_id: str, **kw: object) -> SandboxSpec:
        args: dict[str, object] = {"vcpus": 2, "memory_mib": 128, "disk_mib": 96}
        args.update(kw)
        return SandboxSpec(sandbox_id=sandbox_id, template="t", rootfs=self.rootfs, **args)  # type: ignore[arg-type]


@pytest.fixture(params=["unjailed", "jailed"])
def env(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    jailed = request.param == "jailed"
    if jailed and os.geteuid() != 0:
        skip_unless_ci("the jailed variant chowns files to the jail's uid: needs root")
    # short: the jail's vsock socket path must stay under 108 bytes
    top = Path(tempfile.mkdtemp(prefix="fc-", dir="/tmp"))
    firecracker, jailer = write_fake_binaries(top / "bin")
    if not jailed:
        jailer.unlink()
    record = top / "requests.jsonl"
    monkeypatch.setenv("ATELIER_FIRECRACKER_BIN", str(firecracker))
    monkeypatch.delenv("ATELIER_FIRECRACKER_JAILER", raising=False)
    monkeypatch.setenv("FAKE_FC_RECORD", str(record))
    data_dir = top / "data"
    template = data_dir / "templates" / "t"
    (template / "rootfs").mkdir(parents=True)
    disk = template / "disk.ext4"
    if MKFS is not None:
        subprocess.run(
            [MKFS, "-q", "-F", "-L", "t", str(disk), "80M"], check=True, capture_output=True
        )
    else:
        with disk.open("wb") as fh:
            fh.truncate(80 * 2**20)
    kernels = data_dir / "kernels"
    kernels.mkdir()
    (kernels / "vmlinux-6.1.0-test").write_bytes(b"\x7fELF not really a kernel")
    initrd = top / "initramfs.cpio"
    initrd.write_bytes(b"070701 not really a cpio")
    monkeypatch.setenv("ATELIER_FIRECRACKER_INITRD", str(initrd))
    options = FirecrackerOptions.from_env()
    if jailed:
        options = replace(options, jail_uid=4242, jail_gid=4343)
    runtime = FirecrackerRuntime(
        Settings(data_dir=data_dir),
        options=options,
        kvm_status=lambda: KVM_OK,
        disk_rate_limiter=RateLimiter(
            bandwidth=TokenBucket(size=50 * 2**20, refill_time=1000, one_time_burst=2**20),
            ops=TokenBucket(size=2000, refill_time=1000),
        ),
        balloon_stats_interval_s=1,
    )
    try:
        yield Env(runtime, record, data_dir, template / "rootfs", jailed, initrd)
    finally:
        for base in (data_dir / "firecracker" / "sandboxes").glob("*"):
            rec = runtime.files(base.name).load_process()
            if rec is not None and rec.alive():
                os.kill(rec.pid, 9)
        shutil.rmtree(top, ignore_errors=True)


async def _echo(runtime: FirecrackerRuntime, sandbox_id: str) -> bytes:
    reader, writer = await runtime.open_agent(sandbox_id)
    try:
        writer.write(b"ping\n")
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()


def _pid(runtime: FirecrackerRuntime, sandbox_id: str) -> ProcessRecord:
    rec = runtime.files(sandbox_id).load_process()
    assert rec is not None and rec.alive()
    return rec


async def test_lifecycle_against_the_spec(env: Env) -> None:
    rt = env.runtime
    assert isinstance(rt, Runtime)
    status = rt.availability()
    assert status.available, status.reason
    assert "Firecracker v1.17.0-dev" in status.reason
    assert ("jailed by" in status.reason) == env.jailed
    assert rt.capabilities() == (
        Capability.PAUSE | Capability.MEMORY_SNAPSHOT | Capability.PERSISTENT_DISK
    )

    spec = env.spec("sb-1", hostname="box-one")
    await rt.create(spec)
    await rt.create(spec)  # idempotent
    with pytest.raises(Conflict):
        await rt.create(env.spec("sb-1", memory_mib=256))
    assert await rt.state("sb-1") == RuntimeState.CREATED
    disk = rt.files("sb-1").disk
    assert disk.stat().st_size == 96 * 2**20
    if MKFS is not None:  # the filesystem was grown to the disk
        out = subprocess.run(
            ["dumpe2fs", "-h", str(disk)], capture_output=True, text=True, check=True
        ).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        blocks = int(fields["Block count"]) * int(fields["Block size"])
        assert blocks == 96 * 2**20

    await rt.start("sb-1")
    assert await rt.state("sb-1") == RuntimeState.RUNNING
    first = _pid(rt, "sb-1")
    await rt.start("sb-1")  # already running: no-op
    assert _pid(rt, "sb-1") == first
    assert await _echo(rt, "sb-1") == b"ping\n"

    await rt.pause("sb-1")
    assert await rt.state("sb-1") == RuntimeState.PAUSED
    await rt.pause("sb-1")
    with pytest.raises(ConnectionError):  # a paused guest does not accept
        await rt.open_agent("sb-1", timeout=1)
    await rt.resume("sb-1")
    await rt.resume("sb-1")
    assert await rt.state("sb-1") == RuntimeState.RUNNING

    snap = env.data_dir / "snap-1"
    await rt.snapshot("sb-1", snap)
    assert await rt.state("sb-1") == RuntimeState.RUNNING  # goes on as it was
    assert sorted(p.name for p in snap.iterdir()) == [
        "memory",
        "rootfs.raw",
        "snapshot.json",
        "vmstate",
    ]
    assert (snap / "memory").stat().st_mode & 0o777 == (0o640 if env.jailed else 0o600)
    with pytest.raises(Conflict):
        await rt.snapshot("sb-1", snap)
    await rt.pause("sb-1")
    await rt.snapshot("sb-1", env.data_dir / "snap-paused")
    assert await rt.state("sb-1") == RuntimeState.PAUSED  # stays as it was
    await rt.resume("sb-1")

    clone = env.spec("sb-2", hostname="box-two")
    with pytest.raises(InvalidRequest, match="same"):
        await rt.create_from_snapshot(env.spec("sb-x", memory_mib=256), snap)
    await rt.create_from_snapshot(clone, snap)
    await rt.create_from_snapshot(clone, snap)  # idempotent
    assert await rt.state("sb-2") == RuntimeState.CREATED
    await rt.start("sb-2")
    assert await rt.state("sb-2") == RuntimeState.RUNNING
    assert await _echo(rt, "sb-2") == b"ping\n"
    assert not rt.files("sb-2").restore.exists()
    assert await _echo(rt, "sb-1") == b"ping\n"  # the source is untouched

    await rt.stop("sb-2")
    assert await rt.state("sb-2") == RuntimeState.STOPPED
    await rt.stop("sb-2")  # idempotent
    await rt.start("sb-2")  # a cold boot from its own disk now
    assert await rt.state("sb-2") == RuntimeState.RUNNING

    # a new runtime object (a restarted server) sees and drives the same VMs
    again = FirecrackerRuntime(rt.settings, options=rt.options, kvm_status=lambda: KVM_OK)
    assert await again.state("sb-1") == RuntimeState.RUNNING
    assert await _echo(again, "sb-1") == b"ping\n"

    # the VMM dies behind our back (OOM killer, host crash): STOPPED, and a
    # start cleans up its leftovers (stale sockets, chroot) and boots again
    os.kill(_pid(rt, "sb-2").pid, 9)
    for _ in range(200):
        if await rt.state("sb-2") == RuntimeState.STOPPED:
            break
        await asyncio.sleep(0.01)
    assert await rt.state("sb-2") == RuntimeState.STOPPED
    await rt.start("sb-2")
    assert await _echo(rt, "sb-2") == b"ping\n"

    await rt.stop("sb-1")
    assert not first.alive()
    assert await rt.state("sb-1") == RuntimeState.STOPPED
    with pytest.raises(InvalidStateTransition):
        await rt.pause("sb-1")
    assert await rt.list_ids() == ["sb-1", "sb-2"]

    await rt.destroy("sb-1")
    await rt.destroy("sb-2")  # running: killed
    await rt.destroy("sb-3")  # unknown: no-op
    assert await rt.state("sb-1") == RuntimeState.ABSENT
    assert await rt.list_ids() == []
    with pytest.raises(SandboxNotFound):
        await rt.start("sb-1")
    jails = env.data_dir / "firecracker" / "jail"
    assert not any(jails.rglob("*root")) if jails.exists() else True

    entries = read_record(env.record)
    requests = [e for e in entries if "method" in e]
    invalid = [e for e in requests if e["errors"] or e["status"] >= 400]
    assert invalid == [], invalid
    used = {(e["method"], e["template"]) for e in requests}
    assert used >= REQUIRED_ENDPOINTS, REQUIRED_ENDPOINTS - used
    actions = {e["body"]["action_type"] for e in requests if e["template"] == "/actions"}
    assert actions == {"InstanceStart", "SendCtrlAltDel"}
    states = {e["body"]["state"] for e in requests if e["template"] == "/vm"}
    assert states == {"Paused", "Resumed"}
    boot = next(e["body"] for e in requests if e["template"] == "/boot-source")
    assert "reboot=k" in boot["boot_args"]
    assert "atelier.hostname=box-one" in boot["boot_args"]
    assert boot["initrd_path"] == ("initrd" if env.jailed else str(env.initrd))
    assert boot["kernel_image_path"].endswith("vmlinux" if env.jailed else "vmlinux-6.1.0-test")
    drive = next(e["body"] for e in requests if e["template"] == "/drives/{drive_id}")
    assert drive["path_on_host"] == "rootfs.raw"  # relative: portable snapshots
    assert drive["rate_limiter"]["ops"] == {"size": 2000, "refill_time": 1000}
    load = next(e["body"] for e in requests if e["template"] == "/snapshot/load")
    assert load["mem_backend"] == {"backend_type": "File", "backend_path": "restore.mem"}
    assert load["resume_vm"] is True

    jailers = [e for e in entries if "jailer_argv" in e]
    if env.jailed:
        assert len(jailers) == 4  # sb-1 once, sb-2 three times
        assert all(e["errors"] == [] for e in jailers), jailers
        argv = jailers[0]["jailer_argv"]
        assert argv[argv.index("--uid") + 1] == "4242"
        assert argv[argv.index("--id") + 1] == jail_id("sb-1")
        assert argv[argv.index("--") + 1 :] == ["--api-sock", "/api.sock"]
        assert "--cgroup" in argv
    else:
        assert jailers == []


async def test_start_failure_reports_the_fault_and_cleans_up(env: Env) -> None:
    rt = env.runtime
    await rt.create(env.spec("bad"))
    rt.files("bad").disk.unlink()  # Firecracker (or, jailed, the link into the chroot) fails
    # unjailed: Firecracker's own fault names the drive; jailed: linking the disk fails first
    with pytest.raises(Exception, match=r"path_on_host|rootfs\.raw|No such file"):
        await rt.start("bad")
    assert rt.files("bad").load_process() is None
    assert await rt.state("bad") == RuntimeState.CREATED
    await rt.destroy("bad")


async def test_create_validates_before_touching_anything(env: Env) -> None:
    rt = env.runtime
    with pytest.raises(InvalidRequest):
        await rt.create(env.spec("v1", vcpus=33))
    with pytest.raises(InvalidRequest):
        await rt.create(env.spec("v1", hostname="a b"))
    with pytest.raises(InvalidRequest, match="smaller"):
        await rt.create(env.spec("v1", disk_mib=64))  # the template's image is 80 MiB
    assert await rt.list_ids() == []
