"""OpenAI-compatible backend (``openai:NAME@BASE_URL``): streamed ``/v1/chat/completions``.

Works with any server that speaks the OpenAI chat API with server-sent events: vLLM, SGLang,
Ollama, TGI, LMDeploy, llama.cpp, ``transformers serve``. The request streams
(``stream: true`` with ``stream_options.include_usage``), decodes greedily unless a temperature
is set (`RequestOptions`) and carries each image as a base64 data URL, before the prompt.

Requests go through one keep-alive pool (`.http1`): every stream is read to its end, so its
connection serves the next request without a TCP or TLS handshake. `generate` may be called
from several threads at once (the wrapper's ``--concurrency``).

Timings are stamps of the bytes (`.netclock`): the send time of the request's last byte, and
the arrival of the data that completed each SSE line, from the kernel where it stamps packets
(``timing_source``), so a client scheduled late still measures when the bytes came:

- TTFT: the first chunk whose delta has non-empty ``content`` or ``reasoning_content``
  (a role-only chunk does not count);
- ITL: the gaps between that chunk and every later content chunk;
- e2e: up to the ``[DONE]`` line (or the body's end);
- output tokens: the final ``usage`` chunk (``tokens_source="usage"``), else the number of
  content chunks (``"chunks"``, a lower bound when a server packs several tokens in a chunk).

VRAM is not measured here: the server is another process, often on another host; the
watchdog's NVML sampling covers it.
"""

from __future__ import annotations

import base64
import json
import os
import re
import ssl
import time
from collections.abc import Iterable
from typing import Any

from .base import (
    BackendError,
    FailReason,
    Generation,
    Request,
    RequestOptions,
    TimingSource,
    gaps_ms,
    tpot_ms,
)
from .http1 import HTTPError, Origin, Pool, Response
from .netclock import Stamp, clock_name

REMOTE_NOTE = "remote server: not measured by the client"
DEFAULT_KEY_ENV = "OPENAI_API_KEY"
DRAIN_S = 1.0  # how long the body may take to end after [DONE] before the connection is dropped
# A 400/413 whose message is about the request's content is the item's fault, not the server's.
INPUT_COMPLAINT = re.compile(
    r"image|input|prompt|context|token|length|decode|too large|too long|content", re.IGNORECASE
)


