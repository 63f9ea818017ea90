"""Commands through the SDK against real gVisor sandboxes."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from atelier import Sandbox
from atelier.errors import InvalidRequest, ProcessNotFound
from atelier.sdk.models import Exit, Started, Stdout

pytestmark = pytest.mark.integration


def test_readme_snippet(sb: Sandbox) -> None:
    r = sb.commands.run("python3 -c 'print(6*7)'")
    assert r.stdout == "42\n" and r.exit_code == 0
    sb.files.write("/home/user/a.txt", b"hello")
    assert sb.files.read("/home/user/a.txt") == b"hello"
    events = list(sb.commands.run("seq 3", background=True).stream())
    assert isinstance(events[0], Started)
    assert "".join(e.data for e in events if isinstance(e, Stdout)) == "1\n2\n3\n"
    assert isinstance(events[-1], Exit) and events[-1].exit_code == 0


def test_stdout_stderr_and_exit_code(sb: Sandbox) -> None:
    r = sb.commands.run("echo out; echo err >&2; exit 3")
    assert (r.stdout, r.stderr, r.exit_code) == ("out\n", "err\n", 3)


def test_argv_form_env_cwd_and_users(sb: Sandbox) -> None:
    r = sb.commands.run(
        argv=["sh", "-c", 'echo "$GREETING $(pwd) $(id -un)"'], env={"GREETING": "hi"}, cwd="/tmp"
    )
    assert r.stdout == "hi /tmp user\n"
    assert sb.commands.run("id -u", user="root").stdout == "0\n"
    assert sb.commands.run("echo $HOME").stdout == "/home/user\n"


def test_sandbox_env_applies_to_every_command(make_sandbox) -> None:  # type: ignore[no-untyped-def]
    sb = make_sandbox(env={"PROJECT": "atelier"})
    assert sb.commands.run("echo $PROJECT").stdout == "atelier\n"
    assert sb.commands.run("echo $PROJECT", env={"PROJECT": "override"}).stdout == "override\n"


def test_command_not_found_is_exit_127(sb: Sandbox) -> None:
    shell = sb.commands.run("no-such-command-xyz")
    assert shell.exit_code == 127 and "not found" in shell.stderr
    direct = sb.commands.run(argv=["no-such-command-xyz"])
    assert direct.exit_code == 127 and "command not found" in direct.stderr


def test_bad_cwd_is_a_clear_error(sb: Sandbox) -> None:
    with pytest.raises(InvalidRequest) as info:
        sb.commands.run("true", cwd="/no/such/dir")
    assert "/no/such/dir" in info.value.message


def test_stdin_is_fed_and_closed(sb: Sandbox) -> None:
    r = sb.commands.run("tr a-z A-Z", stdin="hello sandbox\n")
    assert r.stdout == "HELLO SANDBOX\n"


def test_timeout_kills_and_reports(sb: Sandbox) -> None:
    r = sb.commands.run("echo started; sleep 30", timeout=1)
    assert r.timed_out and r.exit_code == 137 and r.stdout == "started\n"
    assert sb.commands.run("echo still-alive").stdout == "still-alive\n"


def test_huge_output_arrives_whole(sb: Sandbox) -> None:
    size = 32 * 1024 * 1024
    r = sb.commands.run(f"head -c {size} /dev/zero | tr '\\0' 'a'")
    assert r.exit_code == 0 and len(r.stdout) == size and set(r.stdout) == {"a"}


def test_binary_safe_output_via_callbacks(sb: Sandbox) -> None:
    chunks: list[str] = []
    r = sb.commands.run("for i in 1 2 3; do echo line$i; done", on_stdout=chunks.append)
    assert "".join(chunks) == r.stdout == "line1\nline2\nline3\n"


def test_background_list_reattach_and_kill(sb: Sandbox) -> None:
    h = sb.commands.run("for i in $(seq 1000); do echo $i; sleep 0.05; done", background=True)
    listed = {p.pid: p for p in sb.commands.list()}
    assert h.pid in listed and listed[h.pid].running
    again = sb.commands.connect(h.pid)
    stream = again.stream()
    first = [e for _, e in zip(range(3), stream, strict=False)]
    assert isinstance(first[0], Started)
    stream.close()
    assert h.kill()
    result = sb.commands.connect(h.pid).wait()
    assert result.exit_code == 137 and result.signal == "SIGKILL"


def test_background_stdin_stays_open(sb: Sandbox) -> None:
    h = sb.commands.run("cat", background=True, keep_stdin_open=True)
    h.send_stdin("one\n")
    h.send_stdin(b"two\n", eof=True)
    assert h.wait().stdout == "one\ntwo\n"


def test_unknown_process(sb: Sandbox) -> None:
    assert sb.commands.kill(999_999) is False
    with pytest.raises(ProcessNotFound):
        sb.commands.signal(999_999, "SIGTERM")
    with pytest.raises(ProcessNotFound):
        sb.commands.connect(999_999).wait()


def test_many_commands_at_once(sb: Sandbox) -> None:
    results: dict[int, str] = {}

    def run(i: int) -> None:
        results[i] = sb.commands.run(f"echo {i}").stdout

    threads = [threading.Thread(target=run, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: f"{i}\n" for i in range(16)}


def test_coreutils_work_under_gvisor(sb: Sandbox) -> None:
    # ls/stat use statx(AT_NO_AUTOMOUNT); the template's compat shim makes them work
    r = sb.commands.run("ls / && stat -c %s /etc/hostname")
    assert r.exit_code == 0, r.stderr
    assert "usr" in r.stdout.split()


def test_isolation_from_the_host(sb: Sandbox, tmp_path: Path) -> None:
    marker = Path("/var/tmp") / f"atelier-host-marker-{sb.id}"
    marker.write_text("host only")
    try:
        r = sb.commands.run(
            f"uname -r; hostname; ps -e | wc -l; tr '\\0' ' ' < /proc/1/cmdline; echo; "
            f"test -e {marker} && echo visible || echo hidden"
        )
    finally:
        marker.unlink()
    kernel, hostname, nprocs, init, seen = r.stdout.splitlines()
    assert kernel != os.uname().release  # gVisor's kernel, not the host's
    assert hostname == sb.id
    assert int(nprocs) < 20  # none of the host's processes
    assert "agent" in init  # PID 1 is our agent
    assert seen == "hidden"
