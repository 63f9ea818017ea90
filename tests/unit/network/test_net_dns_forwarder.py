"""The DNS forwarder against a fake upstream on loopback; the DNS plan; its firewall rule."""

from __future__ import annotations

import asyncio
import ipaddress
import struct
from pathlib import Path

import pytest

from atelier.network import dns, dnsfwd, firewall
from atelier.network.dnsfwd import DnsForwarder
from fake_dns import FakeDns, build_query, parse_answer

LO = ipaddress.IPv4Address("127.0.0.1")
FWD_ADDR = ipaddress.IPv4Address("10.213.255.254")


@pytest.fixture
def upstream() -> FakeDns:
    server = FakeDns("127.0.0.1", 0, {"svc.example.test": "10.1.2.3"})
    yield server  # type: ignore[misc]
    server.close()


async def _forwarder(upstreams: list[ipaddress.IPv4Address], port: int) -> DnsForwarder:
    fwd = DnsForwarder(LO, upstreams, port=0, upstream_port=port)
    await fwd.start()
    return fwd


def _udp_port(fwd: DnsForwarder) -> int:
    assert fwd._udp is not None
    return int(fwd._udp.get_extra_info("sockname")[1])


class _Client(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.got: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.got.put_nowait(data)


async def _ask_udp(port: int, query: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(_Client, remote_addr=("127.0.0.1", port))
    try:
        transport.sendto(query)
        return await asyncio.wait_for(proto.got.get(), 10)
    finally:
        transport.close()


async def test_udp_queries_are_relayed(upstream: FakeDns) -> None:
    fwd = await _forwarder([LO], upstream.port)
    try:
        answer = await _ask_udp(_udp_port(fwd), build_query("svc.example.test", 0x4242))
        assert answer[:2] == b"\x42\x42"
        assert parse_answer(answer) == (0, ["10.1.2.3"])
        rcode, _ = parse_answer(await _ask_udp(_udp_port(fwd), build_query("nope.test")))
        assert rcode == 3  # NXDOMAIN passed through unchanged
        assert upstream.queries == ["svc.example.test", "nope.test"]
    finally:
        await fwd.aclose()
    assert not fwd.running


async def test_tcp_queries_are_relayed_several_per_connection(upstream: FakeDns) -> None:
    fwd = await _forwarder([LO], upstream.port)
    try:
        assert fwd._tcp is not None
        port = fwd._tcp.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for qid in (1, 2):
            query = build_query("svc.example.test", qid)
            writer.write(struct.pack("!H", len(query)) + query)
            (n,) = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 10))
            answer = await reader.readexactly(n)
            assert answer[:2] == struct.pack("!H", qid)
            assert parse_answer(answer) == (0, ["10.1.2.3"])
        writer.close()
    finally:
        await fwd.aclose()


async def test_a_dead_upstream_is_skipped(
    upstream: FakeDns, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dnsfwd, "UPSTREAM_TIMEOUT", 0.3)
    dead = ipaddress.IPv4Address("127.0.0.2")  # nothing listens there
    fwd = await _forwarder([dead, LO], upstream.port)
    try:
        answer = await _ask_udp(_udp_port(fwd), build_query("svc.example.test"))
        assert parse_answer(answer) == (0, ["10.1.2.3"])
    finally:
        await fwd.aclose()


async def test_no_upstream_no_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dnsfwd, "UPSTREAM_TIMEOUT", 0.2)
    fwd = await _forwarder([ipaddress.IPv4Address("127.0.0.2")], 1)
    try:
        assert await fwd.query_udp(build_query("svc.example.test")) is None
        with pytest.raises(TimeoutError):
            await _ask_udp_short(_udp_port(fwd))
    finally:
        await fwd.aclose()


async def _ask_udp_short(port: int) -> bytes:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(_Client, remote_addr=("127.0.0.1", port))
    try:
        transport.sendto(b"short")  # not even a DNS header: ignored
        return await asyncio.wait_for(proto.got.get(), 1)
    finally:
        transport.close()


# -- the plan --------------------------------------------------------------------------
def _resolv(tmp_path: Path, *servers: str) -> Path:
    path = tmp_path / "resolv.conf"
    path.write_text("".join(f"nameserver {s}\n" for s in servers) + "search example\n")
    return path


def test_plan_configured_wins(tmp_path: Path) -> None:
    p = dns.plan(["10.0.0.53"], FWD_ADDR, _resolv(tmp_path, "127.0.0.53"))
    assert p.nameservers == [ipaddress.IPv4Address("10.0.0.53")] and p.forwarder is None


def test_plan_reachable_host_resolvers_are_used_directly(tmp_path: Path) -> None:
    p = dns.plan([], FWD_ADDR, _resolv(tmp_path, "127.0.0.53", "192.0.2.1"))
    assert p.nameservers == [ipaddress.IPv4Address("192.0.2.1")] and p.forwarder is None


def test_plan_loopback_stub_gets_the_forwarder(tmp_path: Path) -> None:
    p = dns.plan([], FWD_ADDR, _resolv(tmp_path, "127.0.0.53", "::1", "127.0.0.53"))
    assert p.nameservers == [FWD_ADDR]
    assert p.forwarder == FWD_ADDR
    assert p.forward_to == [ipaddress.IPv4Address("127.0.0.53")]


def test_plan_no_resolver_at_all(tmp_path: Path) -> None:
    p = dns.plan([], FWD_ADDR, tmp_path / "missing")
    assert p.nameservers == [] and p.forwarder is None


def test_firewall_opens_only_dns_to_the_forwarder() -> None:
    cfg = firewall.FirewallConfig(table="t", pool=ipaddress.IPv4Network("10.213.0.0/16"))
    without = firewall.base_script(cfg)
    assert "dport 53" not in without
    script = firewall.base_script(cfg, FWD_ADDR)
    lines = script.splitlines()
    rule = f"add rule inet t input iifname @ifaces ip daddr {FWD_ADDR} " + (
        "meta l4proto { tcp, udp } th dport 53 accept"
    )
    assert rule in lines
    assert lines.index(rule) < lines.index("add rule inet t input iifname @ifaces drop")
