"""Firecracker's API document, a validator built from it, and a test double of
Firecracker that checks every request against it.

* :class:`FirecrackerSpec` loads ``specs/firecracker-api.yaml`` (PyYAML),
  validates the document itself as Swagger 2.0 (``openapi_spec_validator``),
  matches a request's method and path against ``paths`` and validates its
  JSON body with a ``jsonschema`` Draft 4 validator against the operation's
  ``in: body`` parameter schema, ``$ref``\\ s resolved into ``definitions``.
  Object schemas are made closed (``additionalProperties: false`` where the
  document says nothing), because Firecracker rejects unknown fields
  (``serde(deny_unknown_fields)``): a misspelled optional field must fail.
* :class:`FakeFirecracker` serves that API over HTTP/1.1 on a unix socket,
  records every request (with the validation errors) as one JSON line, answers
  204/200 as the document says, or 400 with ``{"fault_message": ...}``. It
  also keeps the little state Firecracker enforces and the document describes
  (pre-boot-only resources, snapshot/load only on a fresh process,
  snapshot/create only when paused, files that must exist), binds the hybrid
  vsock socket and does its ``CONNECT``/``OK`` handshake, echoing bytes back as
  the guest's "agent". ``SendCtrlAltDel`` makes it exit, as Firecracker does
  when a guest booted with ``reboot=k`` reboots.
* :func:`fake_firecracker_main` / :func:`fake_jailer_main` mimic the two
  binaries' command lines; the runtime tests write tiny scripts that call them.

It is a test double of the layer below the runtime, used only by unit tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import os
import re
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft4Validator

_REPO = Path(__file__).resolve().parents[3]
SPEC_CANDIDATES = (
    _REPO.parent / "shared" / "specs" / "firecracker-api.yaml",
    Path("/work/shared/specs/firecracker-api.yaml"),
)
VERSION_LINE = "Firecracker v1.17.0-dev (Atelier test double)"
GUEST_PORTS_ENV = "FAKE_FC_GUEST_PORTS"  # vsock ports the fake guest listens on
RECORD_ENV = "FAKE_FC_RECORD"  # JSON-lines file of requests
ROOT_ENV = "FAKE_FC_ROOT"  # set by the fake jailer: the chroot's root
SPEC_ENV = "FAKE_FC_SPEC"


def spec_path() -> Path:
    named = os.environ.get(SPEC_ENV)
    if named:
        return Path(named)
    for candidate in SPEC_CANDIDATES:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        "firecracker-api.yaml not found in " + ", ".join(str(c) for c in SPEC_CANDIDATES)
    )


def _json_keys(node: Any) -> Any:
    """YAML reads the response codes (``200:``) as ints; JSON, which Swagger
    is defined over, has string keys only."""
    if isinstance(node, dict):
        return {str(k): _json_keys(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_json_keys(v) for v in node]
    return node


def _closed(schema: Any) -> Any:
    """``additionalProperties: false`` on every object schema that lists its
    properties and says nothing about others (Firecracker denies unknown fields).
    Walks schema positions only (a property may well be *named* "properties")."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if isinstance(out.get("properties"), dict):
        out["properties"] = {k: _closed(v) for k, v in out["properties"].items()}
        if "additionalProperties" not in out and "$ref" not in out:
            out["additionalProperties"] = False
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = _closed(out["additionalProperties"])
    if isinstance(out.get("items"), dict):
        out["items"] = _closed(out["items"])
    for key in ("allOf", "anyOf", "oneOf"):
        if isinstance(out.get(key), list):
            out[key] = [_closed(v) for v in out[key]]
    return out


