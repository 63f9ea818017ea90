"""exec / process.* against a real agent subprocess, through AgentClient."""

from __future__ import annotations

import asyncio
import os
import pwd
import sys
import time
from pathlib import Path

import pytest
from agent_harness import AgentProcess, pid_alive, proc_state, wait_until

from atelier.agent.users import DEFAULT_PATH
from atelier.core.agent_client import AgentClient, Exit, Output, Started
from atelier.errors import InvalidRequest, ProcessNotFound


async def test_ping(client: AgentClient, agent: AgentProcess) -> None:
    pong = await client.ping()
    assert pong.pid == agent.pid and pong.protocol == 1
    assert client.is_open


async def test_argv_and_cmd(client: AgentClient) -> None:
    result = await client.run(argv=["echo", "hello", "world"])
    assert (result.exit_code, result.stdout, result.stderr) == (0, b"hello world\n", b"")
    result = await client.run("echo $((6 * 7)) | tr 4 X")
    assert result.stdout == b"X2\n"


async def test_stdout_stderr_and_exit_codes(client: AgentClient) -> None:
    result = await client.run("echo out; echo err >&2; echo out2; exit 3")
    assert result.stdout == b"out\nout2\n"
    assert result.stderr == b"err\n"
    assert (result.exit_code, result.signal, result.timed_out) == (3, None, False)
    assert (await client.run(argv=["false"])).exit_code == 1


async def test_event_order(client: AgentClient) -> None:
    session = await client.exec(argv=["sh", "-c", "echo a; echo b >&2"])
    events = [event async for event in session]
    assert isinstance(events[0], Started) and events[0].pid == session.pid
    assert isinstance(events[-1], Exit) and events[-1].exit_code == 0
    assert all(isinstance(e, Output) for e in events[1:-1])


async def test_command_not_found_exits_127(client: AgentClient) -> None:
    result = await client.run(argv=["definitely-not-a-command"])
    assert result.exit_code == 127
    assert result.stderr == b"atelier: definitely-not-a-command: command not found\n"
    result = await client.run(argv=["/no/such/binary"])
    assert result.exit_code == 127 and b"No such file or directory" in result.stderr
    result = await client.run("definitely-not-a-command")  # via the shell
    assert result.exit_code == 127


async def test_not_executable_exits_126(client: AgentClient, tmp_path: object) -> None:
    result = await client.run(argv=["/etc/passwd"])
    assert result.exit_code == 126 and b"Permission denied" in result.stderr


async def test_env(client: AgentClient) -> None:
    result = await client.run(argv=["env"], env={"FOO": "bar baz", "LANG": "C"})
    env = dict(line.split("=", 1) for line in result.stdout.decode().splitlines())
    assert env["FOO"] == "bar baz"
    assert env["LANG"] == "C"  # request env wins over the base env
    assert env["PATH"] == DEFAULT_PATH
    assert env["USER"] == env["LOGNAME"] == "root"
    assert env["HOME"] == pwd.getpwnam("root").pw_dir
    # argv[0] is looked up on the PATH of the final env
    result = await client.run(argv=["true"], env={"PATH": "/nonexistent"})
    assert result.exit_code == 127


async def test_cwd(client: AgentClient, tmp_path: object) -> None:
    assert (await client.run(argv=["pwd"], cwd="/tmp")).stdout == b"/tmp\n"
    home = pwd.getpwnam("root").pw_dir
    assert (await client.run(argv=["pwd"])).stdout == f"{home}\n".encode()
    with pytest.raises(InvalidRequest, match="cwd"):
        await client.exec(argv=["true"], cwd="/does/not/exist")
    with pytest.raises(InvalidRequest):
        await client.exec(argv=["true"], cwd="relative/dir")


