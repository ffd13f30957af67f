"""A scripted OpenAI-compatible server for many concurrent streams, with its own clock as truth.

Run ``python tests/serving_server.py [--tls CERT KEY] [--engine vllm|sglang|none]
[--max-running N] [--kv-per-request F]``: it binds 127.0.0.1 on a free port and prints
``PORT <n>`` once it listens. One thread, one selector loop, a heap of timed writes: 64 streams
cost it what one costs a thread-per-request server, so it is not the bottleneck of a benchmark.

``POST /v1/chat/completions`` plays the script the request's ``model`` names,
``stream?first_ms=F&gap_ms=G&tokens=N``: at once a role-only chunk, then N content chunks, the
first F ms after the request arrived (after it was admitted, see below) and the others G ms
apart on a fixed grid, then a usage chunk and ``[DONE]``. With ``drop=1`` it closes the
connection after the answer without saying so (as an idle keep-alive timeout does).
``error?status=S`` answers an HTTP error. At most ``--max-running`` requests stream at once;
later ones wait, counted as waiting.

Truth, per request, keyed by the request's text prompt (``GET /truth``): ``rx_ns`` when the
request's last byte arrived, ``first_ns`` when the first content chunk left and ``end_ns`` when
``[DONE]`` left, by the kernel's packet timestamps on plain HTTP (``clock: kernel``), else this
process's ``time.time_ns`` (``clock: user``), all CLOCK_REALTIME; and the request's ``body``
and ``auth`` header.

``GET /v1/models`` lists no model (it plays whichever script a request names, as an unpinned
``transformers serve`` loads whichever folder a request names).

``GET /stats``: ``connections`` accepted, ``completion_connections`` (those that carried a
completion request), ``requests`` served, ``tls`` handshakes done, ``peak_running`` (the most
requests streaming at once).
``GET /metrics``: Prometheus text with the chosen engine's families (vLLM:
``vllm:kv_cache_usage_perc``, ``vllm:num_requests_running``, ``vllm:num_requests_waiting``;
SGLang: ``sglang:token_usage``, ``sglang:num_running_reqs``, ``sglang:num_queue_reqs``) among
others, the KV-cache usage being ``--kv-per-request`` per running request; 404 with ``none``.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import itertools
import json
import selectors
import socket
import ssl
import struct
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

SO_TIMESTAMPING = 37
# TX_SOFTWARE | RX_SOFTWARE | SOFTWARE | OPT_ID | OPT_TSONLY
STAMP_FLAGS = (1 << 1) | (1 << 3) | (1 << 4) | (1 << 7) | (1 << 11)
RX_FLAGS = (1 << 3) | (1 << 4)  # a listener takes no OPT_ID
PROMPT_TOKENS = 42


@dataclass
class Stream:
    """One request being answered."""

    conn: Conn
    key: str
    first_s: float
    gap_s: float
    tokens: int
    truth: dict[str, Any]
    sent: int = 0


@dataclass
class Conn:
    """One accepted connection: its socket (TLS or not), what it read, its stream."""

    sock: socket.socket
    tls: bool
    kernel: bool
    buf: bytes = b""
    handshaken: bool = True
    written: int = 0  # bytes handed to send(), the kernel's OPT_ID counter
    pending_tx: dict[int, tuple[dict[str, Any], str]] = field(default_factory=dict)
    rx_ns: int = 0
    served: bool = False  # it carried a completion request


class Server:
    """The loop: accept, read requests, play scripts on a heap of due writes."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.sel = selectors.DefaultSelector()
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=512)
        self.listener.setblocking(False)
        if not args.tls:  # accepted sockets inherit it: a request sent before accept is stamped
            self.listener.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING, RX_FLAGS)
        self.sel.register(self.listener, selectors.EVENT_READ, None)
        self.ctx: ssl.SSLContext | None = None
        if args.tls:
            self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ctx.load_cert_chain(args.tls[0], args.tls[1])
        self.heap: list[tuple[float, int, Stream]] = []
        self.order = itertools.count()
        self.running: set[int] = set()
        self.waiting: deque[Stream] = deque()
        self.truth: list[dict[str, Any]] = []
        self.stats = {"connections": 0, "requests": 0, "tls": 0, "peak_running": 0,
                      "completion_connections": 0}

    def serve(self) -> None:
        print(f"PORT {self.listener.getsockname()[1]}", flush=True)
        while True:
            timeout = None
            if self.heap:
                timeout = max(0.0, self.heap[0][0] - time.monotonic())
            for key, _ in self.sel.select(timeout):
                if key.data is None:
                    self._accept()
                else:
                    self._readable(key.data)
            now = time.monotonic()
            while self.heap and self.heap[0][0] <= now:
                _, _, stream = heapq.heappop(self.heap)
                self._step(stream)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            self.stats["connections"] += 1
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            kernel = False
            if self.ctx is None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING, STAMP_FLAGS)
                    kernel = True
                except OSError:
                    pass
            if self.ctx is not None:
                sock = self.ctx.wrap_socket(sock, server_side=True,
                                            do_handshake_on_connect=False)
            sock.setblocking(False)
            conn = Conn(sock, self.ctx is not None, kernel, handshaken=self.ctx is None)
            self.sel.register(sock, selectors.EVENT_READ, conn)

    def _close(self, conn: Conn) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(conn.sock)
        conn.sock.close()

    def _readable(self, conn: Conn) -> None:
        if conn.kernel:
            self._tx_stamps(conn)
        try:
            if not conn.handshaken:
                assert isinstance(conn.sock, ssl.SSLSocket)
                conn.sock.do_handshake()
                conn.handshaken = True
                self.stats["tls"] += 1
                return
            if conn.kernel:
                data, anc, _, _ = conn.sock.recvmsg(1 << 16, 256)
                conn.rx_ns = time.time_ns()  # if the kernel did not stamp it
                for level, kind, payload in anc:
                    if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPING:
                        sec, nsec = struct.unpack_from("=qq", payload, 0)
                        conn.rx_ns = sec * 1_000_000_000 + nsec
            else:
                data = conn.sock.recv(1 << 16)
                conn.rx_ns = time.time_ns()
                while isinstance(conn.sock, ssl.SSLSocket) and conn.sock.pending():
                    data += conn.sock.recv(1 << 16)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return
        except OSError:
            self._close(conn)
            return
        if not data:
            self._close(conn)
            return
        conn.buf += data
        self._requests(conn)

    def _requests(self, conn: Conn) -> None:
        while (end := conn.buf.find(b"\r\n\r\n")) >= 0:
            lines = conn.buf[:end].decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in
                       (line.partition(":") for line in lines[1:])}
            length = int(headers.get("content-length", "0"))
            if len(conn.buf) < end + 4 + length:
                return
            body = conn.buf[end + 4:end + 4 + length]
            conn.buf = conn.buf[end + 4 + length:]
            method, path = lines[0].split(" ")[:2]
            self._route(conn, method, path, body, headers)

    def _route(self, conn: Conn, method: str, path: str, body: bytes,
               headers: dict[str, str]) -> None:
        if method == "GET" and path == "/truth":
            self._json(conn, 200, self.truth)
        elif method == "GET" and path == "/stats":
            self._json(conn, 200, self.stats)
        elif method == "GET" and path == "/metrics":
            text = metrics_text(self.args.engine, len(self.running), len(self.waiting),
                                self.args.kv_per_request)
            if text is None:
                self._json(conn, 404, {"detail": "Not Found"})
            else:
                self._send(conn, b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4"
                           b"\r\nContent-Length: %d\r\n\r\n%s" % (len(text), text.encode()))
        elif method == "GET" and path == "/v1/models":
            self._json(conn, 200, {"object": "list", "data": []})
        elif method == "POST" and path == "/v1/chat/completions":
            self._completion(conn, json.loads(body), headers.get("authorization"))
        else:
            self._json(conn, 404, {"detail": "Not Found"})

    def _completion(self, conn: Conn, body: dict[str, Any], auth: str | None) -> None:
        self.stats["requests"] += 1
        if not conn.served:
            conn.served = True
            self.stats["completion_connections"] += 1
        mode, _, query = str(body.get("model", "stream")).partition("?")
        params = dict(parse_qsl(query))
        if mode == "error":
            status = int(params.get("status", "500"))
            self._json(conn, status, {"error": {"message": params.get("message", "boom")}})
            return
        prompt = next((part.get("text") for m in body.get("messages", ())
                       if isinstance(m.get("content"), list) for part in m["content"]
                       if part.get("type") == "text"), "")
        truth = {"key": prompt, "rx_ns": conn.rx_ns, "clock": "kernel" if conn.kernel else "user",
                 "tokens": int(params.get("tokens", "5")), "body": body, "auth": auth,
                 "drop": params.get("drop") == "1"}
        self.truth.append(truth)
        stream = Stream(conn, prompt, float(params.get("first_ms", "80")) / 1000,
                        float(params.get("gap_ms", "20")) / 1000,
                        int(params.get("tokens", "5")), truth)
        self._send(conn, b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                   b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")
        self._event(conn, _chunk({"role": "assistant"}))
        if len(self.running) < self.args.max_running:
            self._admit(stream)
        else:
            self.waiting.append(stream)

    def _admit(self, stream: Stream) -> None:
        self.running.add(id(stream))
        self.stats["peak_running"] = max(self.stats["peak_running"], len(self.running))
        stream.truth["admitted"] = time.monotonic()
        self._at(time.monotonic() + stream.first_s, stream)

    def _at(self, when: float, stream: Stream) -> None:
        heapq.heappush(self.heap, (when, next(self.order), stream))

    def _step(self, stream: Stream) -> None:
        conn = stream.conn
        if conn.sock.fileno() < 0:
            return self._done(stream)
        i = stream.sent
        if i < stream.tokens:
            self._event(conn, _chunk({"content": f"t{i} "}), stream.truth if i == 0 else None,
                        "first")
            stream.sent += 1
            if stream.sent < stream.tokens:
                start = stream.truth["admitted"] + stream.first_s
                return self._at(start + stream.sent * stream.gap_s, stream)
        usage = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": stream.tokens,
                 "total_tokens": PROMPT_TOKENS + stream.tokens}
        self._event(conn, {"id": "chatcmpl-scripted", "choices": [], "usage": usage})
        self._event(conn, "[DONE]", stream.truth, "end")
        self._send(conn, b"0\r\n\r\n")
        if stream.truth["drop"]:  # as a server whose keep-alive timeout ran out, unannounced
            self._close(conn)
        return self._done(stream)

    def _done(self, stream: Stream) -> None:
        self.running.discard(id(stream))
        if self.waiting and len(self.running) < self.args.max_running:
            self._admit(self.waiting.popleft())

    def _event(self, conn: Conn, payload: Any, truth: dict[str, Any] | None = None,
               name: str = "") -> None:
        text = payload if isinstance(payload, str) else json.dumps(payload)
        data = f"data: {text}\n\n".encode()
        frame = b"%x\r\n%s\r\n" % (len(data), data)
        if truth is not None:
            truth[f"{name}_ns"] = time.time_ns()
            if conn.kernel:  # the stamp of the frame's last byte replaces it
                conn.pending_tx[(conn.written + len(frame) - 1) & 0xFFFFFFFF] = (truth, name)
        self._send(conn, frame)

    def _json(self, conn: Conn, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self._send(conn, b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\n"
                   b"Content-Length: %d\r\n\r\n%s" % (status, len(data), data))

    def _send(self, conn: Conn, data: bytes) -> None:
        view = memoryview(data)
        deadline = time.monotonic() + 5.0
        while view:
            try:
                n = conn.sock.send(view)
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                if time.monotonic() > deadline:
                    return self._close(conn)
                time.sleep(0.0005)
                continue
            except OSError:
                return self._close(conn)
            conn.written += n
            view = view[n:]
        if conn.kernel:  # loopback stamps a send at once: read them before they wake the loop
            self._tx_stamps(conn)
        return None

    def _tx_stamps(self, conn: Conn) -> None:
        """Read the kernel's send stamps and put them in the truths that wait for them."""
        while True:
            try:
                _, anc, _, _ = conn.sock.recvmsg(1, 256, socket.MSG_ERRQUEUE)
            except OSError:
                return
            ns, key = 0, None
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPING:
                    sec, nsec = struct.unpack_from("=qq", payload, 0)
                    ns = sec * 1_000_000_000 + nsec
                else:
                    key = struct.unpack_from("=IBBBBII", payload, 0)[6]
            if key in conn.pending_tx and ns:
                truth, name = conn.pending_tx.pop(key)
                truth[f"{name}_ns"] = ns


def _chunk(delta: dict[str, Any]) -> dict[str, Any]:
    return {"id": "chatcmpl-scripted", "object": "chat.completion.chunk", "model": "scripted",
            "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}


def metrics_text(engine: str, running: int, waiting: int, kv_per_request: float) -> str | None:
    """The engine's Prometheus exposition for this state, or None for ``none``."""
    usage = min(1.0, running * kv_per_request)
    labels = '{engine="0",model_name="scripted"}'
    if engine == "vllm":
        families = [("vllm:num_requests_running", "gauge", running),
                    ("vllm:num_requests_waiting", "gauge", waiting),
                    ("vllm:kv_cache_usage_perc", "gauge", usage),
                    ("vllm:prompt_tokens_total", "counter", 1234)]
    elif engine == "sglang":
        labels = '{model_name="scripted",tp_rank="0"}'
        families = [("sglang:num_running_reqs", "gauge", running),
                    ("sglang:num_queue_reqs", "gauge", waiting),
                    ("sglang:token_usage", "gauge", usage),
                    ("sglang:num_used_tokens", "gauge", int(usage * 100000))]
    else:
        return None
    lines = ["# HELP python_gc_objects_collected_total Objects collected during gc",
             "# TYPE python_gc_objects_collected_total counter",
             'python_gc_objects_collected_total{generation="0"} 1234.0']
    for name, kind, value in families:
        lines += [f"# HELP {name} scripted", f"# TYPE {name} {kind}",
                  f"{name}{labels} {float(value)!r}"]
    lines += ["# TYPE e2e_request_latency_seconds histogram",
              'e2e_request_latency_seconds_bucket{le="0.3"} 2.0',
              'e2e_request_latency_seconds_bucket{le="+Inf"} 3.0',
              "e2e_request_latency_seconds_sum 1.5", "e2e_request_latency_seconds_count 3.0"]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    p.add_argument("--engine", choices=("vllm", "sglang", "none"), default="none")
    p.add_argument("--max-running", type=int, default=1 << 30)
    p.add_argument("--kv-per-request", type=float, default=0.05)
    Server(p.parse_args()).serve()


if __name__ == "__main__":
    main()
