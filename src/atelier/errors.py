"""The one exception hierarchy of Atelier, shared by server, SDK and CLI.

Every error carries a stable machine-readable ``code`` (what API clients and
the SDK switch on), a human ``message`` and optional structured ``details``.
The HTTP status of each class is data (``status``); the API layer turns any
:class:`AtelierError` into ``{"code", "message", "details"}`` with that status,
and the SDK turns such a body back into the same class via :func:`from_payload`.

::

    AtelierError (500 internal)
    ├── InvalidRequest (400 invalid_request)
    │   ├── InvalidPath (400 invalid_path)
    │   ├── IsADirectory (400 is_a_directory)
    │   └── NotADirectory (400 not_a_directory)
    ├── AuthenticationError (401 unauthenticated)
    │   └── WebhookSignatureInvalid (401 webhook_signature_invalid)
    ├── PermissionDenied (403 forbidden)
    │   ├── FilePermissionDenied (403 permission_denied)
    │   └── GitAuthenticationFailed (403 git_auth_failed)
    ├── NotFound (404 not_found)
    │   ├── SandboxNotFound (404 sandbox_not_found)
    │   ├── TemplateNotFound (404 template_not_found)
    │   ├── ProcessNotFound (404 process_not_found)
    │   ├── FileNotFound (404 file_not_found)
    │   ├── TokenNotFound (404 token_not_found)
    │   ├── OperationNotFound (404 operation_not_found)
    │   ├── SecretNotFound (404 secret_not_found)
    │   ├── GitRepositoryNotFound (404 git_repo_not_found)
    │   ├── GitRefNotFound (404 git_ref_not_found)
    │   ├── SnapshotNotFound (404 snapshot_not_found)
    │   └── PrebuildNotFound (404 prebuild_not_found)
    ├── Conflict (409 conflict)
    │   ├── InvalidStateTransition (409 invalid_state)
    │   ├── FileExists (409 file_exists)
    │   ├── DirectoryNotEmpty (409 directory_not_empty)
    │   ├── TemplateInUse (409 template_in_use)
    │   ├── SnapshotInUse (409 snapshot_in_use)
    │   └── WebhookReplayed (409 webhook_replayed)
    ├── ValidationFailed (422 validation_error)
    │   ├── InvalidDockerfile (422 invalid_dockerfile)  - names the line
    │   ├── BuildFailed (422 build_failed)       - a build step failed
    │   ├── GitCommandFailed (422 git_command_failed)  - sandbox.git.*
    │   └── WorkspaceSetupFailed (422 workspace_setup_failed)
    ├── RateLimited (429 rate_limited)
    ├── SandboxFailure (500 sandbox_error)       - a runtime or agent failed
    │   ├── RuntimeFailure (500 runtime_error)
    │   └── AgentFailure (500 agent_error)
    ├── UpstreamFailure (502 upstream_error)     - a git host or registry failed
    │   ├── GitUnreachable (502 git_unreachable)
    │   └── PortUnreachable (502 connection_refused) - nothing listens on a sandbox port
    ├── ServiceUnavailable (503 unavailable)
    │   └── RuntimeUnavailable (503 runtime_unavailable)
    └── ApiConnectionError (503 connection_error) - SDK: server unreachable
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "AgentFailure",
    "ApiConnectionError",
    "AtelierError",
    "AuthenticationError",
    "BuildFailed",
    "Conflict",
    "DirectoryNotEmpty",
    "FileExists",
    "FileNotFound",
    "FilePermissionDenied",
    "GitAuthenticationFailed",
    "GitCommandFailed",
    "GitRefNotFound",
    "GitRepositoryNotFound",
    "GitUnreachable",
    "InvalidDockerfile",
    "InvalidPath",
    "InvalidRequest",
    "InvalidStateTransition",
    "IsADirectory",
    "NotADirectory",
    "NotFound",
    "OperationNotFound",
    "PermissionDenied",
    "PortUnreachable",
    "PrebuildNotFound",
    "ProcessNotFound",
    "RateLimited",
    "RuntimeFailure",
    "RuntimeUnavailable",
    "SandboxFailure",
    "SandboxNotFound",
    "SecretNotFound",
    "ServiceUnavailable",
    "SnapshotInUse",
    "SnapshotNotFound",
    "TemplateInUse",
    "TemplateNotFound",
    "TokenNotFound",
    "UpstreamFailure",
    "ValidationFailed",
    "WebhookReplayed",
    "WebhookSignatureInvalid",
    "WorkspaceSetupFailed",
    "error_class_for",
    "from_payload",
]


class AtelierError(Exception):
    """Root of every error Atelier raises on purpose."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details or {}

    def to_payload(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return body


class InvalidRequest(AtelierError):
    status, code = 400, "invalid_request"


class InvalidPath(InvalidRequest):
    code = "invalid_path"


class IsADirectory(InvalidRequest):
    code = "is_a_directory"


class NotADirectory(InvalidRequest):
    code = "not_a_directory"


class AuthenticationError(AtelierError):
    status, code = 401, "unauthenticated"


class WebhookSignatureInvalid(AuthenticationError):
    """A webhook delivery without a valid signature or token for its prebuild."""

    code = "webhook_signature_invalid"


class PermissionDenied(AtelierError):
    status, code = 403, "forbidden"


class FilePermissionDenied(PermissionDenied):
    code = "permission_denied"


class GitAuthenticationFailed(PermissionDenied):
    """The git host refused the credentials (or none were given and it wants some)."""

    code = "git_auth_failed"


class NotFound(AtelierError):
    status, code = 404, "not_found"


class SandboxNotFound(NotFound):
    code = "sandbox_not_found"


class TemplateNotFound(NotFound):
    code = "template_not_found"


class ProcessNotFound(NotFound):
    code = "process_not_found"


class FileNotFound(NotFound):
    code = "file_not_found"


class TokenNotFound(NotFound):
    code = "token_not_found"


class OperationNotFound(NotFound):
    code = "operation_not_found"


class SecretNotFound(NotFound):
    code = "secret_not_found"


class GitRepositoryNotFound(NotFound):
    code = "git_repo_not_found"


class GitRefNotFound(NotFound):
    code = "git_ref_not_found"


class SnapshotNotFound(NotFound):
    code = "snapshot_not_found"


class PrebuildNotFound(NotFound):
    code = "prebuild_not_found"


class Conflict(AtelierError):
    status, code = 409, "conflict"


class InvalidStateTransition(Conflict):
    code = "invalid_state"


class FileExists(Conflict):
    code = "file_exists"


class DirectoryNotEmpty(Conflict):
    code = "directory_not_empty"


class TemplateInUse(Conflict):
    code = "template_in_use"


class SnapshotInUse(Conflict):
    """A snapshot still backs sandboxes or child snapshots (``details["users"]``)."""

    code = "snapshot_in_use"


class WebhookReplayed(Conflict):
    """A webhook delivery id this prebuild has already received."""

    code = "webhook_replayed"


class ValidationFailed(AtelierError):
    status, code = 422, "validation_error"


class InvalidDockerfile(ValidationFailed):
    """A Dockerfile that cannot be built as written; the message names the line."""

    code = "invalid_dockerfile"


class BuildFailed(ValidationFailed):
    """A template build step failed (e.g. a ``RUN`` exited non-zero)."""

    code = "build_failed"


class GitCommandFailed(ValidationFailed):
    """A ``git`` command run in a sandbox (``sandbox.git``) failed; details hold its output."""

    code = "git_command_failed"


class WorkspaceSetupFailed(ValidationFailed):
    """A workspace's setup (e.g. a lifecycle command) failed; its output is kept."""

    code = "workspace_setup_failed"


class RateLimited(AtelierError):
    status, code = 429, "rate_limited"


class SandboxFailure(AtelierError):
    status, code = 500, "sandbox_error"


class RuntimeFailure(SandboxFailure):
    code = "runtime_error"


class AgentFailure(SandboxFailure):
    code = "agent_error"


class UpstreamFailure(AtelierError):
    """A remote service Atelier depends on (a git host, a registry) failed."""

    status, code = 502, "upstream_error"


class GitUnreachable(UpstreamFailure):
    code = "git_unreachable"


class PortUnreachable(UpstreamFailure):
    """Nothing accepts connections on that port inside the sandbox."""

    code = "connection_refused"


class ServiceUnavailable(AtelierError):
    status, code = 503, "unavailable"


class RuntimeUnavailable(ServiceUnavailable):
    code = "runtime_unavailable"


class ApiConnectionError(ServiceUnavailable):
    code = "connection_error"


def _all_subclasses(cls: type[AtelierError]) -> list[type[AtelierError]]:
    out: list[type[AtelierError]] = [cls]
    for sub in cls.__subclasses__():
        out.extend(_all_subclasses(sub))
    return out


_BY_CODE: dict[str, type[AtelierError]] = {c.code: c for c in _all_subclasses(AtelierError)}
_BY_STATUS: dict[int, type[AtelierError]] = {
    400: InvalidRequest,
    401: AuthenticationError,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    422: ValidationFailed,
    429: RateLimited,
    503: ServiceUnavailable,
}


def error_class_for(code: str, status: int | None = None) -> type[AtelierError]:
    """The class for a wire ``code``; falls back on the HTTP status, then the root."""
    if code in _BY_CODE:
        return _BY_CODE[code]
    if status is not None and status in _BY_STATUS:
        return _BY_STATUS[status]
    return AtelierError


def from_payload(payload: dict[str, Any], status: int | None = None) -> AtelierError:
    """Rebuild an error from an API error body ``{"code", "message", "details"}``."""
    code = str(payload.get("code", "internal"))
    cls = error_class_for(code, status)
    err = cls(str(payload.get("message", code)), details=payload.get("details") or None)
    return err
