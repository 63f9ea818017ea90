"""A fake upstream DNS server for tests (a unique module name: import as ``fake_dns``).

Answers every ``A`` question for a name in ``records`` with that address (and
NXDOMAIN otherwise), over UDP and TCP, from a thread; counts the queries.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

__all__ = ["FakeDns", "build_query", "parse_answer"]


def build_query(name: str, qid: int = 0x1234) -> bytes:
    header = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"
    return header + qname + struct.pack("!HH", 1, 1)


def _question(query: bytes) -> tuple[str, int]:
    """The first question's name and the offset after the question."""
    pos, labels = 12, []
    while query[pos]:
        n = query[pos]
        labels.append(query[pos + 1 : pos + 1 + n].decode())
        pos += 1 + n
    return ".".join(labels).lower(), pos + 5


def parse_answer(answer: bytes) -> tuple[int, list[str]]:
    """(rcode, A addresses) of an answer made by :class:`FakeDns`."""
    rcode = answer[3] & 0x0F
    ancount = struct.unpack("!H", answer[6:8])[0]
    _, pos = _question(answer)
    out = []
    for _ in range(ancount):
        pos += 2 + 10  # name pointer, type, class, ttl, rdlength
        out.append(socket.inet_ntoa(answer[pos : pos + 4]))
        pos += 4
    return rcode, out


class FakeDns:
    def __init__(self, host: str, port: int, records: dict[str, str]) -> None:
        self.records = {k.lower(): v for k, v in records.items()}
        self.queries: list[str] = []
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind((host, port))
        self.port = self.udp.getsockname()[1]
        self.tcp = socket.socket()
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind((host, self.port))
        self.tcp.listen(8)
        self._threads = [
            threading.Thread(target=self._serve_udp, daemon=True),
            threading.Thread(target=self._serve_tcp, daemon=True),
        ]
        for t in self._threads:
            t.start()

    def answer(self, query: bytes) -> bytes:
        name, end = _question(query)
        self.queries.append(name)
        qtype = struct.unpack("!H", query[end - 4 : end - 2])[0]
        ip = self.records.get(name)
        if ip is None:
            flags, answers = 0x8183, b""  # NXDOMAIN
        elif qtype != 1:
            flags, answers = 0x8180, b""  # the name exists, no record of that type
        else:
            flags = 0x8180
            answers = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(ip)
        count = 1 if answers else 0
        header = struct.pack("!HHHHHH", struct.unpack("!H", query[:2])[0], flags, 1, count, 0, 0)
        return header + query[12:end] + answers

    def _serve_udp(self) -> None:
        while True:
            try:
                data, addr = self.udp.recvfrom(65535)
            except OSError:
                return
            with contextlib.suppress(Exception):
                self.udp.sendto(self.answer(data), addr)

    def _serve_tcp(self) -> None:
        while True:
            try:
                conn, _ = self.tcp.accept()
            except OSError:
                return
            with conn, contextlib.suppress(Exception):
                while head := conn.recv(2):
                    (n,) = struct.unpack("!H", head)
                    data = b""
                    while len(data) < n:
                        data += conn.recv(n - len(data))
                    out = self.answer(data)
                    conn.sendall(struct.pack("!H", len(out)) + out)

    def close(self) -> None:
        for s in (self.udp, self.tcp):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
