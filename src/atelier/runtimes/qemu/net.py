"""A QEMU sandbox's network: the gVisor runtime's namespace plus a TAP device.

::

    root netns                              netns atl-<sandbox id>
    atl<12 hex> (gateway/30) <--- veth ---> eth0 (no address) --+
                                                               br0 (bridge, no address)
    QEMU (nsenter --net=...) -- fd --> tap0 -------------------+
                                         |
                                  guest eth0 (address/30, default via gateway)

:class:`atelier.network.NetworkManager` makes the namespace, veth pair,
lease, nftables rules, bandwidth limits and DNS exactly as for gVisor;
:func:`attach_tap` then moves the sandbox's address from the namespace's
``eth0`` to the guest: it flushes that address, and bridges ``eth0`` with a
persistent ``tap0`` that QEMU (started inside the namespace) opens by name.
The host-side rules match on the host end of the veth, so they apply
unchanged. The guest configures its interface from the kernel command line
(``atelier.net=`` / ``atelier.dns=``, read by the initramfs's ``/init``; see
:func:`guest_args`). Tap and bridge live in the namespace: deleting it
(``NetworkManager.teardown``) removes them once QEMU is gone.

The policy is stored beside the spec (``network.json``; the spec file has no
network field), as the gVisor runtime does.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from ...errors import InvalidRequest, RuntimeFailure, RuntimeUnavailable
from ...network import NetworkInfo, NetworkPolicy
from ...network.netns import GUEST_IFNAME
from ...network.shell import run

__all__ = [
    "BRIDGE_IFNAME",
    "NETWORK_FILE",
    "NETWORK_TOOLS",
    "TAP_IFNAME",
    "GuestNic",
    "attach_tap",
    "check_tools",
    "guest_args",
    "guest_nic",
    "load_policy",
    "mac_address",
    "networked",
    "save_policy",
]

TAP_IFNAME = "tap0"
BRIDGE_IFNAME = "br0"
NETWORK_FILE = "network.json"
NETWORK_TOOLS = ("ip", "nft", "nsenter")  # iproute2, nftables, util-linux
DEFAULT_MTU = 1500


@dataclass(frozen=True, slots=True)
class GuestNic:
    """What QEMU and the guest need to know about the sandbox's interface."""

    netns_path: Path  # QEMU runs in this namespace
    tap: str  # the TAP device QEMU opens (inside the namespace)
    mac: str
    address: str  # "<ip>/<prefixlen>"
    gateway: str
    mtu: int
    nameservers: tuple[str, ...]


def networked(policy: NetworkPolicy | None) -> bool:
    return policy is not None and policy.enabled


def check_tools(policy: NetworkPolicy | None) -> None:
    """RuntimeUnavailable if a networked sandbox cannot be made on this host."""
    if not networked(policy):
        return
    assert policy is not None
    missing = [tool for tool in NETWORK_TOOLS if shutil.which(tool) is None]
    if missing:
        raise RuntimeUnavailable(
            f"network mode {policy.mode!r} needs {', '.join(missing)} on the host "
            "(iproute2, nftables, util-linux)"
        )


def mac_address(sandbox_id: str) -> str:
    """A stable, locally administered unicast MAC derived from the sandbox id."""
    digest = hashlib.sha256(b"atelier-nic\0" + sandbox_id.encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


def save_policy(base: Path, policy: NetworkPolicy | None) -> None:
    if policy is None:
        return
    path = base / NETWORK_FILE
    tmp = path.with_name(f".{NETWORK_FILE}.tmp")
    tmp.write_text(json.dumps(policy.to_json(), indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def load_policy(base: Path) -> NetworkPolicy | None:
    path = base / NETWORK_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise RuntimeFailure(f"cannot read {path}: {exc}") from exc
    try:
        return NetworkPolicy.from_json(data) if data is not None else None
    except InvalidRequest as exc:
        raise RuntimeFailure(f"corrupt {path}: {exc}") from exc


def _mtu(ifname: str | None) -> int:
    if ifname:
        with contextlib.suppress(OSError, ValueError):
            return int(Path(f"/sys/class/net/{ifname}/mtu").read_text().strip())
    return DEFAULT_MTU


def guest_nic(info: NetworkInfo) -> GuestNic:
    """The guest's side of a network set up by ``NetworkManager.setup``."""
    if info.netns_path is None or info.address is None or info.gateway is None:
        raise RuntimeFailure(f"sandbox {info.sandbox_id} has no network namespace to join")
    return GuestNic(
        netns_path=info.netns_path,
        tap=TAP_IFNAME,
        mac=mac_address(info.sandbox_id),
        address=f"{info.address}/{info.prefixlen}",
        gateway=str(info.gateway),
        mtu=_mtu(info.host_ifname),
        nameservers=tuple(str(n) for n in info.nameservers[:3]),
    )


def guest_args(nic: GuestNic | None) -> list[str]:
    """Kernel command line words for the guest's ``/init``:
    ``atelier.net=<ip>/<plen>,<gateway>,<mac>,<mtu>`` and
    ``atelier.dns=<ip>[,<ip>...]`` (nothing without a NIC)."""
    if nic is None:
        return []
    words = [f"atelier.net={nic.address},{nic.gateway},{nic.mac},{nic.mtu}"]
    if nic.nameservers:
        words.append(f"atelier.dns={','.join(nic.nameservers)}")
    return words


def tap_script(existing: set[str], ifname: str = GUEST_IFNAME) -> str:
    """``ip -batch`` lines that bridge ``ifname`` and the TAP (adding what is missing)."""
    lines = [f"addr flush dev {ifname}"]  # the guest holds the address now
    if BRIDGE_IFNAME not in existing:
        lines.append(f"link add {BRIDGE_IFNAME} type bridge")
    if TAP_IFNAME not in existing:
        lines.append(f"tuntap add dev {TAP_IFNAME} mode tap")
    for name in (BRIDGE_IFNAME, TAP_IFNAME, ifname):
        lines.append(f"link set {name} addrgenmode none")  # no IPv6 link-local chatter
    lines += [
        f"link set {ifname} master {BRIDGE_IFNAME}",
        f"link set {TAP_IFNAME} master {BRIDGE_IFNAME}",
        f"link set {BRIDGE_IFNAME} up",
        f"link set {TAP_IFNAME} up",
        f"link set {ifname} up",
        "",
    ]
    return "\n".join(lines)


async def attach_tap(netns: str) -> None:
    """Bridge the namespace's veth end with ``tap0`` (idempotent; run before every start)."""
    res = await run(["ip", "-n", netns, "-j", "link", "show"])
    try:
        existing = {str(link.get("ifname")) for link in json.loads(res.stdout or "[]")}
    except ValueError as exc:
        raise RuntimeFailure(f"cannot list the links of netns {netns}: {exc}") from exc
    await run(["ip", "-n", netns, "-batch", "-"], input=tap_script(existing))
