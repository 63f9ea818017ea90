"""Real git servers on loopback for tests (a unique module name: import as ``git_servers``).

* :func:`make_repo` / :func:`make_superproject` build bare repositories with
  known commits, branches, tags and submodules.
* :class:`GitHttpServer`: ``git http-backend`` behind a small threaded
  stdlib HTTP server on ``127.0.0.1:<random port>``. Private repositories
  need HTTP Basic credentials (401 + ``WWW-Authenticate`` otherwise), public
  ones are readable anonymously, unknown ones are 404. Repositories can also
  be made to hang (timeouts) or to speak only protocol v0 (SHA refusals).
* :class:`SshGitServer`: the real OpenSSH ``sshd`` in the foreground on
  ``127.0.0.1:<random port>`` with its own host key and ``authorized_keys``;
  root logs in by key only.

Every server is a context manager and stops everything it started.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

HTTP_BACKEND = "/usr/lib/git-core/git-http-backend"
_GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
    "LC_ALL": "C",
}


def sshd_path() -> str | None:
    """The sshd binary, or None when openssh-server is not installed."""
    return shutil.which("sshd", path="/usr/sbin:/sbin:/usr/local/sbin:/usr/bin")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (right now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_git(*args: str, cwd: Path | None = None, home: Path | None = None) -> str:
    """Run git for building fixtures (isolated from the machine's config)."""
    env = {**os.environ, **_GIT_ENV, "HOME": str(home or tempfile.gettempdir())}
    env.pop("GIT_DIR", None)
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    )
    return done.stdout.strip()


@dataclass
class BareRepo:
    """A bare repository built by :func:`make_repo` and what is in it."""

    path: Path
    main: list[str] = field(default_factory=list)  # commits on main, oldest first
    feature: str = ""  # tip of branch "feature" (one commit past main~1)
    tags: dict[str, str] = field(default_factory=dict)  # tag -> commit

    @property
    def head(self) -> str:
        """The tip of ``main``."""
        return self.main[-1]


def _commit(work: Path, name: str, content: str, message: str) -> str:
    (work / name).write_text(content)
    run_git("add", name, cwd=work)
    run_git("commit", "-q", "-m", message, cwd=work)
    return run_git("rev-parse", "HEAD", cwd=work)


def _publish(work: Path, bare: Path, *, allow_sha: bool) -> None:
    run_git("init", "-q", "--bare", "--initial-branch=main", str(bare))
    run_git("push", "-q", "--mirror", str(bare), cwd=work)
    for key in ("uploadpack.allowAnySHA1InWant", "uploadpack.allowReachableSHA1InWant"):
        run_git("config", key, "true" if allow_sha else "false", cwd=bare)
    run_git("config", "http.receivepack", "false", cwd=bare)


def make_repo(root: Path, name: str, *, commits: int = 4, allow_sha: bool = True) -> BareRepo:
    """``root/name`` (bare): ``commits`` commits on ``main``, a branch
    ``feature`` off ``main~1``, a lightweight tag ``v1.0`` on the first commit
    and an annotated tag ``v2.0`` on ``main~1``."""
    with tempfile.TemporaryDirectory(prefix="gitsrv-work-") as tmp:
        work = Path(tmp)
        run_git("init", "-q", "--initial-branch=main", str(work))
        repo = BareRepo(root / name)
        for i in range(commits):
            repo.main.append(_commit(work, "file.txt", f"version {i}\n", f"commit {i}"))
        run_git("tag", "v1.0", repo.main[0], cwd=work)
        run_git("tag", "-a", "-m", "release 2", "v2.0", repo.main[-2], cwd=work)
        repo.tags = {"v1.0": repo.main[0], "v2.0": repo.main[-2]}
        run_git("checkout", "-q", "-b", "feature", repo.main[-2], cwd=work)
        repo.feature = _commit(work, "feature.txt", "feature\n", "feature work")
        run_git("checkout", "-q", "main", cwd=work)
        _publish(work, repo.path, allow_sha=allow_sha)
    return repo


