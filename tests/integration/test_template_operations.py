"""Template builds as server operations, against a real server and runsc:
streamed logs, versions pinned by sandboxes, refusing deletes in use, failures.

The server's ``templates/`` is the suite's shared cache, so the template gets
a unique name and is deleted at the end.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_harness import ServerProcess

from atelier.errors import BuildFailed, TemplateInUse
from atelier.sdk import Templates
from conftest import MakeSandbox

pytestmark = pytest.mark.integration

DOCKERFILE = """\
FROM base
RUN echo hi > /hi
COPY data.txt /data.txt
"""


@pytest.fixture
def templates(sdk_env: ServerProcess) -> Iterator[Templates]:
    with Templates(api_url=sdk_env.url, token=sdk_env.token) as client:
        yield client


@pytest.fixture
def name(templates: Templates, sdk_env: ServerProcess) -> Iterator[str]:
    value = f"ops-{secrets.token_hex(4)}"
    yield value
    if (sdk_env.templates_cache / value).exists():  # a failed test: do not leave it in the cache
        for sb in templates._http._client.get("/v1/sandboxes").json()["sandboxes"]:
            if sb["template"] == value:
                templates._http._client.delete(f"/v1/sandboxes/{sb['id']}")
        templates.delete(value)


def _context(root: Path, data: str, dockerfile: str = DOCKERFILE) -> Path:
    root.mkdir(exist_ok=True)
    (root / "Dockerfile").write_text(dockerfile)
    (root / "data.txt").write_text(data)
    return root


def test_build_versions_pinning_and_delete(
    templates: Templates,
    name: str,
    make_sandbox: MakeSandbox,
    sdk_env: ServerProcess,
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    op = templates.build(name, _context(tmp_path / "ctx", "one\n"))
    lines = [line.line for line in op.logs()]
    info = op.wait()
    print(f"cold build {time.monotonic() - started:.1f} s")
    assert info.state == "succeeded" and info.result == {"template": name, "version": 1}
    assert any("step 2/3" in line and "RUN echo hi" in line for line in lines), lines
    assert op.end is not None and op.end.state == "succeeded"

    old = make_sandbox(template=name)
    assert old.commands.run("cat /hi /data.txt").stdout == "hi\none\n"

    started = time.monotonic()
    op = templates.build(name, _context(tmp_path / "ctx", "two\n"))
    lines = [line.line for line in op.logs()]
    assert op.wait().result == {"template": name, "version": 2}
    print(f"rebuild {time.monotonic() - started:.1f} s")
    assert any("CACHED RUN echo hi" in line for line in lines), lines
    listed = next(t for t in templates.list() if t.name == name)
    assert listed.version == 2 and listed.versions == (1, 2)  # version 1 is in use

    assert old.commands.run("cat /hi /data.txt").stdout == "hi\none\n"
    new = make_sandbox(template=name)
    assert new.commands.run("cat /hi /data.txt").stdout == "hi\ntwo\n"
    old.stop()
    old.start()  # re-mounted from its pinned version
    assert old.commands.run("cat /data.txt").stdout == "one\n"

    with pytest.raises(TemplateInUse) as err:
        templates.delete(name)
    assert sorted(err.value.details["sandbox_ids"]) == sorted([old.id, new.id])
    assert old.id in err.value.message

    old.kill()
    new.kill()
    templates.delete(name)
    assert not (sdk_env.templates_cache / name).exists()
    assert name not in {t.name for t in templates.list()}


def test_failing_run_fails_the_operation(
    templates: Templates, name: str, sdk_env: ServerProcess, tmp_path: Path
) -> None:
    dockerfile = "FROM base\nRUN echo oops-from-run && exit 3\n"
    op = templates.build(name, _context(tmp_path / "ctx", "x\n", dockerfile))
    lines = [line.line for line in op.logs()]
    assert "oops-from-run" in lines
    with pytest.raises(BuildFailed) as err:
        op.wait()
    assert "exit code 3" in err.value.message
    assert "oops-from-run" in err.value.details["output"]
    assert op.info.state == "failed" and op.info.error is not None
    assert op.info.error["code"] == "build_failed"
    assert not (sdk_env.templates_cache / name).exists()
