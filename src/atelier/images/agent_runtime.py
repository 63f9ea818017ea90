"""A self-contained Python for the agent, so it runs in any image.

The agent is Python (standard library only). Templates built from arbitrary
OCI images often have no Python, or one of another version, so the agent never
uses the image's: every sandbox gets, read-only at ``/.atelier/runtime``, an
interpreter bundle made once per host Python version from the host's own
(Debian's ``/usr/bin/python3``)::

    <data_dir>/agent-runtime/<python-version>/
      bin/python3.11               the interpreter binary, unchanged
      bin/ld-linux-x86-64.so.2     the host's dynamic loader (the program actually run)
      lib/libc.so.6 ...            every library ldd reports for the interpreter and
                                   the bundled extension modules
      lib/python3.11/              the standard library (pruned), compiled .pyc
      lib/python3.11/lib-dynload/  extension modules whose libraries are bundled
      bundle.json                  written last: the bundle is complete

It is started as ``bin/ld-linux-x86-64.so.2 --library-path lib bin/python3.11``:
the bundled loader and libc never mix with the image's (a musl image, an older
glibc), and Python derives its prefix from ``argv[0]`` = ``bin/python3.11``, so
it finds ``lib/python3.11`` next to it. See docs/adr/0006-bundled-agent-interpreter.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import py_compile
import re
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..agent import bootstrap
from ..config import Settings
from ..errors import RuntimeFailure

__all__ = [
    "BUNDLE_FORMAT",
    "DEFAULT_SOURCE_PYTHON",
    "AgentRuntime",
    "agent_runtime_argv",
    "ensure_agent_runtime",
    "load_agent_runtime",
]

# Bump when the layout or the contents change: older bundles are rebuilt.
BUNDLE_FORMAT = 1
DEFAULT_SOURCE_PYTHON = Path("/usr/bin/python3")
MANIFEST = "bundle.json"

# Never needed by the agent; together about two thirds of the stdlib's size.
_PRUNE_TOP = frozenset(
    {
        "__phello__",
        "distutils",
        "ensurepip",
        "idlelib",
        "lib2to3",
        "pydoc_data",
        "site-packages",
        "dist-packages",
        "tkinter",
        "turtledemo",
        "venv",
        "unittest",
        "pydoc.py",
        "turtle.py",
        "xmlrpc",
        "wsgiref",
        # their extension modules need libraries that are not bundled
        "sqlite3",
        "curses",
        "dbm",
        "sitecustomize.py",  # Debian's points into /etc; -S never imports it
        "lib-dynload",  # copied module by module below
    }
)
_PRUNE_ANYWHERE = frozenset({"__pycache__", "test", "tests", "idle_test"})
# Extension modules kept even when the agent does not import them today,
# because they only need libraries that are bundled anyway (or small ones).
_CHEAP_LIBRARIES = re.compile(
    r"^(libc|libm|libpthread|libdl|librt|libz|libexpat|libffi|liblzma|libbz2|libuuid)\.so"
)
_SKIP_EXTENSIONS = re.compile(r"^(_test|_xx|xx|_ctypes_test)")

# Run by the source interpreter: where its pieces are, and which extension
# modules the agent's own imports load (every agent module is imported).
_PROBE = r"""
import importlib, json, os, pkgutil, platform, sys, sysconfig
sys.modules['ssl'] = None
agent_parent = sys.argv[1]
sys.path.insert(0, agent_parent)
errors = []
try:
    import agent
    for info in pkgutil.iter_modules(agent.__path__):
        try:
            importlib.import_module('agent.' + info.name)
        except Exception as exc:
            errors.append(f'{info.name}: {exc}')
except Exception as exc:
    errors.append(f'agent: {exc}')