def make_superproject(root: Path, name: str, sub_url: str, sub_commit: str) -> BareRepo:
    """``root/name`` (bare): one commit with a submodule ``lib`` at
    ``sub_commit`` whose URL in ``.gitmodules`` is ``sub_url`` (may be relative)."""
    with tempfile.TemporaryDirectory(prefix="gitsrv-work-") as tmp:
        work = Path(tmp)
        run_git("init", "-q", "--initial-branch=main", str(work))
        (work / ".gitmodules").write_text(f'[submodule "lib"]\n\tpath = lib\n\turl = {sub_url}\n')
        (work / "README").write_text("superproject\n")
        run_git("add", ".gitmodules", "README", cwd=work)
        run_git("update-index", "--add", "--cacheinfo", f"160000,{sub_commit},lib", cwd=work)
        run_git("commit", "-q", "-m", "add lib", cwd=work)
        repo = BareRepo(root / name, main=[run_git("rev-parse", "HEAD", cwd=work)])
        _publish(work, repo.path, allow_sha=True)
    return repo


@dataclass
class GitRepos:
    """A test session's bare repositories (all under ``root``)."""

    root: Path
    public: BareRepo
    private: BareRepo
    v0: BareRepo
    lib: BareRepo
    superproject: BareRepo
    slow: BareRepo
    v0_superproject: BareRepo  # its submodule is served by protocol v0 only


# --------------------------------------------------------------------- HTTP


@dataclass
class HttpRequestLog:
    """One request the HTTP server answered."""

    method: str
    path: str
    status: int
    user: str | None


class _Handler(BaseHTTPRequestHandler):
    server: _GitHTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _user(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Basic "):
            return None
        try:
            user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
        except ValueError:
            return None
        owner = self.server.owner
        return user if (user, password) == (owner.username, owner.token) else ""

    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _serve(self) -> None:
        owner = self.server.owner
        path, _, query = self.path.partition("?")
        parts = [p for p in path.split("/") if p]
        repo = next((i for i, p in enumerate(parts) if p.endswith(".git")), None)
        name = "/".join(parts[: repo + 1]) if repo is not None else ""
        user = self._user()
        if owner.probe is not None:
            owner.probe()
        status = 200
        try:
            if not name or not (owner.root / name).is_dir():
                status = 404
                self._reply(404, b"repository not found\n")
                return
            if name in owner.hanging:
                owner.release.wait(120)
                status = 503
                self._reply(503)
                return
            if name in owner.private and not user:
                status = 401
                self._reply(
                    401, b"authentication required\n", {"WWW-Authenticate": 'Basic realm="git"'}
                )
                return
            status = self._cgi(path, query, name, user)
        finally:
            owner.log.append(HttpRequestLog(self.command, self.path, status, user))

    def _cgi(self, path: str, query: str, name: str, user: str | None) -> int:
        owner = self.server.owner
        body = self._body() if self.command == "POST" else b""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(owner.root),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_PROJECT_ROOT": str(owner.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": "HTTP/1.0",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": self.client_address[0],
        }
        if user:
            env["REMOTE_USER"] = user
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        if self.headers.get("Git-Protocol") and name not in owner.protocol_v0:
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        done = subprocess.run([HTTP_BACKEND], input=body, env=env, capture_output=True)
        head, _, payload = done.stdout.partition(b"\r\n\r\n")
        if not _:
            head, _, payload = done.stdout.partition(b"\n\n")
        status, headers = 200, {}
        for line in head.decode("latin-1").splitlines():
            key, _, value = line.partition(":")
            if key.lower() == "status":
                status = int(value.split()[0])
            elif key:
                headers[key] = value.strip()
        headers.pop("Content-Length", None)
        self._reply(status, payload, headers)
        return status


class _GitHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    owner: GitHttpServer


