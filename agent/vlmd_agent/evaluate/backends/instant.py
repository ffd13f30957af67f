"""``demo:instant[:MS]``: a model-free backend for exercising the pipeline at speed.

It answers an option letter picked by a hash of the prompt (so about chance accuracy on
multiple choice), after ``MS`` milliseconds (default 2) split into a first token and three more,
timed with the same clock and definitions as the real backends. No torch, no weights: chaos
tests, scale benchmarks and the overhead benchmark use it where a real model would only add
noise.
"""

from __future__ import annotations

import hashlib
import time

from .base import Generation, Request, gaps_ms, ms, now_ns, tpot_ms

TOKENS = 4


class InstantBackend:
    """Answers in a fixed, configurable time; see the module docstring."""

    def __init__(self, spec: str, delay_ms: float = 2.0) -> None:
        self.spec = spec
        self.delay_s = delay_ms / 1000.0

    def generate(self, request: Request) -> Generation:
        started_at = time.time()
        start = now_ns()
        letter = "ABCD"[hashlib.blake2b(request.prompt.encode(), digest_size=1).digest()[0] % 4]
        step = self.delay_s / (TOKENS + 1)
        time.sleep(step * 2)  # the prompt: twice a token's time
        times = [now_ns()]
        for _ in range(TOKENS - 1):
            time.sleep(step)
            times.append(now_ns())
        end = times[-1]
        e2e, ttft = ms(start, end), ms(start, times[0])
        return Generation(text=letter, ttft_ms=ttft, tpot_ms=tpot_ms(e2e, ttft, TOKENS),
                          e2e_ms=e2e, input_tokens=len(request.prompt.split()),
                          output_tokens=TOKENS, tokens_source="tokenizer",
                          itl_ms=gaps_ms(times), vram_note="demo:instant: no model, no VRAM",
                          request_start=started_at)

    def close(self) -> None:
        """Nothing to release."""
