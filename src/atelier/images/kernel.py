"""The guest kernel of the VM runtimes, from Debian's ``linux-image-cloud-amd64``.

The package is fetched with ``apt-get download`` (the host's configured
Debian mirror) and unpacked with ``dpkg-deb -x`` into the data dir; it is
never installed on the host. QEMU's ``microvm`` machine boots an
uncompressed ELF ``vmlinux`` through its PVH entry point, so the
LZ4-compressed payload of the bzImage is extracted once and kept::

    <data_dir>/kernels/
      .lock                      serializes fetches
      .build-<random>/               a fetch in progress (or crashed); swept
      <version>/                 e.g. 6.1.0-56-cloud-amd64
        tree/boot/vmlinuz-<version>, tree/lib/modules/<version>/...
        vmlinux                  the ELF kernel (PVH entry)
        kernel.json              written last: its presence = "ready"

:func:`ensure_kernel` returns the newest ready kernel (fetching one if there
is none); :func:`find_kernel` only looks. :func:`extract_vmlinux` is the
bzImage → ELF step on its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ..errors import RuntimeFailure

__all__ = [
    "KERNEL_PACKAGE",
    "LZ4_LEGACY_MAGIC",
    "GuestKernel",
    "VmlinuxInfo",
    "ensure_kernel",
    "extract_vmlinux",
    "find_kernel",
    "inspect_vmlinux",
]

KERNEL_PACKAGE = "linux-image-cloud-amd64"
LZ4_LEGACY_MAGIC = b"\x02\x21\x4c\x18"
STAMP_NAME = "kernel.json"
_ELF_MAGIC = b"\x7fELF"
_EM_X86_64 = 62
_PT_LOAD, _PT_NOTE = 1, 4
_XEN_ELFNOTE_PHYS32_ENTRY = 18  # the PVH entry point note
_TIMEOUT = 600


@dataclass(frozen=True, slots=True)
class VmlinuxInfo:
    size: int
    entry: int
    pvh_entry: int | None  # physical address of the PVH entry, None if absent


@dataclass(frozen=True, slots=True)
class GuestKernel:
    version: str  # the kernel release, e.g. "6.1.0-56-cloud-amd64"
    package: str  # the Debian package it came from
    package_version: str  # e.g. "6.1.192-2"
    root: Path  # <kernels>/<version>

    @property
    def vmlinux(self) -> Path:
        return self.root / "vmlinux"

    @property
    def tree(self) -> Path:
        return self.root / "tree"

    @property
    def modules_dir(self) -> Path:
        return self.tree / "lib" / "modules" / self.version

    @property
    def config(self) -> Path:
        return self.tree / "boot" / f"config-{self.version}"

    def describe(self) -> str:
        return f"{self.version} (Debian {self.package} {self.package_version})"


# -- bzImage → vmlinux -------------------------------------------------------------------


def _payload(data: bytes) -> tuple[bytes, int | None]:
    """The LZ4 stream in a bzImage and, when known, the uncompressed size.

    The boot protocol header (2.08+) says where the compressed payload is; its
    last 4 bytes are the uncompressed size (the kernel's ``mkpiggy``). Without
    a usable header, fall back to the first LZ4 legacy-frame magic.
    """
    if len(data) > 0x250 and data[0x202:0x206] == b"HdrS":
        (protocol,) = struct.unpack_from("<H", data, 0x206)
        setup_sects = data[0x1F1] or 4
        offset, length = struct.unpack_from("<II", data, 0x248)
        start = (setup_sects + 1) * 512 + offset
        payload = data[start : start + length]
        if protocol >= 0x208 and length > 8 and payload.startswith(LZ4_LEGACY_MAGIC):
            (size,) = struct.unpack("<I", payload[-4:])
            return payload[:-4], size
    index = data.find(LZ4_LEGACY_MAGIC)
    if index < 0:
        raise RuntimeFailure(
            "no LZ4 payload in the kernel image (is it an LZ4-compressed bzImage?)"
        )
    return data[index:], None


def inspect_vmlinux(path: Path) -> VmlinuxInfo:
    """Check that ``path`` is a complete x86-64 ELF executable; find its PVH entry."""
    try:
        with path.open("rb") as fh:
            head = fh.read(64)
            size = os.fstat(fh.fileno()).st_size
            if len(head) < 64 or not head.startswith(_ELF_MAGIC) or head[4] != 2:
                raise RuntimeFailure(f"{path} is not a 64-bit ELF file")
            e_type, e_machine = struct.unpack_from("<HH", head, 16)
            (entry,) = struct.unpack_from("<Q", head, 24)
            (phoff,) = struct.unpack_from("<Q", head, 32)
            phentsize, phnum = struct.unpack_from("<HH", head, 54)
            if e_type != 2 or e_machine != _EM_X86_64:
                raise RuntimeFailure(f"{path} is not an x86-64 ELF executable")
            fh.seek(phoff)
            table = fh.read(phentsize * phnum)
            if len(table) != phentsize * phnum or phnum == 0:
                raise RuntimeFailure(f"{path}: truncated ELF program headers")
            pvh: int | None = None
            for i in range(phnum):
                p_type, _flags, p_offset = struct.unpack_from("<IIQ", table, i * phentsize)
                (p_filesz,) = struct.unpack_from("<Q", table, i * phentsize + 32)
                if p_offset + p_filesz > size:
                    raise RuntimeFailure(f"{path} is truncated (segment {i} ends past the file)")
                if p_type == _PT_NOTE and pvh is None:
                    fh.seek(p_offset)
                    pvh = _pvh_note(fh.read(p_filesz))
    except OSError as exc:
        raise RuntimeFailure(f"cannot read {path}: {exc.strerror or exc}") from exc
    return VmlinuxInfo(size=size, entry=entry, pvh_entry=pvh)


def _pvh_note(notes: bytes) -> int | None:
    pos = 0
    while pos + 12 <= len(notes):
        namesz, descsz, kind = struct.unpack_from("<III", notes, pos)
        pos += 12
        name = notes[pos : pos + namesz].rstrip(b"\0")
        pos += (namesz + 3) & ~3
        desc = notes[pos : pos + descsz]
        pos += (descsz + 3) & ~3
        if name == b"Xen" and kind == _XEN_ELFNOTE_PHYS32_ENTRY and len(desc) >= 4:
            return int.from_bytes(desc[:4] if len(desc) < 8 else desc[:8], "little")
    return None


def extract_vmlinux(bzimage: Path, dest: Path, lz4: str = "lz4") -> VmlinuxInfo:
    """Decompress the ELF kernel out of an LZ4 bzImage into ``dest`` (atomically)."""
    try:
        data = bzimage.read_bytes()
    except OSError as exc:
        raise RuntimeFailure(f"cannot read {bzimage}: {exc.strerror or exc}") from exc
    compressed, expected = _payload(data)
    if shutil.which(lz4) is None:
        raise RuntimeFailure(f"{lz4} is not installed (apt-get install lz4)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".vmlinux-", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            # lz4 exits 1 when garbage follows the frame (the fallback path
            # passes the rest of the bzImage); the ELF check below decides.
            result = subprocess.run(
                [lz4, "-d", "-c", "-q"],
                input=compressed,
                stdout=out,
                stderr=subprocess.PIPE,
                timeout=_TIMEOUT,
                check=False,
            )
        if expected is not None and tmp.stat().st_size != expected:
            said = result.stderr.decode(errors="replace").strip()
            raise RuntimeFailure(
                f"lz4 produced {tmp.stat().st_size} bytes from {bzimage}, expected "
                f"{expected} (exit {result.returncode}: {said or 'no output'})"
            )
        info = inspect_vmlinux(tmp)
        if info.pvh_entry is None:
            raise RuntimeFailure(
                f"the kernel in {bzimage} has no PVH entry note; QEMU microvm cannot boot it"
            )
        tmp.chmod(0o644)
        tmp.replace(dest)
        return info
    finally:
        tmp.unlink(missing_ok=True)


# -- fetching the package ------------------------------------------------------------------


def _run(argv: list[str], cwd: Path | None = None) -> str:
    try:
        result = subprocess.run(
            argv,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=_TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeFailure(f"cannot run {argv[0]}: {exc}") from exc
    if result.returncode != 0:
        said = (result.stderr.strip() or result.stdout.strip())[-2000:]
        raise RuntimeFailure(f"{' '.join(argv)} failed (exit {result.returncode}): {said}")
    return result.stdout


def _download(package: str, into: Path) -> Path:
    _run(["apt-get", "download", "-q", package], cwd=into)
    debs = sorted(into.glob(f"{package}_*.deb"))
    if not debs:
        raise RuntimeFailure(f"apt-get download {package} produced no .deb in {into}")
    return debs[-1]


def _image_dependency(deb: Path) -> str | None:
    """The ``linux-image-<version>`` package a metapackage depends on."""
    depends = _run(["dpkg-deb", "-f", str(deb), "Depends"])
    match = re.search(r"\b(linux-image-\d[\w.+-]*)", depends)
    return match.group(1) if match else None


def _has_bzimage(deb: Path) -> bool:
    return any(
        re.search(r"\./boot/vmlinuz-", line)
        for line in _run(["dpkg-deb", "-c", str(deb)]).splitlines()
    )


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _load(entry: Path) -> GuestKernel | None:
    try:
        data = json.loads((entry / STAMP_NAME).read_text())
        kernel = GuestKernel(
            version=str(data["version"]),
            package=str(data["package"]),
            package_version=str(data["package_version"]),
            root=entry,
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return kernel if kernel.vmlinux.is_file() and kernel.version == entry.name else None


def find_kernel(root: Path, version: str | None = None) -> GuestKernel | None:
    """The ready kernel ``version`` under ``root``, or the most recently fetched one."""
    if version is not None:
        return _load(root / version) if not version.startswith(".") else None
    found: list[tuple[float, GuestKernel]] = []
    with contextlib.suppress(OSError):
        for entry in root.iterdir():
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            kernel = _load(entry)
            if kernel is not None:
                found.append(((entry / STAMP_NAME).stat().st_mtime, kernel))
    return max(found, key=lambda item: item[0])[1] if found else None


def ensure_kernel(root: Path, package: str = KERNEL_PACKAGE) -> GuestKernel:
    """A ready guest kernel under ``root``; fetches and unpacks ``package`` if there is none."""
    kernel = find_kernel(root)
    if kernel is not None:
        return kernel
    with _locked(root):
        kernel = find_kernel(root)  # another process may have fetched it meanwhile
        if kernel is not None:
            return kernel
        for stale in root.glob(".build-*"):
            shutil.rmtree(stale, ignore_errors=True)
        build = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
        try:
            return _fetch(root, build, package)
        finally:
            shutil.rmtree(build, ignore_errors=True)


def _fetch(root: Path, build: Path, package: str) -> GuestKernel:
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise RuntimeFailure("apt-get and dpkg-deb are needed to fetch the guest kernel")
    downloads = build / "debs"
    downloads.mkdir()
    deb = _download(package, downloads)
    if not _has_bzimage(deb):
        image = _image_dependency(deb)
        if image is None:
            raise RuntimeFailure(f"{package} neither ships a kernel nor depends on one")
        deb = _download(image, downloads)
    tree = build / "tree"
    _run(["dpkg-deb", "-x", str(deb), str(tree)])
    images = sorted((tree / "boot").glob("vmlinuz-*"))
    if not images:
        raise RuntimeFailure(f"{deb.name} has no /boot/vmlinuz-*")
    version = images[-1].name.removeprefix("vmlinuz-")
    if not (tree / "lib" / "modules" / version).is_dir():
        raise RuntimeFailure(f"{deb.name} has no /lib/modules/{version}")
    extract_vmlinux(images[-1], build / "vmlinux")
    package_name = _run(["dpkg-deb", "-f", str(deb), "Package"]).strip()
    package_version = _run(["dpkg-deb", "-f", str(deb), "Version"]).strip()
    shutil.rmtree(downloads)
    stamp = {
        "version": version,
        "package": package_name,
        "package_version": package_version,
        "requested": package,
        "fetched_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    (build / STAMP_NAME).write_text(json.dumps(stamp, indent=2) + "\n")
    build.chmod(0o755)
    final = root / version
    if final.exists():  # an unready leftover (no stamp): replace it
        shutil.rmtree(final)
    build.rename(final)
    kernel = _load(final)
    if kernel is None:
        raise RuntimeFailure(f"the fetched kernel in {final} is not usable")
    return kernel
