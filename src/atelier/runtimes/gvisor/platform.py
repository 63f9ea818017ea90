"""Which runsc platform (``--platform``) to use on this host, and why.

The choice is made at run time, never hard-coded:

1. ``settings.runsc_platform`` if set (the operator knows best);
2. ``systrap`` if this runsc has it (fast, needs nothing from the host);
3. ``kvm`` only if ``/dev/kvm`` is usable *and* is real hardware
   virtualization: no ``/sys/module/kvm_pvm`` (a nested "PVM" KVM, on which
   runsc's kvm platform hangs) and ``vmx`` or ``svm`` in the CPU flags;
4. ``ptrace`` otherwise (slow to spawn processes, but works everywhere).

The pure function :func:`choose_platform` takes every input as a parameter
so it can be tested; :func:`detect_platform` gathers the inputs from the host
and caches the answer. ``atelier doctor`` reuses both.
"""

from __future__ import annotations

import functools
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "KNOWN_PLATFORMS",
    "PlatformChoice",
    "choose_platform",
    "detect_platform",
    "kvm_usable",
    "parse_platforms",
    "runsc_platforms",
]

KNOWN_PLATFORMS = ("systrap", "kvm", "ptrace")
DEV_KVM = Path("/dev/kvm")
PVM_MODULE = Path("/sys/module/kvm_pvm")
CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True, slots=True)
class PlatformChoice:
    name: str  # the value for ``runsc --platform``
    reason: str  # one human sentence: why this one
    supported: tuple[str, ...] = ()  # what this runsc offers (empty: unknown)
    forced: bool = False  # chosen by settings.runsc_platform

    @property
    def usable(self) -> bool:
        """False when a forced platform is one this runsc does not have."""
        return not self.supported or self.name in self.supported


def parse_platforms(text: str) -> tuple[str, ...]:
    """Platform names from ``runsc help platforms`` (one per line) or from the
    ``-platform`` line of ``runsc flags`` (``... to use: ptrace (default), kvm.``)."""
    found: list[str] = []
    for raw in text.replace(",", " ").replace(":", " ").split():
        word = raw.strip(".()\"'").lower()
        if word in KNOWN_PLATFORMS and word not in found:
            found.append(word)
    return tuple(found)


def _cpu_flags(cpuinfo: str) -> set[str]:
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


def kvm_usable(
    dev_kvm: Path = DEV_KVM,
    pvm_module: Path = PVM_MODULE,
    cpuinfo: str | None = None,
) -> tuple[bool, str]:
    """Whether runsc's kvm platform can work here, and why (not)."""
    if not dev_kvm.exists():
        return False, f"{dev_kvm} does not exist"
    try:
        fd = os.open(dev_kvm, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return False, f"{dev_kvm} cannot be opened: {exc.strerror}"
    os.close(fd)
    if pvm_module.exists():
        return False, f"{dev_kvm} is a nested PVM KVM ({pvm_module} exists): runsc kvm hangs"
    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            return False, f"cannot read {CPUINFO}: {exc.strerror}"
    flags = _cpu_flags(cpuinfo)
    if not flags & {"vmx", "svm"}:
        return False, "the CPU flags have neither vmx nor svm (no hardware virtualization)"
    return True, f"{dev_kvm} is usable with hardware virtualization"


def choose_platform(
    supported: tuple[str, ...],
    forced: str | None,
    kvm: tuple[bool, str],
) -> PlatformChoice:
    """Pick a platform from what runsc offers (``supported``), a forced
    setting and the :func:`kvm_usable` verdict."""
    if forced:
        if supported and forced not in supported:
            reason = (
                f"runsc_platform={forced} is set, but this runsc only has {', '.join(supported)}"
            )
        else:
            reason = f"forced by the runsc_platform setting ({forced})"
        return PlatformChoice(forced, reason, supported, forced=True)
    if "systrap" in supported:
        return PlatformChoice("systrap", "runsc offers systrap", supported)
    kvm_ok, kvm_why = kvm
    if kvm_ok and (not supported or "kvm" in supported):
        return PlatformChoice("kvm", kvm_why, supported)
    has = ", ".join(supported) if supported else "unknown"
    why = f"no systrap in this runsc (has: {has}); kvm not used: {kvm_why}"
    return PlatformChoice("ptrace", why, supported)


def runsc_platforms(runsc_bin: str, timeout: float = 10.0) -> tuple[str, ...]:
    """Platforms this runsc binary supports (empty tuple if it cannot say)."""
    for argv in ([runsc_bin, "help", "platforms"], [runsc_bin, "flags"]):
        try:
            proc = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.SubprocessError):
            continue
        text = proc.stdout + proc.stderr
        if argv[-1] == "flags":
            text = "\n".join(ln for ln in text.splitlines() if "platform to use" in ln)
        found = parse_platforms(text)
        if found:
            return found
    return ()


@functools.cache
def detect_platform(runsc_bin: str, forced: str | None = None) -> PlatformChoice:
    """The platform to run ``runsc_bin`` with on this host (probed once)."""
    return choose_platform(runsc_platforms(runsc_bin), forced, kvm_usable())
