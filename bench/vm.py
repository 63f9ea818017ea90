"""VM benchmark: the ``qemu`` runtime's cold boot vs memory-snapshot restore.

Run ``.venv/bin/python bench/vm.py [--quick]`` (or ``make bench``) as root on
a host with qemu-system-x86 and the base template built. It uses its own data
dir under /var/tmp (the guest kernel cache and the templates are shared) and
always removes what it made, also on Ctrl-C or failure.

a. cold boot -> agent ready: ``start`` (QEMU, kernel, initramfs, agent) until
   the agent answers ``ping`` (median of 5; ``--quick``: 2);
b. snapshot of a booted, idle VM (memory + device state + disk);
c. restore -> agent ready: ``start`` of a sandbox created from that snapshot
   until its agent answers ``ping`` (median of 5; ``--quick``: 2), and the
   ratio cold / restore;
d. memory of an idle cold-booted VM vs an idle restored clone: QEMU's RSS,
   the part of it that is guest RAM (the memory file mapping), the rest
   (QEMU itself: TCG translation cache, device state), and PSS.

The accelerator (kvm or tcg) and why are printed. Tables go to stdout,
progress to stderr; the last stdout line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from _common import BenchError, default_templates, say, sweep, table

from atelier.config import Settings
from atelier.core.agent_client import AgentClient
from atelier.runtimes.base import SandboxSpec
from atelier.runtimes.qemu import QemuRuntime

TEMPLATE = "base"
MEMORY_MIB = 256
DISK_MIB = 2048
READY_TIMEOUT = 300.0
SETTLE_S = 3.0  # let a fresh VM go idle before measuring memory
MEMORY_COLUMNS = ("rss", "guest_rss", "overhead", "pss", "private")


def smaps_rollup(pid: int, memory_file: Path) -> dict[str, float]:
    """RSS / PSS of ``pid`` and the RSS of its guest RAM mapping, in MiB."""
    total_rss = total_pss = guest_rss = private = 0
    in_guest = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if not fields:
            continue
        if not fields[0].endswith(":"):  # a mapping header: "addr perms offset dev inode path"
            in_guest = len(fields) >= 6 and fields[5] == str(memory_file)
            continue
        key, kib = fields[0][:-1], int(fields[1]) if fields[1].isdigit() else 0
        if key == "Rss":
            total_rss += kib
            if in_guest:
                guest_rss += kib
        elif key == "Pss":
            total_pss += kib
        elif key in ("Private_Clean", "Private_Dirty"):
            private += kib
    mib = 1024.0
    return {
        "rss": total_rss / mib,
        "guest_rss": guest_rss / mib,
        "overhead": (total_rss - guest_rss) / mib,
        "pss": total_pss / mib,
        "private": private / mib,
    }


class Bench:
    def __init__(self, workdir: Path, templates: Path, quick: bool) -> None:
        self.workdir = workdir
        self.runs = 2 if quick else 5
        (workdir / "templates").symlink_to(templates)
        kernels = templates.parent / "kernels"
        kernels.mkdir(parents=True, exist_ok=True)
        (workdir / "kernels").symlink_to(kernels)
        self.rt = QemuRuntime(Settings(data_dir=workdir))
        self.rootfs = templates / TEMPLATE / "rootfs"
        self.count = 0

    def spec(self) -> SandboxSpec:
        self.count += 1
        sid = f"vm-{self.count}"
        return SandboxSpec(
            sandbox_id=sid,
            template=TEMPLATE,
            rootfs=self.rootfs,
            memory_mib=MEMORY_MIB,
            disk_mib=DISK_MIB,
            hostname=sid,
        )

    async def ready(self, sid: str, timeout: float = READY_TIMEOUT) -> float:
        """Seconds from ``start`` until the agent answers."""
        t0 = time.perf_counter()
        await self.rt.start(sid)
        async with await AgentClient.connect(self.rt.agent_socket(sid), timeout=timeout) as agent:
            await agent.ping()
        return time.perf_counter() - t0

    def pid(self, sid: str) -> int:
        return int(self.rt.files(sid).pidfile.read_text())

    async def run(self) -> dict[str, Any]:
        status = self.rt.availability()
        if not status.available:
            raise BenchError(f"qemu runtime unavailable: {status.reason}")
        accel = self.rt.accel()
        say(f"qemu: {status.reason}")
        say("preparing kernel, initramfs and the template's disk image ...")
        await self.rt.prepare(self.rootfs)

        cold: list[float] = []
        cold_ids: list[str] = []
        for n in range(self.runs + 1):  # the first boot warms the host's page cache
            spec = self.spec()
            await self.rt.create(spec)
            seconds = await self.ready(spec.sandbox_id)
            say(f"cold boot {n}: {seconds:.2f} s{' (warm-up, not counted)' if n == 0 else ''}")
            if n:
                cold.append(seconds)
            cold_ids.append(spec.sandbox_id)
        keep = cold_ids[-1]  # idle cold VM for memory; the snapshot source
        for sid in cold_ids[:-1]:
            await self.rt.destroy(sid)

        await asyncio.sleep(SETTLE_S)
        snap = self.workdir / "snapshot"
        t0 = time.perf_counter()
        async with await AgentClient.connect(self.rt.agent_socket(keep)) as agent:
            await agent.ping()
            await self.rt.snapshot(keep, snap)  # a host is connected, as with a server
        snapshot_s = time.perf_counter() - t0
        say(f"snapshot: {snapshot_s * 1000:.0f} ms")

        restore: list[float] = []
        clones: list[str] = []
        for n in range(self.runs):
            spec = self.spec()
            await self.rt.create_from_snapshot(spec, snap)
            seconds = await self.ready(spec.sandbox_id, timeout=60)
            say(f"restore {n + 1}: {seconds * 1000:.0f} ms")
            restore.append(seconds)
            clones.append(spec.sandbox_id)

        await asyncio.sleep(SETTLE_S)
        mem_cold = smaps_rollup(self.pid(keep), self.rt.files(keep).memory)
        mem_clone = smaps_rollup(self.pid(clones[-1]), snap / "memory")
        for sid in [keep, *clones]:
            await self.rt.destroy(sid)

        cold_ms = statistics.median(cold) * 1000
        restore_ms = statistics.median(restore) * 1000
        table(
            f"a-c. boot vs restore -> agent ready ({accel.name}: {accel.reason}; "
            f"{MEMORY_MIB} MiB, 1 vCPU)",
            ("", "median ms", "min ms", "max ms", "runs"),
            [
                ("cold boot", cold_ms, min(cold) * 1000, max(cold) * 1000, len(cold)),
                ("restore", restore_ms, min(restore) * 1000, max(restore) * 1000, len(restore)),
                ("snapshot (save)", snapshot_s * 1000, None, None, 1),
                ("ratio cold/restore", cold_ms / restore_ms, None, None, None),
            ],
        )
        table(
            "d. memory of an idle VM (MiB)",
            ("", "RSS", "guest RAM part", "RSS above guest RAM", "PSS", "private"),
            [
                ("cold boot", *(mem_cold[k] for k in MEMORY_COLUMNS)),
                ("restored clone", *(mem_clone[k] for k in MEMORY_COLUMNS)),
            ],
        )
        return {
            "accel": accel.name,
            "qemu": self.rt.qemu_version(),
            "memory_mib": MEMORY_MIB,
            "runs": self.runs,
            "cold_boot_ms": round(cold_ms, 1),
            "restore_ms": round(restore_ms, 1),
            "ratio_cold_restore": round(cold_ms / restore_ms, 2),
            "snapshot_ms": round(snapshot_s * 1000, 1),
            "rss_cold_mib": round(mem_cold["rss"], 1),
            "rss_clone_mib": round(mem_clone["rss"], 1),
            "rss_above_guest_cold_mib": round(mem_cold["overhead"], 1),
            "rss_above_guest_clone_mib": round(mem_clone["overhead"], 1),
            "pss_cold_mib": round(mem_cold["pss"], 1),
            "pss_clone_mib": round(mem_clone["pss"], 1),
            "private_clone_mib": round(mem_clone["private"], 1),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 runs per figure instead of 5")
    parser.add_argument("--templates", type=Path, default=default_templates())
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/vm.py needs root (QEMU cgroups, -runas)", file=sys.stderr)
        return 2
    if not (args.templates / TEMPLATE / "rootfs").is_dir():
        print(f"no {TEMPLATE} template in {args.templates} (make template)", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="atl-bench-vm-", dir="/var/tmp"))
    bench = Bench(workdir, args.templates.resolve(), args.quick)
    try:
        figures = asyncio.run(bench.run())
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1
    finally:
        asyncio.run(_destroy_all(bench.rt))
        left = sweep(workdir) if workdir.exists() else []
        if left:
            print(f"left behind: {', '.join(left)}", file=sys.stderr)
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(figures, sort_keys=True))
    return 0


async def _destroy_all(rt: QemuRuntime) -> None:
    for sid in await rt.list_ids():
        try:
            await rt.destroy(sid)
        except Exception as exc:
            say(f"destroy {sid}: {exc}")


if __name__ == "__main__":
    sys.exit(main())