async def test_user_switch(client: AgentClient) -> None:
    result = await client.run("id -u; id -g; id -G; echo $HOME $USER; pwd", user="nobody")
    lines = result.stdout.decode().split("\n")
    nobody = pwd.getpwnam("nobody")
    assert lines[0] == str(nobody.pw_uid)
    assert lines[1] == str(nobody.pw_gid)
    assert "0" not in lines[2].split()  # root's groups are gone
    assert lines[3] == f"{nobody.pw_dir} nobody"
    assert lines[4] == "/"  # nobody's home does not exist: cwd falls back to /
    # the agent itself stays root (per-thread credentials must not leak)
    assert (await client.run(argv=["id", "-u"])).stdout == b"0\n"
    with pytest.raises(InvalidRequest, match="unknown user"):
        await client.exec(argv=["true"], user="no-such-user-xyz")


async def test_user_cannot_chdir_where_it_may_not(client: AgentClient, tmp_path: object) -> None:
    private = f"/tmp/atelier-private-{os.getpid()}"
    os.makedirs(private, mode=0o700, exist_ok=True)
    try:
        with pytest.raises(InvalidRequest, match="cwd"):
            await client.exec(argv=["true"], cwd=private, user="nobody")
        assert (await client.run(argv=["pwd"], cwd=private)).stdout == f"{private}\n".encode()
    finally:
        os.rmdir(private)


async def test_stdin(client: AgentClient) -> None:
    data = os.urandom(3 * 1024 * 1024)  # more than a window and a pipe buffer
    result = await client.run(argv=["cat"], input=data)
    assert result.stdout == data
    result = await client.run(argv=["wc", "-c"], input=b"")
    assert result.stdout.strip() == b"0"
    # without stdin=True the command reads /dev/null
    assert (await client.run(argv=["cat"])).stdout == b""


async def test_timeout(client: AgentClient) -> None:
    started = time.monotonic()
    result = await client.run(argv=["sleep", "10"], timeout=0.3)
    assert (result.exit_code, result.signal, result.timed_out) == (137, "SIGKILL", True)
    assert time.monotonic() - started < 5
    fast = await client.run(argv=["true"], timeout=5)
    assert (fast.exit_code, fast.timed_out) == (0, False)


async def test_signal_on_stream_and_by_pid(client: AgentClient) -> None:
    script = 'trap "echo got-term; exit 5" TERM; echo ready; while :; do sleep 0.05; done'
    session = await client.exec(argv=["sh", "-c", script])
    async for event in session:
        if isinstance(event, Output) and b"ready" in event.data:
            break
    await session.signal("SIGTERM")
    result = await session.collect()
    assert result.exit_code == 5 and b"got-term" in result.stdout

    session = await client.exec(argv=["sleep", "30"])
    await client.signal(session.pid, 9)
    exit_ = await session.wait()
    assert (exit_.exit_code, exit_.signal) == (137, "SIGKILL")


async def test_many_concurrent_execs(client: AgentClient) -> None:
    async def one(i: int) -> None:
        result = await client.run(argv=["sh", "-c", 'echo "$0"; echo "e$0" >&2', str(i)])
        assert (result.exit_code, result.stdout, result.stderr) == (
            0,
            f"{i}\n".encode(),
            f"e{i}\n".encode(),
        )

    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(60))), 30)


async def test_background_list_attach_replay_and_kill(client: AgentClient) -> None:
    session = await client.exec(
        "echo first; echo oops >&2; exec sleep 30", background=True, tag="job-1"
    )
    pid = session.pid
    await session.detach()  # a background process keeps running without a stream
    await asyncio.sleep(0.3)
    [info] = [p for p in await client.list_processes() if p["pid"] == pid]
    assert info["running"] is True and info["background"] is True
    assert info["tag"] == "job-1" and info["user"] == "root"
    assert info["cmd"] == "echo first; echo oops >&2; exec sleep 30" and info["argv"] is None
    assert info["exit_code"] is None and info["started_at"].endswith("Z")
    assert pid_alive(pid)

    attached = await client.attach(pid)
    first = await anext(attached)
    assert first == Started(pid)
    replay = [await anext(attached), await anext(attached)]
    assert sorted((e.channel, e.data) for e in replay if isinstance(e, Output)) == [
        (1, b"first\n"),
        (2, b"oops\n"),
    ]
    await client.signal(pid, "KILL")
    assert await attached.wait() == Exit(137, "SIGKILL", False)
    # delivered: the entry is gone
    assert pid not in [p["pid"] for p in await client.list_processes()]
    with pytest.raises(ProcessNotFound):
        await client.attach(pid)


