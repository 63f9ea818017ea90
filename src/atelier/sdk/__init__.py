"""The Atelier Python SDK: ``Sandbox`` (sync) and ``AsyncSandbox`` over one shared core.

It talks to the REST API of ``docs/api.md`` only and never imports server code.
"""

from atelier.sdk._base import ConnectionConfig
from atelier.sdk._http import AsyncResponseStream, ResponseStream
from atelier.sdk.commands import AsyncCommandHandle, AsyncCommands, CommandHandle, Commands
from atelier.sdk.files import AsyncFiles, Files
from atelier.sdk.git import AsyncGit, Git, GitFileStatus, GitStatus
from atelier.sdk.models import (
    CommandEvent,
    CommandResult,
    Exit,
    FileEvent,
    FileInfo,
    GitAuth,
    ProcessInfo,
    SandboxInfo,
    SandboxState,
    Started,
    Stderr,
    Stdout,
    WorkspaceInfo,
)
from atelier.sdk.pty import AsyncPty, AsyncPtySession, Pty, PtySession
from atelier.sdk.sandbox import AsyncSandbox, Sandbox

__all__ = [
    "AsyncCommandHandle",
    "AsyncCommands",
    "AsyncFiles",
    "AsyncGit",
    "AsyncPty",
    "AsyncPtySession",
    "AsyncResponseStream",
    "AsyncSandbox",
    "CommandEvent",
    "CommandHandle",
    "CommandResult",
    "Commands",
    "ConnectionConfig",
    "Exit",
    "FileEvent",
    "FileInfo",
    "Files",
    "Git",
    "GitAuth",
    "GitFileStatus",
    "GitStatus",
    "ProcessInfo",
    "Pty",
    "PtySession",
    "ResponseStream",
    "Sandbox",
    "SandboxInfo",
    "SandboxState",
    "Started",
    "Stderr",
    "Stdout",
    "WorkspaceInfo",
]
