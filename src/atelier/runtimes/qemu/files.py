"""The files of one QEMU sandbox (``<data_dir>/qemu/<id>/``) and of a snapshot.

::

    <id>/                0700, root
      spec.json          the SandboxSpec; written last by create (= "complete")
      disk.json          the disk chain under the overlay (base image, snapshot disk)
      restore.json       create_from_snapshot: the first start restores this snapshot
      disk.qcow2         the sandbox's qcow2 overlay (its writes; virtual size = disk_mib)
      memory             guest RAM (memory-backend-file, share=on) while it runs
      boot.json          how the running VM was started (cold/restore, kernel, initramfs)
      started            marker: the sandbox was started at least once (holds the boot id)
      qemu.pid           QEMU's pid (-pidfile)
      qmp.sock           QMP (host only)
      control.sock       the guest's control port (sync, time; host only)
      run/agent.sock     the agent's virtio-serial port: what AgentClient connects to
      console.log        serial console: kernel, init and the agent's stderr
      qemu.log           QEMU's own stderr

    <snapshot>/          written by QemuRuntime.snapshot(), read-only afterwards
      state              device state (migration stream, x-ignore-shared: no RAM)
      memory             guest RAM (sparse copy); restores map it copy-on-write
      disk.qcow2         the disk overlay at that instant (backing: disk.json chain)
      snapshot.json      machine shape, boot files, chain; written last
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...agent import bootstrap
from ...config import Settings
from ...errors import InvalidRequest, RuntimeFailure
from ..base import SandboxSpec
from ..common import ID_PATTERN, check_id, spec_from_json, spec_to_json
from .cmdline import DiskLayer

__all__ = [
    "ID_PATTERN",
    "SNAPSHOT_META",
    "SandboxFiles",
    "check_id",
    "layers_from_json",
    "layers_to_json",
    "read_json",
    "spec_from_json",
    "spec_to_json",
    "validate_spec",
    "write_json",
]

HOSTNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,62}$")
SNAPSHOT_META = "snapshot.json"
_MAX_UNIX_PATH = 107  # sun_path is 108 bytes including the NUL


@dataclass(frozen=True, slots=True)
class SandboxFiles:
    base: Path

    @property
    def spec(self) -> Path:
        return self.base / "spec.json"

    @property
    def disk_meta(self) -> Path:
        return self.base / "disk.json"

    @property
    def restore(self) -> Path:
        return self.base / "restore.json"

    @property
    def boot(self) -> Path:
        return self.base / "boot.json"

    @property
    def started(self) -> Path:
        return self.base / "started"

    @property
    def overlay(self) -> Path:
        return self.base / "disk.qcow2"

    @property
    def memory(self) -> Path:
        return self.base / "memory"

    @property
    def pidfile(self) -> Path:
        return self.base / "qemu.pid"

    @property
    def qmp(self) -> Path:
        return self.base / "qmp.sock"

    @property
    def control(self) -> Path:
        return self.base / "control.sock"

    @property
    def run_dir(self) -> Path:
        return self.base / "run"

    @property
    def console(self) -> Path:
        return self.base / "console.log"

    @property
    def qemu_log(self) -> Path:
        return self.base / "qemu.log"

    @property
    def agent_socket(self) -> Path:
        return self.run_dir / bootstrap.SOCKET_NAME

    def complete(self) -> bool:
        return self.spec.is_file()

    def check_socket_paths(self) -> None:
        for path in (self.agent_socket, self.qmp, self.control):
            if len(str(path).encode()) > _MAX_UNIX_PATH:
                raise InvalidRequest(
                    f"socket path {path} is longer than a unix socket allows (107 "
                    "bytes): use a shorter data_dir or sandbox id"
                )

    def load_spec(self) -> SandboxSpec:
        return spec_from_json(read_json(self.spec))

    def save_spec(self, spec: SandboxSpec) -> None:
        write_json(self.spec, spec_to_json(spec))


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RuntimeFailure(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise RuntimeFailure(f"{path} does not hold a JSON object")
    return data


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)


def layers_to_json(layers: tuple[DiskLayer, ...]) -> list[dict[str, str]]:
    return [{"path": str(layer.path), "format": layer.format} for layer in layers]


def layers_from_json(items: Any) -> tuple[DiskLayer, ...]:
    """Read-only layers (the writable overlay is never part of a stored chain)."""
    try:
        return tuple(DiskLayer(Path(item["path"]), str(item["format"])) for item in items)
    except (KeyError, TypeError) as exc:
        raise RuntimeFailure(f"invalid disk chain: {exc}") from exc


def validate_spec(spec: SandboxSpec, settings: Settings) -> None:
    if not spec.rootfs.is_absolute() or not spec.rootfs.is_dir():
        raise InvalidRequest(f"template rootfs {spec.rootfs} is not an existing absolute dir")
    if not 1 <= spec.vcpus <= settings.max_vcpus:
        raise InvalidRequest(f"vcpus must be 1..{settings.max_vcpus}, not {spec.vcpus}")
    if not 128 <= spec.memory_mib <= settings.max_memory_mib:
        raise InvalidRequest(f"memory_mib must be 128..{settings.max_memory_mib}")
    if not 64 <= spec.disk_mib <= settings.max_disk_mib:
        raise InvalidRequest(f"disk_mib must be 64..{settings.max_disk_mib}")
    if not HOSTNAME.fullmatch(spec.hostname):
        raise InvalidRequest("hostname must be 1..63 letters, digits, '.' or '-'")
