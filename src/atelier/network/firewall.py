"""The nftables side: one table Atelier owns, per-sandbox chains and sets.

Everything is generated as ``nft -f`` script text (pure functions, unit-tested)
and applied in one transaction per change, so a sandbox's rules are never
half there. Only the table named in the settings (``inet atelier`` by default)
is ever touched; sandboxes are matched by their host-side veth name, listed
in the table's ``ifaces`` set (never by a wildcard, so two Atelier instances
with different tables do not step on each other)::

    table inet atelier
      set ifaces      { type ifname }              host veths of sandboxes
      map policies    { type ifname : verdict }    veth -> jump sb_<veth>
      chain input     hook input, prio -10         from a sandbox veth: drop (replies, and DNS
                                                   to the forwarder's address if any, excepted)
      chain forward   hook forward, prio -10       -> from_sandbox / to_sandbox
      chain to_sandbox                             only replies go in: no inbound connections
      chain from_sandbox                           IPv6, other sandboxes, the pool: drop;
                                                   replies: accept; else iifname vmap @policies
      chain postrouting  nat hook, srcnat          masquerade what leaves a sandbox
      chain sb_<veth>                              the sandbox's own policy, in order:
          ip daddr @deny_<veth> / @denydns_<veth>        drop   (deny beats allow)
          ip daddr @allow_<veth> / @allowdns_<veth>      accept (may re-open an always-denied range)
          DNS (udp/tcp 53) to the resolvers              accept
          always-denied ranges, the Atelier API          drop
          open: accept | egress: drop

``allow_``/``deny_`` hold the policy's CIDRs; ``allowdns_``/``denydns_`` the
addresses its domain names resolve to, replaced atomically by
:func:`domain_script` when the refresher re-resolves them.

This host's own addresses are never reachable from a sandbox: packets to
them take the input hook, where everything from a sandbox veth is dropped
except replies to connections the host opened.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .shell import run

__all__ = [
    "ALWAYS_DENIED",
    "FirewallConfig",
    "SandboxRules",
    "apply",
    "base_script",
    "domain_script",
    "list_ifnames",
    "removal_script",
    "sandbox_script",
    "table_exists",
]

# Never reachable unless a policy's allow-list names them explicitly.
ALWAYS_DENIED: tuple[ipaddress.IPv4Network, ...] = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",  # "this network"
        "127.0.0.0/8",  # loopback (a sandbox's own is inside gVisor anyway)
        "169.254.0.0/16",  # link-local: cloud metadata services
        "224.0.0.0/3",  # multicast, reserved, broadcast
    )
)

FILTER_PRIORITY = -10
NAT_PRIORITY = 100  # srcnat


@dataclass(frozen=True, slots=True)
class FirewallConfig:
    table: str  # the inet table Atelier owns
    pool: ipaddress.IPv4Network  # every sandbox subnet: never reachable from a sandbox
    api_endpoints: tuple[tuple[ipaddress.IPv4Address, int], ...] = ()  # Atelier API (ip, port)


@dataclass(frozen=True, slots=True)
class SandboxRules:
    ifname: str
    mode: str  # egress | open
    allow: Sequence[ipaddress.IPv4Network] = ()
    deny: Sequence[ipaddress.IPv4Network] = ()
    allow_resolved: Sequence[ipaddress.IPv4Address] = ()
    deny_resolved: Sequence[ipaddress.IPv4Address] = ()
    resolvers: Sequence[ipaddress.IPv4Address] = field(default_factory=tuple)


def _elements(items: Iterable[ipaddress.IPv4Network | ipaddress.IPv4Address]) -> str:
    """``{ a, b/n }`` with overlaps merged (interval sets refuse overlaps), or ''."""
    nets = [ipaddress.IPv4Network(i) for i in items]
    merged = list(ipaddress.collapse_addresses(nets))
    out = [str(n.network_address) if n.prefixlen == 32 else str(n) for n in merged]
    return "{ " + ", ".join(out) + " }" if out else ""


def _sets(ifname: str) -> dict[str, str]:
    return {
        "allow": f"allow_{ifname}",
        "allowdns": f"allowdns_{ifname}",
        "deny": f"deny_{ifname}",
        "denydns": f"denydns_{ifname}",
    }


def chain_name(ifname: str) -> str:
    return f"sb_{ifname}"


def _declarations(cfg: FirewallConfig) -> list[str]:
    """Idempotent ``add`` of the table, its sets and chains (no rules)."""
    t = f"inet {cfg.table}"
    return [
        f"add table {t}",
        f"add set {t} ifaces {{ type ifname; }}",
        f"add map {t} policies {{ type ifname : verdict; }}",
        f"add chain {t} input {{ type filter hook input priority {FILTER_PRIORITY}; "
        "policy accept; }",
        f"add chain {t} forward {{ type filter hook forward priority {FILTER_PRIORITY}; "
        "policy accept; }",
        f"add chain {t} postrouting {{ type nat hook postrouting priority {NAT_PRIORITY}; "
        "policy accept; }",
        f"add chain {t} from_sandbox",
        f"add chain {t} to_sandbox",
    ]


def base_script(cfg: FirewallConfig, dns_forwarder: ipaddress.IPv4Address | None = None) -> str:
    """The table with its shared chains, (re)filled atomically; keeps sandboxes' sets and maps.

    ``dns_forwarder``: the host address of Atelier's DNS forwarder, whose port 53
    (UDP and TCP) is then the one host service sandboxes reach."""
    t = f"inet {cfg.table}"
    lines = _declarations(cfg)
    for chain in ("input", "forward", "postrouting", "from_sandbox", "to_sandbox"):
        lines.append(f"flush chain {t} {chain}")
    lines.append(f"add rule {t} input iifname @ifaces ct state established,related accept")
    if dns_forwarder is not None:
        lines.append(
            f"add rule {t} input iifname @ifaces ip daddr {dns_forwarder} "
            "meta l4proto { tcp, udp } th dport 53 accept"
        )
    lines += [
        f"add rule {t} input iifname @ifaces drop",
        f"add rule {t} forward iifname @ifaces jump from_sandbox",
        f"add rule {t} forward oifname @ifaces jump to_sandbox",
        f"add rule {t} to_sandbox ct state established,related accept",
        f"add rule {t} to_sandbox drop",
        f"add rule {t} from_sandbox meta nfproto != ipv4 drop",
        f"add rule {t} from_sandbox oifname @ifaces drop",
        f"add rule {t} from_sandbox ip daddr {cfg.pool} drop",
        f"add rule {t} from_sandbox ct state established,related accept",
        f"add rule {t} from_sandbox iifname vmap @policies",
        f"add rule {t} from_sandbox drop",
        f"add rule {t} postrouting meta nfproto ipv4 iifname @ifaces oifname != @ifaces masquerade",
    ]
    return "\n".join(lines) + "\n"


def sandbox_script(cfg: FirewallConfig, rules: SandboxRules) -> str:
    """Install (or replace) one sandbox's chain and sets, and hook it in."""
    if rules.mode not in ("egress", "open"):
        raise ValueError(f"no firewall rules for mode {rules.mode!r}")
    t = f"inet {cfg.table}"
    ifn = rules.ifname
    sets = _sets(ifn)
    chain = chain_name(ifn)
    lines = [f"add chain {t} {chain}"]
    for name in sets.values():
        lines.append(f"add set {t} {name} {{ type ipv4_addr; flags interval; }}")
    lines.append(f"flush chain {t} {chain}")
    for name in sets.values():
        lines.append(f"flush set {t} {name}")
    contents = {
        "allow": _elements(rules.allow),
        "allowdns": _elements(rules.allow_resolved),
        "deny": _elements(rules.deny),
        "denydns": _elements(rules.deny_resolved),
    }
    for key, elems in contents.items():
        if elems:
            lines.append(f"add element {t} {sets[key]} {elems}")
    r = f"add rule {t} {chain}"
    lines += [
        f"{r} ip daddr @{sets['deny']} drop",
        f"{r} ip daddr @{sets['denydns']} drop",
        f"{r} ip daddr @{sets['allow']} accept",
        f"{r} ip daddr @{sets['allowdns']} accept",
    ]
    resolvers = _elements(rules.resolvers)
    if resolvers:
        lines.append(f"{r} ip daddr {resolvers} meta l4proto {{ tcp, udp }} th dport 53 accept")
    lines.append(f"{r} ip daddr {_elements(ALWAYS_DENIED)} drop")
    for ip, port in cfg.api_endpoints:
        lines.append(f"{r} ip daddr {ip} tcp dport {port} drop")
    lines.append(f"{r} {'accept' if rules.mode == 'open' else 'drop'}")
    lines += [
        f'add element {t} ifaces {{ "{ifn}" }}',
        f'add element {t} policies {{ "{ifn}" : jump {chain} }}',
    ]
    return "\n".join(lines) + "\n"


