"""DNS for sandboxes: which resolvers they use, and resolving policy domains.

A sandbox in ``egress``/``open`` mode gets an ``/etc/resolv.conf`` naming the
*upstream* resolvers: ``settings.network_dns`` if set, else the host's own
``nameserver`` lines (IPv4, not loopback). The firewall lets DNS (port 53)
through to exactly those addresses. A host whose only resolvers are loopback
stubs (``127.0.0.53``) gets a forwarder instead (``dnsfwd.py``): sandboxes
are told its address, and it relays to the stubs (:func:`plan`).

Domain names in a policy are resolved on the host (``getaddrinfo``, IPv4)
when the sandbox's network is set up, and again every
``network_dns_refresh`` seconds by the manager's refresher; the addresses go
into the sandbox's ``allowdns_``/``denydns_`` sets. A name that resolves to
nothing contributes nothing (egress: unreachable), and a failed lookup keeps
the previous addresses.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DnsPlan",
    "host_nameservers",
    "plan",
    "resolv_conf",
    "resolve",
    "resolve_all",
    "upstreams",
]

HOST_RESOLV_CONF = Path("/etc/resolv.conf")


def host_nameservers(
    path: Path = HOST_RESOLV_CONF, *, loopback: bool = False
) -> list[ipaddress.IPv4Address]:
    """IPv4 ``nameserver`` entries of ``path``: the non-loopback ones (a sandbox
    cannot reach the host's loopback), or with ``loopback`` only the loopback ones."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    out: list[ipaddress.IPv4Address] = []
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            try:
                ip = ipaddress.ip_address(words[1])
            except ValueError:
                continue
            if not isinstance(ip, ipaddress.IPv4Address) or ip.is_loopback != loopback:
                continue
            if ip not in out:
                out.append(ip)
    return out


def upstreams(
    configured: Sequence[str], path: Path = HOST_RESOLV_CONF
) -> list[ipaddress.IPv4Address]:
    """The resolvers sandboxes use: ``configured`` if any, else the host's."""
    if configured:
        return [ipaddress.IPv4Address(x) for x in configured]
    return host_nameservers(path)


@dataclass(frozen=True, slots=True)
class DnsPlan:
    """What sandboxes are told (``nameservers``) and, when the forwarder is
    needed, where it relays to (``forward_to``; empty: no forwarder)."""

    nameservers: list[ipaddress.IPv4Address]
    forward_to: list[ipaddress.IPv4Address]

    @property
    def forwarder(self) -> ipaddress.IPv4Address | None:
        return self.nameservers[0] if self.forward_to else None


def plan(
    configured: Sequence[str],
    forwarder_address: ipaddress.IPv4Address,
    path: Path = HOST_RESOLV_CONF,
) -> DnsPlan:
    """``configured`` resolvers, else the host's reachable ones, else (only
    loopback stubs on the host) the forwarder at ``forwarder_address``."""
    direct = upstreams(configured, path)
    if direct or configured:
        return DnsPlan(direct, [])
    stubs = host_nameservers(path, loopback=True)
    if stubs:
        return DnsPlan([forwarder_address], stubs)
    return DnsPlan([], [])


def resolv_conf(nameservers: Iterable[ipaddress.IPv4Address]) -> str:
    lines = ["# written by Atelier (docs/network.md)"]
    lines += [f"nameserver {ip}" for ip in list(nameservers)[:3]]  # glibc reads 3
    lines.append("options timeout:2 attempts:2")
    return "\n".join(lines) + "\n"


async def resolve(name: str, timeout: float = 5.0) -> list[ipaddress.IPv4Address] | None:
    """IPv4 addresses of ``name``; [] if it has none, None if the lookup failed."""
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(name, None, family=socket.AF_INET, type=socket.SOCK_STREAM),
            timeout,
        )
    except socket.gaierror as exc:
        if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", -5)):
            return []
        return None
    except (TimeoutError, OSError):
        return None
    out: list[ipaddress.IPv4Address] = []
    for info in infos:
        ip = ipaddress.IPv4Address(info[4][0])
        if ip not in out:
            out.append(ip)
    return out


async def resolve_all(
    names: Iterable[str], previous: dict[str, list[ipaddress.IPv4Address]] | None = None
) -> dict[str, list[ipaddress.IPv4Address]]:
    """Resolve ``names`` concurrently; a failed lookup keeps ``previous``'s answer."""
    names = sorted(set(names))
    previous = previous or {}
    answers = await asyncio.gather(*(resolve(n) for n in names))
    return {
        n: (a if a is not None else previous.get(n, []))
        for n, a in zip(names, answers, strict=True)
    }
