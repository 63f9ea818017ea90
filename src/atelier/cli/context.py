"""What every CLI command needs: where the API is, the token, SDK access."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import typer

from atelier.errors import AuthenticationError
from atelier.sdk import Sandbox

__all__ = ["CliState", "state"]


def _local_admin_token() -> str | None:
    """The admin token a local server wrote to ``<data_dir>/admin-token``, if readable."""
    try:
        from atelier.config import Settings

        return Settings().admin_token_file.read_text().strip() or None
    except Exception:
        return None


@dataclass
class CliState:
    """Global options; tests pass one with a fake ``transport`` as Click's ``obj``."""

    url: str | None = None
    token: str | None = None
    transport: httpx.BaseTransport | None = None

    def sdk_options(self) -> dict[str, Any]:
        token = self.token or _local_admin_token()
        if not token:
            raise AuthenticationError(
                "no API token: use --token or set ATELIER_TOKEN "
                "(a local server writes its admin token to <data_dir>/admin-token)"
            )
        return {"api_url": self.url, "token": token, "transport": self.transport}

    @contextlib.contextmanager
    def sandbox(self, sandbox_id: str) -> Iterator[Sandbox]:
        """Attach to a sandbox; release the connection (never the sandbox) afterwards."""
        sb = Sandbox.connect(sandbox_id, **self.sdk_options())
        try:
            yield sb
        finally:
            sb.close()


def state(ctx: typer.Context) -> CliState:
    return ctx.ensure_object(CliState)
