"""Small helpers every runtime needs: id checks, spec files, the host's boot id."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..errors import InvalidRequest, RuntimeFailure
from .base import SandboxSpec

__all__ = ["ID_PATTERN", "boot_id", "check_id", "spec_from_json", "spec_to_json"]

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_id(sandbox_id: str) -> str:
    """``sandbox_id`` if it is safe as a directory and process name, else InvalidRequest."""
    if not ID_PATTERN.fullmatch(sandbox_id):
        raise InvalidRequest(
            f"invalid sandbox id {sandbox_id!r}: use 1-64 letters, digits, '_', '.', '-'"
        )
    return sandbox_id


def boot_id() -> str:
    """This boot of the host: pids and runtime state files from another boot are stale."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def spec_to_json(spec: SandboxSpec) -> dict[str, Any]:
    return {
        "sandbox_id": spec.sandbox_id,
        "template": spec.template,
        "rootfs": str(spec.rootfs),
        "vcpus": spec.vcpus,
        "memory_mib": spec.memory_mib,
        "disk_mib": spec.disk_mib,
        "hostname": spec.hostname,
        "labels": dict(spec.labels),
        "layers": [str(p) for p in spec.layers],
    }


def spec_from_json(data: dict[str, Any]) -> SandboxSpec:
    try:
        return SandboxSpec(
            sandbox_id=str(data["sandbox_id"]),
            template=str(data["template"]),
            rootfs=Path(data["rootfs"]),
            vcpus=int(data["vcpus"]),
            memory_mib=int(data["memory_mib"]),
            disk_mib=int(data["disk_mib"]),
            hostname=str(data["hostname"]),
            labels={str(k): str(v) for k, v in dict(data.get("labels") or {}).items()},
            layers=tuple(Path(str(p)) for p in data.get("layers") or ()),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise RuntimeFailure(f"corrupt sandbox spec: {exc!r}") from exc
