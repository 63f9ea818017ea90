"""Running Firecracker under its ``jailer``.

The jailer (shipped next to ``firecracker`` in every release) sets up the
isolation Firecracker itself does not: it creates the chroot
``<chroot base>/<exec file name>/<id>/root``, copies the Firecracker binary
into it, creates the few device nodes it needs (``/dev/kvm``,
``/dev/net/tun``, ``/dev/urandom``), moves the process into its own cgroups
(limits given with ``--cgroup``), optionally joins a network namespace
(``--netns``), pivots into the chroot in a new mount namespace, drops to
``--uid``/``--gid`` and then execs Firecracker (same pid), which installs its
own seccomp filters.

What Atelier does around it (see ``runtime.py``): every file the VM needs is
hard-linked into the chroot before the jailer runs (the per-sandbox disk,
log and metrics files are also chowned to the jail's uid/gid; the shared
kernel, initrd and snapshot memory file are not, and must be readable by
it), every path sent to the API is relative to the chroot's root, and the
chroot directory is removed after Firecracker exits. Not done here:
``--netns`` is empty until sandboxes get networking (there is no network
device, so the guest has no network), ``--new-pid-ns``/``--daemonize`` are
not used (Atelier supervises the pid itself), and one uid/gid is shared by
all jails (configurable; a uid per sandbox would isolate jails from each
other too).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CPU_PERIOD_US",
    "JailerConfig",
    "cgroup_limits",
    "jail_id",
    "jailer_argv",
    "memory_limit_mib",
]

CPU_PERIOD_US = 100_000
_ID_RE = re.compile(r"^[A-Za-z0-9-]{1,64}$")  # the jailer's rule for --id


@dataclass(frozen=True, slots=True)
class JailerConfig:
    jailer: Path  # the jailer binary
    exec_file: Path  # the firecracker binary the jailer copies into the chroot
    chroot_base: Path  # --chroot-base-dir
    uid: int
    gid: int
    cgroup_version: int = 1  # 1 or 2
    parent_cgroup: str | None = None  # --parent-cgroup (default: the exec file's name)
    netns: Path | None = None  # --netns /var/run/netns/<name>

    def chroot_dir(self, jid: str) -> Path:
        """``<chroot base>/<exec file name>/<id>``: what the jailer makes for ``jid``."""
        return self.chroot_base / self.exec_file.name / jid

    def chroot_root(self, jid: str) -> Path:
        """The jailed Firecracker's ``/``."""
        return self.chroot_dir(jid) / "root"

    def cgroup_parent(self) -> str:
        return self.parent_cgroup or self.exec_file.name


def jail_id(sandbox_id: str) -> str:
    """The jailer ``--id`` of a sandbox: short, fixed-length and valid for any
    sandbox id (the jailer accepts only letters, digits and ``-``)."""
    digest = hashlib.sha256(sandbox_id.encode()).hexdigest()[:20]
    jid = f"atl-{digest}"
    assert _ID_RE.fullmatch(jid)
    return jid


def memory_limit_mib(memory_mib: int) -> int:
    """The cgroup memory limit for a guest of ``memory_mib``: guest RAM plus
    room for the VMM itself (a few MiB), its page tables and buffers."""
    return memory_mib + max(64, memory_mib // 16)


def cgroup_limits(vcpus: int, memory_mib: int, version: int) -> list[str]:
    """``--cgroup`` values: CPU time of ``vcpus`` CPUs and the memory limit."""
    quota = vcpus * CPU_PERIOD_US
    mem_bytes = memory_limit_mib(memory_mib) * 2**20
    if version == 1:
        return [
            f"cpu.cfs_period_us={CPU_PERIOD_US}",
            f"cpu.cfs_quota_us={quota}",
            f"memory.limit_in_bytes={mem_bytes}",
        ]
    if version == 2:
        return [f"cpu.max={quota} {CPU_PERIOD_US}", f"memory.max={mem_bytes}"]
    raise ValueError(f"unknown cgroup version {version}")


def jailer_argv(
    config: JailerConfig,
    jid: str,
    *,
    vcpus: int,
    memory_mib: int,
    firecracker_args: list[str],
) -> list[str]:
    """The full jailer command line; ``firecracker_args`` follow ``--`` and
    name paths inside the chroot (e.g. ``--api-sock /api.sock``)."""
    if not _ID_RE.fullmatch(jid):
        raise ValueError(f"invalid jailer id {jid!r}")
    if "firecracker" not in config.exec_file.name:
        # the jailer refuses exec files whose name lacks "firecracker"
        raise ValueError(f"the jailer needs an exec file named *firecracker*: {config.exec_file}")
    argv = [
        str(config.jailer),
        "--id",
        jid,
        "--exec-file",
        str(config.exec_file),
        "--uid",
        str(config.uid),
        "--gid",
        str(config.gid),
        "--chroot-base-dir",
        str(config.chroot_base),
        "--cgroup-version",
        str(config.cgroup_version),
    ]
    for limit in cgroup_limits(vcpus, memory_mib, config.cgroup_version):
        argv += ["--cgroup", limit]
    if config.parent_cgroup:
        argv += ["--parent-cgroup", config.parent_cgroup]
    if config.netns is not None:
        argv += ["--netns", str(config.netns)]
    return [*argv, "--", *firecracker_args]