def domain_script(
    cfg: FirewallConfig,
    ifname: str,
    allow_resolved: Iterable[ipaddress.IPv4Address],
    deny_resolved: Iterable[ipaddress.IPv4Address],
) -> str:
    """Replace the resolved-domain sets of one sandbox in one transaction."""
    t = f"inet {cfg.table}"
    sets = _sets(ifname)
    lines = []
    for key, items in (("allowdns", allow_resolved), ("denydns", deny_resolved)):
        lines.append(f"flush set {t} {sets[key]}")
        elems = _elements(items)
        if elems:
            lines.append(f"add element {t} {sets[key]} {elems}")
    return "\n".join(lines) + "\n"


def removal_script(cfg: FirewallConfig, ifname: str) -> str:
    """Remove one sandbox's objects; succeeds whether or not they exist.

    nft 1.0.6 has no ``destroy``: every object is first added (a no-op if it
    exists), then deleted, in the same transaction. The table must exist
    (see :func:`table_exists`)."""
    t = f"inet {cfg.table}"
    chain = chain_name(ifname)
    sets = list(_sets(ifname).values())
    lines = _declarations(cfg)
    lines.append(f"add chain {t} {chain}")
    lines += [f"add set {t} {name} {{ type ipv4_addr; flags interval; }}" for name in sets]
    lines += [
        f'add element {t} ifaces {{ "{ifname}" }}',
        f'add element {t} policies {{ "{ifname}" : jump {chain} }}',
        f'delete element {t} policies {{ "{ifname}" }}',
        f'delete element {t} ifaces {{ "{ifname}" }}',
        f"flush chain {t} {chain}",
        f"delete chain {t} {chain}",
    ]
    lines += [f"delete set {t} {name}" for name in sets]
    return "\n".join(lines) + "\n"


