"""Lifecycle commands: their three forms, one normalised type, and the run plan.

Each lifecycle property may be

* a string — one command run by ``/bin/sh -c``;
* an array of strings — one command run directly (argv, no shell);
* an object — named commands (each a string or an array) run in parallel.

All three become a :class:`LifecycleCommand`: a tuple of :class:`Command` and a
``parallel`` flag. :func:`plan_lifecycle` orders them as the spec does::

    initializeCommand (host) → onCreateCommand → updateContentCommand
        → postCreateCommand → postStartCommand → postAttachCommand

with the commands contributed by Features before the configuration's own for
each hook, and splits the plan at ``waitFor``: steps up to and including it
must finish before the workspace is "ready"; the rest continue in the
background. If a step fails, the steps after it do not run.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from atelier.errors import PermissionDenied

if TYPE_CHECKING:
    from atelier.workspaces.devcontainer import DevContainerConfig
    from atelier.workspaces.features import FeatureMetadata

__all__ = [
    "DEFAULT_SHELL",
    "Command",
    "LifecycleCommand",
    "LifecycleHook",
    "LifecyclePlan",
    "LifecycleStage",
    "LifecycleStep",
    "StepLocation",
    "parse_lifecycle_command",
    "plan_lifecycle",
]

DEFAULT_SHELL: tuple[str, ...] = ("/bin/sh", "-c")


class LifecycleHook(enum.StrEnum):
    """The lifecycle properties, in the order they run."""

    INITIALIZE = "initializeCommand"
    ON_CREATE = "onCreateCommand"
    UPDATE_CONTENT = "updateContentCommand"
    POST_CREATE = "postCreateCommand"
    POST_START = "postStartCommand"
    POST_ATTACH = "postAttachCommand"

    @property
    def order(self) -> int:
        return list(LifecycleHook).index(self)


class LifecycleStage(enum.StrEnum):
    """Which part of the lifecycle a plan covers."""

    CREATE = "create"  # first start of a new workspace: every hook
    START = "start"  # a stopped workspace starts again: initialize, postStart, postAttach
    ATTACH = "attach"  # a client attaches to a running workspace: postAttach


_STAGE_HOOKS: dict[LifecycleStage, tuple[LifecycleHook, ...]] = {
    LifecycleStage.CREATE: tuple(LifecycleHook),
    LifecycleStage.START: (
        LifecycleHook.INITIALIZE,
        LifecycleHook.POST_START,
        LifecycleHook.POST_ATTACH,
    ),
    LifecycleStage.ATTACH: (LifecycleHook.POST_ATTACH,),
}


class StepLocation(enum.StrEnum):
    HOST = "host"  # on the machine running Atelier: only initializeCommand
    CONTAINER = "container"


@dataclass(frozen=True, slots=True)
class Command:
    """One process. ``shell``: ``argv`` is ``(script,)`` for ``/bin/sh -c``; else argv as is."""

    argv: tuple[str, ...]
    shell: bool
    name: str | None = None  # the key in the object form

    def to_argv(self, shell: Sequence[str] = DEFAULT_SHELL) -> tuple[str, ...]:
        return (*shell, self.argv[0]) if self.shell else self.argv

    def display(self) -> str:
        text = self.argv[0] if self.shell else " ".join(self.argv)
        return f"{self.name}: {text}" if self.name else text


@dataclass(frozen=True, slots=True)
class LifecycleCommand:
    """A lifecycle property in normalised form."""

    hook: LifecycleHook
    commands: tuple[Command, ...]
    parallel: bool  # True for the object form: every command runs at once


def _one(value: Any, name: str | None) -> Command | None:
    if isinstance(value, str):
        return Command((value,), shell=True, name=name) if value.strip() else None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return Command(tuple(value), shell=False, name=name) if value else None
    raise ValueError(f"expected a string or an array of strings, not {type(value).__name__}")


def parse_lifecycle_command(hook: LifecycleHook | str, value: Any) -> LifecycleCommand | None:
    """Normalise one lifecycle property; ``None`` when absent or empty.

    Raises :class:`ValueError` on a value of the wrong shape (the schema check
    catches those first for ``devcontainer.json``).
    """
    hook = LifecycleHook(hook)
    if value is None:
        return None
    if isinstance(value, dict):
        commands = [_one(v, str(k)) for k, v in value.items()]
        kept = tuple(c for c in commands if c is not None)
        return LifecycleCommand(hook, kept, parallel=True) if kept else None
    command = _one(value, None)
    return LifecycleCommand(hook, (command,), parallel=False) if command else None


@dataclass(frozen=True, slots=True)
class LifecycleStep:
    """One hook's commands from one origin: a group run sequentially or in parallel."""

    hook: LifecycleHook
    origin: str  # "devcontainer.json" or the id of the Feature that contributed it
    location: StepLocation
    commands: tuple[Command, ...]
    parallel: bool
    user: str | None  # None: the image's default user
    blocking: bool  # must finish before the workspace is ready


