"""Preview URLs: a reverse proxy to servers inside sandboxes (docs/ports.md)."""

from __future__ import annotations

from typing import Any

from .middleware import COOKIE, PreviewMiddleware
from .signing import PreviewSigner, load_or_create_key
from .state import PORT_LABEL_PREFIX, PreviewState, preview_state, visibility_of

__all__ = [
    "COOKIE",
    "PORT_LABEL_PREFIX",
    "PreviewMiddleware",
    "PreviewSigner",
    "PreviewState",
    "install_preview",
    "load_or_create_key",
    "preview_state",
    "visibility_of",
]


def install_preview(app: Any) -> None:
    """Serve ``/preview/...`` and ``<port>-<id>.<preview_domain>`` before the API routes."""
    app.add_middleware(PreviewMiddleware)
