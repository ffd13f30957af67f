"""What the wrapper is doing before (and around) its items, told to vlmd as ``run.phase`` events.

A model can take a minute to load and a demo model to build; without a word the progress bar
would sit at ``0/?`` all that time. The phases, in order: ``resolving`` (reading the dataset,
asking vlmd which items are done), ``preflight`` (asking an ``openai:`` server for its models),
``building`` (a demo model, with its training steps), ``loading`` (the model, with its size),
``warmup`` (the first items: a server may load the model on its first request) and
``evaluating`` (with the rate once warm).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from vlmd_agent import wire

WARMUP_ITEMS = 5  # items after the first that measure the warm rate
STEP_EVERY_S = 1.0  # a long phase's progress is told at most this often


class Phases:
    """Sends the ``run.phase`` events of one wrapper through `put` (its spool)."""

    def __init__(self, put: Callable[[dict[str, Any]], None], run: str, shard: str | None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.put, self.run, self.clock = put, run, clock
        self.shard = {"shard": shard} if shard else {}
        self.stepped_at: float | None = None
        self.items = 0
        self.first_at: float | None = None

    def say(self, phase: str, message: str, **extra: Any) -> None:
        """One ``run.phase`` event (`extra`: ``step``, ``steps``, ``size_mb``, ...)."""
        body = {"phase": phase, "message": message[:1024], **self.shard,
                **{k: v for k, v in extra.items() if v is not None}}
        self.put(wire.envelope(self.run, "run.phase", body))

    def step(self, phase: str, message: str, step: int, steps: int) -> None:
        """Progress within a long phase: told at the first and last step, and otherwise at
        most every `STEP_EVERY_S`."""
        now = self.clock()
        if (step in (1, steps) or self.stepped_at is None
                or now - self.stepped_at >= STEP_EVERY_S):
            self.stepped_at = now
            self.say(phase, message, step=step, steps=steps)

    def item_done(self) -> None:
        """One item evaluated: after `WARMUP_ITEMS` more than the first, the warm rate."""
        self.items += 1
        now = self.clock()
        if self.items == 1:
            self.first_at = now
        elif self.items == WARMUP_ITEMS + 1 and self.first_at is not None and now > self.first_at:
            rate = WARMUP_ITEMS / (now - self.first_at)
            self.say("evaluating", f"{rate:.2f} items/s once warm", items_per_s=round(rate, 3))
