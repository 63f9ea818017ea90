"""Prebuilds: a repository's branch kept ready to start workspaces from.

For a repository + branch (+ devcontainer path), every new commit -- from a
push webhook (:mod:`.webhooks`), a poll of the remote (:mod:`.poller`) or a
manual run -- is built once (:mod:`.builder`): the workspace is made with
``onCreateCommand`` and ``updateContentCommand`` (repository-scoped secrets
only) and snapshotted, memory included where the runtime can. A new workspace
of that branch starts from the newest ready one
(``core/workspaces/from_prebuild.py``). Old builds expire by the retention
policy (:meth:`.service.PrebuildService.collect`). See docs/prebuilds.md.
"""

from .builder import PREBUILD_LABEL, PrebuildBuilder
from .models import PROVIDERS, BuildState, PrebuildBuild, PrebuildConfig
from .poller import PrebuildPoller
from .service import PrebuildService, PrebuildSpec, WebhookOutcome
from .store import PrebuildStore
from .webhooks import PushEvent, sign, verify_delivery

__all__ = [
    "PREBUILD_LABEL",
    "PROVIDERS",
    "BuildState",
    "PrebuildBuild",
    "PrebuildBuilder",
    "PrebuildConfig",
    "PrebuildPoller",
    "PrebuildService",
    "PrebuildSpec",
    "PrebuildStore",
    "PushEvent",
    "WebhookOutcome",
    "sign",
    "verify_delivery",
]