class OpenAIBackend:
    """A model behind an OpenAI-compatible HTTP server.

    ``base_url`` may end in ``/v1`` or not. ``timeout_s`` bounds the whole request. The bearer
    token is ``api_key``, else the environment variable `RequestOptions.api_key_env` names
    (``OPENAI_API_KEY`` by default; a named variable that is unset is a ValueError), else none.
    ``tls`` replaces the system's trust store for https; ``stamps=False`` keeps to the
    process's clock.
    """

    def __init__(
        self,
        model: str,
        base_url: str,
        *,
        spec: str | None = None,
        max_new_tokens: int = 32,
        timeout_s: float = 300.0,
        api_key: str | None = None,
        options: RequestOptions | None = None,
        tls: ssl.SSLContext | None = None,
        stamps: bool = True,
    ) -> None:
        root = base_url.rstrip("/")
        if not root.endswith("/v1"):
            root += "/v1"
        self.spec = spec or f"openai:{model}@{base_url}"
        self.model = model
        self.url = f"{root}/chat/completions"
        self.origin, self.target = Origin.split(self.url)
        self.max_new_tokens = max_new_tokens
        self.timeout_s = timeout_s
        self.options = options or RequestOptions()
        key = api_key or _key_from_env(self.options.api_key_env)
        self._headers = [("Content-Type", "application/json"), ("Accept", "text/event-stream")]
        if key:
            self._headers.append(("Authorization", f"Bearer {key}"))
        self.pool = Pool(tls=tls, stamps=stamps)

    def body(self, request: Request) -> dict[str, Any]:
        """The JSON body sent for ``request``: its images in order, then the prompt."""
        content: list[dict[str, Any]] = [
            {"type": "image_url", "image_url": {
                "url": f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"}}
            for data, mime in request.images]
        content.append({"type": "text", "text": request.prompt})
        messages: list[dict[str, Any]] = [{"role": "user", "content": content}]
        if self.options.system_prompt:
            messages.insert(0, {"role": "system", "content": self.options.system_prompt})
        body = {
            "model": self.model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": max(1, min(request.max_new_tokens, self.max_new_tokens)),
            "temperature": self.options.temperature,
        }
        return {**body, **(self.options.extra_body or {})}

    def generate(self, request: Request) -> Generation:
        """Send ``request``, stream the answer and time it; see the module docstring.

        Errors:
            BackendError: ``timeout`` (no complete answer within ``timeout_s``), ``bad_input``
            (HTTP 400 or 413 about the input), ``backend_error`` (any other HTTP error, a broken
            stream, an unreachable server), each with the status and the server's message.
        """
        payload = json.dumps(self.body(request)).encode()
        deadline = time.monotonic() + self.timeout_s
        try:
            response = self.pool.request(self.origin, "POST", self.target, self._headers,
                                         payload, deadline)
            try:
                if response.status >= 400:
                    raise _http_error(response.status, response.read())
                if "text/event-stream" not in response.headers.get("content-type", ""):
                    return _whole(json.loads(response.read()), response)
                return _Stream(response.sent).consume(response)
            finally:
                response.close()
        except TimeoutError as exc:
            raise BackendError("timeout", f"no answer within {self.timeout_s} s") from exc
        except ConnectionRefusedError as exc:  # one text for every item: the run's reason
            raise BackendError("backend_error", f"connection refused ({self.url})") from exc
        except (OSError, ssl.SSLError, HTTPError) as exc:
            raise BackendError("backend_error", f"{type(exc).__name__}: {exc}") from exc
        except ValueError as exc:  # malformed JSON
            raise BackendError("backend_error", f"unreadable response: {exc}") from exc

    def close(self) -> None:
        """Close the pooled connections."""
        self.pool.close()


def _key_from_env(name: str | None) -> str | None:
    if name is None:
        return os.environ.get(DEFAULT_KEY_ENV) or None
    value = os.environ.get(name)
    if not value:
        raise ValueError(f"--api-key-env {name}: the environment variable {name} is not set")
    return value


class _Stream:
    """Folds the SSE lines of one streamed completion into a `Generation`."""

    def __init__(self, sent: Stamp) -> None:
        self.sent = sent
        self.parts: list[str] = []
        self.content: list[Stamp] = []
        self.usage: dict[str, Any] | None = None

    def consume(self, response: Response) -> Generation:
        end: Stamp | None = None
        for line, stamp in _lines(response.pieces()):
            end = stamp
            if not line.startswith(b"data:"):
                continue  # blank separators, comments, event: and id: fields
            data = line[5:].strip()
            if data == b"[DONE]":
                # Read the body to its end so the connection can serve the next request.
                response.deadline = min(response.deadline, time.monotonic() + DRAIN_S)
                try:
                    for _ in response.pieces():
                        pass
                except (TimeoutError, OSError, HTTPError):
                    pass  # not reusable: `close` drops it
                break
            self._chunk(json.loads(data), stamp)
        if end is None:
            raise BackendError("backend_error", "the server ended the stream without any data")
        return self._generation(end)

    def _chunk(self, chunk: Any, stamp: Stamp) -> None:
        if not isinstance(chunk, dict):
            raise BackendError("backend_error", f"stream chunk is not an object: {chunk!r}")
        if chunk.get("error"):
            raise BackendError("backend_error", f"server error in stream: {chunk['error']}")
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        carried = False
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            text = delta.get("content") or ""
            reasoning = delta.get("reasoning_content") or delta.get("reasoning") or ""
            if text or reasoning:
                carried = True
                self.parts.append(text)
        if carried:
            self.content.append(stamp)

    def _generation(self, end: Stamp) -> Generation:
        received = [*self.content, end]
        source = _source(self.sent, received)
        start = self.sent.best()
        times = [s.best() for s in self.content]
        e2e = (end.best() - start) / 1e6
        ttft = (times[0] - start) / 1e6 if times else None
        output, prompt = _usage_counts(self.usage)
        tokens_source: Any = "usage"
        if output is None:
            output, tokens_source = len(self.content), "chunks"
        user_clock = None
        if source != "user":
            user_ttft = (self.content[0].user - self.sent.user) / 1e6 if self.content else None
            user_clock = (user_ttft, (end.user - self.sent.user) / 1e6)
        return Generation(
            text="".join(self.parts).strip(),
            ttft_ms=ttft,
            tpot_ms=tpot_ms(e2e, ttft, output),
            e2e_ms=e2e,
            input_tokens=prompt,
            output_tokens=output,
            tokens_source=tokens_source,
            itl_ms=gaps_ms(times),
            vram_note=REMOTE_NOTE,
            request_start=start / 1e9,
            timing_source=source,
            user_clock=user_clock,
        )


def _lines(pieces: Iterable[tuple[bytes, Stamp]]) -> Iterable[tuple[bytes, Stamp]]:
    """The body's lines (without their end), each with the stamp of the data that ended it."""
    pending = b""
    for data, stamp in pieces:
        pending += data
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line.rstrip(b"\r"), stamp
    if pending:
        yield pending.rstrip(b"\r"), Stamp(None, time.time_ns())


def _source(sent: Stamp, received: list[Stamp]) -> TimingSource:
    rx = clock_name(received)
    if rx == "kernel":
        return "kernel" if sent.kernel is not None else "kernel-rx"
    return "user" if rx == "user" and sent.kernel is None else "mixed"


def _usage_counts(usage: dict[str, Any] | None) -> tuple[int | None, int | None]:
    if usage is None:
        return None, None
    output, prompt = usage.get("completion_tokens"), usage.get("prompt_tokens")
    return (
        output if isinstance(output, int) else None,
        prompt if isinstance(prompt, int) else None,
    )


def _whole(payload: Any, response: Response) -> Generation:
    """A server that ignored ``stream``: one JSON answer, so TTFT is the whole latency."""
    try:
        text = str(payload["choices"][0]["message"].get("content") or "")
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise BackendError("backend_error", f"unexpected response: {payload!r:.300}") from exc
    end = response.last
    e2e = (end.best() - response.sent.best()) / 1e6
    output, prompt = _usage_counts(payload.get("usage"))
    return Generation(
        text=text.strip(),
        ttft_ms=e2e,
        tpot_ms=None,
        e2e_ms=e2e,
        input_tokens=prompt,
        output_tokens=output,
        tokens_source="usage" if output is not None else "chunks",
        vram_note=REMOTE_NOTE,
        request_start=response.sent.best() / 1e9,
        timing_source=_source(response.sent, [end]),
    )


def _http_error(status: int, raw: bytes) -> BackendError:
    message = raw.decode("utf-8", "replace").strip()
    try:
        payload = json.loads(raw)
        error = payload.get("error", payload) if isinstance(payload, dict) else payload
        if isinstance(error, dict):
            message = str(error.get("message") or error.get("detail") or error)
        elif isinstance(payload, dict) and "detail" in payload:
            message = str(payload["detail"])
        else:
            message = str(error)
    except ValueError:
        pass
    reason: FailReason = "backend_error"
    if status in (400, 413) and INPUT_COMPLAINT.search(message):
        reason = "bad_input"
    return BackendError(reason, f"HTTP {status}: {message[:500]}")
