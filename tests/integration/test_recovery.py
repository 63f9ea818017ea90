"""Crash recovery: SIGKILL the server at awkward moments, start it again, lose nothing."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator

import pytest
from server_harness import ServerProcess, find_leaks

from atelier import Sandbox
from atelier.images.store import TemplateInfo
from conftest import new_server, shut_down

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def crashy_server(base_template: TemplateInfo) -> Iterator[ServerProcess]:
    srv = new_server(base_template)
    srv.start()
    try:
        yield srv
    finally:
        if srv.proc is None:
            srv.start()
        shut_down(srv)


def sandbox_dirs(srv: ServerProcess) -> set[str]:
    d = srv.data_dir / "sandboxes"
    return {p.name for p in d.iterdir()} if d.exists() else set()


def test_kill_mid_create_leaves_nothing(crashy_server: ServerProcess) -> None:
    srv = crashy_server
    errors: list[BaseException] = []

    def create() -> None:
        try:
            Sandbox.create(api_url=srv.url, token=srv.token)
        except BaseException as exc:  # the server dies under it
            errors.append(exc)

    t = threading.Thread(target=create)
    t.start()
    deadline = time.monotonic() + 30
    while not sandbox_dirs(srv) and time.monotonic() < deadline:
        time.sleep(0.01)  # wait until the runtime started making the sandbox
    assert sandbox_dirs(srv), "create never reached the runtime"
    srv.kill()
    t.join(timeout=60)
    assert errors, "the create should have failed with the server gone"

    srv.start()
    with srv.client() as http:
        assert http.get("/v1/sandboxes").json()["sandboxes"] == []
    leaks = find_leaks(srv.data_dir)
    assert leaks.empty(), leaks
    with sqlite3.connect(srv.data_dir / "atelier.db") as db:
        kinds = [row[0] for row in db.execute("SELECT kind FROM events")]
    assert "recover_discard" in kinds  # the audit trail says what recovery did


def test_kill_mid_exec_readopts_running_sandbox(crashy_server: ServerProcess) -> None:
    srv = crashy_server
    sb = Sandbox.create(api_url=srv.url, token=srv.token)
    sb.files.write("/home/user/state.txt", "before crash")
    bg = sb.commands.run("sleep 600", background=True)

    def foreground() -> None:
        with contextlib.suppress(Exception):  # the server dies under it
            sb.commands.run("sleep 600; echo never")

    t = threading.Thread(target=foreground)
    t.start()
    deadline = time.monotonic() + 30
    while len(sb.commands.list()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    srv.kill()
    t.join(timeout=60)

    srv.start()
    again = Sandbox.connect(sb.id, api_url=srv.url, token=srv.token)
    assert again.get_info().state == "running"
    assert again.files.read_text("/home/user/state.txt") == "before crash"
    assert again.commands.run("echo alive").stdout == "alive\n"
    running = {p.pid: p for p in again.commands.list() if p.running}
    # the background process survives; the foreground one died with its caller
    assert bg.pid in running
    assert all("echo never" not in (p.cmd or "") for p in running.values())
    again.kill()
    assert find_leaks(srv.data_dir).empty()


def test_restart_keeps_sandboxes_and_stop_works_after_adoption(
    crashy_server: ServerProcess,
) -> None:
    srv = crashy_server
    sb = Sandbox.create(api_url=srv.url, token=srv.token)
    srv.stop()  # a clean stop (make down) must not touch sandboxes
    srv.start()
    again = Sandbox.connect(sb.id, api_url=srv.url, token=srv.token)
    assert again.commands.run("hostname").stdout.strip() == sb.id
    assert again.stop().state == "stopped"
    assert again.start().state == "running"
    again.kill()


def test_orphans_unknown_to_the_database_are_destroyed(crashy_server: ServerProcess) -> None:
    srv = crashy_server
    sb = Sandbox.create(api_url=srv.url, token=srv.token)
    srv.kill()
    # forget the sandbox in the database behind the server's back
    with sqlite3.connect(srv.data_dir / "atelier.db") as db:
        db.execute("DELETE FROM sandbox_labels WHERE sandbox_id = ?", (sb.id,))
        db.execute("DELETE FROM sandboxes WHERE id = ?", (sb.id,))
    srv.start()
    assert sb.id not in sandbox_dirs(srv)
    assert find_leaks(srv.data_dir).empty()