class GitHttpServer:
    """``git http-backend`` over HTTP on loopback, serving the bare repos under ``root``.

    ``private``: repo names (``x.git``) that need ``username``/``token``.
    ``protocol_v0``: repos served without protocol v2 (their SHA policy holds).
    ``hanging``: repos whose requests never get an answer until ``stop()``.
    ``probe``: called at the start of every request (e.g. to inspect /proc
    while the git client is alive).
    """

    def __init__(self, root: Path, *, username: str = "alice", token: str = "s3cr3t") -> None:
        self.root = root
        self.username = username
        self.token = token
        self.private: set[str] = set()
        self.protocol_v0: set[str] = set()
        self.hanging: set[str] = set()
        self.probe: Any = None
        self.log: list[HttpRequestLog] = []
        self.release = threading.Event()
        self._httpd: _GitHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._httpd is not None
        return int(self._httpd.server_address[1])

    def url(self, name: str) -> str:
        """The clone URL of repository ``name`` (e.g. ``"public.git"``)."""
        return f"http://127.0.0.1:{self.port}/{name}"

    def start(self) -> GitHttpServer:
        httpd = _GitHTTPServer(("127.0.0.1", 0), _Handler)
        httpd.owner = self
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, name="git-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(10)
        self._httpd = self._thread = None

    def __enter__(self) -> GitHttpServer:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# ---------------------------------------------------------------------- SSH


def _keygen(path: Path, comment: str) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path.with_suffix(".pub").read_text().strip()


class SshGitServer:
    """OpenSSH ``sshd -D -e`` on ``127.0.0.1:<random port>``, for git over SSH.

    ``client_key`` (private key text) is authorized for root; ``other_key`` is
    not. ``client_key_public``: the client's public key (``type base64``).
    ``known_hosts`` pins this server's host key.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = 0
        self.client_key = ""
        self.other_key = ""
        self.client_key_public = ""
        self.host_public = ""
        self._proc: subprocess.Popen[str] | None = None
        self._lines: list[str] = []

    @property
    def known_hosts(self) -> str:
        return f"[127.0.0.1]:{self.port} {self.host_public}\n"

    def url(self, path: Path) -> str:
        """An ``ssh://`` URL of the repository at absolute ``path``."""
        return f"ssh://root@127.0.0.1:{self.port}{path}"

    def _config(self, host_key: Path, authorized: Path) -> Path:
        config = self.workdir / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {host_key}",
                    f"PidFile {self.workdir / 'sshd.pid'}",
                    f"AuthorizedKeysFile {authorized}",
                    "PermitRootLogin prohibit-password",
                    "AllowUsers root",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    "PrintMotd no",
                    "AcceptEnv GIT_PROTOCOL",
                    "LogLevel VERBOSE",
                ]
            )
            + "\n"
        )
        return config

    def start(self, timeout: float = 15) -> SshGitServer:
        sshd = sshd_path()
        if sshd is None:
            raise RuntimeError("sshd is not installed (openssh-server)")
        # sshd's privilege separation directory; the package's service makes it
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.workdir.mkdir(parents=True, exist_ok=True)
        host_key = self.workdir / "host_key"
        self.host_public = " ".join(_keygen(host_key, "test-host").split()[:2])
        self.client_key = self._private(self.workdir / "client_key", "test-client")
        self.other_key = self._private(self.workdir / "other_key", "test-other")
        authorized = self.workdir / "authorized_keys"
        authorized.write_text((self.workdir / "client_key.pub").read_text())
        self.client_key_public = " ".join(authorized.read_text().split()[:2])
        for _ in range(5):
            self.port = free_port()
            config = self._config(host_key, authorized)
            proc = subprocess.Popen(
                [sshd, "-D", "-e", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            assert proc.stderr is not None
            lines: list[str] = []
            for line in proc.stderr:
                lines.append(line)
                if "Server listening on" in line:
                    self._proc = proc
                    self._lines = lines
                    threading.Thread(target=self._drain, daemon=True).start()
                    return self
            proc.wait(timeout)
            if not any("Address already in use" in ln for ln in lines):
                raise RuntimeError(f"sshd did not start: {''.join(lines)}")
        raise RuntimeError("sshd could not find a free port")

    def _private(self, path: Path, comment: str) -> str:
        _keygen(path, comment)
        return path.read_text()

    def _drain(self) -> None:
        proc = self._proc
        if proc is not None and proc.stderr is not None:
            for line in proc.stderr:
                self._lines.append(line)

    @property
    def log(self) -> str:
        """What sshd said so far."""
        return "".join(self._lines)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def __enter__(self) -> SshGitServer:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
