"""The watchdog's judgements, kept apart from its processes so they can be tested on their own.

- `HangClock`: when a silent wrapper counts as hung (once per episode); `watch_hangs` is the
  clock-driven task around it, exact under trio's ``autojump_clock``.
- `HighWater`: a threshold that fires once per upward crossing and re-arms below it;
  `vram_fraction` / `ram_fraction` read the fractions from a wire sample.
- `classify_exit`: what a wrapper's exit status means (finished, bad input, died, OOM kill).
- `ask_stacks`: the evidence for a hang report, the wrapper's Python stacks (SIGUSR1).
"""

from __future__ import annotations

import contextlib
import math
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psutil
import trio

# the wrapper's codes (vlmd_agent.evaluate.wrapper); it has sent run.failed itself
EXIT_BAD_INPUT = 3
EXIT_BACKEND = 4
# The wrapper's RSS at this fraction of the cgroup limit counts as "memory at its limit" (not
# the cgroup's usage, which includes reclaimable page cache; not 100%: the rest of the container,
# this watchdog included, shares the limit) when seen in the samples of the last second.
AT_LIMIT = 0.9
AT_LIMIT_WINDOW_S = 1.0
# States in which the wrapper may legitimately stay silent longer: starting, loading a model
# (maybe downloading it), and finishing up (its outbox flush waits on vlmd).
SLOW_STATES = frozenset({"starting", "loading", "flushing", "done", "stopped", "failed"})
STACKS_WAIT_S = 1.0  # how long a hung wrapper gets to write its stacks after SIGUSR1
UNANSWERING = (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP, psutil.STATUS_ZOMBIE,
               psutil.STATUS_DEAD)


class HangClock:
    """Decides when the wrapper is hung: alive, but silent for `hang_after_s`.

    Silence is counted from the last status line (an item finished, or any milestone); in the
    `SLOW_STATES` (starting, loading, finishing up) it may stay silent for `loading_s` instead.
    A hang is reported once per episode: `check` returns its silence once, then nothing until
    `reset` starts a new episode. Times are on one monotonic clock (trio's).
    """

    def __init__(self, hang_after_s: float, loading_s: float | None = None) -> None:
        if hang_after_s <= 0:
            raise ValueError("hang_after_s must be positive")
        self.hang_after_s = hang_after_s
        self.loading_s = max(hang_after_s, loading_s if loading_s is not None else hang_after_s)
        self.changed = trio.Event()
        self._last: float | None = None  # None: no wrapper to watch
        self._state = ""
        self._reported = False

    def reset(self, now: float, state: str) -> None:
        """The wrapper spoke (or just started) at `now` and is in `state`: a new episode."""
        self._last, self._state, self._reported = now, state, False
        self._changed()

    def stop(self) -> None:
        """No wrapper runs: nothing is due until the next `reset`."""
        self._last = None
        self._changed()

    @property
    def hung(self) -> bool:
        """True between a reported hang and the next `reset` or `stop`."""
        return self._reported and self._last is not None

    def allowance(self) -> float:
        """How long the wrapper may be silent in its current state."""
        return self.loading_s if self._state in SLOW_STATES else self.hang_after_s

    def deadline(self) -> float:
        """When the current silence becomes a hang (inf when nothing is due)."""
        if self._last is None or self._reported:
            return math.inf
        return self._last + self.allowance()

    def check(self, now: float) -> float | None:
        """The silence in seconds if a hang episode starts at `now`, else None."""
        if now < self.deadline() or self._last is None:
            return None
        self._reported = True
        return now - self._last

    def _changed(self) -> None:
        self.changed.set()
        self.changed = trio.Event()


async def watch_hangs(clock: HangClock, on_hang: Callable[[float], Awaitable[None]]) -> None:
    """Call ``await on_hang(silence_s)`` at each new hang episode of `clock`; runs until cancelled.

    Sleeps until the clock's deadline, or until the clock changes (a status line moved it).
    """
    while True:
        changed = clock.changed
        with trio.move_on_at(clock.deadline()):
            await changed.wait()
            continue
        silence = clock.check(trio.current_time())
        if silence is not None:
            await on_hang(silence)


class HighWater:
    """Fires once when a fraction reaches `threshold`, and again only after it fell back under."""

    def __init__(self, threshold: float) -> None:
        if not 0 < threshold <= 1:
            raise ValueError("a high-water fraction must be in (0, 1]")
        self.threshold = threshold
        self.above = False

    def update(self, fraction: float | None) -> bool:
        """Feed the latest fraction (None: unknown, changes nothing); True on a crossing up."""
        if fraction is None:
            return False
        was, self.above = self.above, fraction >= self.threshold
        return self.above and not was


def vram_fraction(sample: dict[str, Any]) -> tuple[float, int] | None:
    """The fullest GPU in a wire sample as (used/total, index); None without usable GPUs."""
    best: tuple[float, int] | None = None
    for gpu in sample.get("gpus", []):
        used, total = gpu.get("mem_used_mb"), gpu.get("mem_total_mb")
        if gpu.get("lost") or not used or not total:
            continue
        if best is None or used / total > best[0]:
            best = (used / total, int(gpu["index"]))
    return best


