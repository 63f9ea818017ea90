"""Build the OCI runtime spec (``config.json``) runsc boots a sandbox from.

Pure functions of their inputs: no I/O except :func:`write_config`, so the
spec can be unit-tested without runsc.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...agent import bootstrap
from ..base import SandboxSpec

__all__ = [
    "CAPABILITIES",
    "CPU_PERIOD_US",
    "DEFAULT_ENV",
    "OCI_VERSION",
    "PIDS_LIMIT",
    "BundlePaths",
    "build_config",
    "cgroups_path",
    "write_config",
]

OCI_VERSION = "1.0.2"
CPU_PERIOD_US = 100_000
PIDS_LIMIT = 4096
NOFILE_LIMIT = 65536

DEFAULT_ENV = (
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG=C.UTF-8",
    "HOME=/root",
)

# Docker's default set plus SYS_PTRACE (debuggers and strace work inside
# gVisor's user-space kernel without touching the host's).
CAPABILITIES = (
    "CAP_AUDIT_WRITE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_MKNOD",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
)


@dataclass(frozen=True, slots=True)
class BundlePaths:
    """Host paths the spec refers to."""

    rootfs: Path  # the merged overlay the sandbox sees as /
    run_dir: Path  # host side of /run/atelier (agent socket + log)
    agent_dir: Path  # host side of /.atelier/agent (read-only)
    tmp_dir: Path | None = None  # host side of /tmp (in the disk layer)
    runtime_dir: Path | None = None  # host side of /.atelier/runtime: the agent's interpreter


def cgroups_path(sandbox_id: str) -> str:
    return f"/atelier/{sandbox_id}"


def _mounts(paths: BundlePaths, memory_mib: int) -> list[dict[str, Any]]:
    shm_mib = max(64, memory_mib // 2)
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", f"size={shm_mib}m"],
        },
        {
            "destination": "/sys",
            "type": "sysfs",
            "source": "sysfs",
            "options": ["nosuid", "noexec", "nodev", "ro"],
        },
        {
            "destination": f"{bootstrap.AGENT_MOUNT}/agent",
            "type": "bind",
            "source": str(paths.agent_dir),
            "options": ["rbind", "ro"],
        },
        {
            "destination": bootstrap.RUN_DIR,
            "type": "bind",
            "source": str(paths.run_dir),
            "options": ["rbind", "rw"],
        },
    ]
    if paths.runtime_dir is not None:
        mounts.append(
            {
                "destination": bootstrap.RUNTIME_MOUNT,
                "type": "bind",
                "source": str(paths.runtime_dir),
                "options": ["rbind", "ro"],
            }
        )
    if paths.tmp_dir is not None:
        # Without a /tmp mount runsc would put a tmpfs (memory) there; /tmp
        # belongs on the disk, where it counts against the disk limit.
        mounts.append(
            {
                "destination": "/tmp",
                "type": "bind",
                "source": str(paths.tmp_dir),
                "options": ["rbind", "rw", "nosuid", "nodev"],
            }
        )
    return mounts


def build_config(
    spec: SandboxSpec,
    paths: BundlePaths,
    argv: list[str] | None = None,
    netns: Path | None = None,
) -> dict[str, Any]:
    """The OCI runtime spec for ``spec`` (a JSON-ready dict).

    ``argv`` defaults to the agent on the image's ``/usr/bin/python3``; the
    runtime passes the agent on the bundled interpreter (``paths.runtime_dir``).
    ``netns`` is the sandbox's network namespace (``/run/netns/atl-<id>``) when
    it has a network (runsc ``--network=sandbox``); None: loopback only.
    """
    caps = list(CAPABILITIES)
    namespaces: list[dict[str, str]] = [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
    if netns is not None:
        # runsc --network=sandbox: the sandbox process joins this namespace and
        # gVisor's netstack takes over its veth (see network/ and runsc.py).
        namespaces.append({"type": "network", "path": str(netns)})
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": list(argv) if argv is not None else bootstrap.agent_argv(),
            "env": list(DEFAULT_ENV),
            "cwd": "/",
            "capabilities": {
                "bounding": caps,
                "effective": caps,
                "inheritable": caps,
                "permitted": caps,
            },
            "rlimits": [
                {"type": "RLIMIT_NOFILE", "hard": NOFILE_LIMIT, "soft": NOFILE_LIMIT},
            ],
            "noNewPrivileges": False,
        },
        "root": {"path": str(paths.rootfs), "readonly": False},
        "hostname": spec.hostname,
        "mounts": _mounts(paths, spec.memory_mib),
        "annotations": {
            "dev.atelier.sandbox-id": spec.sandbox_id,
            "dev.atelier.template": spec.template,
            **{f"dev.atelier.label.{k}": v for k, v in sorted(spec.labels.items())},
        },
        "linux": {
            "cgroupsPath": cgroups_path(spec.sandbox_id),
            "resources": {
                "cpu": {"period": CPU_PERIOD_US, "quota": spec.vcpus * CPU_PERIOD_US},
                "memory": {"limit": spec.memory_mib * 1024 * 1024},
                "pids": {"limit": PIDS_LIMIT},
            },
            # Without a network namespace path runsc runs with --network=none, so
            # the sandbox has only its own loopback inside the user-space kernel.
            "namespaces": namespaces,
        },
    }


def write_config(bundle_dir: Path, config: dict[str, Any]) -> Path:
    """Write ``config.json`` atomically into ``bundle_dir``; return its path."""
    bundle_dir.mkdir(parents=True, exist_ok=True)
    target = bundle_dir / "config.json"
    tmp = bundle_dir / "config.json.tmp"
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(config, fh, indent=2, sort_keys=True)
        fh.write("\n")
    tmp.replace(target)
    return target
