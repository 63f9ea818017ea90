"""Atelier: isolated workspaces for developers and AI agents.

``from atelier import Sandbox`` is the SDK's front door. The SDK names are
loaded lazily (PEP 562), so ``import atelier.errors`` — which the server does
too — stays cheap and pulls in no HTTP client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from atelier.sdk import (
        AsyncSandbox,
        CommandHandle,
        CommandResult,
        FileEvent,
        FileInfo,
        GitAuth,
        ProcessInfo,
        PtySession,
        Sandbox,
        SandboxInfo,
        SandboxState,
    )

__version__ = "0.1.0"  # keep in step with pyproject.toml

__all__ = [
    "AsyncSandbox",
    "CommandHandle",
    "CommandResult",
    "FileEvent",
    "FileInfo",
    "GitAuth",
    "ProcessInfo",
    "PtySession",
    "Sandbox",
    "SandboxInfo",
    "SandboxState",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        import atelier.sdk

        value = getattr(atelier.sdk, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'atelier' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
