"""A sandbox's network policy: mode, allow/deny lists, optional bandwidth.

Modes:

``none``
    No interface but loopback: an air-gapped sandbox (runsc ``--network=none``).
``egress``
    Outbound connections only to the allow-list (IPv4 CIDRs and domain
    names), minus the deny-list. DNS to the sandbox's resolvers is allowed.
``open``
    Outbound connections anywhere except the always-denied destinations
    (this host, other sandboxes, link-local, loopback, multicast, the
    Atelier API) and the deny-list.

In both modes an allow entry may re-open an always-denied *range* on
purpose (e.g. ``169.254.169.254/32`` for a cloud metadata service); this
host's own addresses and other sandboxes are never reachable (see
``firewall.py``). Deny always beats allow.

Bandwidth: ``bandwidth = {"egress_mbit", "ingress_mbit"}`` limits each
direction (``bandwidth.py``); ``bandwidth_mbit`` is the older shorthand for
both, used for a direction the object leaves out.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

from ..errors import InvalidRequest
from .bandwidth import Limits

__all__ = ["MAX_ENTRIES", "MODES", "Mode", "NetworkPolicy", "is_domain", "parse_cidr"]

Mode = Literal["none", "egress", "open"]
MODES: tuple[Mode, ...] = ("none", "egress", "open")
MAX_ENTRIES = 256
MAX_BANDWIDTH_MBIT = 100_000

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def is_domain(text: str) -> bool:
    """A fully qualified host name (``example.com``; no wildcards, no IPs)."""
    name = text.rstrip(".").lower()
    if not name or len(name) > 253 or "." not in name:
        return False
    labels = name.split(".")
    if labels[-1].isdigit():
        return False  # looks like an IP address
    return all(_LABEL.match(label) for label in labels)


def parse_cidr(text: str) -> ipaddress.IPv4Network | None:
    """The IPv4 network ``text`` names (an address is a /32), None if it is no IP.

    Raises :class:`InvalidRequest` for IPv6 (not supported yet) and for a
    CIDR with host bits set (``10.0.0.1/8`` is ambiguous: say ``10.0.0.0/8``)."""
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        if "/" in text or text.replace(".", "").isdigit() or ":" in text:
            raise InvalidRequest(f"invalid network {text!r}: {exc}") from exc
        return None
    if isinstance(net, ipaddress.IPv6Network):
        raise InvalidRequest(f"IPv6 networks are not supported yet: {text!r}")
    return net


def _entries(field: str, values: Iterable[str]) -> tuple[str, ...]:
    if isinstance(values, str):
        raise InvalidRequest(f"network.{field} must be a list of CIDRs or domain names")
    out: list[str] = []
    for raw in values:
        if not isinstance(raw, str) or not raw.strip():
            raise InvalidRequest(f"network.{field}: entries must be non-empty strings")
        text = raw.strip()
        net = parse_cidr(text)
        if net is not None:
            value = str(net)
        elif is_domain(text):
            value = text.rstrip(".").lower()
        else:
            raise InvalidRequest(
                f"network.{field}: {text!r} is neither an IPv4 address/CIDR nor a domain name"
                " (wildcards are not supported)"
            )
        if value not in out:
            out.append(value)
    if len(out) > MAX_ENTRIES:
        raise InvalidRequest(f"network.{field} has more than {MAX_ENTRIES} entries")
    return tuple(out)


@dataclass(frozen=True, slots=True)
class NetworkPolicy:
    """Validated on construction; lists are stored as tuples (normalized)."""

    mode: Mode = "none"
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    bandwidth_mbit: int | None = None
    egress_mbit: int | None = None  # sandbox -> outside
    ingress_mbit: int | None = None  # outside -> sandbox

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InvalidRequest(
                f"network.mode must be one of {', '.join(MODES)}, not {self.mode!r}"
            )
        object.__setattr__(self, "allow", _entries("allow", self.allow))
        object.__setattr__(self, "deny", _entries("deny", self.deny))
        for name, bw in (
            ("bandwidth_mbit", self.bandwidth_mbit),
            ("bandwidth.egress_mbit", self.egress_mbit),
            ("bandwidth.ingress_mbit", self.ingress_mbit),
        ):
            if bw is not None and (
                isinstance(bw, bool) or not isinstance(bw, int) or not 1 <= bw <= MAX_BANDWIDTH_MBIT
            ):
                raise InvalidRequest(f"network.{name} must be 1..{MAX_BANDWIDTH_MBIT}")
        if self.mode == "none" and (self.allow or self.deny or self.limits().any):
            raise InvalidRequest(
                "network mode 'none' has no interface: allow, deny and bandwidth must be empty"
            )

    # -- views -------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        """True if the sandbox gets an interface (mode is not ``none``)."""
        return self.mode != "none"

    def limits(self) -> Limits:
        """The effective bandwidth limit of each direction."""
        return Limits(
            egress_mbit=self.egress_mbit if self.egress_mbit is not None else self.bandwidth_mbit,
            ingress_mbit=(
                self.ingress_mbit if self.ingress_mbit is not None else self.bandwidth_mbit
            ),
        )

    def allow_networks(self) -> list[ipaddress.IPv4Network]:
        return [n for e in self.allow if (n := parse_cidr(e)) is not None]

    def deny_networks(self) -> list[ipaddress.IPv4Network]:
        return [n for e in self.deny if (n := parse_cidr(e)) is not None]

    def allow_domains(self) -> list[str]:
        return [e for e in self.allow if parse_cidr(e) is None]

    def deny_domains(self) -> list[str]:
        return [e for e in self.deny if parse_cidr(e) is None]

    def domains(self) -> list[str]:
        return sorted({*self.allow_domains(), *self.deny_domains()})

    # -- JSON ----------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "allow": list(self.allow),
            "deny": list(self.deny),
            "bandwidth_mbit": self.bandwidth_mbit,
            "bandwidth": (
                {"egress_mbit": self.egress_mbit, "ingress_mbit": self.ingress_mbit}
                if self.egress_mbit is not None or self.ingress_mbit is not None
                else None
            ),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> NetworkPolicy:
        if not isinstance(data, Mapping):
            raise InvalidRequest("network must be an object")
        unknown = set(data) - {"mode", "allow", "deny", "bandwidth_mbit", "bandwidth"}
        if unknown:
            raise InvalidRequest(f"unknown network fields: {', '.join(sorted(unknown))}")
        mode = data.get("mode", "none")
        if mode not in MODES:
            raise InvalidRequest(f"network.mode must be one of {', '.join(MODES)}, not {mode!r}")
        allow = data.get("allow") or ()
        deny = data.get("deny") or ()
        for name, value in (("allow", allow), ("deny", deny)):
            if not isinstance(value, list | tuple):
                raise InvalidRequest(f"network.{name} must be a list")
        bandwidth = data.get("bandwidth") or {}
        if not isinstance(bandwidth, Mapping):
            raise InvalidRequest("network.bandwidth must be an object")
        unknown = set(bandwidth) - {"egress_mbit", "ingress_mbit"}
        if unknown:
            raise InvalidRequest(f"unknown network.bandwidth fields: {', '.join(sorted(unknown))}")
        return cls(
            mode=cast(Mode, mode),
            allow=tuple(allow),
            deny=tuple(deny),
            bandwidth_mbit=data.get("bandwidth_mbit"),
            egress_mbit=bandwidth.get("egress_mbit"),
            ingress_mbit=bandwidth.get("ingress_mbit"),
        )

    @classmethod
    def none(cls) -> NetworkPolicy:
        return cls()
