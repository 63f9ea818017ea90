"""Build a Debian template with debootstrap.

The build runs in ``templates_dir/.<name>.build-<random>/`` and is renamed into
``templates_dir/<name>/versions/<n>/`` (a new version, see :mod:`.store`) only
once complete, with its ``manifest.json`` already inside: a crashed or
interrupted build never leaves a directory that looks ready, and the next
build sweeps its leftovers.

Progress comes from debootstrap's own ``I:`` lines (:class:`ProgressParser`),
reported as :class:`ProgressEvent` so a CLI can draw a bar.
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..config import Settings
from ..errors import InvalidRequest, RuntimeFailure
from .compat import install_shims
from .store import (
    MANIFEST_NAME,
    ROOTFS_NAME,
    TemplateInfo,
    TemplateStore,
    publish_version,
    read_manifest,
    safe_rmtree,
    template_lock,
    validate_name,
)

__all__ = [
    "DEFAULT_PACKAGES",
    "PHASES",
    "USER_GID",
    "USER_NAME",
    "USER_UID",
    "ProgressCallback",
    "ProgressEvent",
    "ProgressParser",
    "build_template",
    "directory_size",
    "installed_packages",
]

# Bump when the steps after debootstrap change: older templates are rebuilt.
BUILDER_VERSION = 2
DEFAULT_PACKAGES: tuple[str, ...] = (
    "bash",
    "coreutils",
    "git",
    "curl",
    "ca-certificates",
    "python3",
    "procps",
    "iproute2",
)
USER_NAME = "user"
USER_UID = 1000
USER_GID = 1000
# empty mount points the runtimes bind over (see atelier.agent.bootstrap)
MOUNT_POINTS = ("run/atelier", ".atelier/agent")
# docs, manuals and translations: unused in a sandbox, ~70 MB of a minbase rootfs
PRUNE_DIRS = ("usr/share/man", "usr/share/info", "usr/share/doc", "usr/share/locale")
DPKG_EXCLUDES = """\
# Atelier templates are lean: no manuals, docs or translations (copyright kept)
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
"""
LOG_TAIL_LINES = 25
HOSTS_FILE = "127.0.0.1\tlocalhost\n127.0.1.1\tsandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n"

# The phases a build goes through, in order.
PHASES = ("prepare", "download", "extract", "unpack", "configure", "finalize", "done")


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    phase: str  # one of PHASES
    done: int  # steps done in this phase
    total: int | None  # steps in this phase, None when not known in advance
    message: str  # human text, e.g. "Retrieving python3.11"


ProgressCallback = Callable[[ProgressEvent], None]

_PER_PACKAGE = {
    "Retrieving": "download",
    "Extracting": "extract",
    "Unpacking": "unpack",
    "Configuring": "configure",
}
# "I: Retrieving python3.11 3.11.2-6" / "I: Unpacking libc6:amd64..." /
# but not "I: Retrieving InRelease " or "I: Unpacking required packages..."
_PKG_LINE = re.compile(r"^I: (Retrieving|Validating|Extracting|Unpacking|Configuring) (\S+)(.*)$")
_INDEX_FILES = {"InRelease", "Release", "Release.gpg", "Packages"}


class ProgressParser:
    """Turns debootstrap output lines into :class:`ProgressEvent` objects.

    ``totals`` gives the number of steps per phase when known beforehand (for
    example from a previous build of the same template); phases without a
    total report ``total=None``. A count never exceeds its total: if the hint
    was low, the total grows with the count.
    """

    def __init__(self, totals: Mapping[str, int] | None = None) -> None:
        self.totals: dict[str, int] = dict(totals or {})
        self.counts: dict[str, int] = {}
        self.phase = "prepare"
        self.finished = False

    def _event(self, phase: str, message: str) -> ProgressEvent:
        self.phase = phase
        done = self.counts.get(phase, 0)
        downloaded = self.counts.get("download", 0)
        if phase in ("unpack", "configure") and phase not in self.totals and downloaded:
            # about every downloaded package is unpacked and configured once
            self.totals[phase] = downloaded
        total = self.totals.get(phase)
        if total is not None and done > total:
            total = self.totals[phase] = done
        return ProgressEvent(phase, done, total, message)

    def feed(self, line: str) -> ProgressEvent | None:
        """The event a line stands for, or None for lines that do not move progress."""
        line = line.rstrip("\n")
        if line.startswith("I: Base system installed successfully"):
            self.finished = True
            return self._event(self.phase, "base system installed")
        match = _PKG_LINE.match(line)
        if match:
            verb, name, rest = match.groups()
            name = name.rstrip(".")
            if name in _INDEX_FILES:
                return self._event("prepare", f"{verb} {name}")
            if rest.startswith(" packages") or name in {"required", "the"}:
                # "Unpacking required packages...", "Configuring the base system..."
                return self._event(_PER_PACKAGE.get(verb, self.phase), line[3:].rstrip("."))
            if verb == "Validating":
                return None  # follows each Retrieving; counting it would double the steps
            phase = _PER_PACKAGE[verb]
            self.counts[phase] = self.counts.get(phase, 0) + 1
            return self._event(phase, f"{verb} {name.split(':')[0]}")
        if line.startswith("I: "):
            return self._event(self.phase, line[3:].rstrip("."))
        return None


def directory_size(root: Path) -> int:
    """Bytes used by the files of a tree (apparent sizes; hard links counted once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            key = (st.st_dev, st.st_ino)
            if key in seen:
                continue
            seen.add(key)
            total += st.st_size
    return total


def installed_packages(rootfs: Path) -> list[str]:
    """``name=version`` of every package dpkg lists as installed in ``rootfs``."""
    try:
        text = (rootfs / "var/lib/dpkg/status").read_text(errors="replace")
    except OSError:
        return []
    out = []
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            key, sep, value = line.partition(":")
            if sep and not line.startswith(" "):
                fields[key] = value.strip()
        if fields.get("Status", "").endswith(" installed") and "Package" in fields:
            out.append(f"{fields['Package']}={fields.get('Version', '')}")
    return sorted(out)


def _exchange(src: Path, dst: Path) -> bool:
    """Atomically swap two paths (renameat2 RENAME_EXCHANGE); False if unsupported."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = renameat2(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), rename_exchange)
    return bool(rc == 0)


def _tail(lines: Iterable[str]) -> str:
    text = "\n".join(line.rstrip() for line in lines if line.strip())
    return text or "(no output)"


class _Build:
    def __init__(
        self,
        settings: Settings,
        name: str,
        packages: Sequence[str],
        on_progress: ProgressCallback | None,
        timeout: float,
    ) -> None:
        self.settings = settings
        self.name = name
        self.packages = list(packages)
        self.on_progress = on_progress
        self.timeout = timeout
        self.work = settings.templates_dir / f".{name}.build-{uuid.uuid4().hex[:8]}"
        # kept beside the templates (not inside the work dir) so it survives a failure
        self.log_path = settings.templates_dir / f".{name}.build.log"
        self.rootfs = self.work / ROOTFS_NAME
        self.log_tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)

    def emit(self, event: ProgressEvent) -> None:
        if self.on_progress is not None:
            self.on_progress(event)

    def fail(self, what: str) -> RuntimeFailure:
        return RuntimeFailure(
            f"building template {self.name!r} failed: {what}\n"
            f"--- last lines of {self.log_path} ---\n{_tail(self.log_tail)}",
            details={"template": self.name, "log_tail": list(self.log_tail)},
        )

    def run_debootstrap(self, totals: Mapping[str, int]) -> dict[str, int]:
        debootstrap = shutil.which("debootstrap", path=_sbin_path())
        if debootstrap is None:
            raise RuntimeFailure(
                "debootstrap is not installed "
                "(apt-get install debootstrap, or run scripts/setup.sh)"
            )
        argv = [
            debootstrap,
            "--variant=minbase",
            "--components=main",
            f"--include={','.join(self.packages)}",
            self.settings.debian_suite,
            str(self.rootfs),
            self.settings.debian_mirror,
        ]
        parser = ProgressParser(totals)
        self.emit(ProgressEvent("prepare", 0, None, "starting debootstrap"))
        env = {**os.environ, "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"}
        env["PATH"] = _sbin_path()
        with (
            open(self.log_path, "w") as log,
            subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                env=env,
                start_new_session=True,
            ) as proc,
        ):
            killed = threading.Event()

            def on_timeout() -> None:
                killed.set()
                _kill_group(proc)

            watchdog = threading.Timer(self.timeout, on_timeout)
            watchdog.daemon = True
            watchdog.start()
            try:
                assert proc.stdout is not None
                for line in proc.stdout:
                    log.write(line)
                    self.log_tail.append(line)
                    event = parser.feed(line)
                    if event is not None:
                        self.emit(event)
                rc = proc.wait()
            except BaseException:
                _kill_group(proc)
                raise
            finally:
                watchdog.cancel()
        if killed.is_set():
            raise self.fail(f"debootstrap took longer than {self.timeout:.0f} s and was killed")
        if rc != 0 or not parser.finished:
            raise self.fail(f"debootstrap exited with status {rc}")
        return dict(parser.counts)

    def chroot(self, *argv: str) -> None:
        result = subprocess.run(
            ["chroot", str(self.rootfs), *argv],
            capture_output=True,
            text=True,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"},
            check=False,
        )
        output = result.stdout + result.stderr
        self.log_tail.extend(output.splitlines())
        with open(self.log_path, "a") as log:
            log.write(f"+ chroot {' '.join(argv)}\n{output}")
        if result.returncode != 0:
            raise self.fail(f"{' '.join(argv)} exited with status {result.returncode}")

    def finalize(self) -> None:
        root = self.rootfs
        steps = ["user", "mount points", "clean", "measure"]
        total = len(steps)

        def step(i: int) -> None:
            self.emit(ProgressEvent("finalize", i, total, steps[i] if i < total else "done"))

        step(0)
        self.chroot("groupadd", "--gid", str(USER_GID), USER_NAME)
        self.chroot(
            "useradd",
            "--uid",
            str(USER_UID),
            "--gid",
            str(USER_GID),
            "--create-home",
            "--home-dir",
            f"/home/{USER_NAME}",
            "--shell",
            "/bin/bash",
            USER_NAME,
        )
        (root / "root").mkdir(mode=0o700, exist_ok=True)
        hosts = HOSTS_FILE
        for rel, text in (("etc/hostname", "sandbox\n"), ("etc/hosts", hosts)):
            (root / rel).unlink(missing_ok=True)  # debootstrap copies the host's
            (root / rel).write_text(text)
            (root / rel).chmod(0o644)
        step(1)
        for rel in MOUNT_POINTS:
            (root / rel).mkdir(parents=True, exist_ok=True)
        install_shims(root)
        step(2)
        self.clean()
        step(3)

    def clean(self) -> None:
        root = self.rootfs
        for pattern in (
            "var/lib/apt/lists/*",
            "var/cache/apt/*.bin",
            "var/cache/apt/archives/*.deb",
            "var/cache/ldconfig/aux-cache",
            "var/log/bootstrap.log",
            "var/log/apt/*",
            "tmp/*",
            "var/tmp/*",
        ):
            for path in root.glob(pattern):
                if path.name in {"partial", "lock"}:
                    continue
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        for path in root.glob("var/log/*.log"):
            path.write_bytes(b"")
        for rel in PRUNE_DIRS:
            base = root / rel
            if not base.is_dir():
                continue
            for child in base.iterdir():
                if rel.endswith("doc") and child.is_dir() and not child.is_symlink():
                    for sub in child.iterdir():
                        if sub.name != "copyright":
                            safe_rmtree(sub)
                elif child.name != "locale.alias":
                    safe_rmtree(child)
        excludes = root / "etc/dpkg/dpkg.cfg.d/atelier-excludes"
        excludes.parent.mkdir(parents=True, exist_ok=True)
        excludes.write_text(DPKG_EXCLUDES)

    def write_manifest(self, phase_counts: Mapping[str, int]) -> dict[str, Any]:
        manifest: dict[str, Any] = {
            "name": self.name,
            "runtime": "gvisor",
            "created_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "builder": "debootstrap",
            "builder_version": BUILDER_VERSION,
            "suite": self.settings.debian_suite,
            "mirror": self.settings.debian_mirror,
            "variant": "minbase",
            "packages": self.packages,
            "installed_packages": installed_packages(self.rootfs),
            "user": {"name": USER_NAME, "uid": USER_UID, "gid": USER_GID},
            "size_bytes": directory_size(self.rootfs),
            "phase_counts": dict(phase_counts),
        }
        tmp = self.work / f"{MANIFEST_NAME}.tmp"
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
        os.replace(tmp, self.work / MANIFEST_NAME)
        return manifest


def _sbin_path() -> str:
    path = os.environ.get("PATH", "/usr/bin:/bin")
    extra = [p for p in ("/usr/local/sbin", "/usr/sbin", "/sbin") if p not in path.split(":")]
    return ":".join([path, *extra])


def _kill_group(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def build_template(
    settings: Settings,
    name: str = "base",
    *,
    force: bool = False,
    packages: Sequence[str] | None = None,
    on_progress: ProgressCallback | None = None,
    timeout: float = 1800.0,
) -> TemplateInfo:
    """Build the Debian template ``name`` (default packages plus ``packages``).

    A no-op returning the existing template when it is already ready, unless
    ``force``. Needs root (debootstrap, chroot). Concurrent builds of one name
    serialize on a lock; the later one then finds the template ready.
    """
    validate_name(name)
    if os.geteuid() != 0:
        raise InvalidRequest("building a template needs root (debootstrap and chroot)")
    wanted = list(dict.fromkeys([*DEFAULT_PACKAGES, *(packages or ())]))
    for pkg in wanted:
        if not re.fullmatch(r"[a-z0-9][a-z0-9+.-]+", pkg):
            raise InvalidRequest(f"invalid Debian package name {pkg!r}")
    store = TemplateStore(settings)
    final = settings.templates_dir / name
    with template_lock(settings.templates_dir, name):
        for stale in settings.templates_dir.glob(f".{name}.*-*"):
            if stale.is_dir():
                safe_rmtree(stale)  # leftovers of crashed builds / removals
        if not force:
            existing = store.get(name) if final.is_dir() else None
            current = (read_manifest(final) or {}).get("builder_version") == BUILDER_VERSION
            if existing is not None and existing.ready and current:
                if on_progress is not None:
                    on_progress(ProgressEvent("done", 1, 1, "already built"))
                return existing
        previous = read_manifest(final) or {}
        hints = previous.get("phase_counts") if previous.get("packages") == wanted else None
        totals = {k: v for k, v in (hints or {}).items() if isinstance(v, int)}
        build = _Build(settings, name, wanted, on_progress, timeout)
        build.work.mkdir(parents=True)
        try:
            counts = build.run_debootstrap(totals)
            build.finalize()
            manifest = build.write_manifest(counts)
            version = publish_version(settings.templates_dir, name, build.work)
        except BaseException:
            safe_rmtree(build.work)
            raise
        build.emit(
            ProgressEvent(
                "done",
                1,
                1,
                f"template {name!r} version {version} ready "
                f"({manifest['size_bytes'] / 2**20:.0f} MiB)",
            )
        )
        return store.get(name)
