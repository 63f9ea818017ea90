"""Atelier code-interpreter gateway: runs inside a sandbox, one per sandbox.

Started by the server through the agent (a background process tagged
``atelier-interpreter``) with the template's own ``python3``. It reads one
JSON line from stdin (``{"token": ..., "state_dir": ...}``), listens on
``127.0.0.1:<random port>``, writes ``<state_dir>/gateway.json`` (port, token,
pid, version; mode 0600) and prints ``ATELIER-GATEWAY-READY <port>`` on
stdout; after that its stdout/stderr go to ``<state_dir>/gateway.log``.

The server reaches it through the agent's TCP tunnel. Each connection carries
one request, a JSON line with the token, and gets NDJSON back:

* ``execute`` ``{code, language, context, timeout}`` → ``started``, then
  ``stdout``/``stderr``/``result``/``error`` events, then ``end``;
* ``contexts.list`` / ``contexts.create`` / ``contexts.restart`` /
  ``contexts.delete`` / ``ping`` → one reply line;
* anything that fails before execution → ``{"type": "failure", "code", "message"}``.

Contexts are kernels: ``python`` is ipykernel through ``jupyter_client``
(imported only when a python context starts), ``bash`` a persistent
interactive bash, ``javascript`` a Node process running ``js_kernel.js``.
A timeout interrupts the kernel (SIGINT / ``interrupt_kernel``) and keeps its
state; a client that goes away interrupts the cell too.

Standard library only (plus ``jupyter_client`` for python contexts); no
import of Atelier: this file is copied into the sandbox as is.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import contextlib
import hmac
import importlib
import json
import os
import queue
import re
import secrets
import shutil
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

GATEWAY_VERSION = "1"
READY_PREFIX = "ATELIER-GATEWAY-READY"
LANGUAGES = ("python", "javascript", "bash")
INTERRUPT_GRACE = 5.0  # seconds a kernel gets to stop after an interrupt
START_TIMEOUT = 120.0  # seconds a kernel gets to start (ipykernel: ~11 s under ptrace)
MAX_REQUEST = 16 * 1024 * 1024
CONTEXT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")

Send = Callable[[dict[str, Any]], Awaitable[None]]


class Failure(Exception):
    """A request that cannot be served: becomes ``{"type": "failure"}``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# -- pure helpers (unit-tested on the host) ----------------------------------------


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def timeout_error(seconds: float, restarted: bool, traceback: str = "") -> dict[str, Any]:
    """The ``error`` event of a cell that ran out of time."""
    if restarted:
        value = (
            f"execution exceeded {seconds:g} s and did not stop when interrupted: "
            "the kernel was restarted (its state is lost)"
        )
    else:
        value = f"execution exceeded {seconds:g} s and was interrupted (the kernel keeps its state)"
    return {"type": "error", "name": "TimeoutError", "value": value, "traceback": traceback}


def jupyter_event(msg: dict[str, Any]) -> dict[str, Any] | None:
    """The event for one IOPub message of ipykernel (None: not shown to the client)."""
    kind = msg.get("msg_type") or msg.get("header", {}).get("msg_type")
    content = msg.get("content") or {}
    if kind == "stream":
        name = "stderr" if content.get("name") == "stderr" else "stdout"
        return {"type": name, "data": str(content.get("text", ""))}
    if kind in ("execute_result", "display_data", "update_display_data"):
        data = content.get("data") or {}
        if not data:
            return None
        event: dict[str, Any] = {
            "type": "result",
            "data": dict(data),
            "is_main_result": kind == "execute_result",
        }
        if content.get("metadata"):
            event["metadata"] = content["metadata"]
        return event
    if kind == "error":
        return {
            "type": "error",
            "name": str(content.get("ename", "Error")),
            "value": str(content.get("evalue", "")),
            "traceback": strip_ansi("\n".join(content.get("traceback") or [])),
        }
    return None


