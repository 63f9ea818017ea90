"""Ports: throughput and latency through port-forward and the preview proxy vs direct.

One sandbox (no network: ``--network=none``) runs an HTTP/1.1 server
(``http.server`` with keep-alive) on 127.0.0.1:3000 serving a file of
``--mib`` MiB and a small page. Measured in one run:

* **direct**: a stdlib HTTP client *inside the same sandbox*, on its
  loopback (run with ``runsc exec`` through the agent) - the only direct
  access there is, since the sandbox has no network. The client pays
  gVisor's syscall costs too, so this is the in-sandbox yardstick, not a
  bare-metal one;
* **port-forward**: ``sb.ports.forward()`` (the code path of ``atelier
  port-forward``): a host client → local listener → WebSocket → server →
  agent tunnel → the server;
* **preview**: a host client → ``/preview/<id>/3000/`` (reverse proxy with
  upstream keep-alive) → agent tunnel → the server.

Throughput is MB/s of one download of the file (median of ``--samples``);
latency is the p50 of ``--requests`` small GETs on one keep-alive
connection. Ratios are via / direct (throughput: higher is better; latency:
lower is better).

**Bandwidth limits** (``network.bandwidth``): two ``open``-mode sandboxes
(the gVisor runtime directly, own nft table and pool), one unlimited and one
limited to ``--limit-mbit`` each way, each upload ``--bw-mib`` MiB to and
download it from a TCP server in a network namespace the bench makes (a
stand-in for "the outside", on a private subnet). Mbit/s as timed by the
client inside the sandbox; ratio = limited / limit. Usage::

    .venv/bin/python bench/network.py [--mib 50] [--requests 200] [--samples 3]
        [--limit-mbit 20] [--bw-mib 16] [--only ports|bandwidth]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from _common import BenchError, Server, default_templates, pct, say, sweep, table

from atelier import Sandbox
from atelier.config import Settings
from atelier.network import NetworkPolicy
from atelier.runtimes.base import SandboxSpec
from atelier.runtimes.gvisor import GVisorRuntime

PORT = 3000
SERVER = f"""
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
import functools, os
SimpleHTTPRequestHandler.protocol_version = "HTTP/1.1"
def log(*a): pass
SimpleHTTPRequestHandler.log_message = log
handler = functools.partial(SimpleHTTPRequestHandler, directory="/home/user/www")
ThreadingHTTPServer(("127.0.0.1", {PORT}), handler).serve_forever()
"""
CLIENT = f"""
import http.client, json, sys, time
mib, requests, samples = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rates = []
for _ in range(samples):
    conn = http.client.HTTPConnection("127.0.0.1", {PORT})
    start = time.perf_counter()
    conn.request("GET", "/big.bin")
    resp = conn.getresponse()
    n = 0
    while chunk := resp.read(262144):
        n += len(chunk)
    rates.append(n / (time.perf_counter() - start) / 1e6)
    assert n == mib * 1048576, n
    conn.close()
conn = http.client.HTTPConnection("127.0.0.1", {PORT})
lat = []
for _ in range(requests):
    start = time.perf_counter()
    conn.request("GET", "/small.txt")
    resp = conn.getresponse()
    resp.read()
    lat.append((time.perf_counter() - start) * 1000)
