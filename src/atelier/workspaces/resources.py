"""``hostRequirements`` mapped to Atelier's sandbox resources.

The spec's sizes are strings matching ``^\\d+([tgmk]b)?$``: a whole number of
bytes, or of ``kb``/``mb``/``gb``/``tb``. Units are binary (``1gb`` = 1024 MiB),
as the sandboxes' own sizes are; fractions (``1.5tb``) are not valid. The
requirements are minimums, rounded *up* to whole MiB.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

__all__ = ["HostRequirements", "parse_host_requirements", "parse_size", "size_to_mib"]

_SIZE = re.compile(r"^(\d+)([tgmk]b)?$")
_UNITS = {None: 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3, "tb": 1024**4}
_MIB = 1024 * 1024


def parse_size(text: str) -> int:
    """Bytes in a spec size string (``"8gb"`` → 8589934592); :class:`ValueError` if invalid."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a size like '512mb', '8gb' or '1tb'")
    return int(match.group(1)) * _UNITS[match.group(2)]


def size_to_mib(text: str) -> int:
    """A spec size string in MiB, rounded up (``"1kb"`` → 1)."""
    return -(-parse_size(text) // _MIB)


@dataclass(frozen=True, slots=True)
class HostRequirements:
    """Minimum resources, in the units of a sandbox spec. ``None``: no requirement."""

    vcpus: int | None = None
    memory_mib: int | None = None
    disk_mib: int | None = None
    gpu: bool | str | dict[str, Any] | None = None  # not supported; kept to warn about it

    def apply(self, *, vcpus: int, memory_mib: int, disk_mib: int) -> tuple[int, int, int]:
        """The given resources raised to these minimums: ``(vcpus, memory_mib, disk_mib)``."""
        return (
            max(vcpus, self.vcpus or 0),
            max(memory_mib, self.memory_mib or 0),
            max(disk_mib, self.disk_mib or 0),
        )

    @property
    def needs_gpu(self) -> bool:
        """True when a GPU is required (``true`` or an object), not merely ``"optional"``."""
        return self.gpu is True or isinstance(self.gpu, dict)


def parse_host_requirements(value: dict[str, Any] | None) -> HostRequirements:
    """The ``hostRequirements`` object (already schema-checked) as :class:`HostRequirements`."""
    if not value:
        return HostRequirements()
    memory, storage = value.get("memory"), value.get("storage")
    return HostRequirements(
        vcpus=value.get("cpus"),
        memory_mib=size_to_mib(memory) if memory is not None else None,
        disk_mib=size_to_mib(storage) if storage is not None else None,
        gpu=value.get("gpu"),
    )
