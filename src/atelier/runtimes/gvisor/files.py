"""The files of one sandbox directory (``settings.sandboxes_dir / <id>``).

::

    <id>/
      spec.json       the SandboxSpec; written last by create (= "complete")
      started         marker: the sandbox was started at least once
      disk.img        sparse ext4 image (see layers.py)
      layer/ rootfs/  disk layer mount and overlay mount
      run/            host side of /run/atelier: agent.sock, agent.log
      bundle/         config.json (OCI spec, rewritten on every start)
      console.log     the agent's stdout/stderr (and runsc's own errors)
      runsc.log       runsc's log
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ...agent import bootstrap
from ...errors import InvalidRequest, RuntimeFailure
from ..base import SandboxSpec
from ..common import ID_PATTERN, check_id, spec_from_json, spec_to_json
from .layers import LayerPaths
from .runsc import container_id

__all__ = [
    "ID_PATTERN",
    "SandboxFiles",
    "check_id",
    "read_tail",
    "spec_from_json",
    "spec_to_json",
]

_MAX_UNIX_PATH = 107  # sun_path is 108 bytes including the NUL


@dataclass(frozen=True, slots=True)
class SandboxFiles:
    base: Path

    @property
    def cid(self) -> str:
        """The runsc container id (see :func:`.runsc.container_id`)."""
        return container_id(self.base.name)

    @property
    def spec(self) -> Path:
        return self.base / "spec.json"

    @property
    def started(self) -> Path:
        return self.base / "started"

    @property
    def run_dir(self) -> Path:
        return self.base / "run"

    @property
    def bundle(self) -> Path:
        return self.base / "bundle"

    @property
    def console(self) -> Path:
        return self.base / "console.log"

    @property
    def runsc_log(self) -> Path:
        return self.base / "runsc.log"

    @property
    def agent_socket(self) -> Path:
        return self.run_dir / bootstrap.SOCKET_NAME

    @property
    def agent_log(self) -> Path:
        return self.run_dir / bootstrap.LOG_NAME

    @property
    def layers(self) -> LayerPaths:
        return LayerPaths.of(self.base)

    def complete(self) -> bool:
        return self.spec.is_file()

    def check_socket_path(self) -> None:
        if len(str(self.agent_socket).encode()) > _MAX_UNIX_PATH:
            raise InvalidRequest(
                f"agent socket path {self.agent_socket} is longer than a unix socket "
                "allows (107 bytes): use a shorter data_dir or sandbox id"
            )

    def load_spec(self) -> SandboxSpec:
        try:
            return spec_from_json(json.loads(self.spec.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RuntimeFailure(f"cannot read {self.spec}: {exc}") from exc

    def save_spec(self, spec: SandboxSpec) -> None:
        tmp = self.spec.with_suffix(".tmp")
        tmp.write_text(json.dumps(spec_to_json(spec), indent=2, sort_keys=True) + "\n")
        tmp.replace(self.spec)


def read_tail(path: Path, offset: int = 0, limit: int = 4000) -> str:
    """Text appended to ``path`` since ``offset`` (its last ``limit`` bytes)."""
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, 2)
            fh.seek(max(offset, size - limit))
            return fh.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""