class FirecrackerSpec:
    """The Swagger 2.0 document and request validation against it."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or spec_path()
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        self.doc: dict[str, Any] = _json_keys(yaml.load(self.path.read_text(), Loader=loader))
        self.definitions: dict[str, Any] = {
            name: _closed(schema) for name, schema in copy.deepcopy(self.doc["definitions"]).items()
        }
        self._routes: list[tuple[re.Pattern[str], str]] = []
        for template in self.doc["paths"]:
            pattern = re.sub(r"\\\{([^}]+)\\\}", r"(?P<\1>[^/]+)", re.escape(template))
            self._routes.append((re.compile(f"^{pattern}$"), template))
        self._validators: dict[str, Draft4Validator] = {}

    def validate_document(self) -> None:
        """Raise if the document is not valid Swagger 2.0."""
        from openapi_spec_validator import OpenAPIV2SpecValidator, validate

        validate(self.doc, cls=OpenAPIV2SpecValidator)

    def match(self, method: str, path: str) -> tuple[str, dict[str, Any], dict[str, str]]:
        """(path template, operation, path params) or ValueError."""
        for regex, template in self._routes:
            m = regex.match(path)
            if m is None:
                continue
            operation = self.doc["paths"][template].get(method.lower())
            if operation is None:
                raise ValueError(f"{method} is not an operation of {template}")
            return template, operation, m.groupdict()
        raise ValueError(f"no path {path!r} in the document")

    def body_validator(self, schema: dict[str, Any]) -> Draft4Validator:
        key = json.dumps(schema, sort_keys=True)
        validator = self._validators.get(key)
        if validator is None:
            full = {**_closed(schema), "definitions": self.definitions}
            Draft4Validator.check_schema(full)
            validator = self._validators[key] = Draft4Validator(full)
        return validator

    def validate_request(
        self, method: str, path: str, body: bytes | None
    ) -> tuple[str | None, Any, list[str]]:
        """(template, parsed body, errors) of one request."""
        try:
            template, operation, params = self.match(method, path)
        except ValueError as exc:
            return None, None, [str(exc)]
        errors: list[str] = []
        parsed: Any = None
        body_param = None
        for param in operation.get("parameters", []):
            if param.get("in") == "path":
                value = params.get(param["name"])
                if param.get("required") and not value:
                    errors.append(f"path parameter {param['name']} missing")
                if param.get("type") == "string" and value is not None and not value.strip():
                    errors.append(f"path parameter {param['name']} empty")
            elif param.get("in") == "body":
                body_param = param
        if body:
            try:
                parsed = json.loads(body)
            except ValueError as exc:
                return template, None, [f"body is not JSON: {exc}"]
        if body_param is None:
            if body:
                errors.append(f"{method} {template} takes no body")
            return template, parsed, errors
        if parsed is None:
            if body_param.get("required"):
                errors.append(f"{method} {template} requires a body")
            return template, parsed, errors
        for err in self.body_validator(body_param["schema"]).iter_errors(parsed):
            where = "/".join(str(p) for p in err.absolute_path) or "(body)"
            errors.append(f"{where}: {err.message}")
        return template, parsed, errors

    def success_status(self, method: str, template: str) -> int:
        responses = self.doc["paths"][template][method.lower()]["responses"]
        return min(int(code) for code in responses if code.isdigit() and code.startswith("2"))


# -- the test double ----------------------------------------------------------------
_PRE_BOOT = {
    ("PUT", "/machine-config"),
    ("PATCH", "/machine-config"),
    ("PUT", "/boot-source"),
    ("PUT", "/drives/{drive_id}"),
    ("PUT", "/vsock"),
    ("PUT", "/balloon"),
    ("PUT", "/snapshot/load"),
}


class Fault(Exception):
    pass


class FakeFirecracker:
    """One fake Firecracker process's API (and hybrid vsock)."""

    def __init__(
        self,
        spec: FirecrackerSpec,
        api_sock: Path,
        *,
        record: Path | None = None,
        root: Path | None = None,
        guest_ports: frozenset[int] = frozenset({1024}),
        instance_id: str = "anonymous-instance",
    ) -> None:
        self.spec = spec
        self.api_sock = api_sock
        self.record = record
        self.root = root
        self.guest_ports = guest_ports
        self.instance_id = instance_id
        self.state = "Not started"
        self.configured: set[str] = set()
        self.machine: dict[str, Any] = {"vcpu_count": 1, "mem_size_mib": 128}
        self.boot: dict[str, Any] | None = None
        self.drives: dict[str, dict[str, Any]] = {}
        self.vsock: dict[str, Any] | None = None
        self.exit_requested = asyncio.Event()
        self._servers: list[asyncio.AbstractServer] = []

    # paths: relative to the working directory, absolute ones inside the chroot
    def host_path(self, path: str) -> Path:
        if self.root is not None and path.startswith("/"):
            return self.root / path.lstrip("/")
        return Path(path)

    async def serve(self) -> None:
        server = await asyncio.start_unix_server(self._http, path=str(self.api_sock))
        self._servers.append(server)

    async def run_until_exit(self) -> None:
        await self.serve()
        await self.exit_requested.wait()
        await asyncio.sleep(0.02)  # let the last answer go out
        await self.close()

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()

    # -- HTTP --------------------------------------------------------------------
    async def _http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                length = int(headers.get("content-length", "0"))
                body = await reader.readexactly(length) if length else b""
                status, answer = self.handle(method, target, body)
                writer.write(_response(status, answer))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        template, parsed, errors = self.spec.validate_request(method, path, body)
        status: int
        answer: Any = None
        if errors:
            status, answer = 400, {"fault_message": "; ".join(errors)}
        else:
            assert template is not None
            try:
                answer = self._apply(method, template, path, parsed)
                status = 200 if answer is not None else self.spec.success_status(method, template)
            except Fault as exc:
                status, answer = 400, {"fault_message": str(exc)}
        self._record(
            {
                "pid": os.getpid(),
                "method": method,
                "path": path,
                "template": template,
                "body": parsed,
                "errors": errors,
                "status": status,
                "answer": answer,
            }
        )
        return status, answer

    def _record(self, entry: dict[str, Any]) -> None:
        if self.record is not None:
            with self.record.open("a") as fh:
                fh.write(json.dumps(entry) + "\n")

    # -- semantics the document describes in prose ------------------------------------
    def _need_file(self, path: str, what: str) -> Path:
        host = self.host_path(path)
        if not host.is_file():
            raise Fault(f"{what} {path}: No such file or directory (os error 2)")
        return host

    def _apply(self, method: str, template: str, path: str, body: Any) -> Any:
        key = (method, template)
        if key in _PRE_BOOT and self.state != "Not started":
            raise Fault(
                f"The requested operation is not supported after starting the microVM: {key}"
            )
        if key == ("GET", "/"):
            return {
                "app_name": "Firecracker",
                "id": self.instance_id,
                "state": self.state,
                "vmm_version": "1.17.0-dev",
            }
        if key == ("GET", "/version"):
            return {"firecracker_version": "1.17.0-dev"}
        if key == ("PUT", "/snapshot/load"):
            if self.configured - {"logger", "metrics"}:
                raise Fault(
                    "Loading a microVM snapshot not allowed after configuring "
                    "boot-specific resources."
                )
            return self._load(body)
        if key == ("PUT", "/logger"):
            if "logger" in self.configured:
                raise Fault("Reinitialization of logger not allowed.")
            self._need_file(body["log_path"], "log_path")
        elif key == ("PUT", "/metrics"):
            if "metrics" in self.configured:
                raise Fault("Reinitialization of metrics not allowed.")
            self._need_file(body["metrics_path"], "metrics_path")
        elif key == ("PUT", "/machine-config"):
            if body.get("smt") and body["vcpu_count"] > 1 and body["vcpu_count"] % 2:
                raise Fault("The vCPU number is invalid!")
            self.machine = body
        elif key == ("PUT", "/boot-source"):
            self._need_file(body["kernel_image_path"], "kernel_image_path")
            if "initrd_path" in body:
                self._need_file(body["initrd_path"], "initrd_path")
            self.boot = body
        elif key == ("PUT", "/drives/{drive_id}"):
            if path.rsplit("/", 1)[1] != body["drive_id"]:
                raise Fault("The id from the path does not match the id from the body!")
            self._need_file(body["path_on_host"], "path_on_host")
            self.drives[body["drive_id"]] = body
        elif key == ("PUT", "/vsock"):
            self._bind_vsock(body["uds_path"])
            self.vsock = body
        elif key == ("PUT", "/actions"):
            self._action(body["action_type"])
        elif key == ("PATCH", "/vm"):
            if self.state == "Not started":
                raise Fault("The microVM is not running.")
            self.state = "Paused" if body["state"] == "Paused" else "Running"
        elif key == ("PUT", "/snapshot/create"):
            if self.state != "Paused":
                raise Fault("Cannot create a snapshot: the microVM is not paused.")
            self._create_snapshot(body)
        self.configured.add(template.strip("/").split("/")[0] or "/")
        return None

    def _action(self, action: str) -> None:
        if action == "InstanceStart":
            if self.state != "Not started":
                raise Fault("The microVM is already running.")
            if self.boot is None:
                raise Fault("Cannot start microvm without kernel configuration.")
            self.state = "Running"
        elif action == "SendCtrlAltDel":
            if self.state != "Running":
                raise Fault("The microVM is not running.")
            self.exit_requested.set()  # the guest reboots; reboot=k ends the VMM

    def _bind_vsock(self, uds_path: str) -> None:
        host = self.host_path(uds_path)
        if host.exists():
            raise Fault(f"Error binding the vsock socket {uds_path}: Address in use (os error 98)")
        # bound and listening now: connections queue until the server accepts
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(host))
        sock.listen(16)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        task = loop.create_task(asyncio.start_unix_server(self._vsock, sock=sock))
        task.add_done_callback(lambda t: self._servers.append(t.result()))

    def _create_snapshot(self, body: dict[str, Any]) -> None:
        if body.get("snapshot_type") == "Diff" and not self.machine.get("track_dirty_pages"):
            raise Fault("Diff snapshots are not enabled: track_dirty_pages is off.")
        state = {
            "machine": self.machine,
            "drives": self.drives,
            "vsock": self.vsock,
        }
        self.host_path(body["snapshot_path"]).write_text(json.dumps(state))
        with self.host_path(body["mem_file_path"]).open("wb") as fh:
            fh.truncate(int(self.machine["mem_size_mib"]) * 2**20)

    def _load(self, body: dict[str, Any]) -> None:
        if ("mem_backend" in body) == ("mem_file_path" in body):
            raise Fault("Exactly one of mem_backend and mem_file_path must be given.")
        state = json.loads(self._need_file(body["snapshot_path"], "snapshot_path").read_text())
        mem = body.get("mem_backend", {}).get("backend_path") or body["mem_file_path"]
        size = self._need_file(mem, "memory backend").stat().st_size
        if size != int(state["machine"]["mem_size_mib"]) * 2**20:
            raise Fault("The memory file does not match the snapshot.")
        for drive in state["drives"].values():  # reopened at the recorded paths
            self._need_file(drive["path_on_host"], "path_on_host")
        self.machine, self.drives = state["machine"], state["drives"]
        vsock = state["vsock"]
        if body.get("vsock_override"):
            vsock = {**vsock, "uds_path": body["vsock_override"]["uds_path"]}
        if vsock:
            self._bind_vsock(vsock["uds_path"])
            self.vsock = vsock
        self.configured.add("snapshot")
        self.state = "Running" if body.get("resume_vm") else "Paused"

    # -- the hybrid vsock ------------------------------------------------------------
    async def _vsock(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            m = re.fullmatch(rb"CONNECT (\d+)\n", line)
            if m is None or self.state != "Running" or int(m.group(1)) not in self.guest_ports:
                return  # Firecracker closes the connection
            writer.write(b"OK 1073741824\n")
            while data := await reader.read(65536):  # the "guest agent": an echo
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


def _response(status: int, body: Any) -> bytes:
    reasons = {200: "OK", 204: "No Content", 400: "Bad Request"}
    head = f"HTTP/1.1 {status} {reasons.get(status, 'Status')}\r\n"
    if body is None:
        return (head + "\r\n").encode()
    data = json.dumps(body).encode()
    return (
        head + f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    ).encode() + data


# -- the binaries' command lines -----------------------------------------------------
def fake_firecracker_main(argv: list[str]) -> int:
    """``firecracker --version`` | ``firecracker --api-sock PATH [--id ID] ...``"""
    if "--version" in argv:
        print(VERSION_LINE)
        print()
        print("Supported snapshot data format versions: v8.0.0")
        return 0
    parser = argparse.ArgumentParser(prog="firecracker")
    parser.add_argument("--api-sock", required=True)
    parser.add_argument("--id", default="anonymous-instance")
    args, _ = parser.parse_known_args(argv)
    root = Path(os.environ[ROOT_ENV]) if os.environ.get(ROOT_ENV) else None
    record = Path(os.environ[RECORD_ENV]) if os.environ.get(RECORD_ENV) else None
    ports = frozenset(int(p) for p in os.environ.get(GUEST_PORTS_ENV, "1024").split(",") if p)
    spec = FirecrackerSpec()
    fake = FakeFirecracker(
        spec, Path(args.api_sock), record=record, root=root, guest_ports=ports, instance_id=args.id
    )
    if root is not None:
        fake.api_sock = fake.host_path(args.api_sock)
    if record is not None:
        fake._record({"pid": os.getpid(), "argv": ["firecracker", *argv], "cwd": os.getcwd()})
    print(f"fake firecracker {os.getpid()} serving {fake.api_sock}", flush=True)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, fake.exit_requested.set)
        await fake.run_until_exit()

    asyncio.run(main())
    return 0