class MarkerScanner:
    """Finds the end marker in a byte stream, passing the text before it through.

    A tail that could be the start of the marker is held back until the next
    chunk decides. After the marker, the rest of its line (``:<status>``)
    is parsed and returned by :attr:`status`.
    """

    def __init__(self, marker: bytes) -> None:
        self.marker = marker
        self._buffer = b""
        self.found = False
        self.status: int | None = None
        self._after = b""

    def feed(self, chunk: bytes) -> bytes:
        """The bytes to emit now (before the marker); empty once the marker was seen."""
        if self.found:
            self._after += chunk
            self._parse_status()
            return b""
        data = self._buffer + chunk
        at = data.find(self.marker)
        if at >= 0:
            self.found = True
            self._buffer = b""
            self._after = data[at + len(self.marker) :]
            self._parse_status()
            return data[:at]
        keep = 0
        for n in range(min(len(self.marker) - 1, len(data)), 0, -1):
            if self.marker.startswith(data[-n:]):
                keep = n
                break
        self._buffer = data[len(data) - keep :] if keep else b""
        return data[: len(data) - keep]

    def flush(self) -> bytes:
        data, self._buffer = self._buffer, b""
        return data

    def _parse_status(self) -> None:
        line, sep, _ = self._after.partition(b"\n")
        if sep and line.startswith(b":"):
            with contextlib.suppress(ValueError):
                self.status = int(line[1:].strip())

    @property
    def complete(self) -> bool:
        return self.found and b"\n" in self._after


# -- kernels -----------------------------------------------------------------------------


class Context(abc.ABC):
    language = ""

    def __init__(self, name: str, cwd: str, state_dir: str) -> None:
        self.name = name
        self.cwd = cwd
        self.state_dir = state_dir
        self.lock = asyncio.Lock()
        self.created_at = time.time()
        self.execution_count = 0

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "language": self.language,
            "cwd": self.cwd,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created_at)),
            "execution_count": self.execution_count,
            "alive": self.alive(),
        }

    @abc.abstractmethod
    def alive(self) -> bool:
        """Whether the context's kernel process runs."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Start the kernel (its state starts empty)."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop the kernel and everything it started."""

    async def restart(self) -> None:
        await self.stop()
        self.execution_count = 0
        await self.start()

    @abc.abstractmethod
    async def execute(
        self, code: str, timeout: float | None, send: Send, gone: asyncio.Event
    ) -> dict[str, Any]:
        """Run one cell, sending its events; returns the ``end`` event."""


