"""The README's quick start, as a new user runs it: a clean clone, `make up`, the snippet.

The clone gets its own data dir and port; its template dir points at the
suite's template cache so the base image is not built twice. Everything it
creates is stopped and removed afterwards.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from atelier.config import Settings
from atelier.images.store import TemplateInfo
from atelier.runtimes.gvisor import GVisorRuntime

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def clone(base_template: TemplateInfo) -> Iterator[tuple[Path, dict[str, str]]]:
    work = Path(tempfile.mkdtemp(prefix="atl-quickstart-", dir="/var/tmp"))
    checkout = work / "atelier"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(checkout)], check=True)
    data = work / "data"
    data.mkdir()
    (data / "templates").symlink_to(base_template.rootfs.parent.parent)
    env = {
        **os.environ,
        "ATELIER_DATA_DIR": str(data),
        "ATELIER_PORT": str(free_port()),
    }
    env.pop("ATELIER_URL", None)
    env.pop("ATELIER_TOKEN", None)
    try:
        yield checkout, env
    finally:
        subprocess.run(["scripts/atelierctl", "stop"], cwd=checkout, env=env, check=False)
        runtime = GVisorRuntime(Settings(data_dir=data))

        async def destroy_all() -> None:  # the warm pool's sandboxes outlive the server
            for sid in await runtime.list_ids():
                await runtime.destroy(sid)

        asyncio.run(destroy_all())
        shutil.rmtree(work, ignore_errors=True)


def test_make_up_then_the_printed_snippet_works(clone: tuple[Path, dict[str, str]]) -> None:
    checkout, env = clone
    up = subprocess.run(
        ["make", "up"], cwd=checkout, env=env, capture_output=True, text=True, timeout=900
    )
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    match = re.search(r"^(export ATELIER_URL=.*?^PY)$", up.stdout, re.S | re.M)
    assert match, f"no snippet in the output of make up:\n{up.stdout[-2000:]}"
    snippet = match.group(1)
    assert f"ATELIER_URL=http://127.0.0.1:{env['ATELIER_PORT']}" in snippet
    user_env = {k: v for k, v in env.items() if not k.startswith("ATELIER_")}
    ran = subprocess.run(
        ["bash", "-c", snippet], env=user_env, capture_output=True, text=True, timeout=300
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert ran.stdout.strip() == "42"
    again = subprocess.run(
        ["make", "up"], cwd=checkout, env=env, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0 and "Atelier is up" in again.stdout
