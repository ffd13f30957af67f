"""A hostile WebSocket client: it completes the handshake and never reads again (tests and
`scripts/bench_stalled`)."""

from __future__ import annotations

import base64
import contextlib
import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

RECEIVE_BUFFER = 4096  # the kernel's buffer for it: the server's writes block soon


def stalled_client(url: str, path: str = "/api/feed?after=0", *, deflate: bool = False,
                   origin: str | None = None) -> socket.socket:
    """Connect to `url`'s `path` as a WebSocket, read the 101 answer and nothing more."""
    parts = urlsplit(url)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
    s.connect((parts.hostname, parts.port))
    key = base64.b64encode(os.urandom(16)).decode()
    extra = ("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
             if deflate else "") + (f"Origin: {origin}\r\n" if origin else "")
    s.sendall((f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
               "Upgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        if not chunk:
            raise ConnectionError("the server closed the connection during the handshake")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(f"handshake refused: {head[:80]!r}")
    return s


def open_connections(pid: int, db: Path) -> int:
    """SQLite connections process `pid` has open on the log `db` in WAL mode: each holds one
    descriptor of its ``-wal`` file. (Descriptors of the log itself are no measure: SQLite
    keeps a closed connection's one open for reuse while another holds a lock on the file.)"""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            count += os.readlink(fd) == f"{db}-wal"
    return count