print(json.dumps({{"rates": rates, "latencies": lat}}))
"""


def measure_http(
    base: str, headers: dict[str, str], mib: int, requests: int, samples: int
) -> tuple[float, float]:
    """(median MB/s of a download of big.bin, p50 ms of small GETs) from the host."""
    rates = []
    with httpx.Client(headers=headers, timeout=600) as client:
        for _ in range(samples):
            n = 0
            start = time.perf_counter()
            with client.stream("GET", f"{base}big.bin") as response:
                if response.status_code != 200:
                    raise BenchError(f"GET {base}big.bin: HTTP {response.status_code}")
                for chunk in response.iter_raw(262144):
                    n += len(chunk)
            rates.append(n / (time.perf_counter() - start) / 1e6)
            if n != mib * 1048576:
                raise BenchError(f"short download through {base}: {n} bytes")
        client.get(f"{base}small.txt").raise_for_status()  # warm the connection
        latencies = []
        for _ in range(requests):
            start = time.perf_counter()
            client.get(f"{base}small.txt").raise_for_status()
            latencies.append((time.perf_counter() - start) * 1000)
    return statistics.median(rates), pct(latencies, 50)


class NetworkBench:
    def __init__(self, workdir: Path, templates: Path, args: argparse.Namespace) -> None:
        self.server = Server(workdir / "server", templates)
        self.args = args
        self.sb: Sandbox | None = None

    def start(self) -> Sandbox:
        self.server.start()
        sb = self.sb = self.server.create()
        mib = self.args.mib
        sb.commands.run(
            "mkdir -p /home/user/www && cd /home/user/www && echo ok > small.txt"
            f" && head -c {mib * 1048576} /dev/urandom > big.bin"
        )
        sb.files.write("/home/user/server.py", SERVER)
        sb.files.write("/home/user/client.py", CLIENT)
        sb.commands.run("exec python3 /home/user/server.py", background=True)
        deadline = time.monotonic() + 60
        while PORT not in [p.port for p in sb.ports.list()]:
            if time.monotonic() > deadline:
                raise BenchError("the HTTP server in the sandbox did not start")
            time.sleep(0.2)
        return sb

    def run(self) -> list[tuple[Any, ...]]:
        sb = self.start()
        a = self.args
        say("direct (client inside the sandbox) ...")
        out = sb.commands.run(
            f"python3 /home/user/client.py {a.mib} {a.requests} {a.samples}", timeout=900
        )
        if out.exit_code != 0:
            raise BenchError(f"in-sandbox client failed: {out.stderr[-2000:]}")
        direct = json.loads(out.stdout)
        d_rate, d_lat = statistics.median(direct["rates"]), pct(direct["latencies"], 50)
        say("port-forward ...")
        with sb.ports.forward(0, PORT) as fwd:
            f_rate, f_lat = measure_http(
                f"http://127.0.0.1:{fwd.local_port}/", {}, a.mib, a.requests, a.samples
            )
        say("preview proxy ...")
        auth = {"Authorization": f"Bearer {self.server.token}"}
        p_rate, p_lat = measure_http(
            f"{self.server.url}/preview/{sb.id}/{PORT}/", auth, a.mib, a.requests, a.samples
        )
        return [
            ("throughput MB/s", d_rate, f_rate, f_rate / d_rate, p_rate, p_rate / d_rate),
            ("latency p50 ms", d_lat, f_lat, f_lat / d_lat, p_lat, p_lat / d_lat),
        ]

    def stop(self, workdir: Path) -> list[str]:
        if self.sb is not None:
            try:
                self.sb.kill()
            except Exception as exc:
                say(f"bench: could not delete the sandbox: {exc}")
        self.server.stop()
        return sweep(workdir)


# -- bandwidth limits ------------------------------------------------------------------
BW_PORT = 5201
BW_SERVER = """
import socket, struct, sys, threading
def serve(c):
    with c:
        op, n = struct.unpack("!cQ", c.recv(9, socket.MSG_WAITALL))
        if op == b"u":
            left = n
            while left and (d := c.recv(min(left, 262144))):
                left -= len(d)
            c.sendall(b"ok")
        else:
            chunk = b"x" * 262144
            while n:
                k = min(n, len(chunk)); c.sendall(chunk[:k]); n -= k
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(8)
while True:
    threading.Thread(target=serve, args=(s.accept()[0],), daemon=True).start()
"""
BW_CLIENT = """
import json, socket, struct, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def run(op):
    c = socket.create_connection((host, port), timeout=120)
    start = time.perf_counter()
    c.sendall(struct.pack("!cQ", op, n))
    if op == b"u":
        chunk = b"x" * 262144
        left = n
        while left:
            k = min(left, len(chunk)); c.sendall(chunk[:k]); left -= k
        assert c.recv(2, socket.MSG_WAITALL) == b"ok"
    else:
        got = 0
        while got < n and (d := c.recv(262144)):
            got += len(d)
        assert got == n, got
    c.close()
    return n * 8 / (time.perf_counter() - start) / 1e6
print(json.dumps({"up": run(b"u"), "down": run(b"d")}))
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


class OutsideNamespace:
    """``atlbench-<tag>``: a namespace joined to the root one by a veth on a private
    /24, with the bandwidth server in it. Everything is removed by ``close``."""

    def __init__(self, subnet: str, tag: str) -> None:
        base = subnet.rsplit(".", 1)[0]
        self.name, self.host_if = f"atlbench-{tag}", f"atb{tag}"
        self.host_ip, self.ip = f"{base}.1", f"{base}.2"
        self.server: subprocess.Popen[bytes] | None = None
        self._forward = Path("/proc/sys/net/ipv4/ip_forward").read_text()

    def open(self) -> None:
        _ip("netns", "add", self.name)
        _ip("link", "add", self.host_if, "type", "veth", "peer", "name", "eth0", "netns", self.name)
        _ip("addr", "add", f"{self.host_ip}/24", "dev", self.host_if)
        _ip("link", "set", self.host_if, "up")
        _ip("-n", self.name, "addr", "add", f"{self.ip}/24", "dev", "eth0")
        _ip("-n", self.name, "link", "set", "eth0", "up")
        _ip("-n", self.name, "link", "set", "lo", "up")
        self.server = subprocess.Popen(
            ["ip", "netns", "exec", self.name, sys.executable, "-c", BW_SERVER, self.ip,
             str(BW_PORT)],
        )  # fmt: skip
        time.sleep(0.5)

    def close(self) -> None:
        if self.server is not None:
            self.server.kill()
            self.server.wait()
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
        Path("/proc/sys/net/ipv4/ip_forward").write_text(self._forward)