async def _wait_any(*aws: Awaitable[Any], timeout: float | None) -> None:
    """Wait for the first of ``aws``; cancels only what it wrapped itself (not futures)."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    mine = [t for t, a in zip(tasks, aws, strict=True) if t is not a]
    try:
        await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in mine:
            task.cancel()


class PythonContext(Context):
    """ipykernel through jupyter_client's asyncio manager; zmq over unix sockets."""

    language = "python"

    def __init__(self, name: str, cwd: str, state_dir: str) -> None:
        super().__init__(name, cwd, state_dir)
        self.km: Any = None
        self.kc: Any = None

    def alive(self) -> bool:
        return self.km is not None and self.km.has_kernel

    async def start(self) -> None:
        try:
            manager = importlib.import_module("jupyter_client.manager")
        except ImportError as exc:
            raise Failure(
                "invalid_request",
                f"python contexts need jupyter_client and ipykernel in the template ({exc}); "
                "use the code-interpreter template",
            ) from None
        os.makedirs(os.path.join(self.state_dir, "runtime"), mode=0o700, exist_ok=True)
        # ZeroMQ over TCP on loopback: its ipc transport (unix sockets) never
        # connects under gVisor (runsc 20221219), the kernel is never ready
        km = manager.AsyncKernelManager(kernel_name="atelier-python3", ip="127.0.0.1")
        env = dict(os.environ)
        env.pop("JPY_PARENT_PID", None)
        try:
            await km.start_kernel(cwd=self.cwd, env=env)
            kc = km.client()
            kc.start_channels()
            await kc.wait_for_ready(timeout=START_TIMEOUT)
        except Exception as exc:
            with contextlib.suppress(Exception):
                await km.shutdown_kernel(now=True)
            raise Failure("sandbox_error", f"the python kernel did not start: {exc}") from None
        self.km, self.kc = km, kc

    async def stop(self) -> None:
        km, kc = self.km, self.kc
        self.km = self.kc = None
        if kc is not None:
            with contextlib.suppress(Exception):
                kc.stop_channels()
        if km is not None:
            with contextlib.suppress(Exception):
                await km.shutdown_kernel(now=True)

    async def _next_iopub(self, wait: float) -> dict[str, Any] | None:
        try:
            msg: dict[str, Any] = await self.kc.get_iopub_msg(timeout=max(wait, 0.001))
            return msg
        except queue.Empty:
            return None

    async def execute(
        self, code: str, timeout: float | None, send: Send, gone: asyncio.Event
    ) -> dict[str, Any]:
        if not self.alive() or not await self.km.is_alive():
            await self.restart()
        kc = self.kc
        loop = asyncio.get_running_loop()
        # stop_on_error=False: cells are sent one at a time, so there is no queue to abort,
        # and ipykernel would abort a request that arrives right after an error
        msg_id = kc.execute(code, store_history=True, allow_stdin=False, stop_on_error=False)
        deadline = None if timeout is None else loop.time() + timeout
        interrupted_at: float | None = None
        timed_out = False
        count: int | None = None
        error: dict[str, Any] | None = None
        while True:
            now = loop.time()
            if interrupted_at is None and (
                gone.is_set() or (deadline is not None and now >= deadline)
            ):
                timed_out = not gone.is_set()
                interrupted_at = now
                with contextlib.suppress(Exception):
                    await self.km.interrupt_kernel()
            if interrupted_at is not None and now - interrupted_at > INTERRUPT_GRACE:
                await self.restart()
                if timed_out:
                    assert timeout is not None
                    await send(timeout_error(timeout, restarted=True))
                return {"type": "end", "execution_count": count}
            wait = 0.5
            if deadline is not None and interrupted_at is None:
                wait = min(wait, deadline - now)
            msg = await self._next_iopub(wait)
            if msg is None:
                if not await self.km.is_alive():
                    await self.stop()
                    await send(
                        {
                            "type": "error",
                            "name": "KernelDied",
                            "value": "the python kernel exited; the next cell starts a new one",
                            "traceback": "",
                        }
                    )
                    return {"type": "end", "execution_count": count}
                continue
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = msg.get("msg_type")
            content = msg.get("content") or {}
            if kind == "execute_input":
                count = content.get("execution_count", count)
                continue
            if kind == "status" and content.get("execution_state") == "idle":
                break
            event = jupyter_event(msg)
            if event is None:
                continue
            if event["type"] == "error":
                error = event
                if interrupted_at is not None:
                    continue  # reported below as the timeout
            if not gone.is_set():
                await send(event)
        if count is not None:
            self.execution_count = count
        if timed_out:
            assert timeout is not None
            await send(timeout_error(timeout, False, (error or {}).get("traceback", "")))
        return {"type": "end", "execution_count": count}


