"""The SSH gateway against a real server and gVisor sandbox, with the real OpenSSH
client (``ssh``, ``scp``, ``sftp``): exec and exit codes, PTY, file copies both ways,
an SFTP batch, ``-L``/``-R`` forwarding, agent forwarding (``-A`` with a real
ssh-agent), refused logins, and no processes left behind."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from server_harness import ServerProcess, free_port, new_server, shut_down

from atelier.images.store import TemplateInfo
from ci_support import skip_unless_ci

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not all(shutil.which(b) for b in ("ssh", "scp", "sftp", "ssh-keygen")),
        reason="needs the OpenSSH client",
    ),
]


@dataclass
class Gateway:
    server: ServerProcess
    port: int
    sandbox_id: str
    key: Path
    known_hosts: Path
    tmp: Path

    def opts(self, key: Path | None = None, port_flag: str = "-p") -> list[str]:
        return [
            port_flag, str(self.port), "-F", "/dev/null", "-i", str(key or self.key),
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "StrictHostKeyChecking=accept-new", "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=20", "-o", "LogLevel=ERROR",
        ]  # fmt: skip

    def ssh(
        self, *args: str, key: Path | None = None, user: str | None = None, stdin: bytes = b""
    ) -> subprocess.CompletedProcess[bytes]:
        target = f"{user or self.sandbox_id}@127.0.0.1"
        return subprocess.run(
            ["ssh", *self.opts(key), target, *args], input=stdin, capture_output=True, timeout=120
        )


def _keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", path], check=True)
    return path


@pytest.fixture(scope="module")
def gw(base_template: TemplateInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    port = free_port()
    srv = new_server(base_template, ATELIER_SSH_PORT=str(port))
    srv.start()
    try:
        tmp = tmp_path_factory.mktemp("sshgw")
        key = _keygen(tmp / "id")
        with srv.client() as http:
            r = http.post(
                "/v1/ssh-keys", json={"name": "test", "public_key": (tmp / "id.pub").read_text()}
            )
            assert r.status_code == 201, r.text
            info = http.get("/v1/ssh-gateway").json()
            assert info["enabled"] and info["port"] == port
            sandbox = http.post("/v1/sandboxes", json={"timeout": None}).json()
        yield Gateway(srv, port, sandbox["id"], key, tmp / "known_hosts", tmp)
    finally:
        shut_down(srv)


def _agent_processes(gw: Gateway) -> list[dict[str, object]]:
    with gw.server.client() as http:
        body = http.get(f"/v1/sandboxes/{gw.sandbox_id}/commands").json()
    return [p for p in body["processes"] if p["running"]]


def _ps(gw: Gateway) -> str:
    with gw.server.client() as http:
        r = http.post(f"/v1/sandboxes/{gw.sandbox_id}/commands", json={"cmd": "ps -eo args"})
    return "".join(json.loads(line).get("data", "") for line in r.text.splitlines())


def test_exec_exit_code_streams_and_stdin(gw: Gateway) -> None:
    r = gw.ssh("echo out; echo err >&2; exit 3")
    assert r.returncode == 3, r.stderr
    assert r.stdout == b"out\n"
    assert r.stderr == b"err\n"
    r = gw.ssh("wc -c; whoami", stdin=b"x" * 100_000)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [b"100000", b"user"]
    r = gw.ssh(stdin=b"echo from-a-shell $((6*7))\nexit 4\n")  # no command, no tty: a shell
    assert r.returncode == 4 and r.stdout == b"from-a-shell 42\n"


def test_pty_allocation(gw: Gateway) -> None:
    r = gw.ssh("-tt", "tty; echo $TERM; exit 7")
    assert r.returncode == 7, r.stderr
    lines = r.stdout.decode().split("\r\n")
    assert lines[0].startswith("/dev/pts/")
    assert lines[1]  # the client's TERM (or the agent's default)


def test_scp_both_ways(gw: Gateway) -> None:
    data = os.urandom(5 * 1024 * 1024)
    local = gw.tmp / "up.bin"
    local.write_bytes(data)
    target = f"{gw.sandbox_id}@127.0.0.1"
    up = subprocess.run(
        ["scp", *gw.opts(port_flag="-P"), str(local), f"{target}:up.bin"],
        capture_output=True, timeout=120,
    )  # fmt: skip
    assert up.returncode == 0, up.stderr
    r = gw.ssh("sha256sum up.bin")
    assert r.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()
    back = gw.tmp / "back.bin"
    down = subprocess.run(
        ["scp", *gw.opts(port_flag="-P"), f"{target}:up.bin", str(back)],
        capture_output=True, timeout=120,
    )  # fmt: skip
    assert down.returncode == 0, down.stderr
    assert back.read_bytes() == data


def test_sftp_batch(gw: Gateway) -> None:
    (gw.tmp / "put.txt").write_text("sftp content\n")
    batch = gw.tmp / "batch"
    batch.write_text(
        "\n".join(
            [
                "mkdir sftpdir",
                f"put {gw.tmp / 'put.txt'} sftpdir/a.txt",
                "ls -l sftpdir",
                "rename sftpdir/a.txt sftpdir/b.txt",
                f"get sftpdir/b.txt {gw.tmp / 'got.txt'}",
                "rm sftpdir/b.txt",
                "rmdir sftpdir",
                "ls",
                "pwd",
            ]
        )
        + "\n"
    )
    r = subprocess.run(
        ["sftp", *gw.opts(port_flag="-P"), "-b", str(batch), f"{gw.sandbox_id}@127.0.0.1"],
        capture_output=True, timeout=120,
    )  # fmt: skip
    out = r.stdout.decode()
    assert r.returncode == 0, r.stderr
    assert "user" in out and "a.txt" in out  # ls -l: owner and name
    assert "Remote working directory: /home/user" in out
    assert (gw.tmp / "got.txt").read_text() == "sftp content\n"
    assert gw.ssh("test -e sftpdir").returncode == 1  # removed


def test_wrong_key_unknown_sandbox_and_other_token_are_refused(gw: Gateway) -> None:
    stranger = _keygen(gw.tmp / "stranger")
    r = gw.ssh("true", key=stranger)
    assert r.returncode == 255 and b"Permission denied (publickey)" in r.stderr
    r = gw.ssh("true", user="sb-0000000000")
    assert r.returncode == 255 and b"Permission denied (publickey)" in r.stderr
    # another token's registered key does not reach this (admin's) sandbox
    other = _keygen(gw.tmp / "other")
    with gw.server.client() as http:
        token = http.post("/v1/tokens", json={"name": "other"}).json()["token"]
        r2 = http.post(
            "/v1/ssh-keys",
            json={"name": "other", "public_key": (gw.tmp / "other.pub").read_text()},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert r2.status_code == 201
    r = gw.ssh("true", key=other)
    assert r.returncode == 255 and b"Permission denied (publickey)" in r.stderr
    # ... but that token's own sandbox it does
    with httpx.Client(
        base_url=gw.server.url, headers={"Authorization": f"Bearer {token}"}, timeout=120
    ) as http:
        own = http.post("/v1/sandboxes", json={}).json()["id"]
        try:
            r = gw.ssh("echo mine", key=other, user=own)
            assert r.returncode == 0 and r.stdout == b"mine\n", r.stderr
        finally:
            http.delete(f"/v1/sandboxes/{own}")


def test_local_port_forwarding(gw: Gateway) -> None:
    wait_for_port = (
        "for i in $(seq 50); do "
        "python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", 8765))' "
        "2>/dev/null && exit 0; sleep 0.2; done; exit 1"
    )
    r = gw.ssh(
        "cd /tmp && echo forwarded-page > index.html && "
        "(setsid python3 -m http.server 8765 --bind 127.0.0.1 >/dev/null 2>&1 </dev/null &) && "
        + wait_for_port
    )
    assert r.returncode == 0, r.stderr
    local = free_port()
    proc = subprocess.Popen(
        ["ssh", *gw.opts(), "-N", "-o", "ExitOnForwardFailure=yes",
         "-L", f"127.0.0.1:{local}:localhost:8765", f"{gw.sandbox_id}@127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        body = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                body = httpx.get(f"http://127.0.0.1:{local}/index.html", timeout=10).text
                break
            time.sleep(0.2)
        assert body == "forwarded-page\n"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        gw.ssh("pkill -f 'http.server 8765'")
    # a closed port is an ordinary open failure on the client
    r = gw.ssh("-W", "localhost:8799")
    assert r.returncode == 255 and b"forwarding failed" in r.stderr


def test_disconnect_ends_the_remote_process(gw: Gateway) -> None:
    proc = subprocess.Popen(
        ["ssh", *gw.opts(), f"{gw.sandbox_id}@127.0.0.1", "sleep 4242"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while "sleep 4242" not in _ps(gw) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "sleep 4242" in _ps(gw)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    deadline = time.monotonic() + 30
    while "sleep 4242" in _ps(gw) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "sleep 4242" not in _ps(gw)
    assert _agent_processes(gw) == []  # no foreground session left in the agent's table


def test_sessions_are_audited(gw: Gateway) -> None:
    gw.ssh("true")
    with gw.server.client() as http:
        events = http.get(f"/v1/sandboxes/{gw.sandbox_id}/events").json()["events"]
    kinds = {e.get("session") for e in events if e["kind"] == "ssh.session"}
    assert "exec" in kinds
    assert all(e["key"] == "test" for e in events if e["kind"] == "ssh.session")


def _in_sandbox_connect(port: int, payload: str) -> str:
    """A shell command: connect from inside the sandbox, send ``payload``, print the answer."""
    code = (
        "import socket,sys\n"
        f"s=socket.create_connection(('127.0.0.1',{port}),timeout=10)\n"
        f"s.sendall(b'{payload}'); s.shutdown(socket.SHUT_WR)\n"
        "data=b''\n"
        "while (c:=s.recv(65536)): data+=c\n"
        "sys.stdout.write(data.decode())\n"
    )
    return f"python3 -c {shlex.quote(code)}"


class _EchoServer:
    """A TCP server on the test's loopback answering ``echo:<what it read>``."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.peers: list[str] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            with conn:
                self.peers.append(peer[0])
                data = b""
                while chunk := conn.recv(65536):
                    data += chunk
                conn.sendall(b"echo:" + data)

    def close(self) -> None:
        self.sock.close()


