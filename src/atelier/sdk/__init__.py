"""The Atelier Python SDK: ``Sandbox`` (sync) and ``AsyncSandbox`` over one shared core.

It talks to the REST API of ``docs/api.md`` only and never imports server code.
"""

from atelier.sdk._base import ConnectionConfig
from atelier.sdk._http import AsyncResponseStream, ResponseStream
from atelier.sdk.code import (
    AsyncCodeInterpreter,
    CodeContext,
    CodeInterpreter,
    Execution,
    ExecutionError,
    Logs,
    Result,
)
from atelier.sdk.commands import AsyncCommandHandle, AsyncCommands, CommandHandle, Commands
from atelier.sdk.files import AsyncFiles, Files
from atelier.sdk.git import AsyncGit, Git, GitFileStatus, GitStatus
from atelier.sdk.models import (
    AutoStop,
    CommandEvent,
    CommandResult,
    Exit,
    FileEvent,
    FileInfo,
    GitAuth,
    ProcessInfo,
    SandboxInfo,
    SandboxState,
    SnapshotInfo,
    Started,
    Stderr,
    Stdout,
    WorkspaceInfo,
)
from atelier.sdk.ports import AsyncPorts, PortEvent, PortInfo, Ports, PreviewLink
from atelier.sdk.prebuilds import AsyncPrebuilds, PrebuildBuildInfo, PrebuildInfo, Prebuilds
from atelier.sdk.pty import AsyncPty, AsyncPtySession, Pty, PtySession
from atelier.sdk.sandbox import AsyncSandbox, Sandbox
from atelier.sdk.secrets import AsyncSecrets, SecretInfo, Secrets
from atelier.sdk.snapshots import AsyncSnapshots, Snapshots
from atelier.sdk.ssh_keys import AsyncSSHKeys, SSHGatewayInfo, SSHKeyInfo, SSHKeys
from atelier.sdk.templates import (
    AsyncOperation,
    AsyncTemplates,
    LogLine,
    Operation,
    OperationEnd,
    OperationInfo,
    TemplateInfo,
    Templates,
)

__all__ = [
    "AsyncCodeInterpreter",
    "AsyncCommandHandle",
    "AsyncCommands",
    "AsyncFiles",
    "AsyncGit",
    "AsyncOperation",
    "AsyncPorts",
    "AsyncPrebuilds",
    "AsyncPty",
    "AsyncPtySession",
    "AsyncResponseStream",
    "AsyncSSHKeys",
    "AsyncSandbox",
    "AsyncSecrets",
    "AsyncSnapshots",
    "AsyncTemplates",
    "AutoStop",
    "CodeContext",
    "CodeInterpreter",
    "CommandEvent",
    "CommandHandle",
    "CommandResult",
    "Commands",
    "ConnectionConfig",
    "Execution",
    "ExecutionError",
    "Exit",
    "FileEvent",
    "FileInfo",
    "Files",
    "Git",
    "GitAuth",
    "GitFileStatus",
    "GitStatus",
    "LogLine",
    "Logs",
    "Operation",
    "OperationEnd",
    "OperationInfo",
    "PortEvent",
    "PortInfo",
    "Ports",
    "PrebuildBuildInfo",
    "PrebuildInfo",
    "Prebuilds",
    "PreviewLink",
    "ProcessInfo",
    "Pty",
    "PtySession",
    "ResponseStream",
    "Result",
    "SSHGatewayInfo",
    "SSHKeyInfo",
    "SSHKeys",
    "Sandbox",
    "SandboxInfo",
    "SandboxState",
    "SecretInfo",
    "Secrets",
    "SnapshotInfo",
    "Snapshots",
    "Started",
    "Stderr",
    "Stdout",
    "TemplateInfo",
    "Templates",
    "WorkspaceInfo",
]
