"""Hibernation against a real server and real gVisor sandboxes: a process started
before keeps its in-memory state across hibernate and the auto-wake of the next
call; files survive; explicit wake; stop of a hibernated sandbox."""

from __future__ import annotations

import time

import httpx
import pytest
from server_harness import ServerProcess

from atelier import Sandbox
from atelier.errors import FileNotFound, InvalidStateTransition

pytestmark = pytest.mark.integration

# a counter that lives only in the memory of one process; the file is its output
COUNTER = (
    'python3 -c "import os,time\n'
    "i=0\n"
    "while True:\n"
    "    i+=1\n"
    "    open('/tmp/counter.tmp','w').write(f'{os.getpid()} {i}')\n"
    "    os.replace('/tmp/counter.tmp','/tmp/counter')\n"
    '    time.sleep(0.1)"'
)


def _counter(sb: Sandbox) -> tuple[int, int]:
    pid, count = sb.files.read_text("/tmp/counter").split()
    return int(pid), int(count)


def _wait_for_counter(sb: Sandbox, at_least: int, deadline_s: float = 60) -> tuple[int, int]:
    """The counter once it reached ``at_least`` (or whatever it is at the deadline)."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            pid, count = _counter(sb)
        except (FileNotFound, ValueError):  # not written yet
            pid, count = 0, 0
        if count >= at_least or time.monotonic() > deadline:
            return pid, count
        time.sleep(0.2)


def test_exec_wakes_a_hibernated_sandbox_with_its_processes_as_they_were(
    sb: Sandbox,
) -> None:
    sb.files.write("/home/user/keep.txt", "on disk")
    handle = sb.commands.run(COUNTER, background=True)
    pid, before = _wait_for_counter(sb, at_least=5)
    assert before >= 5
    assert sb.hibernate().state == "hibernated"
    assert sb.get_info().state == "hibernated"  # reading the record does not wake it
    with pytest.raises(InvalidStateTransition):
        sb.pause()
    # the next call that needs the sandbox wakes it; the caller just waits
    result = sb.commands.run(f"kill -0 {handle.pid} && echo alive")
    assert result.stdout == "alive\n"
    assert sb.get_info().state == "running"
    same_pid, after = _wait_for_counter(sb, at_least=before + 3)
    assert same_pid == pid  # the same process, not a new one
    assert after >= before + 3  # counting on from where it was, not from 1
    assert sb.files.read_text("/home/user/keep.txt") == "on disk"


def test_explicit_wake_and_stop_of_a_hibernated_sandbox(sb: Sandbox) -> None:
    sb.files.write("/home/user/keep.txt", "kept")
    assert sb.hibernate().state == "hibernated"
    assert sb.wake().state == "running"
    assert sb.commands.run("cat /home/user/keep.txt").stdout == "kept"
    assert sb.hibernate().state == "hibernated"
    assert sb.stop().state == "stopped"  # the memory image is dropped
    assert sb.start().state == "running"  # a cold boot; the files are still there
    assert sb.files.read_text("/home/user/keep.txt") == "kept"


def test_a_preview_request_wakes_a_hibernated_sandbox(sb: Sandbox, sdk_env: ServerProcess) -> None:
    sb.files.write("/home/user/www/index.html", "served\n")
    sb.commands.run(
        "cd /home/user/www && exec python3 -m http.server 8000 --bind 127.0.0.1", background=True
    )
    url = f"{sdk_env.url}/preview/{sb.id}/8000/index.html"
    auth = {"Authorization": f"Bearer {sdk_env.token}"}
    deadline = time.monotonic() + 60
    while httpx.get(url, headers=auth, timeout=30).status_code != 200:  # server starting
        assert time.monotonic() < deadline, "the server in the sandbox did not come up"
        time.sleep(0.3)
    assert sb.hibernate().state == "hibernated"
    r = httpx.get(url, headers=auth, timeout=120)
    assert (r.status_code, r.text) == (200, "served\n")  # the same server, restored
    assert sb.get_info().state == "running"