import _json
dynload = os.path.dirname(_json.__file__)
files = [getattr(m, '__file__', None) or '' for m in list(sys.modules.values())]
exts = sorted(f for f in files if f.endswith('.so') and os.path.dirname(f) == dynload)
stdlib = os.path.dirname(os.__file__)
mods = sorted(f for f in files if f.endswith('.py') and f.startswith(stdlib + os.sep))
print(json.dumps({
    'version': platform.python_version(),
    'major_minor': f'{sys.version_info[0]}.{sys.version_info[1]}',
    'executable': os.path.realpath(sys.executable),
    'stdlib': stdlib,
    'dynload': dynload,
    'agent_extensions': exts,
    'agent_modules': mods,
    'import_errors': errors,
    'machine': platform.machine(),
}))
"""

_CHECK = (
    "import sys, asyncio, ctypes, json, termios, pty, subprocess, concurrent.futures.thread; "
    "print(sys.prefix)"
)


@dataclass(frozen=True, slots=True)
class AgentRuntime:
    """A complete interpreter bundle on the host."""

    path: Path  # <data_dir>/agent-runtime/<version>
    python_version: str  # "3.11.2"
    python_name: str  # "python3.11"
    loader_name: str  # "ld-linux-x86-64.so.2"
    size_bytes: int

    def interpreter_argv(self, root: str = bootstrap.RUNTIME_MOUNT) -> list[str]:
        """argv prefix that starts this interpreter when the bundle is at ``root``."""
        return bootstrap.bundled_python(root=root, loader=self.loader_name, python=self.python_name)

    def agent_argv(self, root: str = bootstrap.RUNTIME_MOUNT, **kwargs: str) -> list[str]:
        """The agent's argv on this interpreter (``kwargs``: mount, run_dir)."""
        return bootstrap.agent_argv(python=self.interpreter_argv(root), **kwargs)

    def host_argv(self) -> list[str]:
        """argv prefix that runs the bundle from its host path (tests, checks)."""
        return self.interpreter_argv(str(self.path))


def agent_runtime_argv(settings: Settings) -> list[str]:
    """The agent argv on the bundled interpreter (building the bundle if needed)."""
    return ensure_agent_runtime(settings).agent_argv()


def _read(path: Path) -> AgentRuntime | None:
    try:
        data = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != BUNDLE_FORMAT:
        return None
    try:
        runtime = AgentRuntime(
            path=path,
            python_version=str(data["python_version"]),
            python_name=str(data["python_name"]),
            loader_name=str(data["loader_name"]),
            size_bytes=int(data["size_bytes"]),
        )
    except (KeyError, TypeError, ValueError):
        return None
    if not (path / "bin" / runtime.loader_name).is_file():
        return None
    return runtime


def load_agent_runtime(settings: Settings, version: str) -> AgentRuntime | None:
    """The complete bundle for Python ``version`` if there is one, else None."""
    return _read(settings.agent_runtime_dir / version)


_cache: dict[tuple[str, str], AgentRuntime] = {}
_cache_lock = threading.Lock()


def _default_source() -> Path:
    """Debian's ``/usr/bin/python3``; elsewhere the interpreter running us."""
    if DEFAULT_SOURCE_PYTHON.exists():
        return DEFAULT_SOURCE_PYTHON
    return Path(os.path.realpath(sys.executable))


def ensure_agent_runtime(
    settings: Settings,
    *,
    python: Path | None = None,
    force: bool = False,
) -> AgentRuntime:
    """The bundle for the interpreter ``python`` (default: Debian's
    ``/usr/bin/python3``), built on first use.

    Cached by Python version: once built it is reused by every later call and
    process; a bundle of an older :data:`BUNDLE_FORMAT` is rebuilt. Building
    takes a few seconds (copy + compile); concurrent callers serialize on a
    file lock, and the bundle appears atomically (renamed into place).
    """
    python = python or _default_source()
    key = (str(settings.agent_runtime_dir), str(python))
    if not force:
        with _cache_lock:
            cached = _cache.get(key)
        if cached is not None and (cached.path / MANIFEST).is_file():
            return cached
    probe = _probe(python)
    version = probe["version"]
    root = settings.agent_runtime_dir
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / ".lock"):
        final = root / version
        runtime = None if force else _read(final)
        if runtime is None:
            runtime = _build(probe, root, final)
    with _cache_lock:
        _cache[key] = runtime
    return runtime


