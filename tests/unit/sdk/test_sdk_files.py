"""Files: request shapes, streamed reads and uploads, watch."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sdk_fakes import FILE, Chunks, FakeApi, ndjson

from atelier import FileEvent, FileInfo, Sandbox
from atelier.errors import FileNotFound, InvalidRequest

FILES = "/v1/sandboxes/sb-1/files"


@pytest.fixture
def sb(fake: FakeApi) -> Sandbox:
    return Sandbox.connect("sb-1", transport=fake.transport)


def test_read_streams_the_body(fake: FakeApi, sb: Sandbox) -> None:
    fake.on("GET", FILES, httpx.Response(200, stream=Chunks([b"hel", b"lo ", "wörld".encode()])))
    with sb.files.read_stream("/home/user/a.txt") as chunks:
        assert list(chunks) == [b"hel", b"lo ", "wörld".encode()]
    assert fake.last.url.params["path"] == "/home/user/a.txt"
    assert sb.files.read("/a") == "hello wörld".encode()
    assert sb.files.read_text("/a") == "hello wörld"


def test_read_of_a_missing_file_raises_at_the_call(fake: FakeApi, sb: Sandbox) -> None:
    fake.on("GET", FILES, httpx.Response(404, json={"code": "file_not_found", "message": "no"}))
    with pytest.raises(FileNotFound):
        sb.files.read_stream("/nope")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"bytes", b"bytes"),
        ("text é", "text é".encode()),
        (io.BytesIO(b"file-like"), b"file-like"),
        (iter([b"it", b"er"]), b"iter"),
        (bytearray(b"ba"), b"ba"),
    ],
)
def test_write_accepts_bytes_text_files_and_iterators(
    fake: FakeApi, sb: Sandbox, data: object, expected: bytes
) -> None:
    fake.on("PUT", FILES, httpx.Response(200, json=FILE))
    info = sb.files.write("/home/user/a.txt", data, mode=0o600, user="root")  # type: ignore[arg-type]
    assert isinstance(info, FileInfo) and info.size == 5 and info.modified_at is not None
    request = fake.last
    assert request.content == expected
    assert dict(request.url.params) == {"path": "/home/user/a.txt", "mode": "0600", "user": "root"}
    assert request.headers["content-type"] == "application/octet-stream"


def test_write_rejects_a_bad_mode_before_sending(fake: FakeApi, sb: Sandbox) -> None:
    with pytest.raises(InvalidRequest, match="mode"):
        sb.files.write("/a", b"x", mode="rwx")


class StreamingTransport(httpx.BaseTransport):
    """Consumes the request body chunk by chunk, like a server reading a socket."""

    def __init__(self, produced: list[int], ahead: list[int]) -> None:
        self.produced = produced
        self.ahead = ahead
        self.received = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(
                200,
                json={
                    "id": "sb-1",
                    "template": "base",
                    "runtime": "gvisor",
                    "state": "running",
                    "vcpus": 1,
                    "memory_mib": 512,
                    "disk_mib": 2048,
                },
            )
        assert isinstance(request.stream, httpx.SyncByteStream)
        assert "content-length" not in request.headers  # chunked: not buffered to measure it
        for chunk in request.stream:
            self.received += len(chunk)
            self.ahead.append(self.produced[0] - self.received)
        return httpx.Response(200, json={**FILE, "size": self.received})


def test_streamed_upload_does_not_read_the_iterator_ahead() -> None:
    chunk = b"x" * 65536
    count = 256  # 16 MiB in total
    produced = [0]
    ahead: list[int] = []

    def source() -> Iterator[bytes]:
        for _ in range(count):
            produced[0] += len(chunk)
            yield chunk

    transport = StreamingTransport(produced, ahead)
    sb = Sandbox.connect("sb-1", transport=transport)
    info = sb.files.write("/big", source())
    assert info.size == count * len(chunk)
    assert len(ahead) == count and max(ahead) <= len(chunk)


def test_upload_and_download_stream_through_local_files(
    fake: FakeApi, sb: Sandbox, tmp_path: Path
) -> None:
    local = tmp_path / "in.bin"
    local.write_bytes(b"0123456789" * 100_000)
    fake.on("PUT", FILES, httpx.Response(200, json=FILE))
    sb.files.upload(local, "/home/user/in.bin", mode="755")
    assert fake.last.content == local.read_bytes()
    assert fake.last.url.params["mode"] == "0755"

    fake.on("GET", FILES, httpx.Response(200, stream=Chunks([b"ab", b"cd"])))
    out = sb.files.download("/home/user/x", tmp_path / "out.bin")
    assert out.read_bytes() == b"abcd"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.bin", "out.bin"]


def test_failed_download_leaves_no_partial_file(fake: FakeApi, sb: Sandbox, tmp_path: Path) -> None:
    fake.on("GET", FILES, httpx.Response(404, json={"code": "file_not_found", "message": "no"}))
    with pytest.raises(FileNotFound):
        sb.files.download("/nope", tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_metadata_calls(fake: FakeApi, sb: Sandbox) -> None:
    fake.on(
        "GET",
        f"{FILES}/list",
        httpx.Response(200, json={"entries": [FILE, {**FILE, "type": "dir"}]}),
    )
    fake.on("GET", f"{FILES}/stat", httpx.Response(200, json=FILE))
    fake.on("GET", f"{FILES}/exists", httpx.Response(200, json={"exists": False}))
    fake.on("POST", f"{FILES}/mkdir", httpx.Response(200, json={"created": True, "entry": FILE}))
    fake.on("DELETE", FILES, httpx.Response(204))
    fake.on("POST", f"{FILES}/rename", httpx.Response(200, json=FILE))
    fake.on("POST", f"{FILES}/chmod", httpx.Response(200, json=FILE))

    entries = sb.files.list("/home/user", depth=2)
    assert [e.is_dir for e in entries] == [False, True]
    assert dict(fake.last.url.params) == {"path": "/home/user", "depth": "2"}
    assert sb.files.stat("/a").name == "a.txt"
    assert sb.files.exists("/a") is False
    assert sb.files.make_dir("/d", mode=0o700) is True
    assert json.loads(fake.last.content) == {"path": "/d", "parents": True, "mode": "0700"}
    sb.files.remove("/d", recursive=True)
    assert dict(fake.last.url.params) == {"path": "/d", "recursive": "true"}
    sb.files.rename("/a", "/b")
    assert json.loads(fake.last.content) == {"source": "/a", "destination": "/b"}
    sb.files.chmod("/b", "755")
    assert json.loads(fake.last.content) == {"path": "/b", "mode": "0755"}


def test_watch_yields_file_events_until_closed(fake: FakeApi, sb: Sandbox) -> None:
    body = ndjson(
        {"type": "create", "path": "/w/a", "is_dir": False},
        {"type": "modify", "path": "/w/a", "is_dir": False},
    )
    fake.on("GET", f"{FILES}/watch", httpx.Response(200, stream=Chunks([body[:10], body[10:]])))
    with sb.files.watch("/w", recursive=True) as events:
        assert next(events) == FileEvent("create", "/w/a", False)
        assert fake.last.url.params["recursive"] == "true"
    assert list(events) == []
