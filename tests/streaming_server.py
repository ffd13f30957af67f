"""A scripted OpenAI-compatible streaming server with known timings, for backend tests.

Run ``python tests/streaming_server.py``: it binds 127.0.0.1 on a free port and prints
``PORT <n>`` once it listens. ``POST /v1/chat/completions`` plays the script that the request's
``model`` names, as ``MODE`` or ``MODE?key=value&...``:

- ``stream`` (``first_ms``, ``gap_ms``, ``tokens``, ``usage``): a role-only chunk at once, an
  empty-content chunk, then ``tokens`` content chunks, the first ``first_ms`` after the request
  arrived and the others ``gap_ms`` apart (absolute deadlines, so sleeps do not drift), then a
  usage chunk (``usage=1``, with ``completion_tokens = tokens``) and ``[DONE]``.
  With ``text``, the content chunks are its words instead of ``t0 t1 ...`` (and ``tokens``
  their number).
- ``reasoning``: as ``stream``, but the first chunk carries ``reasoning_content`` only.
- ``error`` (``status``, ``message``): an HTTP error with an OpenAI-style error body.
- ``flaky`` (``every``, and ``stream``'s): every ``every``-th request of the server's life is an
  HTTP 500 ``flaky``, the others stream.
- ``stall`` (``stall_ms``): a role-only chunk, then silence.
- ``json`` (``content``, default ``B``): a non-streamed completion.

``GET /v1/models`` lists no model (it plays whichever script a request names, as an unpinned
``transformers serve`` loads whichever folder a request names).

``GET /last`` returns ``{"body": ..., "received_ns": ...}`` for the last completion request:
what the client sent, and when its handler started by `time.perf_counter_ns`, which on Linux is
CLOCK_MONOTONIC and so comparable with the test process's clock.
"""

from __future__ import annotations

import json
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

PROMPT_TOKENS = 42
LAST: dict[str, Any] = {}
REQUESTS = [0]


def _chunk(delta: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion.chunk",
        "model": "scripted",
        "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
    }


class ScriptedHandler(BaseHTTPRequestHandler):
    """Plays the script named by the request's ``model``."""

    disable_nagle_algorithm = True  # each chunk leaves at once; timings are the point
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers: no connect in the timings

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models":
            self._json(200, {"object": "list", "data": []})
        else:
            self._json(200, LAST)

    def do_POST(self) -> None:
        t0 = time.perf_counter()
        LAST["received_ns"] = time.perf_counter_ns()
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length))
        LAST["body"] = body
        mode, _, query = str(body.get("model", "stream")).partition("?")
        params = dict(parse_qsl(query))
        REQUESTS[0] += 1
        if mode == "flaky" and REQUESTS[0] % int(params.get("every", "3")) == 0:
            mode, params = "error", {"status": "500", "message": "flaky"}
        try:
            if mode == "error":
                status = int(params.get("status", "500"))
                text = params.get("message", "boom")
                error = {"message": text, "type": "scripted", "code": status}
                self._json(status, {"error": error})
            elif mode == "json":
                message = {"role": "assistant", "content": params.get("content", "B")}
                usage = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": 1, "total_tokens": 43}
                self._json(200, {"choices": [{"index": 0, "message": message}], "usage": usage})
            else:
                self._stream(mode, params, t0)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (the timeout tests do this on purpose)

    def _json(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send(self, payload: Any) -> None:
        text = payload if isinstance(payload, str) else json.dumps(payload)
        self._write_chunk(f"data: {text}\n\n".encode())

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _stream(self, mode: str, params: dict[str, str], t0: float) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self._send(_chunk({"role": "assistant"}))
        if mode == "stall":
            time.sleep(float(params.get("stall_ms", "5000")) / 1000.0)
            self.close_connection = True
            return
        self._send(_chunk({"content": ""}))
        first = float(params.get("first_ms", "80")) / 1000.0
        gap = float(params.get("gap_ms", "20")) / 1000.0
        words = params["text"].split() if "text" in params else None
        tokens = len(words) if words else int(params.get("tokens", "5"))
        for i in range(tokens):
            _sleep_until(t0 + first + i * gap)
            if mode == "reasoning" and i == 0:
                self._send(_chunk({"reasoning_content": "think "}))
            else:
                self._send(_chunk({"content": f"{words[i] if words else f't{i}'} "}))
        if params.get("usage", "1") == "1":
            usage = {
                "prompt_tokens": PROMPT_TOKENS,
                "completion_tokens": tokens,
                "total_tokens": PROMPT_TOKENS + tokens,
            }
            self._send({"id": "chatcmpl-scripted", "choices": [], "usage": usage})
        self._send("[DONE]")
        self._write_chunk(b"")


def _sleep_until(deadline: float) -> None:
    while (left := deadline - time.perf_counter()) > 0:
        # Sleep most of the way, then spin the last fraction of a millisecond for precision.
        time.sleep(left - 0.0005 if left > 0.001 else 0)


def main() -> None:
    """Serve until killed; print the port first."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), ScriptedHandler)
    server.daemon_threads = True
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