@contextlib.contextmanager
def _locked(path: Path) -> Any:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _probe(python: Path) -> dict[str, Any]:
    agent_parent = str(bootstrap.package_dir().parent)
    try:
        out = subprocess.run(
            [str(python), "-I", "-S", "-B", "-c", _PROBE, agent_parent],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"},
        )
        data = json.loads(out.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        detail = getattr(exc, "stderr", None) or exc
        raise RuntimeFailure(
            f"cannot inspect {python} to bundle it for the agent: {detail}"
        ) from exc
    if not isinstance(data, dict):
        raise RuntimeFailure(f"cannot inspect {python}: unexpected probe output")
    return data


_LDD_ARROW = re.compile(r"^\s*(\S+)\s+=>\s+(\S+)\s+\(0x[0-9a-f]+\)\s*$")
_LDD_PLAIN = re.compile(r"^\s*(/\S+)\s+\(0x[0-9a-f]+\)\s*$")


def parse_ldd(output: str) -> tuple[dict[str, str], str | None]:
    """``({soname: path}, loader path)`` from ``ldd`` output; raises on missing libraries."""
    libs: dict[str, str] = {}
    loader = None
    for line in output.splitlines():
        if "not found" in line:
            raise RuntimeFailure(f"a library the agent's Python needs is missing: {line.strip()}")
        if match := _LDD_ARROW.match(line):
            name, path = match.groups()
            if path.startswith("/"):
                libs[name] = path
        elif match := _LDD_PLAIN.match(line):
            loader = match.group(1)
    return libs, loader


def _ldd(path: str) -> tuple[dict[str, str], str | None]:
    try:
        out = subprocess.run(["ldd", path], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeFailure(f"cannot run ldd on {path}: {exc}") from exc
    if "statically linked" in out.stdout + out.stderr or "not a dynamic" in out.stderr:
        return {}, None
    if out.returncode != 0:
        raise RuntimeFailure(f"ldd {path} failed: {out.stderr.strip()}")
    return parse_ldd(out.stdout)


def _pick_extensions(dynload: Path, wanted: Iterable[str]) -> dict[Path, dict[str, str]]:
    """Extension modules to bundle, each with its libraries: those the agent
    imports, plus every other one that needs only cheap libraries."""
    wanted_set = {Path(p) for p in wanted}
    chosen: dict[Path, dict[str, str]] = {}
    for module in sorted(dynload.glob("*.so")):
        if _SKIP_EXTENSIONS.match(module.name) and module not in wanted_set:
            continue
        libs, _ = _ldd(str(module))
        if module in wanted_set or all(_CHEAP_LIBRARIES.match(n) for n in libs):
            chosen[module] = libs
    missing = wanted_set - set(chosen)
    if missing:
        raise RuntimeFailure(f"extension modules the agent needs are missing: {sorted(missing)}")
    return chosen


def _ignore(top: Path) -> Any:
    def ignore(directory: str, names: list[str]) -> set[str]:
        skipped = {n for n in names if n in _PRUNE_ANYWHERE}
        if Path(directory) == top:
            skipped |= {n for n in names if n in _PRUNE_TOP or n.startswith("config-")}
        return skipped

    return ignore


def _copy_file(src: str, dst: Path, mode: int = 0o755) -> None:
    shutil.copyfile(src, dst)  # follows links: the bundle holds real files
    dst.chmod(mode)


def _build(probe: dict[str, Any], root: Path, final: Path) -> AgentRuntime:
    work = root / f".{final.name}.build-{uuid.uuid4().hex[:8]}"
    for stale in root.glob(f".{final.name}.*-*"):
        shutil.rmtree(stale, ignore_errors=True)  # a crashed build (we hold the lock)
    try:
        runtime = _assemble(probe, work, final)
        _publish(work, final, root)
        return runtime
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _assemble(probe: dict[str, Any], work: Path, final: Path) -> AgentRuntime:
    major_minor = str(probe["major_minor"])
    python_name = f"python{major_minor}"
    stdlib = Path(probe["stdlib"])
    dynload = Path(probe["dynload"])
    bindir, libdir = work / "bin", work / "lib"
    pylib = libdir / python_name
    bindir.mkdir(parents=True)
    libdir.mkdir()

    libs, loader = _ldd(str(probe["executable"]))
    if loader is None:
        raise RuntimeFailure(f"{probe['executable']} is not dynamically linked; cannot bundle it")
    _copy_file(str(probe["executable"]), bindir / python_name)
    loader_name = Path(loader).name
    _copy_file(loader, bindir / loader_name)

    shutil.copytree(
        stdlib,
        pylib,
        ignore=_ignore(stdlib),
        symlinks=False,
        ignore_dangling_symlinks=True,
    )
    (pylib / "lib-dynload").mkdir()
    for module, module_libs in _pick_extensions(dynload, probe["agent_extensions"]).items():
        _copy_file(str(module), pylib / "lib-dynload" / module.name)
        libs.update(module_libs)
    for soname, path in sorted(libs.items()):
        _copy_file(path, libdir / soname)
    _compile(pylib, stdlib, probe["agent_modules"])
    _check(work, loader_name, python_name)
    size = _tree_size(work)
    manifest = {
        "format": BUNDLE_FORMAT,
        "python_version": probe["version"],
        "python_name": python_name,
        "loader_name": loader_name,
        "machine": probe.get("machine") or platform.machine(),
        "source": probe["executable"],
        "libraries": sorted(libs),
        "extensions": sorted(p.name for p in (pylib / "lib-dynload").iterdir()),
        "agent_extensions": [Path(p).name for p in probe["agent_extensions"]],
        "size_bytes": size,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }
    (work / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return AgentRuntime(final, str(probe["version"]), python_name, loader_name, size)


def _compile(pylib: Path, stdlib: Path, modules: Iterable[str]) -> None:
    """Byte-compile what the agent imports (its start-up path: under gVisor each
    source compile costs many slow syscalls); the rest of the stdlib stays
    source-only, compiled in memory if ever imported (-B: never written)."""
    for source in modules:
        rel = Path(source).relative_to(stdlib)
        target = pylib / rel
        if not target.is_file():
            continue
        try:
            py_compile.compile(
                str(target),
                doraise=True,
                invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
            )
        except py_compile.PyCompileError as exc:
            raise RuntimeFailure(f"cannot compile {target}: {exc.msg}") from exc


def _check(work: Path, loader_name: str, python_name: str) -> None:
    """Run the bundle (from its build dir) and check it uses its own stdlib."""
    argv = bootstrap.bundled_python(root=str(work), loader=loader_name, python=python_name)
    try:
        out = subprocess.run(
            [*argv, "-I", "-S", "-B", "-c", _CHECK],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={"LC_ALL": "C.UTF-8"},
            cwd="/",
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeFailure(f"the bundled interpreter does not start: {exc}") from exc
    if out.returncode != 0 or out.stdout.strip() != str(work):
        raise RuntimeFailure(
            "the bundled interpreter does not work from its own directory "
            f"(prefix {out.stdout.strip()!r}): {out.stderr.strip()[-500:]}"
        )


def _tree_size(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def _publish(work: Path, final: Path, root: Path) -> None:
    if not final.exists():
        work.rename(final)
        return
    # An old format: move it aside first (sandboxes running on it keep their
    # open files; new ones get the new bundle).
    old = root / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
    final.rename(old)
    work.rename(final)
    shutil.rmtree(old, ignore_errors=True)
