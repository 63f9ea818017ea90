"""A sandbox's network namespace and veth pair, made and removed with ``ip``.

::

    root netns                              netns atl-<sandbox id>
    atl<12 hex> (gateway/30) <--- veth ---> eth0 (address/30), default via gateway
                                            lo up

The host-side name is ``<prefix><hash of the sandbox id>`` (15 characters:
Linux interface names are at most 15 bytes, sandbox ids up to 64). Every
function is idempotent: ``ensure`` repairs a half-made or stripped pair (runsc
removes the sandbox-side address and routes from the namespace when it takes
the interface over, so ``ensure`` runs before every start), ``remove``
succeeds on nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from .ipam import Lease
from .shell import run

__all__ = [
    "GUEST_IFNAME",
    "IFNAME_MAX",
    "NETNS_DIR",
    "NETNS_PREFIX",
    "Interfaces",
    "ensure",
    "exists",
    "host_ifname",
    "link_exists",
    "netns_name",
    "remove",
]

NETNS_DIR = Path("/run/netns")
NETNS_PREFIX = "atl-"
GUEST_IFNAME = "eth0"
IFNAME_MAX = 15


def netns_name(sandbox_id: str) -> str:
    return NETNS_PREFIX + sandbox_id


def host_ifname(sandbox_id: str, prefix: str = "atl") -> str:
    """``<prefix><hex digest>``, exactly 15 characters."""
    if not 1 <= len(prefix) <= 6 or not prefix.isalnum():
        raise ValueError(f"interface prefix {prefix!r} must be 1-6 letters/digits")
    digest = hashlib.sha256(sandbox_id.encode()).hexdigest()
    return prefix + digest[: IFNAME_MAX - len(prefix)]


@dataclass(frozen=True, slots=True)
class Interfaces:
    sandbox_id: str
    netns: str  # name under /run/netns
    host_ifname: str
    lease: Lease

    @property
    def netns_path(self) -> Path:
        return NETNS_DIR / self.netns


def exists(netns: str) -> bool:
    return (NETNS_DIR / netns).exists()


def link_exists(ifname: str) -> bool:
    return os.path.lexists(f"/sys/class/net/{ifname}")


def _disable_ipv6(ifname: str) -> None:
    # No IPv6 for sandboxes yet: no link-local address on the host side either.
    with (
        contextlib.suppress(OSError),
        open(f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6", "w") as fh,
    ):
        fh.write("1")


async def ensure(ifs: Interfaces) -> None:
    """Make (or repair) the namespace, the pair, addresses and routes."""
    lease = ifs.lease
    if not exists(ifs.netns):
        await run(["ip", "netns", "add", ifs.netns])
    peer_ok = False
    if link_exists(ifs.host_ifname):
        res = await run(["ip", "-n", ifs.netns, "link", "show", GUEST_IFNAME], check=False)
        peer_ok = res.ok
        if not peer_ok:
            await run(["ip", "link", "del", ifs.host_ifname], check=False)
    if not peer_ok:
        await run(
            [
                "ip", "link", "add", ifs.host_ifname, "type", "veth",
                "peer", "name", GUEST_IFNAME, "netns", ifs.netns,
            ]
        )  # fmt: skip
    _disable_ipv6(ifs.host_ifname)
    plen = lease.prefixlen
    host = "\n".join(
        [
            f"addr replace {lease.gateway}/{plen} dev {ifs.host_ifname}",
            f"link set {ifs.host_ifname} up",
            "",
        ]
    )
    await run(["ip", "-batch", "-"], input=host)
    guest = "\n".join(
        [
            "link set lo up",
            f"addr replace {lease.address}/{plen} dev {GUEST_IFNAME}",
            f"link set {GUEST_IFNAME} up",
            f"route replace default via {lease.gateway} dev {GUEST_IFNAME}",
            "",
        ]
    )
    await run(["ip", "-n", ifs.netns, "-batch", "-"], input=guest)


async def remove(netns: str, host_if: str) -> None:
    """Delete the pair and the namespace (whatever of them exists)."""
    if link_exists(host_if):
        res = await run(["ip", "link", "del", host_if], check=False)
        if not res.ok and link_exists(host_if):
            await run(["ip", "link", "del", host_if])
    if exists(netns):
        await run(["ip", "netns", "del", netns])
