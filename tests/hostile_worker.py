"""A hostile machine on a worker's port: speaks just enough of ggml-rpc's wire format to lie.

ggml-rpc (ggml/src/ggml-rpc/ggml-rpc.cpp): a request is ``cmd (1 byte) | size (u64) | data``; a reply is
``size (u64) | data``. HELLO (14) carries 24 bytes of transport caps and is answered with
``major, minor, patch, pad (4 bytes) | caps (24)``; DEVICE_COUNT (15) with a u32; GET_DEVICE_MEMORY (11)
asks for a u32 device and is answered with ``free, total`` (two u64). It stands for a remote machine, the
one boundary where a fake is the honest thing to test against.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

HELLO, DEVICE_COUNT, GET_DEVICE_MEMORY = 14, 15, 11
CAPS = 24
MAJOR = 7


def _recv(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def _request(conn: socket.socket) -> tuple[int, bytes]:
    cmd = _recv(conn, 1)[0]
    (size,) = struct.unpack("<Q", _recv(conn, 8))
    return cmd, _recv(conn, size)


def _reply(conn: socket.socket, data: bytes) -> None:
    conn.sendall(struct.pack("<Q", len(data)) + data)


def _serve(conn: socket.socket, mode: str, free: int, total: int, count: int) -> None:
    if mode == "silent":  # accepts and never reads
        time.sleep(3600)
    if mode == "close":
        return
    if mode == "garbage":
        conn.sendall(b"\xff" * 64 + b"HTTP/1.1 200 OK\r\n\r\n")
        time.sleep(3600)
    while True:
        cmd, _ = _request(conn)
        if cmd == HELLO:
            major = MAJOR + 1 if mode == "version" else MAJOR
            body = bytes([major, 0, 0, 0]) + b"\0" * CAPS
            if mode == "drip":
                for b in struct.pack("<Q", len(body)) + body:
                    conn.sendall(bytes([b]))
                    time.sleep(2.0)
            elif mode == "short-hello":
                _reply(conn, body[:3])
            else:
                _reply(conn, body)
        elif cmd == DEVICE_COUNT:
            _reply(conn, struct.pack("<I", count))
        elif cmd == GET_DEVICE_MEMORY:
            _reply(conn, struct.pack("<QQ", free, total))
        elif mode == "stall":  # past the query: silent, as a machine whose network went away without a word
            time.sleep(3600)
        else:  # anything past the query: hang up, as a machine that went away
            return


@contextmanager
def hostile_worker(mode: str, *, free: int = 1 << 30, total: int = 1 << 30, count: int = 1) -> Iterator[str]:
    """A fake worker on 127.0.0.1 behaving as ``mode`` (silent, close, garbage, version, drip, short-hello, stall,
    or ``lie``: a well-formed reply with ``free``/``total``/``count``); yields its endpoint."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    conns: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conns.append(conn)

            def serve(c: socket.socket = conn) -> None:
                try:
                    _serve(c, mode, free, total, count)
                except OSError:
                    pass
                finally:
                    c.close()

            threading.Thread(target=serve, daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}"
    finally:
        server.close()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()
