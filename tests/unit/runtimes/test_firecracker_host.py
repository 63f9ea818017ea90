"""The firecracker runtime's pieces that need no VMM: availability and the
"unavailable" contract, the jailer's command line, the vsock handshake, the
API client's error mapping, disks."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from atelier import hostinfo
from atelier.config import Settings
from atelier.errors import InvalidRequest, RuntimeFailure, RuntimeUnavailable
from atelier.runtimes.base import SandboxSpec
from atelier.runtimes.firecracker import (
    FirecrackerApi,
    FirecrackerOptions,
    FirecrackerRuntime,
    VsockHandshakeError,
    open_connection,
)
from atelier.runtimes.firecracker import files as F
from atelier.runtimes.firecracker.api import Drive, MachineConfig, RateLimiter, TokenBucket
from atelier.runtimes.firecracker.host import GuestBoot, default_guest_boot, probe, template_disk
from atelier.runtimes.firecracker.jailer import (
    JailerConfig,
    cgroup_limits,
    jail_id,
    jailer_argv,
    memory_limit_mib,
)
from atelier.runtimes.firecracker.vmm import boot_args

PVM = (False, "kvm: /dev/kvm is a PVM host that cannot boot a standard guest")
KVM_OK = (True, "kvm: /dev/kvm usable (vmx)")


def _script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


# -- availability ----------------------------------------------------------------
def test_no_binary_and_pvm_kvm_gives_both_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    found = probe(FirecrackerOptions(), lambda: PVM)
    assert not found.available
    assert found.reason == (
        "firecracker binary not found (set ATELIER_FIRECRACKER_BIN or put firecracker on PATH); "
        "kvm: /dev/kvm is a PVM host that cannot boot a standard guest"
    )


def test_named_binary_missing(tmp_path: Path) -> None:
    found = probe(FirecrackerOptions(binary=str(tmp_path / "fc")), lambda: KVM_OK)
    assert not found.available
    assert found.reason == f"ATELIER_FIRECRACKER_BIN={tmp_path / 'fc'}: no such executable file"


def test_binary_that_fails_version(tmp_path: Path) -> None:
    fc = _script(tmp_path / "firecracker", "echo 'bad cpu' >&2; exit 3")
    found = probe(FirecrackerOptions(binary=str(fc)), lambda: KVM_OK)
    assert not found.available
    assert found.reason == f"{fc} --version exited 3: bad cpu"


def test_binary_present_but_kvm_unusable(tmp_path: Path) -> None:
    fc = _script(tmp_path / "firecracker", "echo 'Firecracker v1.7.0'")
    found = probe(FirecrackerOptions(binary=str(fc)), lambda: PVM)
    assert not found.available
    assert found.reason == PVM[1]


def test_available_with_and_without_jailer(tmp_path: Path) -> None:
    fc = _script(tmp_path / "firecracker", "echo 'Firecracker v1.7.0'; echo; echo more")
    found = probe(FirecrackerOptions(binary=str(fc)), lambda: KVM_OK, euid=0)
    assert found.available
    assert found.version == "Firecracker v1.7.0"
    assert found.jailer is None
    assert found.reason.endswith("no jailer next to the binary: runs unjailed")
    jailer = _script(tmp_path / "jailer", "exit 0")
    found = probe(FirecrackerOptions(binary=str(fc)), lambda: KVM_OK, euid=0)
    assert found.jailer == jailer
    assert f"jailed by {jailer} (uid 65534, gid 65534)" in found.reason
    found = probe(FirecrackerOptions(binary=str(fc)), lambda: KVM_OK, euid=1000)
    assert found.jailer is None
    assert "needs root" in found.reason
    found = probe(FirecrackerOptions(binary=str(fc), jailer="none"), lambda: KVM_OK, euid=0)
    assert found.jailer is None


def test_options_from_env() -> None:
    opts = FirecrackerOptions.from_env(
        {
            "ATELIER_FIRECRACKER_BIN": "/opt/fc/firecracker",
            "ATELIER_FIRECRACKER_UID": "123",
            "ATELIER_FIRECRACKER_KERNEL": "/k/vmlinux",
            "ATELIER_FIRECRACKER_BOOT_ARGS": "quiet",
        }
    )
    assert opts.binary == "/opt/fc/firecracker"
    assert (opts.jail_uid, opts.jail_gid) == (123, 65534)
    assert opts.kernel == Path("/k/vmlinux")
    assert opts.initrd is None
    assert opts.boot_args == "quiet"


def test_default_guest_boot_picks_the_newest_kernel(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert default_guest_boot(settings, FirecrackerOptions()) is None
    kernels = tmp_path / "kernels"
    old = kernels / "6.1.0-1-cloud-amd64" / "vmlinux"  # images.kernel's layout
    old.parent.mkdir(parents=True)
    old.write_text("old")
    assert default_guest_boot(settings, FirecrackerOptions()) is None  # not ready yet
    (old.parent / "kernel.json").write_text("{}")
    assert default_guest_boot(settings, FirecrackerOptions()) == GuestBoot(old)
    new = kernels / "vmlinux-custom"  # one put there by hand
    new.write_text("new")
    os.utime(old, (1, 1))
    initrd = tmp_path / "initrd.cpio"
    opts = FirecrackerOptions(initrd=initrd, boot_args="quiet")
    assert default_guest_boot(settings, opts) == GuestBoot(new, initrd, "quiet")
    assert default_guest_boot(settings, FirecrackerOptions(kernel=old)) == GuestBoot(old)


def test_template_disk_finds_the_built_image(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    template = spec.rootfs.parent
    template.mkdir(parents=True)
    assert template_disk(spec) == template / "disk.ext4"
    (template / "disk-abc.ext4").write_text("x")
    assert template_disk(spec) == template / "disk.ext4"  # no stamp: incomplete
    (template / "disk-abc.json").write_text("{}")
    assert template_disk(spec) == template / "disk-abc.ext4"


def _spec(tmp_path: Path, sid: str = "sb-1") -> SandboxSpec:
    return SandboxSpec(sandbox_id=sid, template="base", rootfs=tmp_path / "t" / "rootfs")


VERBS: list[tuple[str, Callable[[FirecrackerRuntime, SandboxSpec, Path], Awaitable[Any] | Any]]] = [
    ("create", lambda rt, spec, p: rt.create(spec)),
    ("create_from_snapshot", lambda rt, spec, p: rt.create_from_snapshot(spec, p / "snap")),
    ("start", lambda rt, spec, p: rt.start(spec.sandbox_id)),
    ("stop", lambda rt, spec, p: rt.stop(spec.sandbox_id)),
    ("pause", lambda rt, spec, p: rt.pause(spec.sandbox_id)),
    ("resume", lambda rt, spec, p: rt.resume(spec.sandbox_id)),
    ("snapshot", lambda rt, spec, p: rt.snapshot(spec.sandbox_id, p / "snap")),
    ("destroy", lambda rt, spec, p: rt.destroy(spec.sandbox_id)),
    ("state", lambda rt, spec, p: rt.state(spec.sandbox_id)),
    ("list_ids", lambda rt, spec, p: rt.list_ids()),
    ("open_agent", lambda rt, spec, p: rt.open_agent(spec.sandbox_id)),
    ("agent_socket", lambda rt, spec, p: rt.agent_socket(spec.sandbox_id)),
    ("log_path", lambda rt, spec, p: rt.log_path(spec.sandbox_id)),
]


@pytest.mark.parametrize(("verb", "call"), VERBS, ids=[v for v, _ in VERBS])
async def test_every_verb_raises_unavailable_before_touching_anything(
    verb: str,
    call: Callable[[FirecrackerRuntime, SandboxSpec, Path], Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    data = tmp_path / "data"
    rt = FirecrackerRuntime(
        Settings(data_dir=data), options=FirecrackerOptions(), kvm_status=lambda: PVM
    )
    status = rt.availability()
    assert (status.name, status.available) == ("firecracker", False)
    with pytest.raises(RuntimeUnavailable) as err:
        result = call(rt, _spec(tmp_path), tmp_path)
        if asyncio.iscoroutine(result):
            await result
    assert str(err.value) == f"firecracker runtime cannot run here: {status.reason}"
    assert "PVM host" in str(err.value)
    assert not data.exists()
    assert not (tmp_path / "snap").exists()


def test_this_host_reports_why_not() -> None:
    """On the development machines (no firecracker binary, nested PVM KVM)
    the runtime says exactly that; elsewhere it says what it found."""
    rt = FirecrackerRuntime(Settings(data_dir=Path("/nonexistent/atelier")))
    status = rt.availability()
    kvm_ok, kvm_reason = hostinfo.kvm_status()
    have_bin = shutil.which("firecracker") is not None
    if not kvm_ok:
        assert not status.available
        assert kvm_reason in status.reason
    if not have_bin and not rt.options.binary:
        assert "firecracker binary not found (set ATELIER_FIRECRACKER_BIN" in status.reason


# -- jailer --------------------------------------------------------------------
def test_jailer_argv() -> None:
    cfg = JailerConfig(
        jailer=Path("/usr/bin/jailer"),
        exec_file=Path("/usr/bin/firecracker"),
        chroot_base=Path("/var/lib/atelier/firecracker/jail"),
        uid=123,
        gid=456,
        cgroup_version=1,
    )
    jid = jail_id("my_sandbox.1")
    argv = jailer_argv(
        cfg, jid, vcpus=2, memory_mib=512, firecracker_args=["--api-sock", "/api.sock"]
    )
    assert argv == [
        "/usr/bin/jailer",
        "--id",
        jid,
        "--exec-file",
        "/usr/bin/firecracker",
        "--uid",
        "123",
        "--gid",
        "456",
        "--chroot-base-dir",
        "/var/lib/atelier/firecracker/jail",
        "--cgroup-version",
        "1",
        "--cgroup",
        "cpu.cfs_period_us=100000",
        "--cgroup",
        "cpu.cfs_quota_us=200000",
        "--cgroup",
        f"memory.limit_in_bytes={(512 + 64) * 2**20}",
        "--",
        "--api-sock",
        "/api.sock",
    ]
    assert cfg.chroot_root(jid) == Path(f"/var/lib/atelier/firecracker/jail/firecracker/{jid}/root")


def test_jail_ids_are_valid_and_distinct() -> None:
    ids = {jail_id(s) for s in ("a", "a.b", "a_b", "A-b", "x" * 64)}
    assert len(ids) == 5
    for jid in ids:
        assert len(jid) == 24
        assert jid.replace("-", "").isalnum()


def test_cgroup_limits_v2_and_memory_margin() -> None:
    assert cgroup_limits(1, 2048, 2) == [
        "cpu.max=100000 100000",
        f"memory.max={(2048 + 128) * 2**20}",
    ]
    assert memory_limit_mib(128) == 192
    with pytest.raises(ValueError):
        cgroup_limits(1, 128, 3)


def test_jailer_refuses_exec_file_not_named_firecracker() -> None:
    cfg = JailerConfig(Path("/j"), Path("/bin/fc"), Path("/b"), 1, 1)
    with pytest.raises(ValueError, match="firecracker"):
        jailer_argv(cfg, "atl-1", vcpus=1, memory_mib=64, firecracker_args=[])


# -- vsock -------------------------------------------------------------------------
@pytest.fixture
async def vsock_server(tmp_path: Path) -> AsyncIterator[tuple[Path, list[bytes]]]:
    """A stand-in for Firecracker's vsock socket: port 52 listens (and says
    "hello" right after OK), port 53 does not, port 54 answers garbage."""
    path = tmp_path / "v.sock"
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        seen.append(line)
        if line == b"CONNECT 52\n":
            writer.write(b"OK 1073741825\nhello")
            await writer.drain()
            writer.write(await reader.read(100))
            await writer.drain()
        elif line == b"CONNECT 54\n":
            writer.write(b"NOPE\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(handle, path=str(path))
    yield path, seen
    server.close()


async def test_vsock_handshake(vsock_server: tuple[Path, list[bytes]]) -> None:
    path, seen = vsock_server
    reader, writer = await open_connection(path, 52)
    assert await reader.readexactly(5) == b"hello"  # nothing after OK was lost
    writer.write(b"ping")
    await writer.drain()
    assert await reader.readexactly(4) == b"ping"
    writer.close()
    assert seen == [b"CONNECT 52\n"]


async def test_vsock_handshake_failures(vsock_server: tuple[Path, list[bytes]]) -> None:
    path, _ = vsock_server
    with pytest.raises(VsockHandshakeError, match="nothing listens on that port"):
        await open_connection(path, 53)
    with pytest.raises(VsockHandshakeError, match="unexpected answer"):
        await open_connection(path, 54)
    assert issubclass(VsockHandshakeError, OSError)  # AgentClient.connect retries these
    with pytest.raises(OSError):
        await open_connection(path.with_name("missing.sock"), 52)
    with pytest.raises(ValueError):
        await open_connection(path, 0)


# -- API client -----------------------------------------------------------------------
async def test_api_maps_fault_message_to_runtime_failure(tmp_path: Path) -> None:
    sock = tmp_path / "api.sock"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = b'{"fault_message": "The kernel file cannot be opened"}'
        writer.write(
            b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(handle, path=str(sock))
    try:
        async with FirecrackerApi(sock) as api:
            with pytest.raises(RuntimeFailure) as err:
                await api.put_machine_config(MachineConfig(vcpu_count=1, mem_size_mib=128))
    finally:
        server.close()
    assert "The kernel file cannot be opened" in str(err.value)
    assert err.value.details["status"] == 400
    assert err.value.details["path"] == "/machine-config"


async def test_api_unreachable(tmp_path: Path) -> None:
    async with FirecrackerApi(tmp_path / "none.sock", timeout=1) as api:
        with pytest.raises(RuntimeFailure, match="unreachable"):
            await api.describe_instance()


def test_models_refuse_what_firecracker_refuses() -> None:
    with pytest.raises(ValueError):
        MachineConfig(vcpu_count=33, mem_size_mib=128)
    with pytest.raises(ValueError):
        MachineConfig(vcpu_count=3, mem_size_mib=128, smt=True)
    with pytest.raises(ValueError):
        Drive(drive_id="root fs", path_on_host="x", is_root_device=True)
    with pytest.raises(ValueError):
        TokenBucket(size=-1, refill_time=1000)
    limiter = RateLimiter.per_second(bytes_per_s=10_000_000)
    assert limiter.to_json() == {"bandwidth": {"size": 10_000_000, "refill_time": 1000}}


def test_boot_args() -> None:
    spec = SandboxSpec(sandbox_id="x", template="t", rootfs=Path("/r"), hostname="dev-box")
    assert boot_args(spec, " quiet ") == (
        "console=ttyS0 reboot=k panic=1 pci=off atelier.agent=vsock:1024 "
        "atelier.hostname=dev-box quiet"
    )


# -- disks and processes ---------------------------------------------------------------
async def test_grow_disk_refuses_to_shrink(tmp_path: Path) -> None:
    disk = tmp_path / "d.raw"
    with disk.open("wb") as fh:
        fh.truncate(100 * 2**20)
    with pytest.raises(InvalidRequest, match="smaller"):
        await F.grow_disk(disk, 64)
    await F.grow_disk(disk, 128)  # not ext4: only the file grows
    assert disk.stat().st_size == 128 * 2**20
    assert not F.is_ext_image(disk)


async def test_copy_file_keeps_holes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    with src.open("wb") as fh:
        fh.truncate(256 * 2**20)
        fh.write(b"data")
    await F.copy_file(src, tmp_path / "dst")
    dst = tmp_path / "dst"
    assert dst.read_bytes()[:4] == b"data"
    assert dst.stat().st_blocks * 512 < 16 * 2**20  # sparse, not 256 MiB


def test_process_record_tracks_identity() -> None:
    me = F.ProcessRecord.of(os.getpid())
    assert me is not None and me.alive()
    assert not F.ProcessRecord(me.pid, me.start_time + 1, me.boot_id).alive()
    assert not F.ProcessRecord(me.pid, me.start_time, "another-boot").alive()
