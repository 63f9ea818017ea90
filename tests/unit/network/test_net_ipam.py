"""Ipam: leases from a pool, persisted with a lock; no collision, ever."""

from __future__ import annotations

import ipaddress
import json
import multiprocessing
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from atelier.errors import InvalidRequest, RuntimeFailure, ServiceUnavailable
from atelier.network.ipam import Ipam


def test_first_lease_and_its_addresses(tmp_path: Path) -> None:
    ipam = Ipam(tmp_path, "10.213.0.0/16")
    lease = ipam.allocate("a")
    assert lease.subnet == ipaddress.IPv4Network("10.213.0.0/30")
    assert str(lease.gateway) == "10.213.0.1"
    assert str(lease.address) == "10.213.0.2"
    assert lease.prefixlen == 30
    assert ipam.allocate("a") == lease  # idempotent
    assert ipam.allocate("b").subnet == ipaddress.IPv4Network("10.213.0.4/30")


def test_slash31_leases(tmp_path: Path) -> None:
    lease = Ipam(tmp_path, "10.0.0.0/30", prefixlen=31).allocate("a")
    assert (str(lease.gateway), str(lease.address)) == ("10.0.0.0", "10.0.0.1")


def test_leases_persist_across_instances(tmp_path: Path) -> None:
    a = Ipam(tmp_path, "10.213.0.0/16").allocate("a")
    again = Ipam(tmp_path, "10.213.0.0/16")  # a restarted server
    assert again.get("a") == a
    assert again.allocate("b").subnet != a.subnet
    data = json.loads((tmp_path / "leases.json").read_text())
    assert [x["sandbox_id"] for x in data["leases"]] == ["a", "b"]


def test_release_frees_the_subnet_for_reuse(tmp_path: Path) -> None:
    ipam = Ipam(tmp_path, "10.213.0.0/16")
    a = ipam.allocate("a")
    ipam.allocate("b")
    assert ipam.release("a") is True
    assert ipam.release("a") is False
    assert ipam.get("a") is None
    assert ipam.allocate("c").subnet == a.subnet


def test_in_use_networks_are_skipped(tmp_path: Path) -> None:
    ipam = Ipam(tmp_path, "10.213.0.0/16")
    busy = [ipaddress.IPv4Network("10.213.0.0/29"), ipaddress.IPv4Network("10.213.0.9/32")]
    assert ipam.allocate("a", in_use=busy).subnet == ipaddress.IPv4Network("10.213.0.12/30")


def test_exhausted_pool(tmp_path: Path) -> None:
    ipam = Ipam(tmp_path, "10.0.0.0/29")
    ipam.allocate("a")
    ipam.allocate("b")
    with pytest.raises(ServiceUnavailable):
        ipam.allocate("c")


def test_reconcile_releases_unknown_sandboxes(tmp_path: Path) -> None:
    ipam = Ipam(tmp_path, "10.213.0.0/16")
    for sid in ("a", "b", "c"):
        ipam.allocate(sid)
    assert ipam.reconcile(["b"]) == ["a", "c"]
    assert list(ipam.leases()) == ["b"]
    assert ipam.reconcile(["b"]) == []


@pytest.mark.parametrize(
    ("pool", "plen"), [("10.0.0.1/16", 30), ("nope", 30), ("10.0.0.0/31", 30), ("10.0.0.0/16", 29)]
)
def test_bad_pools(tmp_path: Path, pool: str, plen: int) -> None:
    with pytest.raises(InvalidRequest):
        Ipam(tmp_path, pool, prefixlen=plen)


def test_corrupt_lease_file(tmp_path: Path) -> None:
    (tmp_path / "leases.json").write_text("{not json")
    with pytest.raises(RuntimeFailure):
        Ipam(tmp_path, "10.213.0.0/16").allocate("a")


def test_concurrent_threads_never_collide(tmp_path: Path) -> None:
    def alloc(i: int) -> ipaddress.IPv4Network:
        return Ipam(tmp_path, "10.213.0.0/16").allocate(f"s{i}").subnet

    with ThreadPoolExecutor(8) as pool:
        subnets = list(pool.map(alloc, range(64)))
    assert len(set(subnets)) == 64
    assert len(Ipam(tmp_path, "10.213.0.0/16").leases()) == 64


def _alloc_in_process(args: tuple[str, int]) -> str:
    path, i = args
    return str(Ipam(Path(path), "10.213.0.0/16").allocate(f"p{i}").subnet)


def test_concurrent_processes_never_collide(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(4) as pool:
        subnets = pool.map(_alloc_in_process, [(str(tmp_path), i) for i in range(32)])
    assert len(set(subnets)) == 32
    assert len(Ipam(tmp_path, "10.213.0.0/16").leases()) == 32
