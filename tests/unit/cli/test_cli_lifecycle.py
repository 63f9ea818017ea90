"""``atelier hibernate|wake|auto-stop|fork|snapshot`` and ``create --snapshot
--pause-after ...``: parsing, requests and output."""

from __future__ import annotations

import json

import httpx
from sdk_fakes import SANDBOX, FakeApi, error
from typer.testing import CliRunner, Result

from atelier.cli.context import CliState
from atelier.cli.main import app
from atelier.cli.snapshots import human_size

SB = "/v1/sandboxes/sb-1"
SNAPSHOT = {
    "id": "snap-1",
    "name": "deps",
    "sandbox_id": "sb-1",
    "template": "base",
    "runtime": "gvisor",
    "labels": {},
    "has_memory": True,
    "size_bytes": 3 * 1024 * 1024,
    "created_at": "2026-11-28T00:00:00Z",
}


def run(fake: FakeApi, *args: str) -> Result:
    return CliRunner().invoke(app, list(args), obj=CliState(transport=fake.transport))


def _fake() -> FakeApi:
    fake = FakeApi()
    fake.on("GET", SB, httpx.Response(200, json=SANDBOX))
    fake.on("POST", "/v1/sandboxes", httpx.Response(201, json=SANDBOX))
    return fake


def test_create_from_a_snapshot_with_an_idle_policy() -> None:
    fake = _fake()
    result = run(
        fake, "create", "--snapshot", "deps", "--pause-after", "10m",
        "--hibernate-after", "1h", "--delete-after", "7d",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    body = json.loads(fake.last.content)
    assert body["snapshot"] == "deps" and "template" not in body
    assert body["auto_stop"] == {
        "pause_after": 600.0,
        "hibernate_after": 3600.0,
        "delete_after": 7 * 86400.0,
    }
    result = run(fake, "create", "--pause-after", "soon")
    assert result.exit_code == 2 and "duration" in result.output


def test_hibernate_wake_and_fork_print_states_and_ids() -> None:
    fake = _fake()
    fake.on("POST", f"{SB}/hibernate", httpx.Response(200, json={**SANDBOX, "state": "hibernated"}))
    fake.on("POST", f"{SB}/wake", httpx.Response(200, json=SANDBOX))
    forks = [{**SANDBOX, "id": "sb-a"}, {**SANDBOX, "id": "sb-b"}]
    fake.on("POST", f"{SB}/fork", httpx.Response(201, json={"sandboxes": forks}))
    assert run(fake, "hibernate", "sb-1").stdout == "sb-1 hibernated\n"
    assert run(fake, "wake", "sb-1").stdout == "sb-1 running\n"
    result = run(fake, "fork", "sb-1", "-n", "2")
    assert result.exit_code == 0, result.output
    assert result.stdout == "sb-a\nsb-b\n"
    assert json.loads(fake.last.content) == {"count": 2}


def test_auto_stop_sets_shows_and_clears_the_policy() -> None:
    fake = _fake()

    def echo(request: httpx.Request) -> httpx.Response:
        policy = json.loads(request.content)
        shown = policy if any(v is not None for v in policy.values()) else None
        return httpx.Response(200, json={**SANDBOX, "auto_stop": shown})

    fake.on("PUT", f"{SB}/auto-stop", echo)
    result = run(fake, "auto-stop", "sb-1", "--pause-after", "90", "--delete-after", "2d")
    assert result.exit_code == 0, result.output
    assert result.stdout == "sb-1: pause after 90s, delete after 2d idle\n"
    assert run(fake, "auto-stop", "sb-1", "--off").stdout == "sb-1: no idle policy\n"
    assert json.loads(fake.last.content)["pause_after"] is None
    assert run(fake, "auto-stop", "sb-1").stdout == "sb-1: no idle policy\n"  # a GET
    assert fake.last.method == "GET"
    assert run(fake, "auto-stop", "sb-1", "--off", "--pause-after", "1m").exit_code == 2


def test_snapshot_create_ls_and_rm() -> None:
    fake = _fake()
    fake.on("POST", f"{SB}/snapshots", httpx.Response(201, json=SNAPSHOT))
    fake.on("GET", "/v1/snapshots", httpx.Response(200, json={"snapshots": [SNAPSHOT]}))
    fake.on("DELETE", "/v1/snapshots/deps", error(409, "snapshot_in_use", "in use by sb-2"))
    result = run(fake, "snapshot", "create", "sb-1", "--name", "deps", "--no-memory")
    assert result.stdout == "snap-1\n"
    assert json.loads(fake.last.content) == {"name": "deps", "labels": {}, "memory": False}
    result = run(fake, "snapshot", "ls")
    assert result.exit_code == 0, result.output
    assert "snap-1" in result.stdout and "3.0M" in result.stdout and "yes" in result.stdout
    result = run(fake, "snapshot", "rm", "deps")
    assert result.exit_code == 2
    assert "in use by sb-2 (snapshot_in_use)" in result.output


def test_human_sizes() -> None:
    assert [human_size(n) for n in (0, 1023, 1536, 5 * 1024**3)] == ["0B", "1023B", "1.5K", "5.0G"]