class BashContext(Context):
    """An interactive bash (SIGINT aborts the running line, the shell lives on).

    Each cell is written to a file and run by ``source`` in the shell itself,
    so ``cd``, variables and functions persist; a marker with a random nonce
    printed afterwards on stdout and stderr ends the cell.
    """

    language = "bash"

    def __init__(self, name: str, cwd: str, state_dir: str) -> None:
        super().__init__(name, cwd, state_dir)
        self.proc: asyncio.subprocess.Process | None = None
        self.cell_path = os.path.join(state_dir, "cells", f"{name}.sh")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self) -> None:
        bash = shutil.which("bash")
        if bash is None:
            raise Failure("invalid_request", "bash contexts need bash in the template")
        os.makedirs(os.path.dirname(self.cell_path), mode=0o700, exist_ok=True)
        env = dict(os.environ, PS1="", PS2="", PS4="+ ", TERM="dumb")
        env.pop("PROMPT_COMMAND", None)
        self.proc = await asyncio.create_subprocess_exec(
            bash,
            "--norc",
            "--noprofile",
            "--noediting",
            "-i",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=self.cwd,
            env=env,
            start_new_session=True,
        )
        setup = "set +o history +H; unset HISTFILE PROMPT_COMMAND; PS1=; PS2=\n"
        nonce = secrets.token_hex(8)
        await self._write(setup + self._marker_line(nonce))
        try:
            await asyncio.wait_for(self._collect(nonce, None), START_TIMEOUT)
        except TimeoutError:
            await self.stop()
            raise Failure("sandbox_error", "bash did not start") from None

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.wait(), 5)

    @staticmethod
    def _marker_line(nonce: str) -> str:
        mark = f"__ATELIER_END_{nonce}__"
        return (
            f"__atl_s=$?; printf '%s:%d\\n' '{mark}' \"$__atl_s\"; "
            f"printf '%s\\n' '{mark}' >&2; (exit $__atl_s)\n"
        )

    async def _write(self, text: str) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(text.encode())
        await self.proc.stdin.drain()

    async def _collect(self, nonce: str, send: Send | None) -> int | None:
        """Read stdout and stderr up to the marker; returns the cell's exit status."""
        assert self.proc is not None
        mark = f"__ATELIER_END_{nonce}__".encode()
        out, err = MarkerScanner(mark), MarkerScanner(mark)
        decoders = {"stdout": _Utf8(), "stderr": _Utf8()}

        async def pump(name: str, stream: asyncio.StreamReader, scanner: MarkerScanner) -> None:
            while not scanner.complete:
                chunk = await stream.read(65536)
                if not chunk:
                    text = decoders[name].decode(scanner.flush(), final=True)
                    if text and send is not None:
                        await send({"type": name, "data": text})
                    return
                text = decoders[name].decode(scanner.feed(chunk))
                if text and send is not None:
                    await send({"type": name, "data": text})

        assert self.proc.stdout is not None and self.proc.stderr is not None
        await asyncio.gather(
            pump("stdout", self.proc.stdout, out), pump("stderr", self.proc.stderr, err)
        )
        if not out.found:
            raise EOFError("bash exited")
        return out.status

    async def execute(
        self, code: str, timeout: float | None, send: Send, gone: asyncio.Event
    ) -> dict[str, Any]:
        if not self.alive():
            await self.restart()
        assert self.proc is not None
        with open(self.cell_path, "w") as f:
            f.write(code if code.endswith("\n") else code + "\n")
        nonce = secrets.token_hex(8)
        self.execution_count += 1
        quoted = "'" + self.cell_path.replace("'", "'\\''") + "'"
        await self._write(f"source {quoted} </dev/null\n" + self._marker_line(nonce))

        async def guarded(event: dict[str, Any]) -> None:
            if not gone.is_set():
                await send(event)

        collect = asyncio.ensure_future(self._collect(nonce, guarded))
        timed_out = restarted = False
        status: int | None = None
        try:
            await _wait_any(collect, gone.wait(), timeout=timeout)
            if not collect.done():
                timed_out = not gone.is_set()
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGINT)
                await _wait_any(collect, timeout=INTERRUPT_GRACE)
            if collect.done():
                status = collect.result()
            else:
                collect.cancel()
                restarted = True
                await self.stop()
        except EOFError:
            await self.stop()
            await guarded(
                {
                    "type": "error",
                    "name": "KernelDied",
                    "value": "bash exited; the next cell starts a new shell",
                    "traceback": "",
                }
            )
            return {"type": "end", "execution_count": self.execution_count}
        if timed_out:
            assert timeout is not None
            await guarded(timeout_error(timeout, restarted))
        elif status:
            await guarded(
                {"type": "error", "name": "ExitStatus", "value": str(status), "traceback": ""}
            )
        return {"type": "end", "execution_count": self.execution_count, "exit_code": status}


