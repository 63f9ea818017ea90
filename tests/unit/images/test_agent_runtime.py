"""The agent's self-contained interpreter bundle (built from the host's Python)."""

from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from atelier.agent import bootstrap
from atelier.config import Settings
from atelier.errors import RuntimeFailure
from atelier.images import agent_runtime
from atelier.images.agent_runtime import AgentRuntime, ensure_agent_runtime, parse_ldd
from atelier.runtimes.base import SandboxSpec
from atelier.runtimes.gvisor import oci

SOURCE = agent_runtime.DEFAULT_SOURCE_PYTHON
pytestmark = pytest.mark.skipif(
    not SOURCE.exists() or shutil.which("ldd") is None, reason="needs /usr/bin/python3 and ldd"
)


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(data_dir=tmp_path_factory.mktemp("rt"))


@pytest.fixture(scope="module")
def bundle(settings: Settings) -> AgentRuntime:
    return ensure_agent_runtime(settings)


LDD = """\
\tlinux-vdso.so.1 (0x00007ffd1a5f2000)
\tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007f5f10ecd000)
\tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f5f10eae000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f5f10ca1000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f5f10fc1000)
"""


def test_parse_ldd() -> None:
    libs, loader = parse_ldd(LDD)
    assert libs == {
        "libm.so.6": "/lib/x86_64-linux-gnu/libm.so.6",
        "libz.so.1": "/lib/x86_64-linux-gnu/libz.so.1",
        "libc.so.6": "/lib/x86_64-linux-gnu/libc.so.6",
    }
    assert loader == "/lib64/ld-linux-x86-64.so.2"
    with pytest.raises(RuntimeFailure, match="missing"):
        parse_ldd("\tlibffi.so.8 => not found\n")


def test_argv_shapes() -> None:
    prefix = bootstrap.bundled_python()
    assert prefix == [
        "/.atelier/runtime/bin/ld-linux-x86-64.so.2",
        "--library-path",
        "/.atelier/runtime/lib",
        "/.atelier/runtime/bin/python3.11",
    ]
    argv = bootstrap.agent_argv(python=prefix)
    assert argv[:4] == prefix
    assert argv[4:8] == ["-I", "-S", "-B", "-c"]
    # the old form, a single interpreter path, still works (host-side agent tests)
    host = bootstrap.agent_argv(python="/usr/bin/python3")
    assert host[0] == "/usr/bin/python3"
    assert host[1:] == argv[4:]


def test_layout(bundle: AgentRuntime) -> None:
    root = bundle.path
    assert root.name == bundle.python_version
    assert bundle.python_name == "python3.11" or bundle.python_name.startswith("python3.")
    py = bundle.python_name
    for rel in (f"bin/{py}", f"bin/{bundle.loader_name}", "lib/libc.so.6", f"lib/{py}/os.py"):
        assert (root / rel).is_file(), rel
    dynload = root / "lib" / py / "lib-dynload"
    names = {p.name.split(".")[0] for p in dynload.iterdir()}
    assert {"_asyncio", "_ctypes", "termios", "_json", "_contextvars", "_queue"} <= names
    assert any(p.name.startswith("libffi") for p in (root / "lib").iterdir())  # for _ctypes
    for pruned in ("test", "idlelib", "tkinter", "ensurepip", "lib2to3", "site-packages"):
        assert not (root / "lib" / py / pruned).exists(), pruned
    assert not list((root / "lib" / py).glob("config-*"))
    # the agent's start-up modules are byte-compiled
    assert list((root / "lib" / py / "asyncio" / "__pycache__").glob("base_events.*.pyc"))
    manifest = json.loads((root / "bundle.json").read_text())
    assert manifest["format"] == agent_runtime.BUNDLE_FORMAT
    assert "_asyncio.cpython-311-x86_64-linux-gnu.so" in manifest["agent_extensions"] or any(
        n.startswith("_asyncio") for n in manifest["agent_extensions"]
    )
    assert 5 * 2**20 < bundle.size_bytes < 40 * 2**20


