"""A firecracker snapshot on disk: one directory.

::

    <dest>/
      vmstate         the microVM state (PUT /snapshot/create snapshot_path)
      memory          the guest memory (mem_file_path); restored with the File
                      backend, which maps it private: one snapshot serves many clones
      rootfs.raw      the disk as it was at that instant (taken while paused)
      snapshot.json   this manifest, written last: its presence = "complete"

The memory file holds the guest's RAM (secrets included): the directory is
0700 and the files 0600, or 0640 with the jail's group when Firecracker runs
jailed (the jailed, unprivileged VMM must read it on restore).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ...errors import InvalidRequest

__all__ = ["FORMAT", "MANIFEST", "MEMORY", "VMSTATE", "SnapshotManifest"]

FORMAT = 1
MANIFEST = "snapshot.json"
VMSTATE = "vmstate"
MEMORY = "memory"
DISK = "rootfs.raw"


@dataclass(frozen=True, slots=True)
class SnapshotManifest:
    source_sandbox: str
    template: str
    vcpus: int
    memory_mib: int
    disk_mib: int
    firecracker_version: str
    created_at: str  # ISO 8601, UTC
    agent_port: int
    runtime: str = "firecracker"
    format: int = FORMAT

    def write(self, directory: Path) -> None:
        tmp = directory / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")
        tmp.replace(directory / MANIFEST)

    @classmethod
    def read(cls, directory: Path) -> SnapshotManifest:
        """The manifest of a complete snapshot directory, or InvalidRequest."""
        try:
            data: Any = json.loads((directory / MANIFEST).read_text())
        except (OSError, ValueError) as exc:
            raise InvalidRequest(
                f"{directory} is not a complete firecracker snapshot: {exc}"
            ) from exc
        if not isinstance(data, dict) or data.get("runtime") != "firecracker":
            raise InvalidRequest(f"{directory} is not a firecracker snapshot")
        if data.get("format") != FORMAT:
            raise InvalidRequest(f"{directory}: unsupported snapshot format {data.get('format')!r}")
        try:
            manifest = cls(**{k: data[k] for k in cls.__dataclass_fields__})
        except (KeyError, TypeError) as exc:
            raise InvalidRequest(f"{directory}: corrupt snapshot manifest: {exc!r}") from exc
        for name in (VMSTATE, MEMORY, DISK):
            if not (directory / name).is_file():
                raise InvalidRequest(f"{directory}: snapshot file {name} is missing")
        return manifest