class _Utf8:
    def __init__(self) -> None:
        import codecs

        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def decode(self, data: bytes, final: bool = False) -> str:
        return str(self._decoder.decode(data, final))


class JavaScriptContext(Context):
    """A Node process running js_kernel.js: requests on stdin, events on fd 3."""

    language = "javascript"

    def __init__(self, name: str, cwd: str, state_dir: str) -> None:
        super().__init__(name, cwd, state_dir)
        self.proc: asyncio.subprocess.Process | None = None
        self.events: asyncio.StreamReader | None = None
        self._pumps: list[asyncio.Task[None]] = []
        self._send: Send | None = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self) -> None:
        node = shutil.which("node") or shutil.which("nodejs")
        if node is None:
            raise Failure(
                "invalid_request",
                "javascript contexts need Node.js in the template; "
                "use the code-interpreter template",
            )
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "js_kernel.js")
        read_fd, write_fd = os.pipe()
        try:
            self.proc = await asyncio.create_subprocess_exec(
                node,
                script,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=self.cwd,
                pass_fds=(write_fd,),
                env=dict(os.environ, ATELIER_EVENTS_FD=str(write_fd)),
                start_new_session=True,
            )
        finally:
            os.close(write_fd)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=MAX_REQUEST)
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", 0)
        )
        self.events = reader
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._pumps = [
            asyncio.ensure_future(self._pump("stdout", self.proc.stdout)),
            asyncio.ensure_future(self._pump("stderr", self.proc.stderr)),
        ]
        try:
            ready = await asyncio.wait_for(reader.readline(), START_TIMEOUT)
        except TimeoutError:
            ready = b""
        if not ready.startswith(b'{"type":"ready"'):
            await self.stop()
            raise Failure("sandbox_error", "the javascript kernel did not start")

    async def _pump(self, name: str, stream: asyncio.StreamReader) -> None:
        """Output written straight to fd 1/2 (not through console): best effort."""
        decoder = _Utf8()
        while True:
            chunk = await stream.read(65536)
            if not chunk:
                return
            text = decoder.decode(chunk)
            if text and self._send is not None:
                with contextlib.suppress(Exception):
                    await self._send({"type": name, "data": text})

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        for task in self._pumps:
            task.cancel()
        self._pumps = []
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.wait(), 5)

    async def execute(
        self, code: str, timeout: float | None, send: Send, gone: asyncio.Event
    ) -> dict[str, Any]:
        if not self.alive():
            await self.restart()
        assert self.proc is not None and self.proc.stdin is not None and self.events is not None

        async def guarded(event: dict[str, Any]) -> None:
            if not gone.is_set():
                await send(event)

        self._send = guarded
        self.execution_count += 1
        request = {"code": code, "timeout_ms": None if timeout is None else int(timeout * 1000)}
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        await self.proc.stdin.drain()
        loop = asyncio.get_running_loop()
        # the kernel enforces the timeout itself (vm timeout, promise race); this is the backstop
        backstop = None if timeout is None else loop.time() + timeout + 2.0
        interrupted_at: float | None = None
        try:
            while True:
                now = loop.time()
                if interrupted_at is None and (
                    gone.is_set() or (backstop is not None and now >= backstop)
                ):
                    interrupted_at = now
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.proc.pid, signal.SIGINT)
                if interrupted_at is not None and now - interrupted_at > INTERRUPT_GRACE:
                    await self.stop()
                    if timeout is not None and not gone.is_set():
                        await guarded(timeout_error(timeout, restarted=True))
                    return {"type": "end", "execution_count": self.execution_count}
                try:
                    line = await asyncio.wait_for(self.events.readline(), 0.5)
                except TimeoutError:
                    continue
                if not line:
                    await self.stop()
                    await guarded(
                        {
                            "type": "error",
                            "name": "KernelDied",
                            "value": "node exited; the next cell starts a new context",
                            "traceback": "",
                        }
                    )
                    return {"type": "end", "execution_count": self.execution_count}
                event = json.loads(line)
                if event.get("type") == "end":
                    await asyncio.sleep(0)  # let output already in the pipes through
                    return {"type": "end", "execution_count": self.execution_count}
                await guarded(event)
        finally:
            self._send = None


