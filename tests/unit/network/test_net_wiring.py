"""gVisor wiring without runsc: the OCI network namespace, the runsc argv, DNS files."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from atelier.network import dns, netns
from atelier.runtimes.base import SandboxSpec
from atelier.runtimes.gvisor import oci
from atelier.runtimes.gvisor.runsc import Runsc, netns_start_argv
from atelier.runtimes.gvisor.runtime import write_resolv_conf

PATHS = oci.BundlePaths(
    rootfs=Path("/data/s1/rootfs"), run_dir=Path("/data/s1/run"), agent_dir=Path("/a")
)
SPEC = SandboxSpec(sandbox_id="s1", template="base", rootfs=Path("/t"))


def test_oci_without_netns_has_no_network_namespace() -> None:
    ns = oci.build_config(SPEC, PATHS)["linux"]["namespaces"]
    assert {"type": "network"} not in ns
    assert all(n["type"] != "network" for n in ns)


def test_oci_with_netns_names_its_path() -> None:
    ns = oci.build_config(SPEC, PATHS, None, Path("/run/netns/atl-s1"))["linux"]["namespaces"]
    assert {"type": "network", "path": "/run/netns/atl-s1"} in ns


def test_runsc_network_override_per_call() -> None:
    r = Runsc("runsc", Path("/root"), "ptrace")
    assert "--network=none" in r.argv("state", "x")
    assert "--network=sandbox" in r.argv("create", "x", network="sandbox")


def test_netns_start_wrapper() -> None:
    argv = netns_start_argv(Path("/run/netns/atl-s1"), ["runsc", "start", "s1+"])
    assert argv[:5] == ["unshare", "--mount", "--propagation", "private", "--"]
    assert argv[-4:] == ["/run/netns/atl-s1", "runsc", "start", "s1+"]
    script = argv[7]
    assert 'nsenter --net="$1" mount -t tmpfs' in script
    assert script.endswith('/proc/sys/net/core && shift && exec "$@"')


def test_host_ifname_fits_ifnamsiz() -> None:
    long_id = "x" * 64
    assert len(netns.host_ifname(long_id)) == 15
    assert netns.host_ifname("a") != netns.host_ifname("b")
    assert netns.host_ifname("a").startswith("atl")
    assert netns.netns_name("sb-1") == "atl-sb-1"


def test_host_nameservers_skip_loopback_and_ipv6(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text(
        "# comment\nnameserver 127.0.0.53\nnameserver 10.255.255.53\n"
        "nameserver ::1\nnameserver 2001:db8::1\nnameserver 9.9.9.9\nsearch example\n"
    )
    assert dns.host_nameservers(conf) == [
        ipaddress.IPv4Address("10.255.255.53"),
        ipaddress.IPv4Address("9.9.9.9"),
    ]
    assert dns.upstreams(["1.1.1.1"], conf) == [ipaddress.IPv4Address("1.1.1.1")]
    assert dns.host_nameservers(tmp_path / "missing") == []


def test_resolv_conf_written_into_the_rootfs(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "resolv.conf").symlink_to("/etc/resolv.conf")  # from the image
    text = dns.resolv_conf([ipaddress.IPv4Address("10.0.0.53")])
    write_resolv_conf(tmp_path, text)
    target = tmp_path / "etc" / "resolv.conf"
    assert not target.is_symlink()
    assert "nameserver 10.0.0.53\n" in target.read_text()


async def test_resolve_localhost_name() -> None:
    # "localhost" comes from /etc/hosts: no DNS query leaves the host
    assert ipaddress.IPv4Address("127.0.0.1") in (await dns.resolve("localhost") or [])
