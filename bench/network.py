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
lower is better). Usage::

    .venv/bin/python bench/network.py [--mib 50] [--requests 200] [--samples 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from _common import BenchError, Server, default_templates, pct, say, sweep, table

from atelier import Sandbox

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="port-forward and preview vs direct access")
    parser.add_argument("--mib", type=int, default=50, help="size of the download")
    parser.add_argument("--requests", type=int, default=200, help="small GETs for latency")
    parser.add_argument("--samples", type=int, default=3, help="downloads per path")
    args = parser.parse_args(argv)
    templates = default_templates().resolve()
    if not (templates / "base" / "manifest.json").exists():
        say(f"bench: no base template in {templates}: run `make up` first")
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="atelier-bench-net-", dir="/var/tmp")).resolve()
    bench = NetworkBench(workdir, templates, args)
    rows: list[tuple[Any, ...]] = []
    code = 0
    try:
        rows = bench.run()
    except BenchError as exc:
        say(f"bench: {exc}")
        code = 1
    finally:
        left = bench.stop(workdir)
        if left:
            say("bench: could not remove: " + ", ".join(left))
            code = code or 1
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
