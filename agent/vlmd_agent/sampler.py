"""The watchdog's sampler: one wire sample of GPU + RAM, a ring buffer, and the 20 Hz loop.

A wire sample (the ``watchdog.sample`` body's ``samples`` entries)::

    {"t": 1796210000.123,                  # time.time() when taken
     "gpus": [<device dict, see gpu.py>],  # may be empty
     "ram": {<see memory.RamReader.sample>},
     "gpu_source": "nvml" | "nvidia-smi" | "none",
     "gpu_error": "..."}                   # only when GPU data is missing or degraded
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import trio

from .gpu import GpuSource
from .memory import RamReader

Sample = dict[str, Any]


class Sampler:
    """Takes wire samples and keeps the last `keep_s` seconds of them; owns `gpus` once given."""

    def __init__(self, gpus: GpuSource, interval_s: float = 0.05, keep_s: float = 30.0, *,
                 ram: RamReader | None = None) -> None:
        """`gpus` from `open_gpus`; `ram` defaults to a reader of this process's own cgroup."""
        if interval_s <= 0 or keep_s <= 0:
            raise ValueError("interval_s and keep_s must be positive")
        self.gpus = gpus
        self.ram = ram if ram is not None else RamReader()
        self.interval_s = interval_s
        self.keep_s = keep_s
        self._ring: deque[Sample] = deque(maxlen=math.ceil(keep_s / interval_s) + 1)

    def sample(self, pid: int | None) -> Sample:
        """A wire sample of the process tree rooted at `pid` (the wrapper), kept in the ring."""
        ram = self.ram.sample(pid)
        g = self.gpus.sample(self.ram.tree_pids())
        s: Sample = {"t": time.time(), "gpus": g.gpus, "ram": ram, "gpu_source": g.source}
        if g.error is not None:
            s["gpu_error"] = g.error
        self._ring.append(s)
        return s

    def recent(self, seconds: float) -> list[Sample]:
        """The kept samples taken in the last `seconds`, oldest first."""
        since = time.time() - seconds
        return [s for s in self._ring if s["t"] >= since]

    def summary(self) -> dict[str, Any]:
        """The latest sample in brief, for heartbeats: time, rss, and GPU memory per device."""
        if not self._ring:
            return {"t": None, "rss_mb": None, "gpus": []}
        s = self._ring[-1]
        gpus = [{"index": d["index"], "lost": True} if d.get("lost") else
                {k: d[k] for k in ("index", "mem_used_mb", "mem_total_mb", "proc_mem_mb")}
                for d in s["gpus"]]
        return {"t": s["t"], "rss_mb": s["ram"]["rss_mb"], "gpus": gpus}

    def close(self) -> None:
        """Close the GPU source and the RAM reader: the sampler owns both."""
        self.gpus.close()
        self.ram.close()

    def cpu_seconds(self) -> float:
        """CPU time (user + system) this process has used so far, all threads."""
        return time.process_time()


async def run_sampler(sampler: Sampler, pid_fn: Callable[[], int | None],
                      on_batch: Callable[[list[Sample]], None], *, batch_s: float = 1.0) -> None:
    """Sample every ``sampler.interval_s`` and hand the samples to `on_batch` every `batch_s`.

    Ticks are on a fixed grid (start + k * interval), so the rate does not drift; ticks missed
    while the process was stalled are skipped, not caught up in a burst. `pid_fn` names the
    process tree to measure at each tick; `on_batch` is synchronous and must not block (hand the
    list to a memory channel). Runs until cancelled; the last partial batch is still delivered.
    """
    interval = sampler.interval_s
    start = trio.current_time()
    k, due = 0, start + batch_s
    batch: list[Sample] = []
    try:
        while True:
            k = max(k + 1, math.ceil((trio.current_time() - start) / interval))
            await trio.sleep_until(start + k * interval)
            # Sampled inline, not in a worker thread: NVML queries and /proc reads take tens of
            # microseconds, about what a thread hop costs. A wedged driver that stalls NVML
            # also stops the heartbeats, which vlmd reports as a lost agent.
            batch.append(sampler.sample(pid_fn()))
            if trio.current_time() >= due:
                due += batch_s * max(1, math.ceil((trio.current_time() - due) / batch_s))
                on_batch(batch)
                batch = []
    finally:
        if batch:
            on_batch(batch)
