"""Entry point: ``python3 -E -s -B -c <launcher> --socket PATH --log PATH``.

Runs as the sandbox's init (PID 1) as root; see :mod:`.bootstrap`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import time

__all__ = ["main"]


def _harden() -> None:
    # `-c` puts the working directory first on sys.path: never import from it.
    sys.path[:] = [p for p in sys.path if p not in ("", ".")]
    # Keep 0/1/2 open, so pipes created later never get those numbers (a
    # spawn's dup2(fd, fd) would then keep the close-on-exec flag).
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    # Descriptors inherited from whoever started us must not leak into commands.
    try:
        inherited = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        inherited = []
    for fd in inherited:
        if fd > 2:
            with contextlib.suppress(OSError):
                os.set_inheritable(fd, False)
    os.umask(0o022)


def _setup_logging(path: str) -> None:
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    formatter = _OneLine("%(asctime)s.%(msecs)03dZ %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    root = logging.getLogger()  # asyncio's own warnings land in the file too
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("atelier.agent").setLevel(logging.INFO)


class _OneLine(logging.Formatter):
    """One line per event, even for tracebacks."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\n", " | ")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="atelier-agent", description="Atelier in-sandbox agent")
    parser.add_argument("--socket", required=True, help="unix socket to listen on")
    parser.add_argument("--log", required=True, help="log file (appended)")
    parser.add_argument("--serial", help="also serve the host on this virtio-serial port (VMs)")
    args = parser.parse_args(argv)
    _harden()
    socket_path = os.path.abspath(args.socket)
    _setup_logging(os.path.abspath(args.log))
    # Imported only after sys.path is safe.
    from .server import AgentServer

    log = logging.getLogger("atelier.agent")
    log.info("agent starting pid=%d python=%s", os.getpid(), sys.version.split()[0])
    try:
        server = AgentServer(socket_path)
        if args.serial:
            from .serial_channel import serve

            asyncio.run(serve(server, args.serial))
        else:
            asyncio.run(server.run())
    except Exception:
        log.exception("agent crashed")
        return 1
    log.info("agent stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
