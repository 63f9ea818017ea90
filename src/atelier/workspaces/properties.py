"""Ports, and the list of ``devcontainer.json`` properties Atelier does not apply.

Atelier workspaces are sandboxes (gVisor, microVMs), not Docker containers, so
the properties that are really ``docker run`` flags have no meaning here. They
are never dropped silently: :func:`unsupported_properties` finds every one
present (with a value that would change something) and
:func:`unsupported_warning` folds them, and any unknown property, into ONE
warning.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

__all__ = [
    "IGNORED_PROPERTIES",
    "UNSUPPORTED_PROPERTIES",
    "ForwardPort",
    "PortAttributes",
    "parse_forward_port",
    "parse_port_attributes",
    "unsupported_properties",
    "unsupported_warning",
]

# property -> why Atelier does not apply it (the warning quotes the reason)
UNSUPPORTED_PROPERTIES: Mapping[str, str] = MappingProxyType(
    {
        "runArgs": "docker run arguments do not apply to sandboxes",
        "appPort": "use forwardPorts",
        "mounts": "no host mounts into sandboxes",
        "workspaceMount": "the repository is cloned into workspaceFolder, not mounted",
        "privileged": "sandboxes are never privileged",
        "capAdd": "sandbox capabilities are fixed",
        "securityOpt": "sandbox security options are fixed",
        "overrideCommand": "the image's ENTRYPOINT/CMD never runs: the agent is the first process",
        "shutdownAction": "workspaces stop on their own timeout",
        "updateRemoteUserUID": "there is no local user to match: nothing is bind-mounted",
        "userEnvProbe": "the user's shell environment is not probed",
        "build.cacheFrom": "the step cache is Atelier's own",
        "build.options": "docker build options do not apply",
        "hostRequirements.gpu": "no GPUs in sandboxes",
    }
)

# values that ask for nothing beyond what Atelier does anyway: no warning
_HARMLESS: Mapping[str, tuple[Any, ...]] = MappingProxyType(
    {
        "runArgs": ([],),
        "mounts": ([],),
        "capAdd": ([],),
        "securityOpt": ([],),
        "privileged": (False,),
        "overrideCommand": (True,),
        "updateRemoteUserUID": (False,),
        "userEnvProbe": ("none",),
        "build.cacheFrom": ([], ""),
        "build.options": ([],),
        "hostRequirements.gpu": (False, "optional"),
    }
)

# metadata with no effect on the environment, ignored without a warning
IGNORED_PROPERTIES: frozenset[str] = frozenset({"$schema", "customizations", "init"})

_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1"})


@dataclass(frozen=True, slots=True)
class ForwardPort:
    """A ``forwardPorts`` entry: ``3000`` or ``"host:3000"``."""

    port: int
    host: str | None = None

    @property
    def is_local(self) -> bool:
        """True when the port is the workspace's own (no host, or ``localhost``)."""
        return self.host is None or self.host in _LOCAL_HOSTS

    def __str__(self) -> str:
        return f"{self.host}:{self.port}" if self.host else str(self.port)


def parse_forward_port(value: int | str) -> ForwardPort:
    """``3000`` or ``"db:5432"`` (schema-checked); :class:`ValueError` outside 1-65535."""
    host: str | None = None
    if isinstance(value, str):
        host, _, number = value.rpartition(":")
        port = int(number)
    else:
        port = value
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is outside 1-65535")
    return ForwardPort(port, host or None)


@dataclass(frozen=True, slots=True)
class PortAttributes:
    label: str | None = None
    protocol: str | None = None  # "http" | "https"
    on_auto_forward: str | None = None  # "notify" | "openBrowser" | ... | "ignore"
    require_local_port: bool | None = None
    elevate_if_needed: bool | None = None


def parse_port_attributes(value: Mapping[str, Any]) -> PortAttributes:
    return PortAttributes(
        label=value.get("label"),
        protocol=value.get("protocol"),
        on_auto_forward=value.get("onAutoForward"),
        require_local_port=value.get("requireLocalPort"),
        elevate_if_needed=value.get("elevateIfNeeded"),
    )


def unsupported_properties(raw: Mapping[str, Any]) -> list[str]:
    """Every unsupported property set (dotted path) in a schema-valid configuration."""
    found = []
    for name in UNSUPPORTED_PROPERTIES:
        parent: Any = raw
        *outer, leaf = name.split(".")
        for part in outer:
            parent = parent.get(part) if isinstance(parent, dict) else None
        if not isinstance(parent, dict) or leaf not in parent:
            continue
        if parent[leaf] not in _HARMLESS.get(name, ()):
            found.append(name)
    return found


def unsupported_warning(
    source: str,
    unsupported: Sequence[str],
    unknown: Sequence[str] = (),
    remote_ports: Sequence[ForwardPort] = (),
) -> str | None:
    """One warning naming everything Atelier ignores in ``source``, or ``None``."""
    parts = [f"{name} ({UNSUPPORTED_PROPERTIES[name]})" for name in unsupported]
    if remote_ports:
        listed = ", ".join(str(p) for p in remote_ports)
        parts.append(f"forwardPorts {listed} (only the workspace's own ports are forwarded)")
    if unknown:
        parts.append(f"unknown properties {', '.join(unknown)}")
    if not parts:
        return None
    return f"{source}: Atelier ignores " + "; ".join(parts) + " (see docs/workspaces.md)"
