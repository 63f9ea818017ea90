"""The tc command lines of bandwidth limits (the real qdiscs: test_network_bandwidth.py)."""

from __future__ import annotations

from atelier.network.bandwidth import Limits, burst_bytes, tbf_argv


def test_tbf_on_the_host_end() -> None:
    assert tbf_argv("atl0123456789ab", 10) == [
        "tc", "qdisc", "replace", "dev", "atl0123456789ab", "root", "tbf",
        "rate", "10mbit", "burst", "32768", "latency", "50ms",
    ]  # fmt: skip


def test_tbf_inside_the_namespace() -> None:
    argv = tbf_argv("eth0", 1000, "atl-sb-1")
    assert argv[:3] == ["tc", "-n", "atl-sb-1"]
    assert argv[argv.index("burst") + 1] == str(1_250_000)  # 10 ms at 1 Gbit/s


def test_burst_has_a_floor() -> None:
    assert burst_bytes(1) == 32 * 1024
    assert burst_bytes(100) == 125_000


def test_limits_any() -> None:
    assert not Limits().any
    assert Limits(egress_mbit=1).any and Limits(ingress_mbit=1).any