_JAIL_ID = re.compile(r"^[A-Za-z0-9-]{1,64}$")
_CGROUP_FILES = {
    1: {"cpu.cfs_period_us", "cpu.cfs_quota_us", "memory.limit_in_bytes", "cpuset.cpus"},
    2: {"cpu.max", "memory.max", "cpuset.cpus", "pids.max"},
}


def fake_jailer_main(argv: list[str]) -> int:
    """The jailer's command line: checks it, "jails" (a chdir into the chroot
    it would pivot into: the test runs without chroot) and execs the exec file."""
    if "--" in argv:
        cut = argv.index("--")
        before, rest = argv[:cut], argv[cut + 1 :]
    else:
        before, rest = argv, []
    parser = argparse.ArgumentParser(prog="jailer")
    parser.add_argument("--id", required=True)
    parser.add_argument("--exec-file", required=True)
    parser.add_argument("--uid", required=True, type=int)
    parser.add_argument("--gid", required=True, type=int)
    parser.add_argument("--chroot-base-dir", default="/srv/jailer")
    parser.add_argument("--cgroup-version", type=int, default=1, choices=(1, 2))
    parser.add_argument("--cgroup", action="append", default=[])
    parser.add_argument("--parent-cgroup")
    parser.add_argument("--netns")
    args = parser.parse_args(before)
    problems = []
    if not _JAIL_ID.fullmatch(args.id):
        problems.append(f"invalid id {args.id!r}")
    exec_file = Path(args.exec_file)
    if "firecracker" not in exec_file.name or not os.access(exec_file, os.X_OK):
        problems.append(f"bad exec file {exec_file}")
    for item in args.cgroup:
        name, sep, value = item.partition("=")
        if not sep or not value or name not in _CGROUP_FILES[args.cgroup_version]:
            problems.append(f"bad --cgroup {item!r} for cgroup v{args.cgroup_version}")
    root = Path(args.chroot_base_dir) / exec_file.name / args.id / "root"
    for name in ("rootfs.raw", "firecracker.log", "metrics.json"):
        st = (root / name).stat() if (root / name).exists() else None
        if st is None or (st.st_uid, st.st_gid) != (args.uid, args.gid):
            problems.append(f"{name} in the chroot is not owned by {args.uid}:{args.gid}")
    if os.environ.get(RECORD_ENV):
        with open(os.environ[RECORD_ENV], "a") as fh:
            fh.write(
                json.dumps({"pid": os.getpid(), "jailer_argv": argv, "errors": problems}) + "\n"
            )
    if problems:
        print("jailer: " + "; ".join(problems), file=sys.stderr)
        return 1
    root.mkdir(parents=True, exist_ok=True)
    os.chdir(root)
    env = {**os.environ, ROOT_ENV: str(root)}
    os.execve(str(exec_file), [str(exec_file), "--id", args.id, *rest], env)


