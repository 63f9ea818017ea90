"""The TypeScript SDK (``sdk/typescript``) against the session's real server.

Runs ``npm test`` there (``tsc`` build, then ``node --test``) with
``ATELIER_URL``/``ATELIER_TOKEN`` pointing at the ``server`` fixture; the
Node tests create, use and delete their own sandboxes (labelled
``test=typescript-sdk``). ``node_modules`` is installed only when missing
(``npm ci``: the lockfile pins ``typescript``, the one dev dependency).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from server_harness import ServerProcess

from ci_support import skip_unless_ci

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SDK_DIR = Path(__file__).resolve().parents[2] / "sdk" / "typescript"
MIN_NODE = 20
NPM_TIMEOUT = 600


def _node_major(node: str) -> int:
    out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout
    match = re.match(r"v(\d+)\.", out.strip())
    return int(match.group(1)) if match else 0


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        cwd=SDK_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=NPM_TIMEOUT,
    )


@pytest.mark.timeout(NPM_TIMEOUT * 2)
def test_typescript_sdk(server: ServerProcess) -> None:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        skip_unless_ci("node and npm are not installed (scripts/setup.sh test-deps)")
    assert node is not None and npm is not None
    if (major := _node_major(node)) < MIN_NODE:
        skip_unless_ci(f"the TypeScript SDK needs Node >= {MIN_NODE}, this is Node {major}")

    env = {
        **os.environ,
        "ATELIER_URL": server.url,
        "ATELIER_TOKEN": server.token,
        "npm_config_update_notifier": "false",
        "npm_config_fund": "false",
        "npm_config_audit": "false",
    }
    if not (SDK_DIR / "node_modules").is_dir():
        install = "ci" if (SDK_DIR / "package-lock.json").is_file() else "install"
        done = _run([npm, install, "--no-audit", "--no-fund"], env)
        assert done.returncode == 0, f"npm {install} failed:\n{done.stdout}"

    done = _run([npm, "test"], env)
    print(done.stdout)
    assert done.returncode == 0, f"npm test failed (exit {done.returncode}):\n{done.stdout}"
    assert "# live tests skipped" not in done.stdout, done.stdout
    assert re.search(r" fail 0$", done.stdout, re.MULTILINE), done.stdout
    assert re.search(r" pass [1-9]\d*$", done.stdout, re.MULTILINE), done.stdout