async def test_exited_background_output_is_kept_until_attached(client: AgentClient) -> None:
    session = await client.exec(argv=["sh", "-c", "echo done; exit 4"], background=True)
    await session.detach()
    await wait_until(lambda: not pid_alive(session.pid))
    await asyncio.sleep(0.1)
    [info] = [p for p in await client.list_processes() if p["pid"] == session.pid]
    assert (info["running"], info["exit_code"]) == (False, 4)
    assert (info["cmd"], info["argv"]) == (None, ["sh", "-c", "echo done; exit 4"])
    result = await (await client.attach(session.pid)).collect()
    assert (result.exit_code, result.stdout) == (4, b"done\n")


async def test_background_output_is_bounded_and_backpressured(client: AgentClient) -> None:
    size = 5 * 1024 * 1024
    session = await client.exec(argv=["head", "-c", str(size), "/dev/zero"], background=True)
    await session.detach()
    await asyncio.sleep(0.5)
    # nobody reads: the agent buffers 1 MiB per stream, then the process blocks on write
    [info] = [p for p in await client.list_processes() if p["pid"] == session.pid]
    assert info["running"] is True
    assert proc_state(session.pid) is not None
    result = await (await client.attach(session.pid)).collect()
    assert (result.exit_code, len(result.stdout)) == (0, size)


async def test_attach_takes_over(client: AgentClient) -> None:
    session = await client.exec(
        argv=["sh", "-c", "read x; echo got-$x; sleep 0.2; echo end"], stdin=True, background=True
    )
    old = await client.attach(session.pid)
    assert isinstance(await anext(old), Started)
    new = await client.attach(session.pid)
    assert isinstance(await anext(new), Started)
    assert [e async for e in old] == []  # the old stream got closed, without an exit
    assert old.exit is None
    await new.send_stdin(b"x\n")  # stdin goes through the new attachment
    result = await new.collect()
    assert (result.exit_code, result.stdout) == (0, b"got-x\nend\n")
    await session.detach()


async def test_foreground_is_killed_when_the_host_closes(client: AgentClient) -> None:
    session = await client.exec(argv=["sleep", "30"])
    assert pid_alive(session.pid)
    await session.detach()
    await wait_until(lambda: proc_state(session.pid) is None)
    assert session.pid not in [p["pid"] for p in await client.list_processes()]


async def test_background_survives_its_connection(agent: AgentProcess) -> None:
    first = await AgentClient.connect(agent.socket, timeout=10)
    session = await first.exec("sleep 0.3; echo later", background=True, stdin=True)
    await session.send_stdin(b"ignored")
    await first.close()  # the whole connection goes away
    second = await AgentClient.connect(agent.socket, timeout=10)
    try:
        assert session.pid in [p["pid"] for p in await second.list_processes()]
        result = await (await second.attach(session.pid)).collect()
        assert (result.exit_code, result.stdout) == (0, b"later\n")
    finally:
        await second.close()


async def test_process_stdin_op(client: AgentClient) -> None:
    session = await client.exec(argv=["cat"], stdin=True, background=True)
    await session.detach()
    await client.write_stdin(session.pid, b"hello ")
    await client.write_stdin(session.pid, b"world", eof=True)
    result = await (await client.attach(session.pid)).collect()
    assert (result.exit_code, result.stdout) == (0, b"hello world")

    no_stdin = await client.exec(argv=["sleep", "5"], background=True)
    with pytest.raises(InvalidRequest, match="stdin"):
        await client.write_stdin(no_stdin.pid, b"x")
    await client.signal(no_stdin.pid, "SIGKILL")
    await no_stdin.detach()
    with pytest.raises(ProcessNotFound):
        await client.write_stdin(999_999_999, b"x")
    with pytest.raises(ProcessNotFound):
        await client.signal(999_999_999, "SIGTERM")


