"""The QEMU microVM runtime (KVM where it can boot a standard guest, TCG otherwise).
See :mod:`.runtime`."""

from .runtime import QemuRuntime

__all__ = ["QemuRuntime"]
