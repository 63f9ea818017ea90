"""``/v1/ssh-keys`` and ``/v1/ssh-gateway``, and the gateway itself in process: the real
OpenSSH client against the app's asyncssh server, on the host-process runtime."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from api_harness import Api, ready_template
from fakes import ProcessRuntime

from atelier.api.app import create_app
from atelier.config import Settings


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", path], check=True)
    return path.with_name(path.name + ".pub").read_text()


needs_ssh = pytest.mark.skipif(
    shutil.which("ssh") is None or shutil.which("ssh-keygen") is None, reason="needs OpenSSH"
)


@needs_ssh
async def test_ssh_keys_crud(api: Api, tmp_path: Path) -> None:
    pub = _keygen(tmp_path / "id")
    r = await api.http.post("/v1/ssh-keys", json={"name": "laptop", "public_key": pub})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["fingerprint"].startswith("SHA256:")
    assert body["public_key"] == " ".join(pub.split()[:2])
    r = await api.http.post("/v1/ssh-keys", json={"name": "again", "public_key": pub})
    assert r.status_code == 409 and r.json()["code"] == "conflict"
    r = await api.http.post("/v1/ssh-keys", json={"name": "bad", "public_key": "ssh-ed25519 zz"})
    assert r.status_code == 400
    r = await api.http.post("/v1/ssh-keys", json={"name": "no spaces", "public_key": pub})
    assert r.status_code == 422
    assert [k["name"] for k in (await api.http.get("/v1/ssh-keys")).json()["keys"]] == ["laptop"]
    # keys are per token: another token sees none and cannot delete this one
    r = await api.http.post("/v1/tokens", json={"name": "other"})
    other = {"Authorization": f"Bearer {r.json()['token']}"}
    assert (await api.http.get("/v1/ssh-keys", headers=other)).json() == {"keys": []}
    assert (await api.http.delete("/v1/ssh-keys/laptop", headers=other)).status_code == 404
    assert (await api.http.delete("/v1/ssh-keys/laptop")).status_code == 204
    assert (await api.http.get("/v1/ssh-keys")).json() == {"keys": []}
    info = (await api.http.get("/v1/ssh-gateway")).json()
    assert info == {"enabled": False, "host": None, "port": None, "host_keys": []}


@pytest.fixture
async def gateway_api(tmp_path: Path) -> AsyncIterator[Api]:
    settings = Settings(data_dir=tmp_path / "data", pool_size=0, reconcile_interval=0.2, ssh_port=0)
    ready_template(settings)
    runtime = ProcessRuntime(tmp_path / "sandboxes")
    app = create_app(settings, runtimes=[runtime])
    async with app.router.lifespan_context(app):
        token = settings.admin_token_file.read_text().strip()
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://atelier.test",
            headers={"Authorization": f"Bearer {token}"},
        ) as http:
            yield Api(app, http, runtime, settings)
        for sid in list(runtime.procs):
            await runtime.destroy(sid)


async def _ssh(port: int, key: Path, known: Path, user: str, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        "ssh", "-p", str(port), "-i", str(key), "-F", "/dev/null",
        "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes",
        "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", f"{user}@127.0.0.1", *args,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@needs_ssh
async def test_gateway_in_process(gateway_api: Api, tmp_path: Path) -> None:
    api = gateway_api
    info = (await api.http.get("/v1/ssh-gateway")).json()
    assert info["enabled"] is True and info["port"] > 0
    key_file = api.settings.data_dir / "ssh_host_ed25519_key"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{info['port']} {info['host_keys'][0]}\n")
    pub = _keygen(tmp_path / "id")
    assert (await api.http.post("/v1/ssh-keys", json={"name": "k", "public_key": pub})).is_success
    sid = (await api.http.post("/v1/sandboxes", json={})).json()["id"]

    code, out, err = await _ssh(
        info["port"], tmp_path / "id", known, sid, "echo out; echo err >&2; exit 3"
    )
    assert (code, out, err) == (3, "out\n", "err\n")

    code, _, err = await _ssh(info["port"], tmp_path / "id", known, "sb-doesnotexist", "true")
    assert code == 255 and "Permission denied (publickey)" in err

    _keygen(tmp_path / "stranger")
    code, _, err = await _ssh(info["port"], tmp_path / "stranger", known, sid, "true")
    assert code == 255 and "Permission denied (publickey)" in err

    assert (await api.http.post(f"/v1/sandboxes/{sid}/stop")).is_success
    code, _, err = await _ssh(info["port"], tmp_path / "id", known, sid, "true")
    assert code == 1 and f"sandbox {sid} is stopped" in err

    events = (await api.http.get(f"/v1/sandboxes/{sid}/events")).json()["events"]
    sessions = [e for e in events if e["kind"] == "ssh.session"]
    assert sessions and sessions[0]["session"] == "exec" and sessions[0]["key"] == "k"
