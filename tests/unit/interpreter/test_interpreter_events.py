"""The code interpreter's pure rules: gateway events → API events → SDK objects,
MIME bundles, timeouts, and the guest gateway's own parsing helpers."""

from __future__ import annotations

import base64
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from atelier.errors import AgentFailure, Conflict, InvalidRequest
from atelier.interpreter.events import HOST_GRACE, MAX_TIMEOUT, api_event, deadlines, mime_bundle
from atelier.interpreter.service import GUEST_FILES, guest_bundle
from atelier.sdk.code import Execution, Result, _Collector, code_event

GUEST = Path(__file__).resolve().parents[3] / "src/atelier/interpreter/guest"
PNG_1X1 = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c63000100000500010d0a2db40000000049454e44ae426082"
    )
).decode()


def load_gateway() -> ModuleType:
    spec = importlib.util.spec_from_file_location("atelier_guest_gateway", GUEST / "gateway.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


gateway = load_gateway()


# -- MIME bundles ---------------------------------------------------------------------


def test_mime_bundle_strips_line_breaks_from_base64_images() -> None:
    wrapped = PNG_1X1[:20] + "\n" + PNG_1X1[20:] + "\n"
    bundle = mime_bundle({"image/png": wrapped, "text/plain": "<Figure>"})
    assert bundle["image/png"] == PNG_1X1
    assert base64.b64decode(bundle["image/png"]).startswith(b"\x89PNG\r\n\x1a\n")
    assert bundle["text/plain"] == "<Figure>"


def test_mime_bundle_keeps_json_values_and_joins_line_lists() -> None:
    bundle = mime_bundle(
        {
            "application/json": {"a": [1, 2]},
            "application/vnd.custom+json": [1],
            "text/html": ["<b>", "x</b>"],
            "image/png": 12,  # not base64 text: dropped
            "nonsense": "x",  # not a MIME type
        }
    )
    assert bundle == {
        "application/json": {"a": [1, 2]},
        "application/vnd.custom+json": [1],
        "text/html": "<b>x</b>",
    }
    assert mime_bundle(None) == {}


# -- gateway events → API events ---------------------------------------------------------


def test_api_event_passes_output_results_errors_and_end() -> None:
    assert api_event({"type": "stdout", "data": "hi\n"}) == {"type": "stdout", "data": "hi\n"}
    assert api_event({"type": "stderr", "data": ""}) is None
    result = api_event(
        {"type": "result", "data": {"text/plain": "42"}, "is_main_result": True, "x": 1}
    )
    assert result == {"type": "result", "data": {"text/plain": "42"}, "is_main_result": True}
    assert api_event({"type": "result", "data": {}}) is None
    error = api_event({"type": "error", "name": "ZeroDivisionError", "value": "division by zero"})
    assert error == {
        "type": "error",
        "name": "ZeroDivisionError",
        "value": "division by zero",
        "traceback": "",
    }
    end = api_event({"type": "end", "execution_count": 3, "context": "python", "duration_ms": 4})
    assert end == {"type": "end", "execution_count": 3, "context": "python", "duration_ms": 4.0}
    assert api_event({"type": "end", "execution_count": True})["execution_count"] is None  # type: ignore[index]
    assert api_event({"type": "started"}) is None
    assert api_event({"type": "mystery"}) is None


# -- timeouts ----------------------------------------------------------------------------


def test_deadlines_give_the_gateway_the_timeout_and_the_server_a_grace() -> None:
    limits = deadlines(2)
    assert limits.gateway == 2.0
    assert limits.host == 2.0 + HOST_GRACE
    assert deadlines(None).gateway is None and deadlines(None).host is None
    for bad in (0, -1, MAX_TIMEOUT + 1, float("nan")):
        with pytest.raises(InvalidRequest):
            deadlines(bad)


def test_timeout_error_says_whether_the_state_survived() -> None:
    kept = gateway.timeout_error(2, restarted=False, traceback="KeyboardInterrupt")
    assert kept["name"] == "TimeoutError" and "keeps its state" in kept["value"]
    assert kept["traceback"] == "KeyboardInterrupt"
    lost = gateway.timeout_error(2.5, restarted=True)
    assert "2.5 s" in lost["value"] and "state is lost" in lost["value"]


# -- the gateway's Jupyter message mapping ------------------------------------------------


def _msg(kind: str, **content: Any) -> dict[str, Any]:
    return {"msg_type": kind, "content": content, "parent_header": {"msg_id": "m"}}


def test_jupyter_messages_become_events() -> None:
    assert gateway.jupyter_event(_msg("stream", name="stderr", text="w\n")) == {
        "type": "stderr",
        "data": "w\n",
    }
    main = gateway.jupyter_event(
        _msg("execute_result", data={"text/plain": "42"}, execution_count=2, metadata={})
    )
    assert main == {"type": "result", "data": {"text/plain": "42"}, "is_main_result": True}
    shown = gateway.jupyter_event(
        _msg("display_data", data={"image/png": PNG_1X1}, metadata={"image/png": {"width": 1}})
    )
    assert shown["is_main_result"] is False and shown["metadata"] == {"image/png": {"width": 1}}
    error = gateway.jupyter_event(
        _msg(
            "error",
            ename="ValueError",
            evalue="boom",
            traceback=["\x1b[0;31mValueError\x1b[0m", "Traceback line"],
        )
    )
    assert error == {
        "type": "error",
        "name": "ValueError",
        "value": "boom",
        "traceback": "ValueError\nTraceback line",
    }
    assert gateway.jupyter_event(_msg("status", execution_state="busy")) is None


# -- the bash end marker ---------------------------------------------------------------------


def test_marker_scanner_finds_a_marker_split_across_chunks() -> None:
    scanner = gateway.MarkerScanner(b"__END_abc__")
    out = scanner.feed(b"hello __EN")
    assert out == b"hello "  # the possible start of the marker is held back
    out += scanner.feed(b"D_a")
    assert not scanner.found
    out += scanner.feed(b"bc__:3")
    assert scanner.found and not scanner.complete and scanner.status is None
    out += scanner.feed(b"\nlater")
    assert out == b"hello " and scanner.complete and scanner.status == 3


def test_marker_scanner_passes_lookalikes_through() -> None:
    scanner = gateway.MarkerScanner(b"__END_abc__")
    assert scanner.feed(b"__END_xyz__\n") == b"__END_xyz__\n"
    assert scanner.feed(b"__EN") == b""
    assert scanner.flush() == b"__EN"


# -- SDK -------------------------------------------------------------------------------------


def test_sdk_collects_an_execution_and_calls_handlers() -> None:
    seen: list[Any] = []
    collector = _Collector(seen.append, seen.append, seen.append, seen.append)
    for obj in (
        {"type": "stdout", "data": "a"},
        {"type": "stderr", "data": "b"},
        {"type": "result", "data": {"image/png": PNG_1X1}, "is_main_result": False},
        {"type": "result", "data": {"text/plain": "42", "text/html": "<b>42</b>"},
         "is_main_result": True},
        {"type": "error", "name": "TimeoutError", "value": "v", "traceback": "t"},
        {"type": "end", "execution_count": 7, "context": "python", "duration_ms": 3.5},
        {"type": "future-event"},
    ):  # fmt: skip
        event = code_event(obj)
        if event is not None:
            collector.feed(event)
    ex: Execution = collector.execution
    assert ex.stdout == "a" and ex.stderr == "b" and ex.logs.stdout == ["a"]
    assert ex.text == "42" and ex.results[1].html == "<b>42</b>"
    png = ex.results[0].png_bytes()
    assert png is not None and png.startswith(b"\x89PNG")
    assert ex.error is not None and ex.timed_out and str(ex.error) == "TimeoutError: v"
    assert ex.execution_count == 7 and ex.context == "python" and ex.duration_ms == 3.5
    assert len(seen) == 5


def test_sdk_raises_platform_failures_in_the_stream() -> None:
    with pytest.raises(AgentFailure):
        code_event({"type": "error", "code": "agent_error", "message": "gateway lost"})
    with pytest.raises(Conflict):
        code_event({"type": "error", "code": "conflict", "message": "x"})


def test_result_accessors() -> None:
    r = Result({"application/json": [1], "image/svg+xml": "<svg/>"})
    assert r.json == [1] and r.svg == "<svg/>" and r.png is None and r.png_bytes() is None
    assert r.text is None and str(r) == "" and r.formats() == ["application/json", "image/svg+xml"]


def test_guest_bundle_is_versioned_by_content() -> None:
    bundle = guest_bundle()
    assert set(bundle.files) == set(GUEST_FILES)
    assert bundle.directory.startswith("/opt/atelier-interpreter/")
    assert len(bundle.version) == 16
    assert bundle.files["gateway.py"] == (GUEST / "gateway.py").read_bytes()
