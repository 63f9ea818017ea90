"""Which QEMU accelerator (``kvm`` or ``tcg``) to use on this host, and why.

Chosen at run time, never hard-coded: ``kvm`` only when
:func:`atelier.hostinfo.kvm_status` says ``/dev/kvm`` can boot a standard
guest (a nested "PVM" KVM opens fine but cannot), ``tcg`` (software
emulation: slow but real isolation) otherwise. An operator may force either;
forcing ``kvm`` where it cannot work is reported, not silently downgraded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ... import hostinfo

__all__ = ["ACCELS", "TCG_TB_MIB", "AccelChoice", "choose_accel", "detect_accel"]

ACCELS = ("kvm", "tcg")
TCG_TB_MIB = 256  # TCG translation cache: RSS grows with translated code up to this


@dataclass(frozen=True, slots=True)
class AccelChoice:
    name: str  # "kvm" or "tcg"
    reason: str  # one sentence: why this one
    usable: bool = True  # False: forced to something this host cannot do
    forced: bool = False

    @property
    def cpu(self) -> str:
        """The ``-cpu`` model: the host's with KVM, a portable one under TCG."""
        return "host" if self.name == "kvm" else "qemu64"

    @property
    def machine_accel(self) -> str:
        """The ``-accel`` argument (TCG gets a bounded translation cache)."""
        return "kvm" if self.name == "kvm" else f"tcg,tb-size={TCG_TB_MIB}"


def choose_accel(kvm: tuple[bool, str], forced: str | None = None) -> AccelChoice:
    """Pick from the :func:`~atelier.hostinfo.kvm_status` verdict and an optional override."""
    kvm_ok, kvm_why = kvm
    if forced:
        name = forced.strip().lower()
        if name not in ACCELS:
            return AccelChoice(
                name, f"unknown accelerator {forced!r} (use kvm or tcg)", False, True
            )
        if name == "kvm" and not kvm_ok:
            return AccelChoice("kvm", f"kvm forced, but {kvm_why}", False, True)
        return AccelChoice(name, f"forced by the qemu_accel setting ({kvm_why})", True, True)
    if kvm_ok:
        return AccelChoice("kvm", kvm_why)
    return AccelChoice("tcg", f"software emulation; {kvm_why}")


def detect_accel(
    forced: str | None = None,
    kvm_status: Callable[[], tuple[bool, str]] = hostinfo.kvm_status,
) -> AccelChoice:
    """The accelerator for this host (probes ``/dev/kvm`` each call: cheap)."""
    return choose_accel(kvm_status(), forced)
