"""Guest side of the VM channel (atelier.agent.serial_channel) and the
runtime's control client (atelier.runtimes.qemu.guest), without a VM."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from atelier.agent import serial_channel as sc
from atelier.errors import RuntimeFailure
from atelier.runtimes.qemu import guest


def test_find_port(tmp_path: Path) -> None:
    sys_dir, dev = tmp_path / "sys", tmp_path / "dev"
    for name, port in (("vport1p1", "org.atelier.agent"), ("vport1p2", "org.atelier.control")):
        (sys_dir / name).mkdir(parents=True)
        (sys_dir / name / "name").write_text(port + "\n")
    dev.mkdir()
    assert sc.find_port("org.atelier.agent", str(sys_dir), str(dev)) is None  # no node yet
    (dev / "vport1p2").write_text("")
    assert sc.find_port("org.atelier.control", str(sys_dir), str(dev)) == str(dev / "vport1p2")
    (dev / "virtio-ports").mkdir()
    (dev / "virtio-ports" / "org.atelier.agent").write_text("")  # a udev link wins
    assert sc.find_port("org.atelier.agent", str(sys_dir), str(dev)) == str(
        dev / "virtio-ports" / "org.atelier.agent"
    )
    assert sc.find_port(str(dev / "vport1p2")) == str(dev / "vport1p2")
    assert sc.find_port("nope", str(tmp_path / "none"), str(dev)) is None


async def serve_control(path: Path, agent: sc.PortChannel) -> asyncio.AbstractServer:
    channel = sc.ControlChannel(agent)

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await channel.session(reader, writer)
        writer.close()

    return await asyncio.start_unix_server(on_client, str(path))


class IdlePort(sc.PortChannel):
    """A port that only exposes its waiting state (what the control channel reads)."""

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()


async def test_control_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings: list[float] = []
    # never touch the host's clock
    monkeypatch.setattr(time, "clock_settime", lambda _clock, value: settings.append(value))
    agent = IdlePort("org.atelier.agent")
    path = tmp_path / "control.sock"
    server = await serve_control(path, agent)
    try:
        assert await guest.control(path, "ping", f"time {time.time():.6f}") == ["ok", "ok"]
        assert await guest.control(path, "time 1000000000.5") == ["ok"]
        assert settings == [1000000000.5]  # only a clock that is off is set
        with pytest.raises(RuntimeFailure, match="unknown command"):
            await guest.control(path, "reboot")
        with pytest.raises(RuntimeFailure, match="still connected"):
            await guest.control(path, "agent-idle 0.05")
        agent.waiting.set()  # the agent port waits for a new host
        assert await guest.control(path, "agent-idle 5") == ["ok"]
        with pytest.raises(RuntimeFailure, match="error"):
            await guest.control(path, "time not-a-number")
    finally:
        server.close()
        await server.wait_closed()


async def test_control_without_guest(tmp_path: Path) -> None:
    with pytest.raises(RuntimeFailure, match="control port"):
        await guest.control(tmp_path / "missing.sock", "ping", timeout=1)