async def apply(script: str) -> None:
    """Run ``script`` with ``nft -f -`` (one atomic transaction)."""
    await run(["nft", "-f", "-"], input=script)


async def table_exists(table: str) -> bool:
    res = await run(["nft", "list", "table", "inet", table], check=False)
    return res.ok


async def list_ifnames(table: str) -> set[str] | None:
    """Host veth names that have anything in ``table``; None if there is no table."""
    res = await run(["nft", "-j", "list", "table", "inet", table], check=False)
    if not res.ok:
        return None
    return ifnames_in(res.stdout)


def ifnames_in(nft_json: str) -> set[str]:
    """Sandbox veth names in the output of ``nft -j list table``."""
    names: set[str] = set()
    for item in json.loads(nft_json).get("nftables", []):
        if "chain" in item:
            name = str(item["chain"].get("name", ""))
            if name.startswith("sb_"):
                names.add(name[3:])
        elif "set" in item:
            s = item["set"]
            name = str(s.get("name", ""))
            if name == "ifaces":
                names.update(str(e) for e in s.get("elem", []) if isinstance(e, str))
            else:
                for prefix in ("allowdns_", "allow_", "denydns_", "deny_"):
                    if name.startswith(prefix):
                        names.add(name[len(prefix) :])
                        break
        elif "map" in item and item["map"].get("name") == "policies":
            for e in item["map"].get("elem", []):
                if isinstance(e, list) and e and isinstance(e[0], str):
                    names.add(e[0])
    return names
