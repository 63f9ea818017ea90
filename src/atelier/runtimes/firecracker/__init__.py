"""The ``firecracker`` runtime: sandboxes as Firecracker microVMs (KVM + jailer).

See ``runtime.py`` for the verbs, ``api.py`` for the Firecracker API client,
``vsock.py`` for the hybrid vsock handshake and ``jailer.py`` for the jail.
"""

from .api import FirecrackerApi, RateLimiter, TokenBucket
from .host import FirecrackerOptions, GuestBoot, template_disk
from .runtime import FirecrackerRuntime
from .vsock import AGENT_PORT, VsockHandshakeError, open_connection

__all__ = [
    "AGENT_PORT",
    "FirecrackerApi",
    "FirecrackerOptions",
    "FirecrackerRuntime",
    "GuestBoot",
    "RateLimiter",
    "TokenBucket",
    "VsockHandshakeError",
    "open_connection",
    "template_disk",
]