def test_remote_port_forwarding(gw: Gateway) -> None:
    echo = _EchoServer()
    inside = 9876
    proc = subprocess.Popen(
        ["ssh", *gw.opts(), "-N", "-o", "ExitOnForwardFailure=yes",
         "-R", f"{inside}:127.0.0.1:{echo.port}", f"{gw.sandbox_id}@127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        out = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            r = gw.ssh(_in_sandbox_connect(inside, "hello-from-the-sandbox"))
            if r.returncode == 0:
                out = r.stdout.decode()
                break
            time.sleep(0.3)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert out == "echo:hello-from-the-sandbox"
        # several connections, one after the other and at once
        r = gw.ssh(" & ".join(_in_sandbox_connect(inside, f"n{i}") for i in range(4)) + "; wait")
        assert r.returncode == 0, r.stderr
        assert sorted(r.stdout.decode().replace("echo:", " ").split()) == [
            "n0", "n1", "n2", "n3",
        ]  # fmt: skip
        assert set(echo.peers) == {"127.0.0.1"}  # the ssh client made the connections
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        echo.close()
    # the listener inside the sandbox went away with the forward
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        r = gw.ssh(_in_sandbox_connect(inside, "x"))
        if r.returncode != 0:
            break
        time.sleep(0.3)
    assert r.returncode != 0 and b"ConnectionRefused" in r.stderr


def test_remote_forward_on_a_taken_port_fails(gw: Gateway) -> None:
    r = gw.ssh(
        "(setsid python3 -m http.server 8766 --bind 127.0.0.1 >/dev/null 2>&1 </dev/null &); "
        + _wait_port_cmd(8766)
    )
    assert r.returncode == 0, r.stderr
    try:
        r = subprocess.run(
            ["ssh", *gw.opts(), "-N", "-o", "ExitOnForwardFailure=yes",
             "-R", "8766:127.0.0.1:9", f"{gw.sandbox_id}@127.0.0.1"],
            capture_output=True, timeout=60,
        )  # fmt: skip
        assert r.returncode == 255
        assert b"remote port forwarding failed" in r.stderr
    finally:
        gw.ssh("pkill -f 'http.server 8766'")


def _wait_port_cmd(port: int) -> str:
    return (
        "for i in $(seq 50); do "
        f"python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {port}))' "
        "2>/dev/null && exit 0; sleep 0.2; done; exit 1"
    )


def test_agent_forwarding(gw: Gateway) -> None:
    if not shutil.which("ssh-agent") or not shutil.which("ssh-add"):
        skip_unless_ci("needs ssh-agent and ssh-add (openssh-client)")
    # the host's ssh-add runs in the sandbox (the base template is the same Debian)
    target = f"{gw.sandbox_id}@127.0.0.1"
    up = subprocess.run(
        ["scp", *gw.opts(port_flag="-P"), shutil.which("ssh-add") or "", f"{target}:ssh-add"],
        capture_output=True, timeout=120,
    )  # fmt: skip
    assert up.returncode == 0, up.stderr
    assert gw.ssh("chmod +x ssh-add").returncode == 0
    agent_key = _keygen(gw.tmp / "agent_key")
    sock = gw.tmp / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
        subprocess.run(["ssh-add", "-q", str(agent_key)], env=env, check=True, timeout=30)
        fingerprint = subprocess.run(
            ["ssh-keygen", "-l", "-f", f"{agent_key}.pub"], capture_output=True, check=True
        ).stdout.split()[1]

        def run(*flags: str, cmd: str) -> subprocess.CompletedProcess[bytes]:
            return subprocess.run(
                ["ssh", *gw.opts(), *flags, target, cmd],
                capture_output=True, timeout=120, env=env,
            )  # fmt: skip

        r = run(
            "-A",
            cmd='echo "$SSH_AUTH_SOCK"; stat -c %U:%a "$(dirname "$SSH_AUTH_SOCK")"; ./ssh-add -l',
        )
        assert r.returncode == 0, r.stderr
        lines = r.stdout.decode().splitlines()
        assert lines[0].startswith("/dev/shm/atelier-ssh-") and lines[0].endswith("/agent.sock")
        assert lines[1] == "user:700"
        assert fingerprint.decode() in lines[2]
        # without -A there is no socket, and the -A one went away with its connection
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            r = run(
                "-a",
                cmd='echo "[$SSH_AUTH_SOCK]"; ls -d /dev/shm/atelier-ssh-* 2>/dev/null | wc -l',
            )
            if r.stdout.decode().split() == ["[]", "0"]:
                break
            time.sleep(0.3)
        assert r.stdout.decode().split() == ["[]", "0"], r.stdout
    finally:
        agent.terminate()
        agent.wait(timeout=10)


def test_remote_forward_to_a_port_the_sandbox_picks(gw: Gateway) -> None:
    echo = _EchoServer()
    opts = ["LogLevel=INFO" if o == "LogLevel=ERROR" else o for o in gw.opts()]
    proc = subprocess.Popen(
        ["ssh", *opts, "-N", "-o", "ExitOnForwardFailure=yes",
         "-R", f"0:127.0.0.1:{echo.port}", f"{gw.sandbox_id}@127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        line = ""
        for line in proc.stderr:  # "Allocated port N for remote forward to ..."
            if line.startswith("Allocated port "):
                break
        assert line.startswith("Allocated port "), line
        port = int(line.split()[2])
        r = gw.ssh(_in_sandbox_connect(port, "picked"))
        assert r.returncode == 0 and r.stdout == b"echo:picked", r.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        echo.close()
