"""Name → runtime lookup. The control plane only ever talks to this."""

from __future__ import annotations

from ..errors import RuntimeUnavailable
from .base import Runtime, RuntimeAvailability

__all__ = ["RuntimeRegistry"]


class RuntimeRegistry:
    def __init__(self, runtimes: list[Runtime] | None = None, default: str = "gvisor") -> None:
        self._runtimes: dict[str, Runtime] = {}
        self.default = default
        for rt in runtimes or []:
            self.register(rt)

    def register(self, runtime: Runtime) -> None:
        self._runtimes[runtime.name] = runtime

    def get(self, name: str | None = None) -> Runtime:
        key = name or self.default
        runtime = self._runtimes.get(key)
        if runtime is None:
            known = ", ".join(sorted(self._runtimes)) or "none"
            raise RuntimeUnavailable(
                f"runtime {key!r} is not available on this host (known: {known})"
            )
        status = runtime.availability()
        if not status.available:
            raise RuntimeUnavailable(f"runtime {key!r} cannot run here: {status.reason}")
        return runtime

    def all(self) -> list[Runtime]:
        return list(self._runtimes.values())

    def availability(self) -> list[RuntimeAvailability]:
        return [rt.availability() for rt in self._runtimes.values()]
