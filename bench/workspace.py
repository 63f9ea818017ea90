"""Workspaces: ``atelier up`` to the first command, and Dockerfile template builds.

Measured in one run, against the raw tools on the same machine:

* ``up``: ``Sandbox.create(repo=...)`` of a sample repository (a
  devcontainer.json on the cached ``base`` template, with an
  ``onCreateCommand``) until a first command answered, vs the raw
  equivalent: ``git clone --depth 1`` of the same repository plus a plain
  sandbox create until its first command;
* ``build``: a Dockerfile (``FROM base``, 2 ``RUN``, 1 ``COPY``) built with a
  cold step cache and again with a warm one, vs ``runsc run`` of the same RUN
  commands on the base rootfs (what the RUN steps cost at the least).

The repository is served by ``git daemon`` on loopback. Usage::

    .venv/bin/python bench/workspace.py [--samples N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import BenchError, RawRunsc, Server, default_templates, free_port, say, sweep, table

from atelier import Sandbox
from atelier.config import Settings
from atelier.images.dockerfile import build_dockerfile
from atelier.runtimes.gvisor.platform import detect_platform

GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
}
DEVCONTAINER = {"image": "unused", "onCreateCommand": "echo ready > /tmp/ready"}
RUNS = ("echo one > /one", "echo two > /two")
DOCKERFILE = "FROM base\n" + "".join(f"RUN {r}\n" for r in RUNS) + "COPY app.txt /app.txt\n"


def git(*args: str, cwd: Path | None = None) -> str:
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=GIT_ENV, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise BenchError(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def publish(root: Path, files: dict[str, str]) -> None:
    work = root.parent / "work"
    git("init", "-q", "--initial-branch=main", str(work))
    for name, text in files.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(text)
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "sample", cwd=work)
    git("clone", "-q", "--bare", str(work), str(root))
    shutil.rmtree(work)


def median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


class WorkspaceBench:
    def __init__(self, workdir: Path, templates: Path, samples: int) -> None:
        self.workdir = workdir
        self.templates = templates
        self.samples = samples
        self.server = Server(workdir / "server", templates)
        self.daemon: subprocess.Popen[bytes] | None = None
        self.port = free_port()

    def start(self) -> None:
        repos = self.workdir / "repos"
        repos.mkdir()
        config = dict(DEVCONTAINER)
        config.pop("image")  # the base template: no pull in the timing
        config["build"] = {"dockerfile": "Dockerfile"}
        publish(
            repos / "sample.git",
            {
                ".devcontainer/devcontainer.json": json.dumps(config),
                ".devcontainer/Dockerfile": "FROM base\n",
                "src/main.py": "print('hello')\n",
            },
        )
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

    @property
    def url(self) -> str:
        return f"git://127.0.0.1:{self.port}/sample.git"

    def up_once(self) -> float:
        sdk = {"api_url": self.server.url, "token": self.server.token}
        t0 = time.perf_counter()
        with Sandbox.create(repo=self.url, **sdk) as sb:
            sb.commands.run("cat /tmp/ready")
            return time.perf_counter() - t0

    def raw_once(self) -> float:
        sdk = {"api_url": self.server.url, "token": self.server.token}
        dest = self.workdir / f"clone-{time.monotonic_ns()}"
        t0 = time.perf_counter()
        git("clone", "-q", "--depth", "1", self.url, str(dest))
        with Sandbox.create(template="base", **sdk) as sb:
            sb.commands.run("true")
            elapsed = time.perf_counter() - t0
        shutil.rmtree(dest)
        return elapsed

    def measure_up(self) -> list[tuple[object, ...]]:
        self.up_once()  # the first up builds the (empty) ws- template once
        up = [self.up_once() for _ in range(self.samples)]
        raw = [self.raw_once() for _ in range(self.samples)]
        return [
            ("up → first command (s)", median(up), median(raw), median(up) / median(raw)),
        ]

    def measure_build(self) -> list[tuple[object, ...]]:
        data = self.workdir / "build"
        (data / "templates").mkdir(parents=True)
        (data / "templates" / "base").symlink_to(self.templates / "base")
        context = self.workdir / "context"
        context.mkdir()
        (context / "Dockerfile").write_text(DOCKERFILE)
        (context / "app.txt").write_text("app\n")
        settings = Settings(data_dir=data)

        def build(no_cache: bool) -> float:
            t0 = time.perf_counter()
            asyncio.run(build_dockerfile(settings, "bench", context=context, no_cache=no_cache))
            return time.perf_counter() - t0

        cold = [build(True) for _ in range(self.samples)]
        warm = [build(False) for _ in range(self.samples)]
        platform = detect_platform(settings.runsc_bin, settings.runsc_platform).name
        raw = RawRunsc(self.workdir, self.templates / "base" / "rootfs", platform, "runsc")
        runs = []
        try:
            for i in range(self.samples):
                total = 0.0
                for n, command in enumerate(RUNS):
                    script = command.replace("> /", "> /tmp/") + " && echo hi"
                    bundle = raw.bundle(f"run-{i}-{n}", ["sh", "-c", script])
                    total += raw.run_first_output(bundle, f"bench-ws-{i}-{n}")
                runs.append(total)
        finally:
            raw.destroy_all()
        return [
            ("build, cold step cache (s)", median(cold), median(runs), median(cold) / median(runs)),
            ("build, warm step cache (s)", median(warm), median(runs), median(warm) / median(runs)),
        ]

    def stop(self) -> list[str]:
        if self.daemon is not None:
            self.daemon.terminate()
            self.daemon.wait(timeout=10)
        if self.server.proc is not None:
            self.server.stop()
        return sweep(self.workdir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="atelier up and template builds vs raw tools")
    parser.add_argument("--samples", type=int, default=3)
    args = parser.parse_args(argv)
    templates = default_templates().resolve()
    if not (templates / "base" / "manifest.json").exists():
        say(f"bench: no base template in {templates}: run `make up` first")
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="atelier-bench-ws-", dir="/var/tmp")).resolve()
    bench = WorkspaceBench(workdir, templates, args.samples)
    rows: list[tuple[object, ...]] = []
    code = 0
    try:
        bench.start()
        rows += bench.measure_up()
        rows += bench.measure_build()
    except BenchError as exc:
        say(f"bench: {exc}")
        code = 1
    finally:
        left = bench.stop()
        if left:
            say("bench: could not remove: " + ", ".join(left))
            code = code or 1
    if rows:
        table(
            f"workspaces (median of {args.samples}; raw = git clone + plain sandbox, "
            "or runsc run of the RUN commands)",
            ("measure", "atelier", "raw", "ratio"),
            rows,
        )
        print(json.dumps({"bench": "workspace", "rows": [list(r) for r in rows]}))
    return code


if __name__ == "__main__":
    sys.exit(main())
