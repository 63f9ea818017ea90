"""The code interpreter against a real server and real gVisor sandboxes made from
the ``code-interpreter`` template (ipykernel, Node, bash inside the sandbox)."""

from __future__ import annotations

import asyncio
import struct
import subprocess
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_harness import ServerProcess

from atelier import AsyncSandbox, Sandbox
from atelier.config import Settings
from atelier.errors import Conflict, NotFound
from atelier.images.store import TemplateStore
from atelier.sdk.code import CodeInterpreter
from ci_support import skip_unless_ci
from conftest import MakeSandbox

TEMPLATE = "code-interpreter"
pytestmark = pytest.mark.timeout(600)


def decoded_pixels(png: bytes) -> int:
    """Bytes of the decompressed image data (the PNG decodes; RGBA, 8 bits)."""
    at, idat, color = 8, b"", None
    while at < len(png):
        (length,) = struct.unpack(">I", png[at : at + 4])
        kind, body = png[at + 4 : at + 8], png[at + 8 : at + 8 + length]
        if kind == b"IHDR":
            color = body[8:10]
        elif kind == b"IDAT":
            idat += body
        at += 12 + length
    assert color == b"\x08\x06", color  # 8-bit RGBA
    return len(zlib.decompress(idat))


@pytest.fixture(scope="module")
def interpreter_template(test_data_dir: Path) -> str:
    info = next(
        (t for t in TemplateStore(Settings(data_dir=test_data_dir)).list() if t.name == TEMPLATE),
        None,
    )
    if info is None or not info.ready:
        skip_unless_ci(
            f"the {TEMPLATE} template is not built in {test_data_dir} (make test builds it; "
            "see docs/interpreter.md)"
        )
    return TEMPLATE


@pytest.fixture(scope="module")
def isb(server: ServerProcess, interpreter_template: str) -> Iterator[Sandbox]:
    """One sandbox shared by the module's tests (each test uses its own contexts)."""
    sb = Sandbox.create(
        template=interpreter_template,
        memory_mib=1024,
        timeout=1800,
        labels={"test": "code-interpreter"},
        api_url=server.url,
        token=server.token,
    )
    try:
        yield sb
    finally:
        sb.kill()
        sb.close()


def test_python_state_persists_between_cells(isb: Sandbox) -> None:
    first = isb.run_code("x = 41", context="state")
    assert first.error is None and first.results == [] and first.text is None
    second = isb.run_code("x + 1", context="state")
    assert second.error is None, second.error
    assert second.text == "42"
    assert second.results[0].is_main_result
    assert second.execution_count == 2 and second.context == "state"


def test_default_context_and_stdout(isb: Sandbox) -> None:
    ex = isb.run_code("import sys\nprint('out')\nprint('err', file=sys.stderr)\n'done'")
    assert ex.context == "python"
    assert ex.stdout == "out\n" and ex.stderr == "err\n" and ex.text == "'done'"


def test_two_contexts_are_independent(isb: Sandbox) -> None:
    isb.run_code("v = 'a'", context="ctx-a")
    isb.run_code("v = 'b'", context="ctx-b")
    assert isb.run_code("v", context="ctx-a").text == "'a'"
    assert isb.run_code("v", context="ctx-b").text == "'b'"
    missing = isb.run_code("w", context="ctx-a")
    assert missing.error is not None and missing.error.name == "NameError"


def test_stdout_streams_before_the_cell_ends(isb: Sandbox) -> None:
    seen: list[tuple[float, str]] = []
    code = "import time\nfor i in range(3):\n    print(i, flush=True)\n    time.sleep(1)\n"

    def on_stdout(text: str) -> None:
        seen.append((time.monotonic(), text))

    ex = isb.run_code(code, context="stream", on_stdout=on_stdout)
    done = time.monotonic()
    assert ex.stdout == "0\n1\n2\n"
    assert "".join(s for _, s in seen) == "0\n1\n2\n"
    assert done - seen[0][0] > 1.5, "the first line arrived only at the end"


def test_matplotlib_figure_comes_back_as_a_png(isb: Sandbox) -> None:
    code = (
        "import matplotlib.pyplot as plt\n"
        "fig = plt.figure(figsize=(4, 3), dpi=50)\n"
        "plt.plot([1, 3, 2])\n"
        "plt.show()\n"
    )
    ex = isb.run_code(code, context="plots", timeout=120)
    assert ex.error is None, ex.error
    pngs = [r for r in ex.results if r.png]
    assert len(pngs) == 1, ex.results
    data = pngs[0].png_bytes()
    assert data is not None and data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    # 4 x 3 inches at 50 dpi, cropped to the drawing by the inline backend's bbox "tight"
    assert 100 < width <= 200 and 75 < height <= 150, (width, height)
    assert decoded_pixels(data) == height * (1 + width * 4)  # RGBA rows, each with a filter byte
    assert not pngs[0].is_main_result


def test_html_and_json_results(isb: Sandbox) -> None:
    code = (
        "from IPython.display import HTML, JSON, display\n"
        "display(HTML('<b>hi</b>'))\n"
        "display(JSON({'a': [1, 2]}))\n"
    )
    ex = isb.run_code(code, context="rich")
    assert ex.error is None, ex.error
    assert [r.html for r in ex.results if r.html] == ["<b>hi</b>"]
    assert [r.json for r in ex.results if r.json is not None] == [{"a": [1, 2]}]