def write_fake_binaries(directory: Path) -> tuple[Path, Path]:
    """Scripts ``firecracker`` and ``jailer`` in ``directory`` that run this module's mains."""
    directory.mkdir(parents=True, exist_ok=True)
    here = Path(__file__).resolve()
    made = []
    for name, func in (("firecracker", "fake_firecracker_main"), ("jailer", "fake_jailer_main")):
        script = directory / name
        script.write_text(
            f"#!{sys.executable}\n"
            "import sys\n"
            f"sys.path.insert(0, {str(here.parent)!r})\n"
            f"from {here.stem} import {func}\n"
            f"sys.exit({func}(sys.argv[1:]))\n"
        )
        script.chmod(0o755)
        made.append(script)
    return made[0], made[1]


def read_record(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -- tests of the validator and the double ---------------------------------------------
@pytest.fixture(scope="module")
def spec() -> FirecrackerSpec:
    try:
        return FirecrackerSpec()
    except FileNotFoundError as exc:
        pytest.fail(f"the Firecracker API document is required: {exc}")


def test_document_is_valid_swagger_2(spec: FirecrackerSpec) -> None:
    assert spec.doc["swagger"] == "2.0"
    assert spec.doc["info"]["version"] == "1.17.0-dev"
    spec.validate_document()


def test_every_body_schema_is_a_valid_draft4_schema(spec: FirecrackerSpec) -> None:
    count = 0
    for item in spec.doc["paths"].values():
        for operation in item.values():
            for param in operation.get("parameters", []):
                if param.get("in") == "body":
                    spec.body_validator(param["schema"])
                    count += 1
    assert count >= 20


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("PUT", "/machine-config", {"vcpu_count": 2, "mem_size_mib": 256, "smt": False}),
        (
            "PUT",
            "/drives/rootfs",
            {"drive_id": "rootfs", "path_on_host": "x", "is_root_device": True},
        ),
        ("PUT", "/actions", {"action_type": "InstanceStart"}),
        ("PATCH", "/vm", {"state": "Paused"}),
        (
            "PUT",
            "/snapshot/load",
            {"snapshot_path": "s", "mem_backend": {"backend_type": "File", "backend_path": "m"}},
        ),
        ("GET", "/", None),
    ],
)
def test_valid_requests_pass(
    spec: FirecrackerSpec, method: str, path: str, body: dict[str, Any] | None
) -> None:
    raw = json.dumps(body).encode() if body is not None else None
    template, _, errors = spec.validate_request(method, path, raw)
    assert template is not None
    assert errors == []


