"""Every REST endpoint of ``docs/api.md`` as a request description.

Each function returns a :class:`Call` or :class:`StreamCall` (method, path,
query, JSON body and how to read the answer). The sync and async clients only
execute them, so the wire format is written down exactly once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import httpx

from atelier.errors import InvalidRequest
from atelier.sdk._base import (
    Call,
    NdjsonDecoder,
    Params,
    RawDecoder,
    StreamCall,
    event_decoder,
    parse_none,
)
from atelier.sdk.models import (
    AutoStop,
    CommandEvent,
    FileEvent,
    FileInfo,
    GitAuth,
    ProcessInfo,
    SandboxInfo,
    SnapshotInfo,
)

__all__ = [
    "chmod",
    "command_body",
    "create_sandbox",
    "create_workspace",
    "delete_sandbox",
    "file_exists",
    "fork_sandbox",
    "format_mode",
    "get_sandbox",
    "git_clone",
    "git_sync",
    "hibernate_sandbox",
    "list_files",
    "list_processes",
    "list_sandboxes",
    "make_dir",
    "pause_sandbox",
    "process_events",
    "pty_params",
    "read_file",
    "record_event",
    "remove_file",
    "rename",
    "resume_sandbox",
    "run_background",
    "run_foreground",
    "sandbox_logs",
    "send_stdin",
    "server_info",
    "set_auto_stop",
    "set_timeout",
    "signal_process",
    "snapshot_sandbox",
    "start_sandbox",
    "stat_file",
    "stop_sandbox",
    "wake_sandbox",
    "watch",
    "write_file",
]


def _sb(sandbox_id: str) -> str:
    return f"/v1/sandboxes/{quote(sandbox_id, safe='')}"


def format_mode(mode: int | str | None) -> str | None:
    """``0o644`` or ``"644"``/``"0644"`` → ``"0644"``."""
    if mode is None:
        return None
    if isinstance(mode, int):
        return f"{mode:04o}"
    text = mode.strip()
    if text.startswith("0o"):
        text = text[2:]
    try:
        int(text, 8)
    except ValueError as exc:
        raise InvalidRequest(f"invalid file mode {mode!r}: expected octal like '0644'") from exc
    return text.rjust(4, "0")


def _sandbox(response: httpx.Response) -> SandboxInfo:
    return SandboxInfo.from_json(response.json())


def _file_info(response: httpx.Response) -> FileInfo:
    return FileInfo.from_json(response.json())


# -- sandboxes ---------------------------------------------------------------


def _shape(
    runtime: str | None,
    vcpus: int,
    memory_mib: int,
    disk_mib: int,
    env: Mapping[str, str] | None,
    labels: Mapping[str, str] | None,
    timeout: int | None,
    network: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The body fields a sandbox and a workspace request share."""
    body: dict[str, Any] = {
        "vcpus": vcpus,
        "memory_mib": memory_mib,
        "disk_mib": disk_mib,
        "env": dict(env or {}),
        "labels": dict(labels or {}),
        "timeout": timeout,
    }
    if runtime is not None:
        body["runtime"] = runtime
    if network is not None:
        body["network"] = dict(network)
    return body