@dataclass(frozen=True, slots=True)
class LifecyclePlan:
    steps: tuple[LifecycleStep, ...]
    wait_for: LifecycleHook
    stage: LifecycleStage

    @property
    def host_steps(self) -> tuple[LifecycleStep, ...]:
        return tuple(s for s in self.steps if s.location is StepLocation.HOST)

    @property
    def blocking(self) -> tuple[LifecycleStep, ...]:
        """Steps that must finish before the workspace is ready, in order."""
        return tuple(s for s in self.steps if s.blocking)

    @property
    def background(self) -> tuple[LifecycleStep, ...]:
        """Steps that continue after the workspace is ready, in order."""
        return tuple(s for s in self.steps if not s.blocking)


def plan_lifecycle(
    config: DevContainerConfig,
    *,
    allow_host_commands: bool = False,
    stage: LifecycleStage = LifecycleStage.CREATE,
    features: Sequence[FeatureMetadata] = (),
) -> LifecyclePlan:
    """The ordered lifecycle steps of ``config`` for ``stage``.

    ``features`` (in install order) contribute their own lifecycle commands,
    which run before the configuration's for the same hook. Container steps run
    as ``remoteUser`` (else ``containerUser``, else the image's user).

    ``initializeCommand`` runs on the host, so it is refused with
    :class:`~atelier.errors.PermissionDenied` unless the operator allowed host
    commands (``allow_host_commands``).
    """
    initialize = config.lifecycle.get(LifecycleHook.INITIALIZE)
    if stage is not LifecycleStage.ATTACH and initialize and not allow_host_commands:
        raise PermissionDenied(
            "initializeCommand runs on the Atelier host and host commands are not allowed "
            f"here (command: {'; '.join(c.display() for c in initialize.commands)})",
            details={"property": "initializeCommand", "file": str(config.config_path)},
        )
    user = config.remote_user or config.container_user
    wait_order = config.wait_for.order
    steps: list[LifecycleStep] = []
    for hook in _STAGE_HOOKS[stage]:
        sources: list[tuple[str, Mapping[LifecycleHook, LifecycleCommand]]] = []
        if hook is not LifecycleHook.INITIALIZE:
            sources.extend((f.id, f.lifecycle) for f in features)
        sources.append(("devcontainer.json", config.lifecycle))
        for origin, lifecycle in sources:
            command = lifecycle.get(hook)
            if command is None:
                continue
            host = hook is LifecycleHook.INITIALIZE
            steps.append(
                LifecycleStep(
                    hook=hook,
                    origin=origin,
                    location=StepLocation.HOST if host else StepLocation.CONTAINER,
                    commands=command.commands,
                    parallel=command.parallel,
                    user=None if host else user,
                    blocking=hook.order <= wait_order,
                )
            )
    return LifecyclePlan(steps=tuple(steps), wait_for=config.wait_for, stage=stage)