def test_an_exception_returns_name_value_and_traceback(isb: Sandbox) -> None:
    ex = isb.run_code("def f():\n    return 1 / 0\nf()", context="errors")
    assert ex.error is not None
    assert ex.error.name == "ZeroDivisionError"
    assert ex.error.value == "division by zero"
    assert "return 1 / 0" in ex.error.traceback
    assert "\x1b[" not in ex.error.traceback  # no terminal colours
    assert isb.run_code("1 + 1", context="errors").text == "2"


def test_a_timeout_interrupts_and_the_next_cell_works(isb: Sandbox) -> None:
    isb.run_code("x = 41", context="timeouts")
    started = time.monotonic()
    ex = isb.run_code("while True: pass", context="timeouts", timeout=2)
    elapsed = time.monotonic() - started
    assert ex.error is not None and ex.error.name == "TimeoutError", ex.error
    assert ex.timed_out and "keeps its state" in ex.error.value
    assert elapsed < 20, elapsed
    after = isb.run_code("x", context="timeouts", timeout=30)
    assert after.error is None and after.text == "41"


def test_bash_keeps_cd_and_variables(isb: Sandbox) -> None:
    first = isb.run_code("cd /tmp && FOO=bar && mkdir -p here", language="bash", context="sh")
    assert first.error is None and first.exit_code == 0
    ex = isb.run_code("pwd; echo $FOO; ls -d here", language="bash", context="sh")
    assert ex.stdout == "/tmp\nbar\nhere\n"
    failed = isb.run_code("false", language="bash", context="sh")
    assert failed.error is not None and failed.error.name == "ExitStatus" and failed.exit_code == 1
    slow = isb.run_code("sleep 60", language="bash", context="sh", timeout=2)
    assert slow.timed_out
    assert isb.run_code("echo $FOO", language="bash", context="sh").stdout == "bar\n"


def test_javascript_keeps_variables_and_returns_the_last_expression(isb: Sandbox) -> None:
    first = isb.run_code("let n = 20; console.log('set')", language="javascript")
    assert first.error is None and first.stdout == "set\n"
    ex = isb.run_code("n * 2 + 2", language="javascript")
    assert ex.text == "42" and ex.context == "javascript"
    err = isb.run_code("null.x", language="javascript")
    assert err.error is not None and err.error.name == "TypeError"
    assert isb.run_code("while (true) {}", language="javascript", timeout=2).timed_out
    assert isb.run_code("n", language="javascript").text == "20"


def test_contexts_api(isb: Sandbox) -> None:
    ci = CodeInterpreter.of(isb)
    made = ci.create_context("bash", name="api-ctx", cwd="/tmp")
    assert (made.name, made.language, made.cwd) == ("api-ctx", "bash", "/tmp")
    with pytest.raises(Conflict):
        ci.create_context("python", name="api-ctx")
    with pytest.raises(Conflict):
        isb.run_code("1", language="python", context="api-ctx")
    assert isb.run_code("X=1; pwd", language="bash", context="api-ctx").stdout == "/tmp\n"
    names = {c.name: c for c in ci.list_contexts()}
    assert names["api-ctx"].execution_count == 1 and names["api-ctx"].alive
    restarted = ci.restart_context("api-ctx")
    assert restarted.execution_count == 0
    assert isb.run_code("echo ${X:-unset}", language="bash", context="api-ctx").stdout == (
        "unset\n"
    )
    ci.delete_context("api-ctx")
    assert "api-ctx" not in {c.name for c in ci.list_contexts()}
    with pytest.raises(NotFound):
        ci.delete_context("api-ctx")


def test_async_sdk(isb: Sandbox, server: ServerProcess) -> None:
    async def main() -> None:
        sb = await AsyncSandbox.connect(isb.id, api_url=server.url, token=server.token)
        try:
            seen: list[str] = []

            async def on_stdout(text: str) -> None:
                seen.append(text)

            ex = await sb.run_code("print('a'); 6 * 7", context="async", on_stdout=on_stdout)
            assert ex.text == "42" and seen == ["a\n"]
        finally:
            await sb.close()

    asyncio.run(main())


def test_interpreter_processes_end_with_the_sandbox(
    make_sandbox: MakeSandbox, interpreter_template: str
) -> None:
    sb = make_sandbox(template=interpreter_template, memory_mib=1024)
    for language, code in (("python", "1"), ("bash", "true"), ("javascript", "1")):
        assert sb.run_code(code, language=language).error is None
    inside = sb.commands.run("ps -eo args").stdout
    assert "gateway.py" in inside and "ipykernel_launcher" in inside and "js_kernel.js" in inside
    tags = [p.tag for p in sb.commands.list()]
    assert "atelier-interpreter" in tags
    sb.kill()
    time.sleep(0.5)
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert sb.id not in ps, [line for line in ps.splitlines() if sb.id in line]


def test_base_template_says_what_is_missing(make_sandbox: MakeSandbox) -> None:
    sb = make_sandbox()  # base: python3 without jupyter, no node
    ex = sb.run_code("echo hi", language="bash")
    assert ex.stdout == "hi\n"
    from atelier.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match="code-interpreter"):
        sb.run_code("1")
    with pytest.raises(InvalidRequest, match="code-interpreter"):
        sb.run_code("1", language="javascript")
