"""Fixtures for tests against a real server running real gVisor sandboxes.

``server``: one ``atelier server`` subprocess for the session (own data dir,
shared template cache). At the end every sandbox is deleted through the API
and the session fails if anything leaked (runsc process, mount, loop
device, sandbox directory).

``make_sandbox``: the one factory tests create sandboxes through. It labels
each sandbox with the test's id, always deletes it, and on failure saves the
sandbox's logs under ``$ATELIER_TEST_DATA_DIR/failures/``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from server_harness import ServerProcess, new_server, shut_down

from atelier import Sandbox
from atelier.images.store import TemplateInfo

pytestmark = pytest.mark.integration


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


@pytest.fixture(scope="session")
def server(base_template: TemplateInfo) -> Iterator[ServerProcess]:
    srv = new_server(base_template)
    srv.start()
    try:
        yield srv
    finally:
        shut_down(srv)


@pytest.fixture
def sdk_env(server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> ServerProcess:
    monkeypatch.setenv("ATELIER_URL", server.url)
    monkeypatch.setenv("ATELIER_TOKEN", server.token)
    return server


MakeSandbox = Callable[..., Sandbox]


@pytest.fixture
def make_sandbox(
    request: pytest.FixtureRequest, sdk_env: ServerProcess, test_data_dir: Path
) -> Iterator[MakeSandbox]:
    made: list[Sandbox] = []
    tag = hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:12]

    def make(**kwargs: Any) -> Sandbox:
        labels = {"test": tag, **kwargs.pop("labels", {})}
        sb = Sandbox.create(labels=labels, **kwargs)
        made.append(sb)
        return sb

    yield make
    failed = getattr(request.node, "report_call", None)
    for sb in made:
        if failed is not None and failed.failed:
            out = test_data_dir / "failures" / f"{request.node.name}-{sb.id}.log"
            out.parent.mkdir(parents=True, exist_ok=True)
            try:
                out.write_text(sb.logs())
            except Exception as exc:  # the sandbox may be gone; keep what we can
                out.write_text(f"could not read logs: {exc}\n")
            print(f"sandbox logs kept in {out}")
        sb.kill()
        sb.close()


@pytest.fixture
def sb(make_sandbox: MakeSandbox) -> Sandbox:
    return make_sandbox()