async def test_orphaned_grandchildren_are_reaped(client: AgentClient, agent: AgentProcess) -> None:
    # The shell exits at once; its background child is re-parented to the agent
    # (a child subreaper here, PID 1 in a sandbox), which must reap it.
    result = await client.run("(sleep 0.4; exit 3) >/dev/null 2>&1 </dev/null & echo $!")
    grandchild = int(result.stdout)
    state = proc_state(grandchild)
    assert state is not None and state[1] == agent.pid  # adopted by the agent
    await wait_until(lambda: proc_state(grandchild) is None, timeout=5)


async def test_output_held_by_a_grandchild_does_not_block_exit(client: AgentClient) -> None:
    started = time.monotonic()
    result = await client.run("echo parent; (sleep 3; echo late) &")
    assert result.exit_code == 0 and result.stdout == b"parent\n"
    assert time.monotonic() - started < 2.5


async def test_invalid_requests(client: AgentClient) -> None:
    with pytest.raises(InvalidRequest):
        await client.exec()  # neither cmd nor argv
    with pytest.raises(InvalidRequest):
        await client.exec("true", argv=["true"])
    with pytest.raises(InvalidRequest):
        await client.exec(argv=[])
    with pytest.raises(InvalidRequest):
        await client.exec(argv=["true"], timeout=-1)


async def test_no_descriptor_leaks(client: AgentClient, agent: AgentProcess) -> None:
    def open_fds() -> int:
        return len(os.listdir(f"/proc/{agent.pid}/fd"))

    await client.run(argv=["true"])
    before = open_fds()
    for _ in range(5):
        await client.run(argv=["true"])
        await client.run(argv=["cat"], input=b"x")
        await client.run(argv=["no-such-command"])
        session = await client.exec(argv=["sleep", "5"])
        await session.detach()
        background = await client.exec(argv=["echo", "bg"], background=True, stdin=True)
        await background.detach()
        await (await client.attach(background.pid)).collect()
        pty = await client.pty(argv=["true"])
        await pty.wait()
        watch = client.watch("/tmp")
        await watch.ready()
        await watch.aclose()
        size, chunks = await client.read_file("/etc/hostname")
        assert size == len(b"".join([c async for c in chunks]))
    await wait_until(lambda: open_fds() <= before, timeout=3)


async def test_user_cannot_ptrace_or_signal_the_agent(
    client: AgentClient, agent: AgentProcess
) -> None:
    # Spawner threads run with the user's credentials inside the root agent.
    await client.run(argv=["true"], user="nobody")
    nobody = pwd.getpwnam("nobody").pw_uid
    tids = []
    for tid in os.listdir(f"/proc/{agent.pid}/task"):
        status = Path(f"/proc/{agent.pid}/task/{tid}/status").read_text()
        uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()
        if int(uids[1]) == nobody:
            tids.append(int(tid))
    assert tids, "expected spawner threads running as nobody"
    script = (
        "import ctypes, os, signal, sys\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "pid, tids = int(sys.argv[1]), [int(t) for t in sys.argv[2:]]\n"
        "for tid in tids:\n"
        "    assert libc.ptrace(16, tid, 0, 0) == -1 and ctypes.get_errno() == 1, 'ptrace'\n"
        "    assert libc.syscall(234, pid, tid, signal.SIGTERM) == 0, 'tgkill'\n"
        "print('ok')\n"
    )
    result = await client.run(
        argv=[sys.executable, "-I", "-c", script, str(agent.pid), *map(str, tids)], user="nobody"
    )
    assert (result.exit_code, result.stdout) == (0, b"ok\n"), result.stderr
    await asyncio.sleep(0.3)
    assert (await client.ping()).pid == agent.pid  # still serving: SIGTERM stayed pending