def create_sandbox(
    *,
    template: str,
    runtime: str | None,
    vcpus: int,
    memory_mib: int,
    disk_mib: int,
    env: Mapping[str, str] | None,
    labels: Mapping[str, str] | None,
    timeout: int | None,
    network: Mapping[str, Any] | None = None,
    snapshot: str | None = None,
    auto_stop: AutoStop | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> Call[SandboxInfo]:
    """With ``snapshot``, the template is the snapshot's, and so are the vcpus,
    memory and disk left at their ``defaults`` (the SDK's signature defaults)."""
    body = {
        "template": template,
        **_shape(runtime, vcpus, memory_mib, disk_mib, env, labels, timeout, network),
    }
    if snapshot is not None:
        body["snapshot"] = snapshot
        del body["template"]
        for key, value in (defaults or {}).items():
            if body.get(key) == value:
                del body[key]
    if auto_stop is not None:
        body["auto_stop"] = auto_stop.to_json()
    return Call("POST", "/v1/sandboxes", _sandbox, json=body)


def create_workspace(
    *,
    repo: str,
    ref: str | None,
    devcontainer: str | None,
    depth: int | None,
    credentials: GitAuth | None,
    secret: str | None,
    local_env: Mapping[str, str] | None,
    runtime: str | None,
    vcpus: int,
    memory_mib: int,
    disk_mib: int,
    env: Mapping[str, str] | None,
    labels: Mapping[str, str] | None,
    timeout: int | None,
    network: Mapping[str, Any] | None = None,
    auto_stop: AutoStop | None = None,
    prebuild: bool = True,
) -> Call[SandboxInfo]:
    body: dict[str, Any] = {
        "repo": repo,
        "ref": ref,
        "devcontainer": devcontainer,
        "depth": depth,
        "secret": secret,
        "local_env": dict(local_env or {}),
        **_shape(runtime, vcpus, memory_mib, disk_mib, env, labels, timeout, network),
    }
    if credentials is not None:
        body["credentials"] = credentials.to_json()
    if auto_stop is not None:
        body["auto_stop"] = auto_stop.to_json()
    if not prebuild:  # default: start from a ready prebuild of the branch (docs/prebuilds.md)
        body["prebuild"] = False
    return Call("POST", "/v1/workspaces", _sandbox, json=body)


def git_clone(
    sandbox_id: str,
    *,
    repo: str,
    path: str | None,
    ref: str | None,
    depth: int | None,
    credentials: GitAuth | None,
    secret: str | None = None,
) -> Call[dict[str, Any]]:
    body: dict[str, Any] = {
        "repo": repo, "path": path, "ref": ref, "depth": depth, "secret": secret,
    }  # fmt: skip
    if credentials is not None:
        body["credentials"] = credentials.to_json()
    return Call("POST", f"{_sb(sandbox_id)}/git/clone", lambda r: dict(r.json()), json=body)


def git_sync(
    sandbox_id: str,
    direction: str,
    *,
    path: str | None,
    remote: str,
    branch: str | None,
    credentials: GitAuth | None,
    secret: str | None = None,
) -> Call[dict[str, Any]]:
    body: dict[str, Any] = {"path": path, "remote": remote, "branch": branch, "secret": secret}
    if credentials is not None:
        body["credentials"] = credentials.to_json()
    path_ = f"{_sb(sandbox_id)}/git/{direction}"
    return Call("POST", path_, lambda r: dict(r.json()), json=body)


def list_sandboxes(
    state: str | None = None, labels: Mapping[str, str] | None = None
) -> Call[list[SandboxInfo]]:
    params: Params = []
    if state is not None:
        params.append(("state", str(state)))
    params.extend(("label", f"{k}={v}") for k, v in (labels or {}).items())

    def parse(response: httpx.Response) -> list[SandboxInfo]:
        return [SandboxInfo.from_json(s) for s in response.json().get("sandboxes", [])]

    return Call("GET", "/v1/sandboxes", parse, params=params)


def get_sandbox(sandbox_id: str) -> Call[SandboxInfo]:
    return Call("GET", _sb(sandbox_id), _sandbox)


def delete_sandbox(sandbox_id: str) -> Call[None]:
    return Call("DELETE", _sb(sandbox_id), parse_none)


def stop_sandbox(sandbox_id: str) -> Call[SandboxInfo]:
    return Call("POST", f"{_sb(sandbox_id)}/stop", _sandbox)


def pause_sandbox(sandbox_id: str) -> Call[SandboxInfo]:
    return Call("POST", f"{_sb(sandbox_id)}/pause", _sandbox)


def resume_sandbox(sandbox_id: str) -> Call[SandboxInfo]:
    return Call("POST", f"{_sb(sandbox_id)}/resume", _sandbox)


def hibernate_sandbox(sandbox_id: str) -> Call[SandboxInfo]:
    return Call("POST", f"{_sb(sandbox_id)}/hibernate", _sandbox)


def wake_sandbox(sandbox_id: str) -> Call[SandboxInfo]:
    return Call("POST", f"{_sb(sandbox_id)}/wake", _sandbox)


def set_auto_stop(sandbox_id: str, policy: AutoStop | None) -> Call[SandboxInfo]:
    body = (policy or AutoStop()).to_json()
    return Call("PUT", f"{_sb(sandbox_id)}/auto-stop", _sandbox, json=body)


def snapshot_sandbox(
    sandbox_id: str, name: str | None, labels: Mapping[str, str] | None, memory: bool | None
) -> Call[SnapshotInfo]:
    body = {"name": name, "labels": dict(labels or {}), "memory": memory}
    return Call(
        "POST",
        f"{_sb(sandbox_id)}/snapshots",
        lambda r: SnapshotInfo.from_json(r.json()),
        json=body,
    )


def fork_sandbox(sandbox_id: str, count: int) -> Call[list[SandboxInfo]]:
    def parse(response: httpx.Response) -> list[SandboxInfo]:
        return [SandboxInfo.from_json(s) for s in response.json()["sandboxes"]]

    return Call("POST", f"{_sb(sandbox_id)}/fork", parse, json={"count": count})


def start_sandbox(sandbox_id: str) -> Call[SandboxInfo]:
    return Call("POST", f"{_sb(sandbox_id)}/start", _sandbox)


def set_timeout(sandbox_id: str, seconds: int | None) -> Call[SandboxInfo]:
    return Call("POST", f"{_sb(sandbox_id)}/timeout", _sandbox, json={"timeout": seconds})


def sandbox_logs(sandbox_id: str, tail: int | None = None) -> Call[str]:
    params: Params = [] if tail is None else [("tail", str(int(tail)))]
    return Call("GET", f"{_sb(sandbox_id)}/logs", lambda r: r.text, params=params)


def record_event(sandbox_id: str, kind: str, detail: Mapping[str, Any]) -> Call[None]:
    body = {"kind": kind, "detail": dict(detail)}
    return Call("POST", f"{_sb(sandbox_id)}/events", parse_none, json=body)


def server_info() -> Call[dict[str, Any]]:
    def parse(response: httpx.Response) -> dict[str, Any]:
        data: dict[str, Any] = response.json()
        return data

    return Call("GET", "/v1/info", parse)


# -- commands ----------------------------------------------------------------


def command_body(
    cmd: str | None,
    argv: Sequence[str] | None,
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    user: str | None = None,
    timeout: float | None = None,
    stdin: str | None = None,
    keep_stdin_open: bool = False,
    background: bool = False,
    tag: str | None = None,
) -> dict[str, Any]:
    """The JSON body of ``POST .../commands``; exactly one of ``cmd``/``argv``."""
    if (cmd is None) == (argv is None):
        raise InvalidRequest("give exactly one of cmd (a shell string) or argv (a list)")
    if isinstance(argv, str):
        raise InvalidRequest("argv must be a list of strings, not a string")
    if argv is not None and not argv:
        raise InvalidRequest("argv must not be empty")
    body: dict[str, Any] = {"env": dict(env or {}), "background": background}
    if cmd is not None:
        body["cmd"] = cmd
    else:
        body["argv"] = [str(a) for a in argv or ()]
    optional = {"cwd": cwd, "user": user, "timeout": timeout, "stdin": stdin, "tag": tag}
    body.update({k: v for k, v in optional.items() if v is not None})
    if keep_stdin_open:
        body["keep_stdin_open"] = True
    return body


def run_foreground(sandbox_id: str, body: dict[str, Any]) -> StreamCall[CommandEvent]:
    return StreamCall(
        "POST", f"{_sb(sandbox_id)}/commands", event_decoder, json={**body, "background": False}
    )


def run_background(sandbox_id: str, body: dict[str, Any]) -> Call[ProcessInfo]:
    return Call(
        "POST",
        f"{_sb(sandbox_id)}/commands",
        lambda r: ProcessInfo.from_json(r.json()),
        json={**body, "background": True},
    )


def list_processes(sandbox_id: str) -> Call[list[ProcessInfo]]:
    def parse(response: httpx.Response) -> list[ProcessInfo]:
        return [ProcessInfo.from_json(p) for p in response.json().get("processes", [])]

    return Call("GET", f"{_sb(sandbox_id)}/commands", parse)


def process_events(sandbox_id: str, pid: int) -> StreamCall[CommandEvent]:
    return StreamCall("GET", f"{_sb(sandbox_id)}/commands/{int(pid)}/events", event_decoder)


def send_stdin(sandbox_id: str, pid: int, eof: bool = False) -> Call[None]:
    params: Params = [("eof", "true")] if eof else []
    return Call("POST", f"{_sb(sandbox_id)}/commands/{int(pid)}/stdin", parse_none, params=params)


def signal_process(sandbox_id: str, pid: int, signal: str | int) -> Call[None]:
    return Call(
        "POST",
        f"{_sb(sandbox_id)}/commands/{int(pid)}/signal",
        parse_none,
        json={"signal": signal},
    )


# -- files -------------------------------------------------------------------


def _files(sandbox_id: str, sub: str = "") -> str:
    return f"{_sb(sandbox_id)}/files{sub}"


def read_file(sandbox_id: str, path: str) -> StreamCall[bytes]:
    return StreamCall("GET", _files(sandbox_id), RawDecoder, params=[("path", path)])


def write_file(
    sandbox_id: str, path: str, mode: int | str | None = None, user: str | None = None
) -> Call[FileInfo]:
    params: Params = [("path", path)]
    if (text_mode := format_mode(mode)) is not None:
        params.append(("mode", text_mode))
    if user is not None:
        params.append(("user", user))
    return Call("PUT", _files(sandbox_id), _file_info, params=params)


def remove_file(sandbox_id: str, path: str, recursive: bool = False) -> Call[None]:
    params: Params = [("path", path), ("recursive", "true" if recursive else "false")]
    return Call("DELETE", _files(sandbox_id), parse_none, params=params)


def list_files(sandbox_id: str, path: str, depth: int = 1) -> Call[list[FileInfo]]:
    def parse(response: httpx.Response) -> list[FileInfo]:
        return [FileInfo.from_json(e) for e in response.json().get("entries", [])]

    params: Params = [("path", path), ("depth", str(int(depth)))]
    return Call("GET", _files(sandbox_id, "/list"), parse, params=params)


def stat_file(sandbox_id: str, path: str) -> Call[FileInfo]:
    return Call("GET", _files(sandbox_id, "/stat"), _file_info, params=[("path", path)])


def file_exists(sandbox_id: str, path: str) -> Call[bool]:
    return Call(
        "GET",
        _files(sandbox_id, "/exists"),
        lambda r: bool(r.json().get("exists")),
        params=[("path", path)],
    )


def make_dir(
    sandbox_id: str,
    path: str,
    parents: bool = True,
    mode: int | str | None = None,
    user: str | None = None,
) -> Call[bool]:
    body: dict[str, Any] = {"path": path, "parents": parents, "mode": format_mode(mode) or "0755"}
    if user is not None:
        body["user"] = user
    return Call(
        "POST", _files(sandbox_id, "/mkdir"), lambda r: bool(r.json().get("created")), json=body
    )


def rename(sandbox_id: str, source: str, destination: str) -> Call[FileInfo]:
    body = {"source": source, "destination": destination}
    return Call("POST", _files(sandbox_id, "/rename"), _file_info, json=body)


def chmod(sandbox_id: str, path: str, mode: int | str) -> Call[FileInfo]:
    body = {"path": path, "mode": format_mode(mode)}
    return Call("POST", _files(sandbox_id, "/chmod"), _file_info, json=body)


def watch(sandbox_id: str, path: str, recursive: bool = False) -> StreamCall[FileEvent]:
    params: Params = [("path", path), ("recursive", "true" if recursive else "false")]
    return StreamCall(
        "GET",
        _files(sandbox_id, "/watch"),
        lambda: NdjsonDecoder(FileEvent.from_json),
        params=params,
    )


# -- pty ---------------------------------------------------------------------


def pty_params(
    sandbox_id: str,
    cols: int = 80,
    rows: int = 24,
    cmd: str | None = None,
    user: str | None = None,
    cwd: str | None = None,
) -> tuple[str, Params]:
    """Path and query of the PTY WebSocket."""
    params: Params = [("cols", str(int(cols))), ("rows", str(int(rows)))]
    optional = {"cmd": cmd, "user": user, "cwd": cwd}
    params.extend((k, v) for k, v in optional.items() if v is not None)
    return f"{_sb(sandbox_id)}/pty", params
