"""NetworkManager: a sandbox's network, from policy to namespace and firewall.

``setup(id, policy)`` (idempotent; run before every start) leases a subnet,
makes the namespace and veth pair, installs the sandbox's nftables chain and
sets, and returns a :class:`NetworkInfo`. ``teardown(id)`` removes all of it
(idempotent). ``reconcile(known_ids)`` tears down every sandbox this manager
holds a lease for that is not in ``known_ids``, and removes nftables objects of
veths no lease explains.

Order matters for crash safety: the lease (with the sandbox's record) is
written *before* anything is made on the host and released *after*
everything is gone, so whatever a crash leaves behind is found again from the
lease file.

State: ``<state_dir>/leases.json`` (see ipam.py) and
``<state_dir>/sandboxes/<id>.json`` (policy + last resolved addresses).

DNS: see ``dns.plan``. On a host whose resolvers are all loopback stubs the
manager runs a :class:`DnsForwarder` on the pool's reserved address (the last
/30's ``.2``, never leased, added to ``lo`` while the forwarder runs), from the
first setup (or a reconcile that finds live sandboxes) until ``aclose``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import weakref
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Settings
from ..errors import InvalidRequest, RuntimeFailure
from . import bandwidth, dns, firewall, netns
from .dnsfwd import DnsForwarder
from .ipam import Ipam, Lease
from .policy import NetworkPolicy
from .shell import run

__all__ = ["NetworkInfo", "NetworkManager"]

log = logging.getLogger(__name__)

_IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")


@dataclass(frozen=True, slots=True)
class NetworkInfo:
    sandbox_id: str
    mode: str
    netns: str | None = None  # name under /run/netns
    netns_path: Path | None = None
    host_ifname: str | None = None
    address: ipaddress.IPv4Address | None = None  # the sandbox's
    gateway: ipaddress.IPv4Address | None = None  # the host side of its veth
    prefixlen: int | None = None
    nameservers: tuple[ipaddress.IPv4Address, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "netns": self.netns,
            "host_ifname": self.host_ifname,
            "address": str(self.address) if self.address else None,
            "gateway": str(self.gateway) if self.gateway else None,
            "prefixlen": self.prefixlen,
            "nameservers": [str(n) for n in self.nameservers],
        }


class NetworkManager:
    """Sandbox networks on this host (one per Atelier state dir)."""

    def __init__(
        self,
        settings: Settings,
        *,
        state_dir: Path | None = None,
        ifname_prefix: str = "atl",
    ) -> None:
        self.settings = settings
        self.state_dir = Path(os.path.abspath(state_dir or settings.data_dir / "network"))
        self.ipam = Ipam(self.state_dir, settings.network_pool)
        self.ifname_prefix = ifname_prefix
        self.firewall = firewall.FirewallConfig(
            table=settings.network_nft_table,
            pool=self.ipam.pool,
            api_endpoints=_api_endpoints(settings),
        )
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._refresher: asyncio.Task[None] | None = None
        self.host_resolv_conf = Path(settings.network_resolv_conf)
        # the last /30 of the pool is never leased: its .2 is the DNS forwarder's
        pool = self.ipam.pool
        self.reserved = ipaddress.IPv4Network(f"{pool.broadcast_address - 3}/30")
        self.dns_address = self.reserved.network_address + 2
        self._forwarder: DnsForwarder | None = None
        self._forwarder_lock = asyncio.Lock()

    # -- names ------------------------------------------------------------------------
    def host_ifname(self, sandbox_id: str) -> str:
        return netns.host_ifname(sandbox_id, self.ifname_prefix)

    def dns_plan(self) -> dns.DnsPlan:
        try:
            return dns.plan(self.settings.network_dns, self.dns_address, self.host_resolv_conf)
        except ValueError as exc:
            raise InvalidRequest(f"network_dns: {exc}") from exc

    def nameservers(self) -> list[ipaddress.IPv4Address]:
        """The resolvers sandboxes are told (the forwarder's address, if it runs)."""
        return self.dns_plan().nameservers

    def resolv_conf(self) -> str:
        """``/etc/resolv.conf`` content for a sandbox with an interface."""
        return dns.resolv_conf(self.nameservers())

    def _record_path(self, sandbox_id: str) -> Path:
        return self.state_dir / "sandboxes" / f"{sandbox_id}.json"

    def _interfaces(self, lease: Lease) -> netns.Interfaces:
        sid = lease.sandbox_id
        return netns.Interfaces(sid, netns.netns_name(sid), self.host_ifname(sid), lease)

    # -- verbs ------------------------------------------------------------------------
    async def setup(self, sandbox_id: str, policy: NetworkPolicy) -> NetworkInfo:
        """Make the sandbox's network as ``policy`` says; a no-op for mode ``none``
        (the sandbox keeps only its loopback, no host resources are used)."""
        if not policy.enabled:
            async with self._locked(sandbox_id):
                await self._teardown(sandbox_id)  # a policy changed to none
            return NetworkInfo(sandbox_id, "none")
        async with self._locked(sandbox_id):
            plan = self.dns_plan()
            nameservers = plan.nameservers
            record = self._load_record(sandbox_id)
            previous = (
                record.get("resolved", {}) if record.get("policy") == policy.to_json() else {}
            )
            in_use = await asyncio.to_thread(_host_networks)
            lease = self.ipam.allocate(sandbox_id, in_use=[*in_use, self.reserved])
            self._save_record(sandbox_id, policy, _as_ips(previous))
            ifs = self._interfaces(lease)
            try:
                resolved = await dns.resolve_all(policy.domains(), _as_ips(previous))
                self._save_record(sandbox_id, policy, resolved)
                await netns.ensure(ifs)
                await self._ensure_forwarder(plan)
                resolvers = [] if plan.forwarder else nameservers  # the forwarder is local
                await firewall.apply(
                    firewall.base_script(self.firewall, plan.forwarder)
                    + firewall.sandbox_script(
                        self.firewall, _rules(ifs, policy, resolved, resolvers)
                    )
                )
                _enable_forwarding()
                await bandwidth.apply(
                    ifs.host_ifname, ifs.netns, netns.GUEST_IFNAME, policy.limits()
                )
            except BaseException:
                with contextlib.suppress(Exception):
                    await self._teardown(sandbox_id)
                raise
            if policy.domains():
                self._start_refresher()
            return self._info(lease, policy, nameservers)

    async def teardown(self, sandbox_id: str) -> None:
        async with self._locked(sandbox_id):
            await self._teardown(sandbox_id)

    async def _teardown(self, sandbox_id: str) -> None:
        lease = self.ipam.get(sandbox_id)
        record = self._record_path(sandbox_id)
        if lease is None and not record.exists():
            return
        host_if = self.host_ifname(sandbox_id)
        await self._remove_rules(host_if)
        await netns.remove(netns.netns_name(sandbox_id), host_if)
        with contextlib.suppress(FileNotFoundError):
            record.unlink()
        self.ipam.release(sandbox_id)  # last: the lease is how a crash is found again

    async def _remove_rules(self, host_if: str) -> None:
        if await firewall.table_exists(self.firewall.table):
            await firewall.apply(firewall.removal_script(self.firewall, host_if))

    async def reconcile(self, known_ids: Iterable[str]) -> list[str]:
        """Tear down every sandbox network not in ``known_ids``; return their ids.

        Also removes nftables objects (in this manager's table) of veths that
        no remaining lease explains. Namespaces and veths without a lease are
        left alone: they may belong to another Atelier instance on this host."""
        known = set(known_ids)
        leases = self.ipam.leases()
        gone = sorted(sid for sid in leases if sid not in known)
        records = self.state_dir / "sandboxes"
        if records.is_dir():
            for path in records.glob("*.json"):
                if path.stem not in known and path.stem not in leases:
                    gone.append(path.stem)
        for sid in gone:
            try:
                await self.teardown(sid)
            except Exception:
                log.exception("cannot tear down the network of sandbox %s", sid)
        owned = {self.host_ifname(sid) for sid in self.ipam.leases()}
        present = await firewall.list_ifnames(self.firewall.table) or set()
        for ifname in sorted(present - owned):
            if ifname.startswith(self.ifname_prefix):
                await self._remove_rules(ifname)
        if self.ipam.leases():  # sandboxes that outlived a server still need DNS
            try:
                await self._ensure_forwarder(self.dns_plan())
            except Exception:
                log.exception("cannot start the DNS forwarder")
        return sorted(set(gone))

    def info(self, sandbox_id: str) -> NetworkInfo | None:
        """The sandbox's network as set up, None if it has none (mode ``none``)."""
        lease = self.ipam.get(sandbox_id)
        record = self._load_record(sandbox_id)
        if lease is None or not record:
            return None
        policy = NetworkPolicy.from_json(record["policy"])
        return self._info(lease, policy, self.nameservers())

    def sandbox_ids(self) -> list[str]:
        """Ids of every sandbox this manager holds a lease for."""
        return sorted(self.ipam.leases())

    async def aclose(self) -> None:
        task, self._refresher = self._refresher, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        async with self._forwarder_lock:
            fwd, self._forwarder = self._forwarder, None
            if fwd is not None:
                await fwd.aclose()
                await run(["ip", "addr", "del", f"{fwd.address}/32", "dev", "lo"], check=False)

    # -- DNS forwarder ----------------------------------------------------------------
    async def _ensure_forwarder(self, plan: dns.DnsPlan) -> None:
        """Run the forwarder if ``plan`` needs one (and relay to its current upstreams)."""
        if plan.forwarder is None:
            return
        async with self._forwarder_lock:
            fwd = self._forwarder
            if fwd is not None and fwd.running:
                fwd.upstreams = list(plan.forward_to)
                return
            address = plan.forwarder
            await run(["ip", "addr", "replace", f"{address}/32", "dev", "lo"])
            fwd = DnsForwarder(address, plan.forward_to)
            try:
                await fwd.start()
            except OSError as exc:
                await run(["ip", "addr", "del", f"{address}/32", "dev", "lo"], check=False)
                raise RuntimeFailure(
                    f"cannot run the sandboxes' DNS forwarder on {address}:53 ({exc}); "
                    "set network_dns to a resolver sandboxes can reach"
                ) from exc
            self._forwarder = fwd

    # -- domains ----------------------------------------------------------------------
    async def refresh_domains(self) -> int:
        """Re-resolve every sandbox's policy domains; update the sets that changed.
        Returns how many sandboxes still have domain names."""
        count = 0
        for sid in self.sandbox_ids():
            async with self._locked(sid):
                record = self._load_record(sid)
                if not record or self.ipam.get(sid) is None:
                    continue
                policy = NetworkPolicy.from_json(record["policy"])
                if not policy.domains():
                    continue
                count += 1
                previous = _as_ips(record.get("resolved", {}))
                resolved = await dns.resolve_all(policy.domains(), previous)
                if resolved == previous:
                    continue
                self._save_record(sid, policy, resolved)
                allow, deny = _split(policy, resolved)
                await firewall.apply(
                    firewall.domain_script(self.firewall, self.host_ifname(sid), allow, deny)
                )
        return count

    def _start_refresher(self) -> None:
        if self._refresher is None or self._refresher.done():
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_loop())

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.network_dns_refresh)
            try:
                if not await self.refresh_domains():
                    return  # nothing left to refresh; the next setup restarts it
            except Exception:
                log.exception("refreshing network policy domains failed")

    # -- helpers ----------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _locked(self, sandbox_id: str) -> AsyncIterator[None]:
        lock = self._locks.get(sandbox_id)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[sandbox_id] = lock
        async with lock:
            yield

    def _info(
        self, lease: Lease, policy: NetworkPolicy, nameservers: list[ipaddress.IPv4Address]
    ) -> NetworkInfo:
        ifs = self._interfaces(lease)
        return NetworkInfo(
            sandbox_id=lease.sandbox_id,
            mode=policy.mode,
            netns=ifs.netns,
            netns_path=ifs.netns_path,
            host_ifname=ifs.host_ifname,
            address=lease.address,
            gateway=lease.gateway,
            prefixlen=lease.prefixlen,
            nameservers=tuple(nameservers),
        )

    def _load_record(self, sandbox_id: str) -> dict[str, Any]:
        try:
            data = json.loads(self._record_path(sandbox_id).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise RuntimeFailure(f"cannot read the network record of {sandbox_id}: {exc}") from exc
        return data if isinstance(data, dict) else {}

    def _save_record(
        self,
        sandbox_id: str,
        policy: NetworkPolicy,
        resolved: dict[str, list[ipaddress.IPv4Address]],
    ) -> None:
        path = self._record_path(sandbox_id)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        payload = {
            "sandbox_id": sandbox_id,
            "policy": policy.to_json(),
            "resolved": {k: [str(ip) for ip in v] for k, v in sorted(resolved.items())},
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)


def _as_ips(data: Any) -> dict[str, list[ipaddress.IPv4Address]]:
    out: dict[str, list[ipaddress.IPv4Address]] = {}
    if isinstance(data, dict):
        for name, ips in data.items():
            with contextlib.suppress(ValueError, TypeError):
                out[str(name)] = [ipaddress.IPv4Address(str(ip)) for ip in ips]
    return out


def _split(
    policy: NetworkPolicy, resolved: dict[str, list[ipaddress.IPv4Address]]
) -> tuple[list[ipaddress.IPv4Address], list[ipaddress.IPv4Address]]:
    allow = [ip for d in policy.allow_domains() for ip in resolved.get(d, [])]
    deny = [ip for d in policy.deny_domains() for ip in resolved.get(d, [])]
    return allow, deny


def _rules(
    ifs: netns.Interfaces,
    policy: NetworkPolicy,
    resolved: dict[str, list[ipaddress.IPv4Address]],
    nameservers: list[ipaddress.IPv4Address],
) -> firewall.SandboxRules:
    allow, deny = _split(policy, resolved)
    return firewall.SandboxRules(
        ifname=ifs.host_ifname,
        mode=policy.mode,
        allow=policy.allow_networks(),
        deny=policy.deny_networks(),
        allow_resolved=allow,
        deny_resolved=deny,
        resolvers=nameservers,
    )


def _api_endpoints(settings: Settings) -> tuple[tuple[ipaddress.IPv4Address, int], ...]:
    """The API's address if it is a specific, non-loopback IPv4 address (a host
    address is unreachable anyway; this covers an API on another machine)."""
    try:
        ip = ipaddress.ip_address(settings.host)
    except ValueError:
        return ()
    if not isinstance(ip, ipaddress.IPv4Address) or ip.is_loopback or ip.is_unspecified:
        return ()
    return ((ip, settings.port),)


def _host_networks() -> list[ipaddress.IPv4Network]:
    """IPv4 networks on this host's interfaces (root namespace)."""
    import subprocess

    try:
        out = subprocess.run(
            ["ip", "-j", "-4", "addr", "show"], capture_output=True, text=True, timeout=10
        ).stdout
        data = json.loads(out or "[]")
    except (OSError, ValueError, subprocess.SubprocessError):
        return []
    nets = []
    for link in data:
        for addr in link.get("addr_info", []):
            with contextlib.suppress(KeyError, ValueError):
                nets.append(
                    ipaddress.IPv4Network(f"{addr['local']}/{addr['prefixlen']}", strict=False)
                )
    return nets


def _enable_forwarding() -> None:
    """Turn on IPv4 forwarding (host-wide; never turned off again: see docs/network.md)."""
    try:
        if _IP_FORWARD.read_text().strip() != "1":
            _IP_FORWARD.write_text("1\n")
            log.warning("enabled net.ipv4.ip_forward for sandbox networking")
    except OSError as exc:
        raise RuntimeFailure(f"cannot enable IPv4 forwarding: {exc}") from exc
