"""One logged-in SSH connection's view of its sandbox: the agent, and the audit trail."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..core.agent_client import AgentClient
from ..core.auth import Principal
from ..core.idle import ActivityTracker
from ..core.models import SandboxRecord
from .auth import Grant

__all__ = ["AgentSource", "EventSink", "SandboxAccess"]

log = logging.getLogger("atelier.sshgw")


class AgentSource(Protocol):
    activity: ActivityTracker  # open sessions keep the sandbox from idling (core/idle.py)

    async def agent(
        self, principal: Principal, sandbox_id: str
    ) -> tuple[SandboxRecord, AgentClient]: ...


class EventSink(Protocol):
    async def record_event(
        self, kind: str, sandbox_id: str | None, actor: str | None, **detail: Any
    ) -> None: ...


@dataclass
class SandboxAccess:
    grant: Grant
    sandboxes: AgentSource
    events: EventSink
    peer: str
    forwarded: set[tuple[str, int]] = field(default_factory=set)  # recorded already

    @property
    def sandbox_id(self) -> str:
        return self.grant.sandbox_id

    async def agent(self) -> tuple[SandboxRecord, AgentClient]:
        """The sandbox (checked again: it may have been stopped or deleted) and its agent.

        Raises ``InvalidStateTransition`` ("... is stopped: start it first") and
        friends, whose message the session shows to the user.
        """
        return await self.sandboxes.agent(self.grant.principal, self.grant.sandbox_id)

    def attached(self) -> contextlib.AbstractContextManager[None]:
        """Hold while a session or tunnel is open: the sandbox is not idle meanwhile."""
        return self.sandboxes.activity.attached(self.grant.sandbox_id)

    async def record(self, **detail: Any) -> None:
        """One ``ssh.session`` event in the audit trail; never fails the session."""
        try:
            await self.events.record_event(
                "ssh.session",
                self.grant.sandbox_id,
                self.grant.principal.token_id,
                key=self.grant.key_name,
                peer=self.peer,
                **detail,
            )
        except Exception:
            log.exception("could not record an ssh.session event for %s", self.sandbox_id)