def ram_fraction(sample: dict[str, Any]) -> tuple[float, str] | None:
    """RAM use as (fraction, "cgroup" or "host"): the cgroup's usage/limit when it has a limit,
    else host used/total; None when neither is known."""
    ram = sample.get("ram", {})
    usage, limit = ram.get("cgroup_usage_mb"), ram.get("cgroup_limit_mb")
    if usage is not None and limit:
        return usage / limit, "cgroup"
    used, total = ram.get("host_used_mb"), ram.get("host_total_mb")
    if used is not None and total:
        return used / total, "host"
    return None


@dataclass(frozen=True)
class Exit:
    """What a wrapper's exit means.

    `outcome` is ``finished`` (0), ``refused`` (bad input or a model that cannot load: the
    wrapper sent ``run.failed`` itself, a restart would fail the same way), ``died`` or ``oom``;
    `alert` the alert kind to send (None for the first two), `message` a sentence for people.
    """

    outcome: str
    alert: str | None
    message: str
    signal: int | None = None
    exit_code: int | None = None

    @property
    def abnormal(self) -> bool:
        """True when a restart may help (the wrapper died or was killed)."""
        return self.outcome in ("died", "oom")


def signal_name(number: int) -> str:
    """``SIGKILL`` for 9; ``signal 77`` for numbers without a name."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def classify_exit(returncode: int, *, oom_kills_before: int | None,
                  samples_after: Sequence[dict[str, Any]], ran_s: float) -> Exit:
    """Classify a wrapper exit.

    `returncode` as ``Popen.returncode`` (negative: killed by that signal); `oom_kills_before`
    the cgroup's ``oom_kill`` count when the wrapper started; `samples_after` the latest samples,
    the last one taken after the exit; `ran_s` how long the wrapper ran.
    """
    ran = f"after {ran_s:.1f} s"
    if returncode == 0:
        return Exit("finished", None, f"wrapper exited normally {ran}", exit_code=0)
    if returncode in (EXIT_BAD_INPUT, EXIT_BACKEND):
        what = "bad input" if returncode == EXIT_BAD_INPUT else "the model could not be loaded"
        return Exit("refused", None, f"wrapper gave up {ran}: {what} (exit code {returncode})",
                    exit_code=returncode)
    if returncode > 0:
        return Exit("died", "alert.wrapper_died",
                    f"wrapper exited with code {returncode} {ran}", exit_code=returncode)
    sig = -returncode
    died = f"wrapper killed by {signal_name(sig)} {ran}"
    if sig == signal.SIGKILL:
        why = _oom_evidence(oom_kills_before, samples_after)
        if why:
            return Exit("oom", "alert.oom", f"{died}: the OOM killer ({why})", signal=sig)
    return Exit("died", "alert.wrapper_died", died, signal=sig)


def _oom_evidence(before: int | None, samples: Sequence[dict[str, Any]]) -> str | None:
    """Why a SIGKILL looks like the OOM killer's, or None."""
    if samples:
        now = samples[-1]["ram"].get("oom_kills")
        if before is not None and now is not None and now > before:
            return f"cgroup oom_kill count rose from {before} to {now}"
        last_t = samples[-1]["t"]
        for s in samples:
            rss, limit = s["ram"].get("rss_mb"), s["ram"].get("cgroup_limit_mb")
            if (s["t"] >= last_t - AT_LIMIT_WINDOW_S and rss is not None and limit
                    and rss >= AT_LIMIT * limit):
                return f"its RSS was {rss:.0f} MB of the cgroup's {limit:.0f} MB limit"
    return None


async def ask_stacks(proc: trio.Process, path: Path) -> tuple[str | None, str]:
    """Ask the wrapper for its Python stacks (SIGUSR1; it appends them to `path`).

    Returns (the stacks text or None, a phrase saying how it went).
    """
    try:
        state = psutil.Process(proc.pid).status()
    except psutil.Error:
        state = "unknown"
    if state in UNANSWERING:
        why = "SIGSTOP or a debugger?" if "stop" in state else "it is exiting"
        return None, f"it is {state} ({why}) and cannot answer for its stacks"
    before = _size(path)
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGUSR1)
    seen = before
    with trio.move_on_after(STACKS_WAIT_S):
        while True:
            await trio.sleep(0.02)
            size = _size(path)
            if size > before and size == seen:  # written, and no longer growing
                break
            seen = size
    with contextlib.suppress(OSError), path.open("rb") as f:
        f.seek(before)
        text = f.read().decode(errors="replace").strip()
        if text:
            return text, "its Python stacks are attached"
    return None, f"it did not answer SIGUSR1 within {STACKS_WAIT_S:g} s (process state {state})"


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def status_line(line: bytes) -> dict[str, Any]:
    """One status line from the wrapper as a dict with a string ``state``; ValueError if not."""
    status = orjson.loads(line)  # a ValueError when it is not JSON
    if not isinstance(status, dict) or not isinstance(status.get("state"), str):
        raise ValueError("expected an object with a string 'state'")
    return status
