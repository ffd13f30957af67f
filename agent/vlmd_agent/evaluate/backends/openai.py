"""OpenAI-compatible backend (``openai:NAME@BASE_URL``): streamed ``/v1/chat/completions``.

Works with any server that speaks the OpenAI chat API with server-sent events: vLLM, SGLang,
Ollama, TGI, LMDeploy, llama.cpp, ``transformers serve``. The request streams
(``stream: true`` with ``stream_options.include_usage``), decodes greedily (``temperature: 0``)
and carries the image as a base64 data URL. Timings are taken on arrival of each SSE line:

- TTFT: the first chunk whose delta has non-empty ``content`` or ``reasoning_content``
  (a role-only chunk does not count);
- ITL: the gaps between that chunk and every later content chunk;
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
from typing import Any

import httpx

from .base import BackendError, FailReason, Generation, Request, gaps_ms, ms, now_ns, tpot_ms

REMOTE_NOTE = "remote server: not measured by the client"
# A 400/413 whose message is about the request's content is the item's fault, not the server's.
INPUT_COMPLAINT = re.compile(
    r"image|input|prompt|context|token|length|decode|too large|too long|content", re.IGNORECASE
)


class OpenAIBackend:
    """A model behind an OpenAI-compatible HTTP server.

    ``base_url`` may end in ``/v1`` or not. ``timeout_s`` bounds the whole request (checked
    between chunks; a silent server is cut off by the same read timeout). The bearer token is
    taken from ``api_key`` or the ``OPENAI_API_KEY`` environment variable, if either is set.
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
    ) -> None:
        root = base_url.rstrip("/")
        if not root.endswith("/v1"):
            root += "/v1"
        self.spec = spec or f"openai:{model}@{base_url}"
        self.model = model
        self.url = f"{root}/chat/completions"
        self.max_new_tokens = max_new_tokens
        self.timeout_s = timeout_s
        key = api_key or os.environ.get("OPENAI_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.Client(timeout=httpx.Timeout(timeout_s), headers=headers)

    def body(self, request: Request) -> dict[str, Any]:
        """The JSON body sent for ``request``."""
        data = base64.b64encode(request.image).decode("ascii")
        content = [
            {"type": "image_url", "image_url": {"url": f"data:{request.image_mime};base64,{data}"}},
            {"type": "text", "text": request.prompt},
        ]
        return {
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": max(1, min(request.max_new_tokens, self.max_new_tokens)),
            "temperature": 0,
        }

    def generate(self, request: Request) -> Generation:
        """Send ``request``, stream the answer and time it; see the module docstring.

        Errors:
            BackendError: ``timeout`` (no complete answer within ``timeout_s``), ``bad_input``
            (HTTP 400 or 413 about the input), ``backend_error`` (any other HTTP error, a broken
            stream, an unreachable server), each with the status and the server's message.
        """
        body = self.body(request)
        start = now_ns()
        try:
            with self._client.stream("POST", self.url, json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _http_error(response)
                if "text/event-stream" not in response.headers.get("content-type", ""):
                    payload = json.loads(response.read())
                    return _whole(payload, start, now_ns())
                return _Stream(start, self.timeout_s).consume(response)
        except httpx.TimeoutException as exc:
            raise BackendError("timeout", f"no answer within {self.timeout_s} s: {exc!r}") from exc
        except httpx.HTTPError as exc:
            raise BackendError("backend_error", f"{type(exc).__name__}: {exc}") from exc
        except ValueError as exc:  # malformed JSON
            raise BackendError("backend_error", f"unreadable response: {exc}") from exc

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()


class _Stream:
    """Folds the SSE lines of one streamed completion into a `Generation`."""

    def __init__(self, start_ns: int, timeout_s: float) -> None:
        self.start_ns = start_ns
        self.deadline_ns = start_ns + int(timeout_s * 1e9)
        self.timeout_s = timeout_s
        self.parts: list[str] = []
        self.content_ns: list[int] = []
        self.usage: dict[str, Any] | None = None

    def consume(self, response: httpx.Response) -> Generation:
        for line in response.iter_lines():
            stamp = now_ns()
            if stamp > self.deadline_ns:
                raise BackendError("timeout", f"answer still streaming after {self.timeout_s} s")
            if not line.startswith("data:"):
                continue  # blank separators, comments, event: and id: fields
            data = line[5:].strip()
            if data == "[DONE]":
                break
            self._chunk(json.loads(data), stamp)
        return self._generation(now_ns())

    def _chunk(self, chunk: Any, stamp: int) -> None:
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
            self.content_ns.append(stamp)

    def _generation(self, end_ns: int) -> Generation:
        e2e = ms(self.start_ns, end_ns)
        ttft = ms(self.start_ns, self.content_ns[0]) if self.content_ns else None
        output, prompt = _usage_counts(self.usage)
        source: Any = "usage"
        if output is None:
            output, source = len(self.content_ns), "chunks"
        return Generation(
            text="".join(self.parts).strip(),
            ttft_ms=ttft,
            tpot_ms=tpot_ms(e2e, ttft, output),
            e2e_ms=e2e,
            input_tokens=prompt,
            output_tokens=output,
            tokens_source=source,
            itl_ms=gaps_ms(self.content_ns),
            vram_note=REMOTE_NOTE,
        )


def _usage_counts(usage: dict[str, Any] | None) -> tuple[int | None, int | None]:
    if usage is None:
        return None, None
    output, prompt = usage.get("completion_tokens"), usage.get("prompt_tokens")
    return (
        output if isinstance(output, int) else None,
        prompt if isinstance(prompt, int) else None,
    )


def _whole(payload: Any, start_ns: int, end_ns: int) -> Generation:
    """A server that ignored ``stream``: one JSON answer, so TTFT is the whole latency."""
    try:
        text = str(payload["choices"][0]["message"].get("content") or "")
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise BackendError("backend_error", f"unexpected response: {payload!r:.300}") from exc
    e2e = ms(start_ns, end_ns)
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
    )


def _http_error(response: httpx.Response) -> BackendError:
    message = response.text.strip()
    try:
        payload = response.json()
        error = payload.get("error", payload) if isinstance(payload, dict) else payload
        if isinstance(error, dict):
            message = str(error.get("message") or error.get("detail") or error)
        elif isinstance(payload, dict) and "detail" in payload:
            message = str(payload["detail"])
        else:
            message = str(error)
    except ValueError:
        pass
    status = response.status_code
    reason: FailReason = "backend_error"
    if status in (400, 413) and INPUT_COMPLAINT.search(message):
        reason = "bad_input"
    return BackendError(reason, f"HTTP {status}: {message[:500]}")
