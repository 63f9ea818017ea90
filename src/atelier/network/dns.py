"""DNS for sandboxes: which resolvers they use, and resolving policy domains.

A sandbox in ``egress``/``open`` mode gets an ``/etc/resolv.conf`` naming the
*upstream* resolvers: ``settings.network_dns`` if set, else the host's own
``nameserver`` lines (IPv4, not loopback). The firewall lets DNS (port 53)
through to exactly those addresses. A host whose only resolver is a loopback
stub (``127.0.0.53``) gives sandboxes no resolver: set ``network_dns`` (a
forwarder on the gateway address is not built yet; see docs/network.md).

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
from pathlib import Path

__all__ = ["host_nameservers", "resolv_conf", "resolve", "resolve_all", "upstreams"]

HOST_RESOLV_CONF = Path("/etc/resolv.conf")


def host_nameservers(path: Path = HOST_RESOLV_CONF) -> list[ipaddress.IPv4Address]:
    """IPv4 ``nameserver`` entries of ``path`` (loopback ones excluded: a
    sandbox cannot reach the host's loopback)."""
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
            if isinstance(ip, ipaddress.IPv4Address) and not ip.is_loopback and ip not in out:
                out.append(ip)
    return out


def upstreams(
    configured: Sequence[str], path: Path = HOST_RESOLV_CONF
) -> list[ipaddress.IPv4Address]:
    """The resolvers sandboxes use: ``configured`` if any, else the host's."""
    if configured:
        return [ipaddress.IPv4Address(x) for x in configured]
    return host_nameservers(path)


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
