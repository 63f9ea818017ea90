"""NetworkPolicy: validation, normalization and the JSON round trip."""

from __future__ import annotations

import ipaddress

import pytest

from atelier.errors import InvalidRequest
from atelier.network.policy import MAX_ENTRIES, NetworkPolicy, is_domain


def test_default_is_none_and_disabled() -> None:
    p = NetworkPolicy()
    assert p.mode == "none"
    assert not p.enabled
    assert p.to_json() == {
        "mode": "none",
        "allow": [],
        "deny": [],
        "bandwidth_mbit": None,
        "bandwidth": None,
    }
    assert not p.limits().any


def test_entries_are_normalized_and_split() -> None:
    p = NetworkPolicy(
        mode="egress",
        allow=["10.0.0.0/8", "1.2.3.4", "Example.COM.", "example.com", " pypi.org "],  # type: ignore[arg-type]
        deny=["10.9.0.0/16", "evil.example.net"],  # type: ignore[arg-type]
        bandwidth_mbit=50,
    )
    assert p.allow == ("10.0.0.0/8", "1.2.3.4/32", "example.com", "pypi.org")
    assert p.allow_networks() == [
        ipaddress.IPv4Network("10.0.0.0/8"),
        ipaddress.IPv4Network("1.2.3.4/32"),
    ]
    assert p.allow_domains() == ["example.com", "pypi.org"]
    assert p.deny_networks() == [ipaddress.IPv4Network("10.9.0.0/16")]
    assert p.deny_domains() == ["evil.example.net"]
    assert p.domains() == ["evil.example.net", "example.com", "pypi.org"]
    assert p.enabled


@pytest.mark.parametrize(
    "kw",
    [
        {"mode": "closed"},
        {"mode": "egress", "allow": ["10.0.0.1/8"]},  # host bits set
        {"mode": "egress", "allow": ["::1"]},  # IPv6 not supported yet
        {"mode": "egress", "allow": ["2001:db8::/32"]},
        {"mode": "egress", "allow": ["*.example.com"]},  # wildcard
        {"mode": "egress", "allow": ["localhost"]},  # not a FQDN
        {"mode": "egress", "allow": ["1.2.3"]},
        {"mode": "egress", "allow": ["300.1.1.1"]},
        {"mode": "egress", "allow": [""]},
        {"mode": "egress", "allow": "10.0.0.0/8"},  # a string, not a list
        {"mode": "egress", "allow": ["-bad-.com"]},
        {"mode": "open", "bandwidth_mbit": 0},
        {"mode": "open", "bandwidth_mbit": True},
        {"mode": "open", "bandwidth_mbit": 10**9},
        {"mode": "none", "allow": ["10.0.0.0/8"]},  # none has no interface
        {"mode": "none", "bandwidth_mbit": 10},
        {"mode": "none", "egress_mbit": 10},
        {"mode": "open", "egress_mbit": 0},
        {"mode": "open", "ingress_mbit": "10"},
        {"mode": "open", "ingress_mbit": 10**9},
        {"mode": "egress", "allow": [f"10.0.{i // 256}.{i % 256}" for i in range(MAX_ENTRIES + 1)]},
    ],
)
def test_invalid_policies_are_refused(kw: dict[str, object]) -> None:
    with pytest.raises(InvalidRequest):
        NetworkPolicy(**kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "policy",
    [
        NetworkPolicy(),
        NetworkPolicy(mode="open"),
        NetworkPolicy(mode="open", deny=("169.254.0.0/16",), bandwidth_mbit=10),
        NetworkPolicy(mode="egress", allow=("10.1.2.0/24", "pypi.org"), deny=("10.1.2.3",)),
        NetworkPolicy(mode="open", egress_mbit=5),
        NetworkPolicy(mode="open", egress_mbit=5, ingress_mbit=20, bandwidth_mbit=1),
    ],
)
def test_json_round_trip(policy: NetworkPolicy) -> None:
    assert NetworkPolicy.from_json(policy.to_json()) == policy


@pytest.mark.parametrize(
    "data",
    [
        {"mode": "open", "extra": 1},
        {"mode": "egress", "allow": "pypi.org"},
        {"mode": 3},
        [],
        {"mode": "open", "bandwidth": 10},
        {"mode": "open", "bandwidth": {"up_mbit": 10}},
        {"mode": "open", "bandwidth": {"egress_mbit": -1}},
    ],
)
def test_from_json_refuses_bad_documents(data: object) -> None:
    with pytest.raises(InvalidRequest):
        NetworkPolicy.from_json(data)  # type: ignore[arg-type]


def test_policies_compare_by_value() -> None:
    a = NetworkPolicy(mode="egress", allow=["10.0.0.0/8"])  # type: ignore[arg-type]
    b = NetworkPolicy(mode="egress", allow=("10.0.0.0/8",))
    assert a == b


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("example.com", True),
        ("a.b-c.example.org.", True),
        ("localhost", False),
        ("1.2.3.4", False),
        ("exa_mple.com", False),
        ("x" * 64 + ".com", False),
    ],
)
def test_is_domain(name: str, ok: bool) -> None:
    assert is_domain(name) is ok


@pytest.mark.parametrize(
    ("kw", "egress", "ingress"),
    [
        ({}, None, None),
        ({"bandwidth_mbit": 10}, 10, 10),
        ({"egress_mbit": 5}, 5, None),
        ({"ingress_mbit": 7}, None, 7),
        ({"bandwidth_mbit": 10, "egress_mbit": 2}, 2, 10),  # the object wins per direction
    ],
)
def test_effective_bandwidth_limits(kw: dict[str, int], egress: int, ingress: int) -> None:
    limits = NetworkPolicy(mode="open", **kw).limits()  # type: ignore[arg-type]
    assert (limits.egress_mbit, limits.ingress_mbit) == (egress, ingress)


def test_bandwidth_object_from_json() -> None:
    p = NetworkPolicy.from_json(
        {"mode": "egress", "bandwidth": {"egress_mbit": 10, "ingress_mbit": 20}}
    )
    assert (p.egress_mbit, p.ingress_mbit, p.bandwidth_mbit) == (10, 20, None)
    assert p.to_json()["bandwidth"] == {"egress_mbit": 10, "ingress_mbit": 20}
