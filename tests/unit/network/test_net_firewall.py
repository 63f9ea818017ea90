"""The generated nftables scripts, for each mode (and, where nft exists, checked by it)."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess

import pytest

from atelier.network import firewall as fw

IP = ipaddress.IPv4Address
NET = ipaddress.IPv4Network
CFG = fw.FirewallConfig(
    table="atelier", pool=NET("10.213.0.0/16"), api_endpoints=((IP("192.0.2.2"), 8080),)
)
IF = "atl0123456789ab"


def rules(mode: str, **kw: object) -> fw.SandboxRules:
    return fw.SandboxRules(ifname=IF, mode=mode, **kw)  # type: ignore[arg-type]


def chain_rules(script: str) -> list[str]:
    prefix = f"add rule inet atelier sb_{IF} "
    return [line[len(prefix) :] for line in script.splitlines() if line.startswith(prefix)]


def test_base_script_shape() -> None:
    s = fw.base_script(CFG)
    lines = s.splitlines()
    assert lines[0] == "add table inet atelier"
    assert (
        "add chain inet atelier input { type filter hook input priority -10; policy accept; }" in s
    )
    # idempotent: the shared chains are flushed and refilled in the same transaction
    assert lines.index("flush chain inet atelier forward") < lines.index(
        "add rule inet atelier forward iifname @ifaces jump from_sandbox"
    )
    # from a sandbox veth to any host address: only replies get in
    assert "add rule inet atelier input iifname @ifaces ct state established,related accept" in s
    assert "add rule inet atelier input iifname @ifaces drop" in s
    # no inbound connections into sandboxes
    assert "add rule inet atelier to_sandbox drop" in s
    order = [
        "from_sandbox meta nfproto != ipv4 drop",
        "from_sandbox oifname @ifaces drop",
        "from_sandbox ip daddr 10.213.0.0/16 drop",
        "from_sandbox ct state established,related accept",
        "from_sandbox iifname vmap @policies",
        "from_sandbox drop",
    ]
    idx = [lines.index(f"add rule inet atelier {r}") for r in order]
    assert idx == sorted(idx)
    assert "iifname @ifaces oifname != @ifaces masquerade" in s


def test_open_mode_accepts_all_but_always_denied() -> None:
    s = fw.sandbox_script(CFG, rules("open", resolvers=[IP("10.255.255.53")]))
    r = chain_rules(s)
    assert r == [
        f"ip daddr @deny_{IF} drop",
        f"ip daddr @denydns_{IF} drop",
        f"ip daddr @allow_{IF} accept",
        f"ip daddr @allowdns_{IF} accept",
        "ip daddr { 10.255.255.53 } meta l4proto { tcp, udp } th dport 53 accept",
        "ip daddr { 0.0.0.0/8, 127.0.0.0/8, 169.254.0.0/16, 224.0.0.0/3 } drop",
        "ip daddr 192.0.2.2 tcp dport 8080 drop",
        "accept",
    ]
    assert f'add element inet atelier ifaces {{ "{IF}" }}' in s
    assert f'add element inet atelier policies {{ "{IF}" : jump sb_{IF} }}' in s


def test_egress_mode_default_drop_with_lists() -> None:
    s = fw.sandbox_script(
        CFG,
        rules(
            "egress",
            allow=[NET("10.0.0.0/8"), NET("10.1.0.0/16"), NET("8.8.8.8/32")],
            deny=[NET("10.9.9.9/32")],
            allow_resolved=[IP("151.101.0.223"), IP("151.101.0.223")],
            deny_resolved=[IP("203.0.113.7")],
        ),
    )
    assert chain_rules(s)[-1] == "drop"
    # overlapping CIDRs are merged (interval sets refuse overlaps); /32 as addresses
    assert f"add element inet atelier allow_{IF} {{ 8.8.8.8, 10.0.0.0/8 }}" in s
    assert f"add element inet atelier deny_{IF} {{ 10.9.9.9 }}" in s
    assert f"add element inet atelier allowdns_{IF} {{ 151.101.0.223 }}" in s
    assert f"add element inet atelier denydns_{IF} {{ 203.0.113.7 }}" in s
    # no resolvers: no DNS rule (an empty set would be a syntax error)
    assert not any("dport 53" in r for r in chain_rules(s))
    # sets are flushed before refilling: a re-setup replaces the policy
    lines = s.splitlines()
    assert lines.index(f"flush set inet atelier allow_{IF}") < lines.index(
        f"add element inet atelier allow_{IF} {{ 8.8.8.8, 10.0.0.0/8 }}"
    )


def test_deny_is_checked_before_allow() -> None:
    r = chain_rules(fw.sandbox_script(CFG, rules("egress")))
    assert r.index(f"ip daddr @deny_{IF} drop") < r.index(f"ip daddr @allow_{IF} accept")
    assert r.index(f"ip daddr @allow_{IF} accept") < r.index(
        "ip daddr { 0.0.0.0/8, 127.0.0.0/8, 169.254.0.0/16, 224.0.0.0/3 } drop"
    )


def test_mode_none_has_no_rules() -> None:
    with pytest.raises(ValueError):
        fw.sandbox_script(CFG, rules("none"))


def test_domain_script_replaces_both_sets() -> None:
    s = fw.domain_script(CFG, IF, [IP("1.2.3.4")], [])
    assert s.splitlines() == [
        f"flush set inet atelier allowdns_{IF}",
        f"add element inet atelier allowdns_{IF} {{ 1.2.3.4 }}",
        f"flush set inet atelier denydns_{IF}",
    ]


def test_removal_script_adds_before_deleting() -> None:
    lines = fw.removal_script(CFG, IF).splitlines()
    # every object is added (no-op if present) before being deleted: idempotent
    for obj in (f"chain inet atelier sb_{IF}", f"set inet atelier allow_{IF}"):
        add = next(i for i, ln in enumerate(lines) if ln.startswith(f"add {obj}"))
        delete = lines.index(f"delete {obj}")
        assert add < delete
    assert lines.index(f'delete element inet atelier policies {{ "{IF}" }}') < lines.index(
        f"delete chain inet atelier sb_{IF}"
    )
    assert not any(ln.startswith("flush chain inet atelier forward") for ln in lines)


def test_ifnames_in_nft_json() -> None:
    doc = {
        "nftables": [
            {"metainfo": {}},
            {"table": {"family": "inet", "name": "atelier"}},
            {"set": {"name": "ifaces", "elem": ["atlaaaaaaaaaaaa"]}},
            {"set": {"name": "allowdns_atlbbbbbbbbbbbb"}},
            {"map": {"name": "policies", "elem": [["atlcccccccccccc", {"jump": {}}]]}},
            {"chain": {"name": "sb_atldddddddddddd"}},
            {"chain": {"name": "forward"}},
        ]
    }
    assert fw.ifnames_in(json.dumps(doc)) == {
        "atlaaaaaaaaaaaa",
        "atlbbbbbbbbbbbb",
        "atlcccccccccccc",
        "atldddddddddddd",
    }


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("nft") is None, reason="nft --check needs root and nft"
)
def test_nft_accepts_the_scripts() -> None:
    """``nft --check`` parses and validates against the kernel without committing."""
    cfg = fw.FirewallConfig(table="atlcheck", pool=CFG.pool, api_endpoints=CFG.api_endpoints)
    full = rules(
        "egress",
        allow=[NET("10.0.0.0/8")],
        deny=[NET("10.9.9.9/32")],
        allow_resolved=[IP("1.2.3.4")],
        resolvers=[IP("10.255.255.53")],
    )
    for script in (
        fw.base_script(cfg) + fw.sandbox_script(cfg, full),
        fw.base_script(cfg) + fw.sandbox_script(cfg, rules("open")),
        fw.removal_script(cfg, IF),
    ):
        res = subprocess.run(
            ["nft", "--check", "-f", "-"], input=script, capture_output=True, text=True
        )
        assert res.returncode == 0, res.stderr + script