KINDS: dict[str, type[Context]] = {
    "python": PythonContext,
    "bash": BashContext,
    "javascript": JavaScriptContext,
}


# -- the gateway -------------------------------------------------------------------------


class Gateway:
    def __init__(self, token: str, state_dir: str) -> None:
        self.token = token
        self.state_dir = state_dir
        self.contexts: dict[str, Context] = {}
        self.creating: dict[str, asyncio.Lock] = {}
        self.home = os.path.expanduser("~")

    async def context(self, name: str | None, language: str, cwd: str | None) -> Context:
        if language not in KINDS:
            raise Failure(
                "invalid_request", f"unknown language {language!r}: use one of {LANGUAGES}"
            )
        name = name or language
        if not CONTEXT_NAME.match(name):
            raise Failure("invalid_request", f"invalid context name {name!r}")
        lock = self.creating.setdefault(name, asyncio.Lock())
        async with lock:
            ctx = self.contexts.get(name)
            if ctx is not None:
                if ctx.language != language:
                    raise Failure(
                        "conflict", f"context {name!r} runs {ctx.language}, not {language}"
                    )
                return ctx
            directory = cwd or self.home
            if not os.path.isdir(directory):
                raise Failure("invalid_request", f"no such directory {directory!r}")
            ctx = KINDS[language](name, directory, self.state_dir)
            await ctx.start()
            self.contexts[name] = ctx
            return ctx

    def existing(self, name: str) -> Context:
        ctx = self.contexts.get(str(name))
        if ctx is None:
            raise Failure("not_found", f"no code context {name!r}")
        return ctx

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def send(event: dict[str, Any]) -> None:
            writer.write(json.dumps(event, separators=(",", ":")).encode() + b"\n")
            await writer.drain()

        try:
            line = await reader.readline()
            request = json.loads(line) if line else {}
            if not isinstance(request, dict) or not hmac.compare_digest(
                str(request.get("token", "")), self.token
            ):
                await send({"type": "failure", "code": "forbidden", "message": "bad token"})
                return
            try:
                await self.dispatch(request, reader, send)
            except Failure as exc:
                await send({"type": "failure", "code": exc.code, "message": exc.message})
        except (ConnectionError, ValueError):
            pass
        except Exception as exc:  # keep serving other connections
            print(f"request failed: {exc!r}", file=sys.stderr, flush=True)
            with contextlib.suppress(Exception):
                await send({"type": "failure", "code": "sandbox_error", "message": repr(exc)})
        finally:
            with contextlib.suppress(Exception):
                writer.close()
                await writer.wait_closed()

    async def dispatch(self, req: dict[str, Any], reader: asyncio.StreamReader, send: Send) -> None:
        op = req.get("op")
        if op == "ping":
            await send({"type": "pong", "version": GATEWAY_VERSION, "pid": os.getpid()})
        elif op == "execute":
            await self.execute(req, reader, send)
        elif op == "contexts.list":
            contexts = [c.info() for c in self.contexts.values()]
            await send({"type": "contexts", "contexts": contexts})
        elif op == "contexts.create":
            name = req.get("name")
            if name is not None and name in self.contexts:
                raise Failure("conflict", f"context {name!r} exists")
            ctx = await self.context(name, str(req.get("language", "python")), req.get("cwd"))
            await send({"type": "context", **ctx.info()})
        elif op == "contexts.restart":
            ctx = self.existing(req.get("name", ""))
            async with ctx.lock:
                await ctx.restart()
            await send({"type": "context", **ctx.info()})
        elif op == "contexts.delete":
            ctx = self.existing(req.get("name", ""))
            self.contexts.pop(ctx.name, None)
            await ctx.stop()
            await send({"type": "deleted", "name": ctx.name})
        else:
            raise Failure("invalid_request", f"unknown op {op!r}")

    async def execute(self, req: dict[str, Any], reader: asyncio.StreamReader, send: Send) -> None:
        code = req.get("code")
        if not isinstance(code, str):
            raise Failure("invalid_request", "code must be a string")
        timeout = req.get("timeout")
        if timeout is not None:
            timeout = float(timeout)
            if timeout <= 0:
                raise Failure("invalid_request", "timeout must be positive")
        ctx = await self.context(req.get("context"), str(req.get("language", "python")), None)
        gone = asyncio.Event()

        async def watch() -> None:
            with contextlib.suppress(Exception):
                while await reader.read(4096):
                    pass
            gone.set()

        watcher = asyncio.ensure_future(watch())
        try:
            async with ctx.lock:
                await send({"type": "started", "context": ctx.name, "language": ctx.language})
                started = time.monotonic()
                end = await ctx.execute(code, timeout, send, gone)
                end["duration_ms"] = round((time.monotonic() - started) * 1000, 1)
                end["context"] = ctx.name
                if not gone.is_set():
                    await send(end)
        finally:
            watcher.cancel()

    async def close(self) -> None:
        for ctx in list(self.contexts.values()):
            with contextlib.suppress(Exception):
                await ctx.stop()


