"""Translations between e2b's shapes and Atelier's, checked against the SDK's own
protobuf messages where the SDK is installed (the dev extra installs it)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from atelier.core.agent_client import FileInfo, WatchEvent
from atelier.core.models import SandboxRecord, SandboxState
from atelier.e2b.envd import ENVD_PORT, envd_target
from atelier.e2b.mapping import (
    ENVD_VERSION,
    entry_info,
    listed_sandbox,
    resolve_path,
    sandbox_created,
    sandbox_detail,
    template_for,
    user_from_basic,
    watch_event,
)
from atelier.e2b.process import _end
from atelier.errors import InvalidPath
from ci_support import skip_unless_ci


def _record(state: SandboxState = SandboxState.RUNNING, **kw: Any) -> SandboxRecord:
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    fields: dict[str, Any] = dict(
        id="sb-0123456789",
        owner="tok",
        template="base",
        runtime="gvisor",
        state=state,
        vcpus=2,
        memory_mib=1024,
        disk_mib=4096,
        env={},
        labels={"team": "ai"},
        timeout=300,
        expires_at=now + timedelta(seconds=300),
        created_at=now,
        started_at=now,
    )
    fields.update(kw)
    return SandboxRecord(**fields)


def _file(**kw: Any) -> FileInfo:
    info: dict[str, Any] = dict(
        name="a.txt",
        path="/tmp/a.txt",
        type="file",
        size=12345678901,
        mode="0644",
        owner="user",
        group="user",
        modified_at="2026-01-02T03:04:05Z",
        symlink_target=None,
    )
    info.update(kw)
    return info  # type: ignore[return-value]


def test_template_and_state_mapping() -> None:
    assert template_for("base", "python") == "python"
    assert template_for("code-interpreter", "python") == "code-interpreter"
    assert listed_sandbox(_record())["state"] == "running"
    for state in (SandboxState.PAUSED, SandboxState.STOPPED):
        assert listed_sandbox(_record(state))["state"] == "paused"


def test_sandbox_bodies() -> None:
    rec = _record()
    created = sandbox_created(rec, "secret")
    assert created == {
        "templateID": "base",
        "sandboxID": rec.id,
        "clientID": "atelier",
        "envdVersion": ENVD_VERSION,
        "envdAccessToken": "secret",
    }
    detail = sandbox_detail(rec, "secret")
    assert detail["metadata"] == {"team": "ai"}
    assert (detail["cpuCount"], detail["memoryMB"], detail["diskSizeMB"]) == (2, 1024, 4096)
    assert detail["startedAt"] == "2026-01-02T03:04:05.000000Z"
    assert detail["endAt"] == "2026-01-02T03:09:05.000000Z"
    assert "envdAccessToken" not in listed_sandbox(rec)
    forever = listed_sandbox(_record(expires_at=None, timeout=None))
    assert forever["endAt"].startswith("2125-")


def test_basic_auth_user() -> None:
    encoded = base64.b64encode(b"root:").decode()
    assert user_from_basic(f"Basic {encoded}") == "root"
    assert user_from_basic(f"basic {encoded}") == "root"
    assert user_from_basic("Bearer abc") is None
    assert user_from_basic("Basic !!!") is None
    assert user_from_basic(None) is None
    assert user_from_basic("Basic " + base64.b64encode(b":").decode()) is None


def test_paths_resolve_against_the_users_home() -> None:
    assert resolve_path("notes.txt", None) == "/home/user/notes.txt"
    assert resolve_path("notes.txt", "root") == "/root/notes.txt"
    assert resolve_path("~/x", "dev") == "/home/dev/x"
    assert resolve_path("/tmp/../etc//hosts", "root") == "/etc/hosts"
    with pytest.raises(InvalidPath):
        resolve_path("", None)


def test_entry_info_fields() -> None:
    entry = entry_info(_file())
    assert entry["type"] == "FILE_TYPE_FILE"
    assert entry["size"] == "12345678901"  # int64 travels as a JSON string
    assert entry["mode"] == 0o644
    assert entry["permissions"] == "-rw-r--r--"
    link = entry_info(_file(type="symlink", mode="0777", symlink_target="/etc/hosts"))
    assert link["isSymlink"] is True and link["symlinkTarget"] == "/etc/hosts"
    assert link["permissions"] == "lrwxrwxrwx"
    assert entry_info(_file(type="dir", mode="0755"))["permissions"] == "drwxr-xr-x"


def test_watch_event_names_are_relative_to_the_watched_dir() -> None:
    event: WatchEvent = {"type": "event", "event": "modify", "path": "/w/sub/f", "is_dir": False}
    assert watch_event(event, "/w") == {"name": "sub/f", "type": "EVENT_TYPE_WRITE"}


def test_envd_requests_are_told_apart_from_atelier_api_requests() -> None:
    def scope(*headers: tuple[bytes, bytes]) -> dict[str, Any]:
        return {"type": "http", "headers": list(headers)}

    assert envd_target(scope((b"e2b-sandbox-id", b"sb-1"), (b"e2b-sandbox-port", b"49983"))) == (
        "sb-1",
        ENVD_PORT,
    )
    assert envd_target(scope((b"e2b-sandbox-id", b"sb-1"))) == ("sb-1", ENVD_PORT)
    assert envd_target(scope((b"host", b"49983-sb-2.e2b.example.com"))) == ("sb-2", ENVD_PORT)
    # other ports of that host form are Atelier's host-based previews
    assert envd_target(scope((b"host", b"8080-sb-2.e2b.example.com"))) is None
    assert envd_target(scope((b"host", b"127.0.0.1:8080"))) is None


def test_our_json_is_what_the_sdks_protobuf_classes_read() -> None:
    try:
        from e2b.envd.filesystem import filesystem_pb
        from e2b.envd.process import process_pb
    except ImportError:
        skip_unless_ci("the e2b package is not installed (pip install -e '.[dev]')")
    from atelier.core.agent_client import Exit

    stat = filesystem_pb.StatResponse.from_json(json.dumps({"entry": entry_info(_file())}))
    assert stat.entry is not None
    assert stat.entry.size == 12345678901
    assert stat.entry.type == filesystem_pb.FileType.FILE
    assert stat.entry.modified_time is not None
    end = process_pb.StartResponse.from_json(
        json.dumps(_end(Exit(exit_code=137, signal="SIGKILL", timed_out=False)))
    )
    assert end.event is not None and end.event.event is not None
    assert end.event.event.value.exit_code == 137
    assert end.event.event.value.exited is False
    data = process_pb.StartResponse.from_json(
        json.dumps({"event": {"data": {"stdout": base64.b64encode(b"\xff\x00").decode()}}})
    )
    assert data.event is not None and data.event.event is not None
    assert data.event.event.value.output.value == b"\xff\x00"
