"""The official ``e2b`` Python SDK, unchanged, against the session's real Atelier server.

The SDK is pointed at Atelier only through its environment variables
(``E2B_API_URL``, ``E2B_SANDBOX_URL``, ``E2B_API_KEY``), as a user would. Its
sync API blocks, which is fine: the server runs in its own process. Every
sandbox made here is killed in a ``finally``; the session's ``shut_down``
asserts nothing leaked. See docs/e2b.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from server_harness import ServerProcess

from ci_support import skip_unless_ci

try:
    import e2b
    from e2b.sandbox.commands.command_handle import PtySize
except ImportError:  # the dev extra installs it; CI must have it
    e2b = None

pytestmark = pytest.mark.integration


def _wait_for(predicate: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def e2b_env(server: ServerProcess) -> Iterator[ServerProcess]:
    if e2b is None:
        skip_unless_ci("the e2b package is not installed (pip install -e '.[dev]')")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("E2B_API_URL", f"{server.url}/e2b")
        mp.setenv("E2B_SANDBOX_URL", server.url)
        mp.setenv("E2B_API_KEY", server.token)
        mp.delenv("E2B_DOMAIN", raising=False)
        mp.delenv("E2B_DEBUG", raising=False)
        yield server


@pytest.fixture(scope="module")
def sbx(e2b_env: ServerProcess) -> Iterator[Any]:
    """One sandbox shared by the tests that only run commands and move files."""
    sandbox = e2b.Sandbox.create(envs={"SANDBOX_LEVEL": "yes"}, timeout=900)
    try:
        yield sandbox
    finally:
        sandbox.kill()


def test_create_metadata_info_and_list(e2b_env: ServerProcess) -> None:
    sandbox = e2b.Sandbox.create(metadata={"suite": "e2b", "case": "info"}, timeout=600)
    try:
        info = sandbox.get_info()
        assert info.sandbox_id == sandbox.sandbox_id
        assert info.metadata == {"suite": "e2b", "case": "info"}
        assert info.state == e2b.SandboxState.RUNNING
        assert info.template_id == "base"
        assert sandbox.is_running()
        query = e2b.SandboxQuery(metadata={"case": "info"})
        listed = e2b.Sandbox.list(query=query).next_items()
        assert [s.sandbox_id for s in listed] == [sandbox.sandbox_id]
        assert listed[0].metadata["suite"] == "e2b"
        before = info.end_at
        sandbox.set_timeout(3000)
        assert sandbox.get_info().end_at > before
        # a second client connects by id and reaches the same machine
        sandbox.files.write("/tmp/marker", "here")
        other = e2b.Sandbox.connect(sandbox.sandbox_id)
        assert other.files.read("/tmp/marker") == "here"
    finally:
        assert sandbox.kill() is True
    assert e2b.Sandbox.kill(sandbox.sandbox_id) is False
    with pytest.raises(e2b.SandboxNotFoundException):
        e2b.Sandbox.get_info(sandbox.sandbox_id)
    assert not sandbox.is_running()


def test_run_with_callbacks_env_cwd_user(sbx: Any) -> None:
    out: list[str] = []
    err: list[str] = []
    result = sbx.commands.run(
        "echo out-$SANDBOX_LEVEL-$EXTRA; echo err >&2; pwd; id -un",
        envs={"EXTRA": "x"},
        cwd="/tmp",
        on_stdout=out.append,
        on_stderr=err.append,
    )
    assert result.exit_code == 0
    assert result.stdout == "out-yes-x\n/tmp\nuser\n"
    assert "".join(out) == result.stdout
    assert "".join(err) == result.stderr == "err\n"
    assert sbx.commands.run("id -un", user="root").stdout == "root\n"
    with pytest.raises(e2b.CommandExitException) as failed:
        sbx.commands.run("echo bad >&2; exit 3")
    assert failed.value.exit_code == 3
    assert failed.value.stderr == "bad\n"


def test_background_kill_connect_stdin_and_timeout(sbx: Any) -> None:
    handle = sbx.commands.run("sleep 600", background=True)
    assert handle.pid in [p.pid for p in sbx.commands.list()]
    assert sbx.commands.kill(handle.pid) is True
    with pytest.raises(e2b.CommandExitException):
        handle.wait()
    assert sbx.commands.kill(handle.pid) is False
    assert handle.pid not in [p.pid for p in sbx.commands.list()]

    later = sbx.commands.run("sleep 1; echo finished", background=True)
    later.disconnect()  # the process keeps running without a follower
    assert sbx.commands.connect(later.pid).wait().stdout == "finished\n"

    cat = sbx.commands.run("cat; echo end", background=True, stdin=True)
    sbx.commands.send_stdin(cat.pid, "line one\n")
    sbx.commands.send_stdin(cat.pid, b"line two\n")
    sbx.commands.close_stdin(cat.pid)
    assert cat.wait().stdout == "line one\nline two\nend\n"

    with pytest.raises(e2b.TimeoutException):
        sbx.commands.run("sleep 30", timeout=1)
    # the timed-out process was killed, not left behind
    _wait_for(
        lambda: not any("sleep 30" in " ".join(p.args) for p in sbx.commands.list()),
        "the timed-out command to be killed",
    )


def test_files_round_trip(sbx: Any) -> None:
    info = sbx.files.write("/tmp/e2b/hello.txt", "hello\n")
    assert (info.path, info.name) == ("/tmp/e2b/hello.txt", "hello.txt")
    assert sbx.files.read("/tmp/e2b/hello.txt") == "hello\n"
    binary = bytes(range(256)) * 64
    sbx.files.write("/tmp/e2b/bin.dat", binary)
    assert bytes(sbx.files.read("/tmp/e2b/bin.dat", format="bytes")) == binary
    large = os.urandom(20 * 1024 * 1024)
    sbx.files.write("/tmp/e2b/large.dat", large)
    assert bytes(sbx.files.read("/tmp/e2b/large.dat", format="bytes")) == large
    assert sbx.files.get_info("/tmp/e2b/large.dat").size == len(large)
    written = sbx.files.write_files(
        [{"path": "/tmp/e2b/a.txt", "data": "A"}, {"path": "relative.txt", "data": b"R"}]
    )
    assert [w.path for w in written] == ["/tmp/e2b/a.txt", "/home/user/relative.txt"]
    assert sbx.commands.run("cat relative.txt").stdout == "R"  # home is the default cwd

    names = {e.name: e for e in sbx.files.list("/tmp/e2b")}
    assert set(names) == {"hello.txt", "bin.dat", "large.dat", "a.txt"}
    assert names["hello.txt"].type == e2b.FileType.FILE
    assert names["hello.txt"].permissions.startswith("-rw")
    assert sbx.files.exists("/tmp/e2b/a.txt")
    assert not sbx.files.exists("/tmp/e2b/missing")
    assert sbx.files.make_dir("/tmp/e2b/sub/deeper") is True
    assert sbx.files.make_dir("/tmp/e2b/sub/deeper") is False
    assert sbx.files.get_info("/tmp/e2b/sub").type == e2b.FileType.DIR
    moved = sbx.files.rename("/tmp/e2b/a.txt", "/tmp/e2b/sub/b.txt")
    assert moved.path == "/tmp/e2b/sub/b.txt"
    sbx.files.remove("/tmp/e2b/sub")
    assert not sbx.files.exists("/tmp/e2b/sub")
    with pytest.raises(e2b.FileNotFoundException):
        sbx.files.read("/tmp/e2b/missing")
    with pytest.raises(e2b.NotFoundException):
        sbx.files.get_info("/tmp/e2b/missing")


def test_watch_dir_events(sbx: Any) -> None:
    sbx.files.make_dir("/tmp/watched")
    watcher = sbx.files.watch_dir("/tmp/watched")
    try:
        sbx.files.write("/tmp/watched/new.txt", "x")
        sbx.commands.run("rm /tmp/watched/new.txt")
        seen: list[Any] = []

        def both() -> bool:
            seen.extend(watcher.get_new_events())
            kinds = {(e.name, e.type) for e in seen}
            return {
                ("new.txt", e2b.FilesystemEventType.CREATE),
                ("new.txt", e2b.FilesystemEventType.REMOVE),
            } <= kinds

        _wait_for(both, "create and remove events")
    finally:
        watcher.stop()


def test_pty_echo_and_resize(sbx: Any) -> None:
    chunks: list[bytes] = []
    terminal = sbx.pty.create(PtySize(rows=24, cols=80))
    reader = threading.Thread(
        target=lambda: _drain(terminal, chunks), name="pty-reader", daemon=True
    )
    reader.start()
    try:
        sbx.pty.send_stdin(terminal.pid, b"echo pty-$((40 + 2))\n")
        _wait_for(lambda: b"pty-42" in b"".join(chunks), "the PTY to echo")
        sbx.pty.resize(terminal.pid, PtySize(rows=31, cols=101))
        sbx.pty.send_stdin(terminal.pid, b"stty size\n")
        _wait_for(lambda: b"31 101" in b"".join(chunks), "the new terminal size")
    finally:
        assert sbx.pty.kill(terminal.pid) is True
        reader.join(30)
    assert not reader.is_alive()


def _drain(terminal: Any, chunks: list[bytes]) -> None:
    with contextlib.suppress(e2b.CommandExitException):  # killed: a non-zero exit
        terminal.wait(on_pty=lambda data: chunks.append(bytes(data)))


def test_async_sandbox(e2b_env: ServerProcess) -> None:
    async def scenario() -> None:
        sandbox = await e2b.AsyncSandbox.create(timeout=600)
        try:
            out: list[str] = []
            result = await sandbox.commands.run("echo async", on_stdout=out.append)
            assert result.stdout == "async\n" and out == ["async\n"]
            await sandbox.files.write("/tmp/async.txt", b"A")
            assert await sandbox.files.read("/tmp/async.txt") == "A"
            events: list[Any] = []
            handle = await sandbox.files.watch_dir("/tmp", on_event=events.append)
            await sandbox.files.write("/tmp/streamed.txt", "s")
            deadline = time.monotonic() + 30
            while not any(e.name == "streamed.txt" for e in events):
                assert time.monotonic() < deadline, "no watch event over the stream"
                await asyncio.sleep(0.1)
            await handle.stop()
        finally:
            await sandbox.kill()

    asyncio.run(scenario())


def test_unsupported_features_and_bad_key(e2b_env: ServerProcess, sbx: Any) -> None:
    with pytest.raises(e2b.SandboxException, match=r"501: .*not supported by Atelier"):
        sbx.get_metrics()
    with pytest.raises(e2b.SandboxException, match="volume mounts is not supported"):
        e2b.Sandbox.create(volume_mounts={"/data": "volume"})
    with pytest.raises(e2b.TemplateException, match="metadata"):
        sbx.files.write("/tmp/meta.txt", "m", metadata={"k": "v"})
    with pytest.raises(e2b.AuthenticationException):
        e2b.Sandbox.create(api_key="not-a-token")
    with pytest.raises(e2b.SandboxException, match="template"):
        e2b.Sandbox.create("no-such-template")
