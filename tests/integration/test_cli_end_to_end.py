"""The ``atelier`` CLI binary, as a subprocess, against a real server and real gVisor sandboxes.

Every sandbox a test creates carries the label ``test=<tag>``; the ``cli``
fixture deletes all of them afterwards, whatever happened in the test.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from server_harness import ServerProcess

pytestmark = pytest.mark.integration

ATELIER = str(Path(sys.executable).with_name("atelier"))
DEADLINE = 30.0


class Cli:
    def __init__(self, env: dict[str, str], tag: str) -> None:
        self.env = env
        self.tag = tag

    def __call__(
        self, *args: str, input: bytes = b"", **env: str
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [ATELIER, *args], input=input, env={**self.env, **env}, capture_output=True, timeout=120
        )
        return subprocess.CompletedProcess(
            proc.args, proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode()
        )

    def ok(self, *args: str, **env: str) -> str:
        result = self(*args, **env)
        assert result.returncode == 0, f"atelier {' '.join(args)}: {result.stderr}"
        return result.stdout

    def create(self, *args: str) -> str:
        out = self.ok("create", "--label", f"test={self.tag}", *args)
        assert re.fullmatch(r"sb-[0-9a-z]+\n", out), out
        return out.strip()


@pytest.fixture
def cli(server: ServerProcess, request: pytest.FixtureRequest) -> Iterator[Cli]:
    env = {k: v for k, v in os.environ.items() if k != "ATELIER_CONFIG"}
    env.update(ATELIER_URL=server.url, ATELIER_TOKEN=server.token)
    env["ATELIER_DATA_DIR"] = str(server.data_dir)
    tag = hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:12]
    try:
        yield Cli(env, tag)
    finally:
        with server.client() as http:
            found = http.get("/v1/sandboxes", params={"label": f"test={tag}"}).json()
            for sb in found["sandboxes"]:
                http.delete(f"/v1/sandboxes/{sb['id']}")


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: str) -> None:
    assert result.returncode == 2, result
    assert result.stdout == ""
    assert result.stderr.startswith("error: ") and result.stderr.endswith(f"({code})\n"), result
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_create_ls_and_rm(cli: Cli) -> None:
    info = json.loads(
        cli.ok("create", "--json", "-l", f"test={cli.tag}", "-l", "x=y", "-e", "GREETING=hi")
    )
    first = info["id"]
    assert info["state"] == "running" and info["runtime"] == "gvisor"
    assert info["labels"] == {"test": cli.tag, "x": "y"} and info["env"] == {"GREETING": "hi"}
    second = cli.create("--label", "team=a-rather-long-team-name")
    assert cli.ok("exec", first, "echo $GREETING") == "hi\n"

    lines = cli.ok("ls").splitlines()
    assert lines[0].split()[:3] == ["ID", "STATE", "TEMPLATE"]
    row = next(line for line in lines if line.startswith(second))
    assert row.split()[1:4] == ["running", "base", "gvisor"]
    assert f"team=a-rather-long-team-name,test={cli.tag}" in row  # piped: never cut short

    def listed(*args: str) -> list[str]:
        return sorted(sb["id"] for sb in json.loads(cli.ok("ls", "--json", *args)))

    assert listed("--label", f"test={cli.tag}") == sorted([first, second])
    assert listed("-l", f"test={cli.tag}", "-l", "x=y") == [first]
    assert listed("--state", "running", "-l", f"test={cli.tag}") == sorted([first, second])
    assert listed("--state", "stopped", "-l", f"test={cli.tag}") == []
    assert "no sandboxes" in cli.ok("ls", "-l", "x=nothing-has-this")

    assert cli.ok("rm", first, second) == f"{first}\n{second}\n"
    assert listed("--label", f"test={cli.tag}") == []
    assert first not in cli.ok("ls")
    assert_one_line_error(cli("rm", first), "sandbox_not_found")
    assert cli("rm", "-f", first).returncode == 0


def test_exec_streams_exit_codes_env_cwd_user(cli: Cli) -> None:
    sid = cli.create()
    result = cli("exec", sid, "echo out; echo err >&2; exit 7")
    assert (result.returncode, result.stdout, result.stderr) == (7, "out\n", "err\n")
    assert cli.ok("exec", sid, "--", "printf", "%s|", "a", "b c", "$HOME") == "a|b c|$HOME|"
    who = ["--", "sh", "-c", 'echo "$A $(pwd) $(id -un)"']
    assert cli.ok("exec", sid, *who) == " /home/user user\n"
    assert (
        cli.ok("exec", "-e", "A=1", "--cwd", "/tmp", "--user", "root", sid, *who) == "1 /tmp root\n"
    )
    result = cli("exec", "-i", sid, "--", "tr", "a-z", "A-Z", input=b"hello\n")
    assert result.stdout == "HELLO\n"
    missing = cli("exec", sid, "--", "no-such-command-xyz")
    assert missing.returncode == 127 and "not found" in missing.stderr
    killed = cli("exec", "--timeout", "1", sid, "echo started; sleep 30")
    assert killed.returncode == 137 and killed.stdout == "started\n"
    assert "timed out" in killed.stderr


def test_cp_both_ways_binary_stdin_stdout_and_errors(cli: Cli, tmp_path: Path) -> None:
    sid = cli.create()
    blob = tmp_path / "blob.bin"
    blob.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    cli.ok("cp", str(blob), f"{sid}:/home/user/blob.bin")
    remote = cli.ok("exec", sid, "sha256sum /home/user/blob.bin").split()[0]
    assert remote == sha256(blob)
    cli.ok("cp", str(blob), f"{sid}:/tmp/")  # into a directory: keeps the name
    assert cli.ok("exec", sid, "stat -c %s /tmp/blob.bin") == f"{blob.stat().st_size}\n"

    back = tmp_path / "back.bin"
    cli.ok("cp", f"{sid}:/home/user/blob.bin", str(back))
    assert sha256(back) == sha256(blob)
    (tmp_path / "into").mkdir()
    cli.ok("cp", f"{sid}:/tmp/blob.bin", str(tmp_path / "into"))
    assert sha256(tmp_path / "into" / "blob.bin") == sha256(blob)

    data = bytes(range(256)) * 64
    assert cli("cp", "-", f"{sid}:/tmp/stdin.bin", input=data).returncode == 0
    raw = subprocess.run(
        [ATELIER, "cp", f"{sid}:/tmp/stdin.bin", "-"], env=cli.env, capture_output=True
    )
    assert raw.returncode == 0 and raw.stdout == data

    assert_one_line_error(cli("cp", f"{sid}:/no/such/file", str(tmp_path / "x")), "file_not_found")
    assert_one_line_error(cli("cp", str(tmp_path / "absent"), f"{sid}:/tmp/"), "file_not_found")
    into_missing = cli("cp", f"{sid}:/tmp/blob.bin", str(tmp_path / "no" / "dir") + "/")
    assert_one_line_error(into_missing, "file_not_found")
    assert (
        str(tmp_path / "no" / "dir") in into_missing.stderr and ".part" not in into_missing.stderr
    )


def test_cp_recursive(cli: Cli, tmp_path: Path) -> None:
    sid = cli.create()
    tree = tmp_path / "tree"
    (tree / "sub" / "deeper").mkdir(parents=True)
    (tree / "a.txt").write_text("a\n")
    (tree / "sub" / "b.bin").write_bytes(os.urandom(200_000))
    (tree / "sub" / "deeper" / "c.txt").write_text("c\n")
    assert_one_line_error(cli("cp", str(tree), f"{sid}:/home/user/"), "is_a_directory")
    cli.ok("cp", "-r", str(tree), f"{sid}:/home/user/")
    listing = cli.ok("exec", sid, "cd /home/user/tree && find . -type f | sort")
    assert listing.split() == ["./a.txt", "./sub/b.bin", "./sub/deeper/c.txt"]

    assert_one_line_error(
        cli("cp", f"{sid}:/home/user/tree", str(tmp_path / "x")), "is_a_directory"
    )
    cli.ok("cp", "-r", f"{sid}:/home/user/tree", str(tmp_path / "copy"))
    for rel in ("a.txt", "sub/b.bin", "sub/deeper/c.txt"):
        assert sha256(tmp_path / "copy" / rel) == sha256(tree / rel), rel


def test_stop_start_keep_files(cli: Cli) -> None:
    sid = cli.create()
    cli.ok("exec", sid, "echo kept > /home/user/note.txt")
    assert cli.ok("stop", sid) == f"{sid} stopped\n"
    stopped = json.loads(cli.ok("ls", "--json", "--state", "stopped", "-l", f"test={cli.tag}"))
    assert [sb["id"] for sb in stopped] == [sid]
    assert_one_line_error(cli("exec", sid, "true"), "invalid_state")
    assert_one_line_error(cli("stop", sid), "invalid_state")
    assert cli.ok("start", sid) == f"{sid} running\n"
    assert_one_line_error(cli("start", sid), "invalid_state")
    assert cli.ok("exec", sid, "cat /home/user/note.txt") == "kept\n"


def test_logs_and_timeout(cli: Cli) -> None:
    sid = cli.create()
    cli.ok("exec", sid, "echo marker-for-logs")
    logs = cli.ok("logs", sid)
    assert "marker-for-logs" in logs  # the agent logs every command it runs
    assert len(cli.ok("logs", "--tail", "3", sid).splitlines()) < len(logs.splitlines())

    info = json.loads(cli.ok("timeout", sid, "10m", "--json"))
    expires = datetime.fromisoformat(info["expires_at"].replace("Z", "+00:00"))
    assert abs((expires - datetime.now(UTC)).total_seconds() - 600) < 60
    assert cli.ok("timeout", sid, "never") == f"{sid} never expires\n"
    assert json.loads(cli.ok("ls", "--json", "-l", f"test={cli.tag}"))[0]["expires_at"] is None
    assert cli("timeout", sid, "soon").returncode == 2


def test_doctor(cli: Cli) -> None:
    result = cli("doctor", COLUMNS="200")
    assert result.returncode == 0, result.stderr
    runtime = next(line for line in result.stdout.splitlines() if "gvisor (default)" in line)
    assert re.search(r"gvisor \(default\)\s*│\s*yes\s*│\s*runsc", runtime), runtime
    assert "ready: default runtime gvisor is available" in result.stdout
    if Path("/sys/module/kvm_pvm").exists():
        kvm = next(line for line in result.stdout.splitlines() if re.match(r"│ kvm\s", line))
        assert "PVM" in kvm, kvm


@pytest.mark.parametrize(
    "args",
    [
        ("exec", "sb-nosuch00", "true"),
        ("stop", "sb-nosuch00"),
        ("start", "sb-nosuch00"),
        ("rm", "sb-nosuch00"),
        ("logs", "sb-nosuch00"),
        ("timeout", "sb-nosuch00", "5m"),
        ("cp", "sb-nosuch00:/etc/hostname", "-"),
        ("cp", "-", "sb-nosuch00:/tmp/x"),
    ],
)
def test_unknown_sandbox_is_one_line(cli: Cli, args: tuple[str, ...]) -> None:
    assert_one_line_error(cli(*args, input=b""), "sandbox_not_found")


def test_bad_token_template_and_no_tty_are_one_line(cli: Cli, tmp_path: Path) -> None:
    no_token = {k: v for k, v in cli.env.items() if k != "ATELIER_TOKEN"}
    no_token["ATELIER_DATA_DIR"] = str(tmp_path)  # no local admin-token to fall back on
    result = Cli(no_token, cli.tag)("ls")
    assert_one_line_error(result, "unauthenticated")
    assert "ATELIER_TOKEN" in result.stderr
    assert_one_line_error(cli("ls", ATELIER_TOKEN="atl_wrong"), "unauthenticated")
    assert_one_line_error(
        cli("create", "--label", f"test={cli.tag}", "-t", "no-such-template"), "template_not_found"
    )
    assert json.loads(cli.ok("ls", "--json", "-l", f"test={cli.tag}")) == []
    not_tty = cli("shell", "sb-anything", input=b"")
    assert_one_line_error(not_tty, "not_a_tty")


# --- shell, in a real pseudo-terminal ------------------------------------------------------


def set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class Terminal:
    """The user's side of a pty: type, and wait (polling, generously) for output."""

    def __init__(self, master: int) -> None:
        self.master = master
        self.buffer = b""

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def expect(self, pattern: bytes) -> re.Match[bytes]:
        regex = re.compile(pattern)
        deadline = time.monotonic() + DEADLINE
        while not (match := regex.search(self.buffer)):
            left = deadline - time.monotonic()
            assert left > 0, f"no {pattern!r} in {self.buffer[-400:]!r}"
            if select.select([self.master], [], [], min(left, 0.5))[0]:
                try:
                    self.buffer += os.read(self.master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    assert regex.search(self.buffer), (
                        f"eof before {pattern!r}: {self.buffer[-400:]!r}"
                    )
        self.buffer = self.buffer[match.end() :]
        return match


def test_shell_in_a_real_terminal(cli: Cli) -> None:
    sid = cli.create()
    master, slave = os.openpty()
    set_size(slave, 30, 100)
    before = termios.tcgetattr(slave)
    proc = subprocess.Popen(
        [ATELIER, "shell", sid],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=cli.env,
        start_new_session=True,  # then make the pty its controlling tty: resizes send SIGWINCH
        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
    )
    term = Terminal(master)
    try:
        term.expect(rb"\$ ")
        assert not termios.tcgetattr(slave)[3] & termios.ECHO  # the CLI put it in raw mode
        term.type(b"echo $((6*7))\r")
        term.expect(rb"[\r\n]42\r\n")
        term.type(b"stty size\r")
        term.expect(rb"[\r\n]30 100\r\n")

        set_size(master, 40, 132)  # the kernel signals the CLI, which resizes the remote pty
        deadline = time.monotonic() + DEADLINE
        while True:
            term.type(b"stty size\r")
            if term.expect(rb"[\r\n](\d+ \d+)\r\n").group(1) == b"40 132":
                break
            assert time.monotonic() < deadline, "the remote terminal never got the new size"
            time.sleep(0.2)

        term.type(b"exit 3\r")
        assert proc.wait(timeout=DEADLINE) == 3
        assert termios.tcgetattr(slave) == before
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
        os.close(slave)
