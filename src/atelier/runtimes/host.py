"""Every runtime this version of Atelier has, constructed for this host.

One list, used by the server's registry and by ``atelier doctor``: a runtime
that cannot run here is still listed, with its ``availability().reason``.
"""

from __future__ import annotations

from ..config import Settings
from .base import Runtime

__all__ = ["host_runtimes"]


def host_runtimes(settings: Settings) -> list[Runtime]:
    from ..network import NetworkManager
    from .firecracker import FirecrackerRuntime
    from .gvisor import GVisorRuntime
    from .qemu import QemuRuntime

    # one NetworkManager for every runtime with sandbox networks: one lease file,
    # one DNS forwarder, one lock per sandbox
    network = NetworkManager(settings)
    return [
        GVisorRuntime(settings, network=network),
        QemuRuntime(settings, network=network),
        FirecrackerRuntime(settings),
    ]
