"""What every model backend takes, returns and raises, and the metric arithmetic they share.

Metric definitions (DESIGN.md, "Metric definitions"):

- TTFT: request sent -> the first chunk (or token) that carries generated content; a role-only
  or empty chunk does not count, reasoning content does.
- TPOT: ``(e2e - TTFT) / (output_tokens - 1)`` as vLLM, SGLang, MLPerf and AIPerf define it;
  ``None`` when ``output_tokens <= 1``.
- ITL: the gaps between consecutive content chunks after the first, kept for percentiles.

In-process backends time with `time.perf_counter_ns`; the ``openai:`` backend with the
kernel's packet timestamps where it can (`timing_source`, see `.netclock`). Durations are in
milliseconds; ``request_start`` is when the request was sent, in epoch seconds.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Literal, Protocol

FailReason = Literal["oom", "timeout", "backend_error", "bad_input"]
TokensSource = Literal["usage", "tokenizer", "chunks"]
# "-shared": measured while other requests of the agent were in flight, so the figure is theirs
# as much as this item's.
VramSource = Literal["torch.cuda", "nvml", "torch.cuda-shared", "nvml-shared"]
TimingSource = Literal["kernel", "kernel-rx", "user", "mixed"]
NS_PER_MS = 1_000_000.0


@dataclass(frozen=True)
class Request:
    """One generation request: a prompt, the image it is about (``extra_images``: more of them,
    each (bytes, MIME type), as MMMU's items have), and the token budget."""

    prompt: str
    image: bytes
    image_mime: str = "image/png"
    max_new_tokens: int = 32
    extra_images: tuple[tuple[bytes, str], ...] = ()

    @property
    def images(self) -> tuple[tuple[bytes, str], ...]:
        """Every image as (bytes, MIME type), in the order the prompt refers to them."""
        return ((self.image, self.image_mime), *self.extra_images)


@dataclass(frozen=True)
class Generation:
    """One answer and what it cost.

    ``tokens_source`` says where ``output_tokens`` came from: the server's ``usage``, the
    model's tokenizer, or a count of streamed content chunks. ``vram_source`` says how the VRAM
    delta was measured (``None`` when it was not; ``vram_note`` then says why).
    ``timing_source`` names the clock of the timings: ``kernel`` (packet timestamps at both
    ends), ``kernel-rx`` (received data stamped by the kernel, the send time read by the
    process), ``user`` (read by the process), ``mixed`` (some received data without a kernel
    stamp). ``user_clock`` is (TTFT, e2e) in ms by the process's own clock where another was
    used: for comparing clocks, not sent in the event.
    """

    text: str
    ttft_ms: float | None
    tpot_ms: float | None
    e2e_ms: float
    input_tokens: int | None
    output_tokens: int | None
    tokens_source: TokensSource
    itl_ms: tuple[float, ...] = ()
    vram_before_mb: float | None = None
    vram_peak_delta_mb: float | None = None
    vram_source: VramSource | None = None
    vram_note: str | None = None
    request_start: float | None = None
    timing_source: TimingSource = "user"
    user_clock: tuple[float | None, float] | None = None

    def metrics(self) -> dict[str, Any]:
        """The metric fields of an ``item.completed`` body (without item, answer and score)."""
        return {
            "ttft_ms": self.ttft_ms,
            "tpot_ms": self.tpot_ms,
            "e2e_ms": self.e2e_ms,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "vram_before_mb": self.vram_before_mb,
            "vram_peak_delta_mb": self.vram_peak_delta_mb,
            "tokens_source": self.tokens_source,
            "vram_source": self.vram_source,
            "vram_note": self.vram_note,
            "itl_ms": list(self.itl_ms),
            "request_start": self.request_start,
            "timing_source": self.timing_source,
        }


@dataclass(frozen=True)
class RequestOptions:
    """What a serving backend adds to every request (``openai:`` only): the sampling
    temperature (0: greedy), a system prompt, JSON fields merged into the request body last
    (they win), and the environment variable that holds the API key (its value is read by the
    backend and never written anywhere)."""

    temperature: float = 0.0
    system_prompt: str | None = None
    extra_body: dict[str, Any] | None = None
    api_key_env: str | None = None

    def is_default(self) -> bool:
        """True when nothing is set (what non-serving backends require)."""
        return self == RequestOptions()


class BackendError(Exception):
    """A request failed; ``reason`` is the ``item.failed`` reason, ``message`` says why."""

    def __init__(self, reason: FailReason, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason: FailReason = reason
        self.message = message


class Backend(Protocol):
    """A loaded model. ``generate`` is synchronous: the wrapper process calls it per item."""

    spec: str

    def generate(self, request: Request) -> Generation:
        """Answer one request, measuring its timings; raises `BackendError` on failure."""
        ...

    def close(self) -> None:
        """Release the model, connections and memory; the backend is unusable afterwards."""
        ...


def now_ns() -> int:
    """The monotonic clock every backend times with."""
    return time.perf_counter_ns()


def ms(start_ns: int, end_ns: int) -> float:
    """Milliseconds between two `now_ns` readings."""
    return (end_ns - start_ns) / NS_PER_MS


def tpot_ms(e2e_ms: float, ttft_ms: float | None, output_tokens: int | None) -> float | None:
    """``(e2e - TTFT) / (output_tokens - 1)``; ``None`` when undefined (<= 1 token, no TTFT)."""
    if ttft_ms is None or output_tokens is None or output_tokens <= 1:
        return None
    return (e2e_ms - ttft_ms) / (output_tokens - 1)


def gaps_ms(times_ns: Sequence[int]) -> tuple[float, ...]:
    """Inter-chunk gaps in milliseconds between consecutive content-chunk arrival times."""
    return tuple([(b - a) / NS_PER_MS for a, b in pairwise(times_ns)])  # ms(a, b), inlined