def _write_kernelspec(state_dir: str) -> None:
    """Our own kernelspec: plain tracebacks, python3 from PATH (the user's venv if any)."""
    spec_dir = os.path.join(state_dir, "jupyter", "kernels", "atelier-python3")
    os.makedirs(spec_dir, exist_ok=True)
    spec = {
        "argv": [
            "python3",
            "-m",
            "ipykernel_launcher",
            "-f",
            "{connection_file}",
            "--InteractiveShell.colors=NoColor",
            "--HistoryManager.enabled=False",
        ],
        "display_name": "Python 3 (Atelier)",
        "language": "python",
        "interrupt_mode": "signal",
        "env": {"MPLBACKEND": "module://matplotlib_inline.backend_inline"},
    }
    with open(os.path.join(spec_dir, "kernel.json"), "w") as f:
        json.dump(spec, f)


async def serve(config: dict[str, Any]) -> None:
    token = str(config["token"])
    state_dir = str(config["state_dir"])
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    os.chmod(state_dir, 0o700)
    _write_kernelspec(state_dir)
    os.environ["JUPYTER_PATH"] = os.path.join(state_dir, "jupyter")
    os.environ["JUPYTER_RUNTIME_DIR"] = os.path.join(state_dir, "runtime")
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    gateway = Gateway(token, state_dir)
    server = await asyncio.start_server(gateway.handle, "127.0.0.1", 0, limit=MAX_REQUEST)
    port = server.sockets[0].getsockname()[1]
    state = {"port": port, "token": token, "pid": os.getpid(), "version": GATEWAY_VERSION}
    path = os.path.join(state_dir, "gateway.json")
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(state, f)
    os.replace(tmp, path)
    print(f"{READY_PREFIX} {port}", flush=True)
    log = os.open(os.path.join(state_dir, "gateway.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with server:
            await stop.wait()
    finally:
        await gateway.close()
        with contextlib.suppress(OSError):
            os.unlink(path)


def main() -> None:
    line = sys.stdin.readline()
    config = json.loads(line)
    if "token" not in config:
        config["token"] = base64.urlsafe_b64encode(os.urandom(24)).decode()
    sys.stdin.close()
    asyncio.run(serve(config))


if __name__ == "__main__":
    main()
