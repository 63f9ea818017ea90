"""Prebuilds, pause/resume and hibernate/wake.

Measured in one run, on the same machine:

* ``ready``: ``Sandbox.create(repo=...)`` of a repository whose
  ``onCreateCommand`` takes ~20 s (``sleep 20``) until a first command
  answered: from its ready prebuild (the snapshot; ``postCreateCommand``
  only) vs from scratch (``prebuild=False``: clone, ``onCreateCommand``, ...).
  Target on this machine: from prebuild at least 10x faster;
* ``pause``/``resume``: ``sb.pause()`` / ``sb.resume()`` round trips through
  the API (p50, p90);
* ``hibernate``/``wake``: a 256 MiB sandbox with ~128 MiB touched by a
  process, ``sb.hibernate()`` then ``sb.wake()`` (p50), and the host RSS of the
  sandbox's processes before and while hibernated.

The repository is served by ``git daemon`` on loopback. Usage::

    .venv/bin/python bench/prebuild.py [--samples N] [--scratch-samples M]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from _common import (
    BenchError,
    Server,
    default_templates,
    free_port,
    memory_of,
    pct,
    processes_of,
    say,
    sweep,
    table,
)

from atelier import Sandbox
from atelier.errors import AtelierError

GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
}
DEVCONTAINER = {
    "build": {"dockerfile": "Dockerfile"},
    "waitFor": "postCreateCommand",
    "onCreateCommand": "sleep 20 && echo built > /var/tmp/built",
    "postCreateCommand": "echo ready > /var/tmp/ready",
}
TOUCH_128_MIB = (
    "nohup python3 -c 'b = bytearray(128 << 20)\n"
    "for i in range(0, len(b), 4096): b[i] = 1\n"
    "import time; time.sleep(10**6)' >/dev/null 2>&1 &"
)


def git(*args: str, cwd: Path | None = None) -> str:
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=GIT_ENV, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise BenchError(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


class PrebuildBench:
    def __init__(self, workdir: Path, templates: Path, samples: int, scratch: int) -> None:
        self.workdir = workdir
        self.samples = samples
        self.scratch = scratch
        self.server = Server(workdir / "server", templates)
        self.daemon: subprocess.Popen[bytes] | None = None
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"git://127.0.0.1:{self.port}/sample.git"

    @property
    def sdk(self) -> dict[str, Any]:
        return {"api_url": self.server.url, "token": self.server.token}

    def http(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.server.token}"}
        return httpx.Client(base_url=self.server.url, headers=headers, timeout=600)

    def start(self) -> None:
        repos = self.workdir / "repos"
        work = self.workdir / "work"
        git("init", "-q", "--initial-branch=main", str(work))
        for name, text in {
            ".devcontainer/devcontainer.json": json.dumps(DEVCONTAINER),
            ".devcontainer/Dockerfile": "FROM base\n",
            "src/main.py": "print('hello')\n",
        }.items():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            (work / name).write_text(text)
        git("add", "-A", cwd=work)
        git("commit", "-q", "-m", "sample", cwd=work)
        repos.mkdir()
        git("clone", "-q", "--bare", str(work), str(repos / "sample.git"))
        self.daemon = subprocess.Popen(
            [
                "git", "daemon", "--reuseaddr", "--export-all", f"--base-path={repos}",
                "--listen=127.0.0.1", f"--port={self.port}", str(repos),
            ],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while subprocess.run(
            ["git", "ls-remote", self.url], capture_output=True, check=False
        ).returncode:
            if time.monotonic() > deadline:
                raise BenchError("git daemon did not answer")
            time.sleep(0.1)
        self.server.start()

    def up_once(self, prebuild: bool) -> float:
        t0 = time.perf_counter()
        with Sandbox.create(repo=self.url, ref="main", prebuild=prebuild, **self.sdk) as sb:
            sb.commands.run("cat /var/tmp/built /var/tmp/ready")
            elapsed = time.perf_counter() - t0
            origin = (sb.info.workspace.prebuild if sb.info.workspace else None) is not None
        if origin != prebuild:
            raise BenchError(f"expected a workspace {'from' if prebuild else 'without'} prebuild")
        return elapsed

    def prebuild(self) -> float:
        """Configure the prebuild and build the head; the build's duration (s)."""
        with self.http() as http:
            res = http.post("/v1/prebuilds", json={"repo": self.url, "branch": "main"})
            if res.status_code != 201:
                raise BenchError(f"POST /v1/prebuilds: {res.text}")
            pb = res.json()["id"]
            build = http.post(f"/v1/prebuilds/{pb}/run").json()["build"]
            deadline = time.monotonic() + 900
            while build["state"] in ("queued", "running"):
                if time.monotonic() > deadline:
                    raise BenchError("the prebuild did not finish in 15 minutes")
                time.sleep(0.5)
                build = http.get(f"/v1/prebuilds/{pb}/builds/{build['id']}").json()
            if build["state"] != "ready":
                logs = http.get(
                    f"/v1/prebuilds/{pb}/builds/{build['id']}/logs", params={"format": "text"}
                ).text
                raise BenchError(f"the prebuild failed: {build['error']}\n{logs[-2000:]}")
            return float(build["duration_seconds"])

    def measure_ready(self) -> list[tuple[object, ...]]:
        build_s = self.prebuild()
        warm = [self.up_once(True) for _ in range(self.samples)]
        cold = [self.up_once(False) for _ in range(self.scratch)]
        ratio = median(cold) / median(warm)
        return [
            ("prebuild build (s)", build_s, None, None),
            ("workspace ready: prebuild vs scratch (s)", median(warm), median(cold), ratio),
        ]

    def measure_pause(self) -> list[tuple[object, ...]]:
        pauses, resumes = [], []
        with Sandbox.create(template="base", timeout=None, **self.sdk) as sb:
            for _ in range(max(self.samples * 5, 20)):
                t0 = time.perf_counter()
                sb.pause()
                t1 = time.perf_counter()
                sb.resume()
                t2 = time.perf_counter()
                pauses.append((t1 - t0) * 1000)
                resumes.append((t2 - t1) * 1000)
            sb.commands.run("true")
        return [
            ("pause p50 / p90 (ms)", pct(pauses, 50), pct(pauses, 90), None),
            ("resume p50 / p90 (ms)", pct(resumes, 50), pct(resumes, 90), None),
        ]

    def measure_hibernate(self) -> list[tuple[object, ...]]:
        hibernates, wakes, rss_before, rss_during = [], [], [], []
        with Sandbox.create(template="base", memory_mib=256, timeout=None, **self.sdk) as sb:
            sb.commands.run(TOUCH_128_MIB, user="root")
            time.sleep(2)
            for _ in range(self.samples):
                rss_before.append(memory_of(processes_of(sb.id))[0])
                t0 = time.perf_counter()
                sb.hibernate()
                t1 = time.perf_counter()
                rss_during.append(memory_of(processes_of(sb.id))[0])
                sb.wake()
                t2 = time.perf_counter()
                hibernates.append((t1 - t0) * 1000)
                wakes.append((t2 - t1) * 1000)
            alive = sb.commands.run("pgrep -f bytearray || true", user="root").stdout.strip()
            if not alive:
                raise BenchError("the memory-holding process did not survive hibernate/wake")
        return [
            ("hibernate 256 MiB p50 (ms)", pct(hibernates, 50), None, None),
            ("wake 256 MiB p50 (ms)", pct(wakes, 50), None, None),
            ("RSS running / hibernated (MiB)", median(rss_before), median(rss_during), None),
        ]

    def stop(self) -> list[str]:
        if self.daemon is not None:
            self.daemon.terminate()
            self.daemon.wait(timeout=10)
        if self.server.proc is not None:
            self.server.stop()
        return sweep(self.workdir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="prebuilds, pause/resume, hibernate/wake")
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--scratch-samples", type=int, default=1, help="each takes ~25 s")
    parser.add_argument("--only", choices=("ready", "pause", "hibernate"), action="append")
    args = parser.parse_args(argv)
    templates = default_templates().resolve()
    if not (templates / "base" / "manifest.json").exists():
        say(f"bench: no base template in {templates}: run `make up` first")
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="atelier-bench-pb-", dir="/var/tmp")).resolve()
    bench = PrebuildBench(workdir, templates, args.samples, args.scratch_samples)
    rows: list[tuple[object, ...]] = []
    code = 0
    parts = args.only or ["ready", "pause", "hibernate"]
    try:
        bench.start()
        for part in parts:
            measure = getattr(bench, f"measure_{part}")
            try:
                rows += measure()
            except (AtelierError, BenchError) as exc:  # e.g. a runtime without the verb
                say(f"bench: {part}: {exc}")
                code = 1
    except BenchError as exc:
        say(f"bench: {exc}")
        code = 1
    finally:
        try:
            left = bench.stop()
        except Exception as exc:  # e.g. a runtime stuck: still print what was measured
            say(f"bench: cleanup failed: {exc!r}")
            left, code = [str(workdir)], 1
        shutil.rmtree(workdir / "work", ignore_errors=True)
        if left:
            say("bench: could not remove: " + ", ".join(left))
            code = code or 1
    if rows:
        table(
            f"prebuilds and suspend (median of {args.samples}; scratch: "
            f"{args.scratch_samples} run(s) with onCreateCommand = sleep 20)",
            ("measure", "value", "vs / p90", "ratio"),
            rows,
        )
    figures: dict[str, Any] = {"bench": "prebuild"}
    for name, value, other, ratio in rows:
        figures[str(name)] = [value, other, ratio]
    print(json.dumps(figures))
    return code


if __name__ == "__main__":
    sys.exit(main())
