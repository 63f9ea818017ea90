"""The gVisor (runsc) runtime. See :mod:`.runtime`."""

from .runtime import GVisorRuntime

__all__ = ["GVisorRuntime"]