@pytest.mark.parametrize(
    ("method", "path", "body", "needle"),
    [
        ("PUT", "/machine-config", {"vcpu_count": 2, "mem_size_mb": 256}, "mem_size_mib"),
        ("PUT", "/machine-config", {"vcpu_count": 64, "mem_size_mib": 256}, "maximum"),
        ("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 8, "smt_on": 1}, "smt_on"),
        ("PUT", "/actions", {"action_type": "Start"}, "is not one of"),
        ("PATCH", "/vm", {"state": "Resume"}, "is not one of"),
        ("PUT", "/vsock", {"guest_cid": 2, "uds_path": "v"}, "minimum"),
        ("PUT", "/vsock", {"guest_cid": 3, "uds_path": "v", "vsock_port": 1}, "vsock_port"),
        (
            "PUT",
            "/snapshot/load",
            {"snapshot_path": "s", "mem_backend": {"backend_path": "m"}},
            "backend_type",
        ),
        ("PUT", "/drives/rootfs", {"drive_id": "rootfs", "is_root_device": "yes"}, "boolean"),
        (
            "PUT",
            "/drives/rootfs",
            {"drive_id": "rootfs", "is_root_device": True, "rate_limiter": {"ops": {"size": 1}}},
            "refill_time",
        ),
        ("PUT", "/balloon", {"amount_mib": 0}, "deflate_on_oom"),
        ("POST", "/actions", {"action_type": "InstanceStart"}, "not an operation"),
        ("PUT", "/machine", {}, "no path"),
        ("PUT", "/logger", None, "requires a body"),
    ],
)
def test_invalid_requests_fail(
    spec: FirecrackerSpec, method: str, path: str, body: dict[str, Any] | None, needle: str
) -> None:
    raw = json.dumps(body).encode() if body is not None else None
    _, _, errors = spec.validate_request(method, path, raw)
    assert errors, f"{method} {path} {body} passed"
    assert needle in " ".join(errors)


async def test_fake_answers_400_with_fault_message(spec: FirecrackerSpec, tmp_path: Path) -> None:
    import httpx

    sock = tmp_path / "api.sock"
    record = tmp_path / "record.jsonl"
    fake = FakeFirecracker(spec, sock, record=record)
    await fake.serve()
    try:
        transport = httpx.AsyncHTTPTransport(uds=str(sock))
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
            bad = await http.put("/machine-config", json={"vcpu_count": 1})
            good = await http.get("/")
            early = await http.patch("/vm", json={"state": "Paused"})
    finally:
        await fake.close()
    assert bad.status_code == 400
    assert "mem_size_mib" in bad.json()["fault_message"]
    assert good.status_code == 200
    assert good.json()["state"] == "Not started"
    assert early.status_code == 400
    entries = read_record(record)
    assert [e["status"] for e in entries] == [400, 200, 400]
