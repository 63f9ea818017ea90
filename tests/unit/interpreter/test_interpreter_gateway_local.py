"""The guest gateway run on the host (bash, and Node when installed): the wire
protocol, state between cells, timeouts that interrupt without losing state,
contexts, the token, and no processes left behind."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

GATEWAY = Path(__file__).resolve().parents[3] / "src/atelier/interpreter/guest/gateway.py"
TOKEN = "secret-token"


class Gw:
    def __init__(self, proc: subprocess.Popen[bytes], port: int) -> None:
        self.proc = proc
        self.port = port

    def call(self, request: dict[str, Any], token: str = TOKEN) -> list[dict[str, Any]]:
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as conn:
            conn.sendall(json.dumps({**request, "token": token}).encode() + b"\n")
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
        return [json.loads(line) for line in data.splitlines() if line.strip()]

    def run(self, code: str, language: str = "bash", **extra: Any) -> list[dict[str, Any]]:
        events = self.call({"op": "execute", "code": code, "language": language, **extra})
        assert events[0]["type"] == "started", events
        assert events[-1]["type"] == "end", events
        return events[1:-1]


def text(events: list[dict[str, Any]], kind: str = "stdout") -> str:
    return "".join(e["data"] for e in events if e["type"] == kind)


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid,ppid"], capture_output=True, text=True).stdout
    return [int(p) for p, pp in (line.split() for line in out.splitlines()[1:]) if int(pp) == pid]


@contextlib.contextmanager
def running_gateway(tmp_path: Path, *python_flags: str) -> Iterator[Gw]:
    """The gateway under this Python (``-I``, plus ``python_flags``), stopped and
    checked for leftover kernels on exit."""
    proc = subprocess.Popen(
        [sys.executable, "-I", *python_flags, str(GATEWAY)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=tmp_path,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    assert proc.stdin is not None and proc.stdout is not None
    config = {"token": TOKEN, "state_dir": str(tmp_path / "state")}
    proc.stdin.write(json.dumps(config).encode() + b"\n")
    proc.stdin.close()
    line = proc.stdout.readline().decode()
    assert line.startswith("ATELIER-GATEWAY-READY "), line
    state = json.loads((tmp_path / "state/gateway.json").read_text())
    assert state["port"] == int(line.split()[1]) and state["token"] == TOKEN
    assert (tmp_path / "state/gateway.json").stat().st_mode & 0o077 == 0
    gateway = Gw(proc, state["port"])
    try:
        yield gateway
    finally:
        kids = children_of(proc.pid)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        time.sleep(0.2)
        alive = [k for k in kids if os.path.exists(f"/proc/{k}") and b"Z" not in
                 Path(f"/proc/{k}/stat").read_bytes().split(b")")[-1][:3]]  # fmt: skip
        assert not alive, f"kernels left behind: {alive}"
        assert not (tmp_path / "state/gateway.json").exists()


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[Gw]:
    with running_gateway(tmp_path) as gateway:
        yield gateway


def test_bash_keeps_cwd_variables_and_functions(gw: Gw, tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    assert gw.run("cd sub; X=41; f() { echo $((X + 1)); }") == []
    events = gw.run("pwd; f; echo err >&2")
    assert text(events) == f"{tmp_path}/sub\n42\n"
    assert text(events, "stderr") == "err\n"


def test_bash_reports_a_failing_status_and_output_without_newline(gw: Gw) -> None:
    events = gw.run("printf 'no newline'; false")
    assert text(events) == "no newline"
    assert events[-1] == {"type": "error", "name": "ExitStatus", "value": "1", "traceback": ""}
    end = gw.call({"op": "execute", "code": "true", "language": "bash"})[-1]
    assert end["exit_code"] == 0 and end["execution_count"] == 2


def test_bash_timeout_interrupts_and_keeps_the_shell(gw: Gw) -> None:
    gw.run("Y=kept")
    started = time.monotonic()
    events = gw.run("sleep 30; echo never", timeout=1)
    assert time.monotonic() - started < 10
    errors = [e for e in events if e["type"] == "error"]
    assert errors and errors[0]["name"] == "TimeoutError"
    assert "keeps its state" in errors[0]["value"]
    assert "never" not in text(events)
    assert text(gw.run("echo $Y")) == "kept\n"
    events = gw.run("while :; do :; done", timeout=1)
    assert [e["name"] for e in events if e["type"] == "error"] == ["TimeoutError"]
    assert text(gw.run("echo $Y")) == "kept\n"


def test_bash_exit_ends_the_context_and_the_next_cell_gets_a_new_shell(gw: Gw) -> None:
    gw.run("Z=1")
    events = gw.run("exit 3")
    assert [e["name"] for e in events if e["type"] == "error"] == ["KernelDied"]
    assert text(gw.run("echo ${Z:-fresh}")) == "fresh\n"


def test_contexts_are_independent_and_listed(gw: Gw) -> None:
    gw.run("V=one", context="a")
    gw.run("V=two", context="b")
    assert text(gw.run("echo $V", context="a")) == "one\n"
    listed = gw.call({"op": "contexts.list"})[0]["contexts"]
    assert sorted((c["name"], c["language"]) for c in listed) == [("a", "bash"), ("b", "bash")]
    conflict = gw.call({"op": "execute", "code": "1", "language": "javascript", "context": "a"})
    assert conflict == [
        {"type": "failure", "code": "conflict", "message": "context 'a' runs bash, not javascript"}
    ]
    restarted = gw.call({"op": "contexts.restart", "name": "a"})[0]
    assert restarted["type"] == "context" and restarted["execution_count"] == 0
    assert text(gw.run("echo ${V:-gone}", context="a")) == "gone\n"
    assert gw.call({"op": "contexts.delete", "name": "b"}) == [{"type": "deleted", "name": "b"}]
    assert gw.call({"op": "contexts.delete", "name": "b"})[0]["code"] == "not_found"


def test_requests_need_the_token_and_valid_input(gw: Gw) -> None:
    assert gw.call({"op": "ping"}, token="wrong") == [
        {"type": "failure", "code": "forbidden", "message": "bad token"}
    ]
    assert gw.call({"op": "ping"})[0]["type"] == "pong"
    bad = gw.call({"op": "execute", "code": "1", "language": "cobol"})[0]
    assert bad["type"] == "failure" and bad["code"] == "invalid_request"
    bad = gw.call({"op": "execute", "code": "1", "language": "bash", "context": "../x"})[0]
    assert bad["code"] == "invalid_request"


@pytest.mark.skipif(
    shutil.which("node") is None and shutil.which("nodejs") is None, reason="no Node.js"
)
def test_javascript_keeps_state_returns_values_and_times_out(gw: Gw) -> None:
    assert text(gw.run("let x = 41; var y = 'v'; console.log('hi', y)", "javascript")) == "hi v\n"
    [result] = gw.run("x + 1", "javascript")
    assert result == {"type": "result", "data": {"text/plain": "42"}, "is_main_result": True}
    [result] = gw.run("({a: [1, 2]})", "javascript")
    assert result["data"]["application/json"] == {"a": [1, 2]}
    [error] = gw.run("function f() { throw new TypeError('bad') }\nf()", "javascript")
    assert error["name"] == "TypeError" and error["value"] == "bad"
    assert "at f (cell:1" in error["traceback"] and "js_kernel" not in error["traceback"]
    [error] = gw.run("while (true) {}", "javascript", timeout=1)
    assert error["name"] == "TimeoutError"
    [result] = gw.run("new Promise((r) => setTimeout(() => r(x), 50))", "javascript")
    assert result["data"]["text/plain"] == "41"
    [error] = gw.run("new Promise(() => {})", "javascript", timeout=1)
    assert error["name"] == "TimeoutError"
    [result] = gw.run("x", "javascript")
    assert result["data"]["text/plain"] == "41"


def test_python_without_jupyter_says_which_template_to_use(tmp_path: Path) -> None:
    # -S: no site-packages, so no jupyter_client whatever this host has installed
    with running_gateway(tmp_path, "-S") as gw:
        [failure] = gw.call({"op": "execute", "code": "1", "language": "python"})
        assert failure["code"] == "invalid_request" and "code-interpreter" in failure["message"]


def test_a_client_that_goes_away_interrupts_its_cell(gw: Gw, tmp_path: Path) -> None:
    marker = tmp_path / "finished"
    with socket.create_connection(("127.0.0.1", gw.port), timeout=30) as conn:
        request = {"op": "execute", "code": f"sleep 30; touch {marker}", "language": "bash"}
        conn.sendall(json.dumps({**request, "token": TOKEN}).encode() + b"\n")
        assert b'"started"' in conn.recv(65536)
        time.sleep(0.5)
    started = time.monotonic()
    assert text(gw.run("echo next")) == "next\n"
    assert time.monotonic() - started < 5
    time.sleep(0.5)
    assert not marker.exists()