async def _bandwidth_rows(workdir: Path, templates: Path, args: argparse.Namespace) -> list[Any]:
    a, b = random.randrange(100, 200), random.randrange(0, 250)
    tag = uuid.uuid4().hex[:6]
    settings = Settings(
        data_dir=workdir / "bw",
        network_pool=f"10.{a}.{b}.0/24",
        network_nft_table=f"atlbench{tag}",
        network_dns=["10.255.0.53"],  # never contacted
    )
    outside = OutsideNamespace(f"10.{a + 1}.{b}.0/24", tag)
    rt = GVisorRuntime(settings, init_argv=["/bin/sh", "-c", "exec sleep infinity"])
    if not rt.availability().available:
        raise BenchError(f"gvisor unavailable: {rt.availability().reason}")
    limit = args.limit_mbit
    cases = [
        ("unlimited", NetworkPolicy(mode="open")),
        (f"{limit} Mbit/s each way", NetworkPolicy(mode="open", bandwidth_mbit=limit)),
    ]
    results: dict[str, dict[str, float]] = {}
    try:
        outside.open()
        for name, policy in cases:
            sid = f"bw-{uuid.uuid4().hex[:8]}"
            spec = SandboxSpec(
                sandbox_id=sid, template="base", rootfs=templates / "base" / "rootfs",
                network=policy,
            )  # fmt: skip
            await rt.create(spec)
            try:
                await rt.start(sid)
                say(f"bandwidth: {name} ...")
                runs = []
                for _ in range(args.samples):
                    argv = ["python3", "-c", BW_CLIENT, outside.ip, str(BW_PORT),
                            str(args.bw_mib * 1048576)]  # fmt: skip
                    res = await rt.exec(sid, argv, timeout=900)
                    if res.returncode != 0:
                        raise BenchError(f"bandwidth client failed: {res.stderr[-2000:]}")
                    runs.append(json.loads(res.stdout))
                results[name] = {k: statistics.median(r[k] for r in runs) for k in ("up", "down")}
            finally:
                await rt.destroy(sid)
    finally:
        for sid in await rt.list_ids():
            await rt.destroy(sid)
        await rt.network.aclose()
        subprocess.run(["nft", "delete", "table", "inet", settings.network_nft_table],
                       capture_output=True)  # fmt: skip
        outside.close()
    free, lim = results[cases[0][0]], results[cases[1][0]]
    return [
        ("upload Mbit/s", free["up"], lim["up"], lim["up"] / limit),
        ("download Mbit/s", free["down"], lim["down"], lim["down"] / limit),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="port-forward and preview vs direct access")
    parser.add_argument("--mib", type=int, default=50, help="size of the download")
    parser.add_argument("--requests", type=int, default=200, help="small GETs for latency")
    parser.add_argument("--samples", type=int, default=3, help="downloads per path")
    parser.add_argument("--limit-mbit", type=int, default=20, help="the limited sandbox's rate")
    parser.add_argument("--bw-mib", type=int, default=16, help="bytes moved each way (MiB)")
    parser.add_argument("--only", choices=("ports", "bandwidth"), help="run one part only")
    args = parser.parse_args(argv)
    templates = default_templates().resolve()
    if not (templates / "base" / "manifest.json").exists():
        say(f"bench: no base template in {templates}: run `make up` first")
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="atelier-bench-net-", dir="/var/tmp")).resolve()
    bench = NetworkBench(workdir, templates, args)
    rows: list[tuple[Any, ...]] = []
    bw_rows: list[tuple[Any, ...]] = []
    code = 0
    try:
        if args.only != "bandwidth":
            rows = bench.run()
        if args.only != "ports":
            bw_rows = asyncio.run(_bandwidth_rows(workdir, templates, args))
    except BenchError as exc:
        say(f"bench: {exc}")
        code = 1
    finally:
        left = bench.stop(workdir)
        if left:
            say("bench: could not remove: " + ", ".join(left))
            code = code or 1
    if bw_rows:
        table(
            f"bandwidth limits ({args.bw_mib} MiB each way, median of {args.samples}; "
            "sandbox <-> a namespace on this host)",
            ("measure", "unlimited", f"limit {args.limit_mbit}", "limited/limit"),
            bw_rows,
        )
        print(json.dumps({"bench": "network-bandwidth", "rows": [list(r) for r in bw_rows]}))
    if rows:
        table(
            f"network ({args.mib} MiB download, median of {args.samples}; p50 of "
            f"{args.requests} GETs; direct = client inside the sandbox on its loopback)",
            ("measure", "direct", "port-forward", "ratio", "preview", "ratio"),
            rows,
        )
        print(json.dumps({"bench": "network", "rows": [list(r) for r in rows]}))
    return code


if __name__ == "__main__":
    sys.exit(main())