def test_runs_from_its_own_directory_only(bundle: AgentRuntime) -> None:
    code = "import sys, json, asyncio, ctypes, termios; print(json.dumps([sys.prefix, sys.path]))"
    out = subprocess.run(
        [*bundle.host_argv(), "-I", "-S", "-B", "-c", code],
        capture_output=True,
        text=True,
        env={},
        cwd="/",
        check=True,
    )
    prefix, path = json.loads(out.stdout)
    assert prefix == str(bundle.path)
    assert all(p.startswith(str(bundle.path)) for p in path), path


def test_cached_and_rebuilt_on_format_change(settings: Settings, bundle: AgentRuntime) -> None:
    manifest = bundle.path / "bundle.json"
    before = manifest.stat().st_mtime_ns
    assert ensure_agent_runtime(settings) == bundle
    agent_runtime._cache.clear()
    assert ensure_agent_runtime(settings) == bundle  # from disk, not rebuilt
    assert manifest.stat().st_mtime_ns == before
    data = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**data, "format": -1}))
    agent_runtime._cache.clear()
    rebuilt = ensure_agent_runtime(settings)
    assert json.loads(manifest.read_text())["format"] == agent_runtime.BUNDLE_FORMAT
    assert rebuilt.path == bundle.path
    assert not list(settings.agent_runtime_dir.glob(".*-*"))  # no build leftovers


def _enter(root: Path) -> None:
    os.chroot(root)
    os.chdir("/")


@pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root")
def test_agent_serves_in_an_empty_root(bundle: AgentRuntime, tmp_path: Path) -> None:
    """No /lib, no /usr, no Python: the agent starts from the two mounts alone."""
    root = tmp_path / "root"
    shutil.copytree(bundle.path, root / ".atelier/runtime", symlinks=True)
    shutil.copytree(
        bootstrap.package_dir(),
        root / ".atelier/agent",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    (root / "run/atelier").mkdir(parents=True)
    (root / "tmp").mkdir()
    argv = bundle.agent_argv()
    proc = subprocess.Popen(
        argv,
        preexec_fn=functools.partial(_enter, root),
        env={"PATH": "/bin", "LANG": "C.UTF-8"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    sock = root / "run/atelier" / bootstrap.SOCKET_NAME
    try:
        deadline = time.monotonic() + 30
        while not sock.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        log = root / "run/atelier" / bootstrap.LOG_NAME
        detail = log.read_text() if log.exists() else ""
        assert sock.exists(), f"no socket; exit={proc.poll()} log={detail}"
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(sock))
        assert "python=" in log.read_text()
    finally:
        proc.kill()
        proc.wait()


def test_oci_spec_mounts_the_runtime_read_only(bundle: AgentRuntime) -> None:
    paths = oci.BundlePaths(
        rootfs=Path("/d/rootfs"),
        run_dir=Path("/d/run"),
        agent_dir=Path("/opt/agent"),
        runtime_dir=bundle.path,
    )
    spec = SandboxSpec(sandbox_id="s1", template="busybox", rootfs=Path("/t/rootfs"))
    cfg = oci.build_config(spec, paths, bundle.agent_argv())
    mounts = {m["destination"]: m for m in cfg["mounts"]}
    rt = mounts[bootstrap.RUNTIME_MOUNT]
    assert rt["source"] == str(bundle.path)
    assert "ro" in rt["options"]
    assert cfg["process"]["args"][0] == f"{bootstrap.RUNTIME_MOUNT}/bin/{bundle.loader_name}"
    without = oci.build_config(spec, oci.BundlePaths(Path("/r"), Path("/u"), Path("/a")))
    assert bootstrap.RUNTIME_MOUNT not in {m["destination"] for m in without["mounts"]}
