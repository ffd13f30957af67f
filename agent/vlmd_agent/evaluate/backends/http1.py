"""A small HTTP/1.1 client over `netclock` connections: a keep-alive pool, streamed bodies with
the time each piece arrived.

Enough HTTP for an OpenAI-compatible server: one request at a time per connection, bodies framed
by ``Transfer-Encoding: chunked``, ``Content-Length`` or the connection's close. A response read
to its end puts its connection back in the pool (`Response.close`), so the next request skips
the TCP and TLS handshakes; a connection that the server closed while idle is dropped, and a
request that finds its reused connection dead before any answer is sent again once on a new one.
No proxies, no redirects, no compression (``Accept-Encoding`` is not sent).

`Pool` is thread-safe: the wrapper's workers share one (`Pool.request` from any thread).
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from .netclock import Connection, Stamp

MAX_HEAD = 64 * 1024
MAX_IDLE = 256
USER_AGENT = "vlmd-agent"


class HTTPError(Exception):
    """The server's answer is not HTTP/1.1 as expected (a bad status line, chunk, header)."""


@dataclass(frozen=True)
class Origin:
    """Where requests go: scheme, host and port."""

    scheme: str
    host: str
    port: int

    @classmethod
    def split(cls, url: str) -> tuple[Origin, str]:
        """The origin and the request target (path and query) of an http(s) URL.

        Raises ValueError naming what is wrong with `url`.
        """
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an http(s)://HOST[:PORT]/... URL")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(parts.scheme, parts.hostname, port), target


class Pool:
    """Keep-alive connections per origin. `tls` is the context for https (default: the
    system's trust store, ``SSL_CERT_FILE`` honoured); `stamps` asks for kernel timestamps.
    ``opened`` counts the connections made."""

    def __init__(self, *, tls: ssl.SSLContext | None = None, stamps: bool = True) -> None:
        self._tls = tls
        self.stamps = stamps
        self._idle: dict[Origin, list[Connection]] = {}
        self._lock = threading.Lock()
        self.opened = 0

    def request(self, origin: Origin, method: str, target: str,
                headers: Sequence[tuple[str, str]], body: bytes, deadline: float) -> Response:
        """Send one request and read the answer's head; the body is the `Response`'s to read,
        by its own ``deadline`` (this one, until changed).

        Errors: TimeoutError past `deadline` (`time.monotonic` seconds); OSError and
        ssl.SSLError from the network; HTTPError for a malformed answer.
        """
        head = [f"{method} {target} HTTP/1.1", f"Host: {_host_header(origin)}",
                f"User-Agent: {USER_AGENT}", f"Content-Length: {len(body)}"]
        head += [f"{name}: {value}" for name, value in headers]
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        conn = self._take(origin)
        if conn is not None:
            try:
                return self._exchange(conn, data, method, deadline, origin)
            except (ConnectionError, _NoAnswer):
                conn.close()  # the server had closed it while idle: once more, on a new one
        try:
            return self._exchange(self._connect(origin, deadline), data, method, deadline, origin)
        except _NoAnswer as e:
            raise ConnectionResetError(str(e)) from None

    def _exchange(self, conn: Connection, data: bytes, method: str, deadline: float,
                  origin: Origin) -> Response:
        try:
            user = time.time_ns()
            last = conn.send(data, deadline)
            response = Response(self, origin, conn, method, deadline)
            response.read_head()
            response.sent = Stamp(conn.sent_stamp(last), user)
            return response
        except BaseException:
            conn.close()
            raise

    def _connect(self, origin: Origin, deadline: float) -> Connection:
        tls = None
        if origin.scheme == "https":
            if self._tls is None:
                self._tls = ssl.create_default_context()
            tls = self._tls
        conn = Connection.open(origin.host, origin.port, deadline, tls=tls, stamps=self.stamps)
        with self._lock:
            self.opened += 1
        return conn

    def _take(self, origin: Origin) -> Connection | None:
        while True:
            with self._lock:
                idle = self._idle.get(origin)
                if not idle:
                    return None
                conn = idle.pop()
            if conn.idle_ok():
                return conn
            conn.close()

    def give_back(self, origin: Origin, conn: Connection) -> None:
        """Keep `conn` (its last response read to the end) for the next request."""
        with self._lock:
            idle = self._idle.setdefault(origin, [])
            if len(idle) < MAX_IDLE:
                idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        """Close every idle connection."""
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()


class _NoAnswer(Exception):
    """The connection ended before any byte of an answer (a reused one may be retried)."""


