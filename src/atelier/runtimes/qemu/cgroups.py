"""The cgroup of one QEMU process: CPU quota and memory limit.

cgroup v1 (this host): ``/sys/fs/cgroup/cpu/atelier/<id>`` and
``/sys/fs/cgroup/memory/atelier/<id>``; cgroup v2: ``/sys/fs/cgroup/atelier/<id>``
(``cpu.max``, ``memory.max``). QEMU joins them before it execs (a tiny
``sh`` wrapper writes its own pid into ``cgroup.procs``), so every thread and
every page it touches -- guest RAM included -- is accounted from the start.

The memory limit is guest RAM plus QEMU's own needs (TCG's translation cache
counts); guest RAM is a file mapping, so under pressure it is written back
to its file rather than the VM being killed.
"""

from __future__ import annotations

import contextlib
import errno
import os
from dataclasses import dataclass
from pathlib import Path

from ...errors import RuntimeFailure

__all__ = ["CPU_PERIOD_US", "VmCgroup", "memory_limit_mib"]

CPU_PERIOD_US = 100_000
CGROUP_ROOT = Path("/sys/fs/cgroup")
_PARENT = "atelier"


def memory_limit_mib(memory_mib: int, accel: str, tb_mib: int) -> int:
    """Guest RAM + QEMU overhead (+ the TCG translation cache under TCG)."""
    return memory_mib + 256 + (tb_mib if accel == "tcg" else 0)


@dataclass(frozen=True, slots=True)
class VmCgroup:
    sandbox_id: str
    root: Path = CGROUP_ROOT

    @property
    def unified(self) -> bool:
        return (self.root / "cgroup.controllers").exists()

    def dirs(self) -> list[Path]:
        if self.unified:
            return [self.root / _PARENT / self.sandbox_id]
        return [
            self.root / controller / _PARENT / self.sandbox_id
            for controller in ("cpu", "memory")
            if (self.root / controller).is_dir()
        ]

    def available(self) -> bool:
        return bool(self.dirs()) and os.access(self.root, os.W_OK)

    def create(self, vcpus: int, memory_limit: int) -> list[Path]:
        """Make the cgroups with their limits; return the ``cgroup.procs`` files to join."""
        procs: list[Path] = []
        try:
            if self.unified:
                parent = self.root / _PARENT
                parent.mkdir(exist_ok=True)
                with contextlib.suppress(OSError):  # may already be enabled
                    (self.root / "cgroup.subtree_control").write_text("+cpu +memory")
                    (parent / "cgroup.subtree_control").write_text("+cpu +memory")
                group = parent / self.sandbox_id
                group.mkdir(exist_ok=True)
                (group / "cpu.max").write_text(f"{vcpus * CPU_PERIOD_US} {CPU_PERIOD_US}")
                (group / "memory.max").write_text(str(memory_limit))
                return [group / "cgroup.procs"]
            for group in self.dirs():
                group.mkdir(parents=True, exist_ok=True)
                if group.parent.parent.name == "cpu":
                    (group / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
                    (group / "cpu.cfs_quota_us").write_text(str(vcpus * CPU_PERIOD_US))
                else:
                    (group / "memory.limit_in_bytes").write_text(str(memory_limit))
                procs.append(group / "cgroup.procs")
        except OSError as exc:
            self.remove()
            raise RuntimeFailure(f"cannot set up the cgroups of {self.sandbox_id}: {exc}") from exc
        return procs

    def pids(self) -> set[int]:
        found: set[int] = set()
        for group in self.dirs():
            with contextlib.suppress(OSError, ValueError):
                found.update(int(p) for p in (group / "cgroup.procs").read_text().split())
        return found

    def remove(self) -> list[Path]:
        """Remove the (empty) groups; return those still there (busy)."""
        left = []
        for group in self.dirs():
            try:
                group.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    left.append(group)
        return left