class Response:
    """One answer: ``status``, ``headers`` (lower-case names), ``sent`` (when the request's
    last byte left), then the body through `pieces` or `read`, each read bounded by
    ``deadline`` (`time.monotonic` seconds; it may be changed between reads). `close` when
    done."""

    def __init__(self, pool: Pool, origin: Origin, conn: Connection, method: str,
                 deadline: float) -> None:
        self._pool, self._origin, self._conn, self._method = pool, origin, conn, method
        self.deadline = deadline
        self.status = 0
        self.headers: dict[str, str] = {}
        self.sent = Stamp(None, 0)
        self.first = Stamp(None, 0)  # when the head's first bytes came
        self._buf = b""
        self._stamp = Stamp(None, 0)
        self._done = False
        self._reusable = False
        self._body: Iterator[tuple[bytes, Stamp]] | None = None

    def read_head(self) -> None:
        """Read the status line and headers (skipping 1xx answers)."""
        while True:
            while (end := self._buf.find(b"\r\n\r\n")) < 0:
                if len(self._buf) > MAX_HEAD:
                    raise HTTPError("response head larger than 64 KiB")
                if not self._more():
                    if not self._buf and not self.first.user:
                        raise _NoAnswer("the server closed the connection without answering")
                    raise HTTPError("the connection ended inside the response head")
            lines = self._buf[:end].decode("latin-1").split("\r\n")
            self._buf = self._buf[end + 4:]
            version, _, rest = lines[0].partition(" ")
            code = rest[:3]
            if not version.startswith("HTTP/1.") or not code.isdigit():
                raise HTTPError(f"not an HTTP/1.x status line: {lines[0][:100]!r}")
            self.status = int(code)
            if self.status >= 200 or self.status == 101:
                break
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                key, value = name.strip().lower(), value.strip()
                old = self.headers.get(key)
                self.headers[key] = value if old is None else f"{old}, {value}"
        conn_tokens = self.headers.get("connection", "").lower()
        self._reusable = ("close" not in conn_tokens and
                          (version == "HTTP/1.1" or "keep-alive" in conn_tokens))

    def pieces(self) -> Iterator[tuple[bytes, Stamp]]:
        """The body's bytes as they come (de-chunked), each with the stamp of its read; one
        iterator per response, so a loop left early can be resumed."""
        if self._body is None:
            self._body = self._pieces()
        return self._body

    def _pieces(self) -> Iterator[tuple[bytes, Stamp]]:
        if self._method == "HEAD" or self.status in (204, 304) or 100 <= self.status < 200:
            self._finish()
            return
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            yield from self._chunked()
        elif (length := self.headers.get("content-length")) is not None:
            if not length.isdigit():
                raise HTTPError(f"bad Content-Length {length!r}")
            yield from self._sized(int(length))
        else:
            self._reusable = False  # the body ends when the server closes
            while True:
                if self._buf:
                    data, self._buf = self._buf, b""
                    yield data, self._stamp
                if not self._more():
                    break
        self._finish()

    def read(self) -> bytes:
        """The whole body."""
        return b"".join(data for data, _ in self.pieces())

    def close(self) -> None:
        """Give the connection back to the pool if the body was read to its end, else drop it."""
        if self._conn.closed:
            return
        if self._done and self._reusable and not self._buf:
            self._pool.give_back(self._origin, self._conn)
            self._done = False
            self._reusable = False
        else:
            self._conn.close()

    @property
    def last(self) -> Stamp:
        """The stamp of the latest read."""
        return self._stamp

    def _finish(self) -> None:
        self._done = True

    def _more(self) -> bool:
        data, stamp = self._conn.recv(self.deadline)
        if not data:
            return False
        if not self.first.user:
            self.first = stamp
        self._buf += data
        self._stamp = stamp
        return True

    def _sized(self, length: int) -> Iterator[tuple[bytes, Stamp]]:
        while length:
            if not self._buf and not self._more():
                raise HTTPError("the connection ended inside the response body")
            data, self._buf = self._buf[:length], self._buf[length:]
            length -= len(data)
            yield data, self._stamp

    def _chunked(self) -> Iterator[tuple[bytes, Stamp]]:
        while True:
            while (eol := self._buf.find(b"\r\n")) < 0:
                if len(self._buf) > MAX_HEAD or not self._more():
                    raise HTTPError("bad or cut chunk size line")
            size_text = self._buf[:eol].split(b";")[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise HTTPError(f"bad chunk size {size_text[:20]!r}") from None
            self._buf = self._buf[eol + 2:]
            if size == 0:
                break
            yield from self._sized(size)
            while len(self._buf) < 2:
                if not self._more():
                    raise HTTPError("the connection ended after a chunk")
            if self._buf[:2] != b"\r\n":
                raise HTTPError("chunk not followed by CRLF")
            self._buf = self._buf[2:]
        while (end := self._buf.find(b"\r\n")) != 0:  # trailers, then the empty line
            if end > 0:
                self._buf = self._buf[end + 2:]
            elif len(self._buf) > MAX_HEAD or not self._more():
                raise HTTPError("the connection ended inside the chunked trailer")
        self._buf = self._buf[2:]


def _host_header(origin: Origin) -> str:
    host = f"[{origin.host}]" if ":" in origin.host else origin.host
    default = 443 if origin.scheme == "https" else 80
    return host if origin.port == default else f"{host}:{origin.port}"
