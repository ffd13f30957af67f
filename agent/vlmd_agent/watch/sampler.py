"""The watchdog's sampler: one wire sample of GPU + RAM, a ring buffer, and the 20 Hz loop.

The loop runs in a plain thread: a trio wakeup costs about three times a thread's, more than
the sample itself (docs/BENCHMARKS.md). Trio only collects the samples, once a batch.

A wire sample (the ``watchdog.sample`` body's ``samples`` entries)::

    {"t": 1796210000.123,                  # time.time() when taken
     "gpus": [<device dict, see gpu.py>],  # may be empty
     "ram": {<see memory.RamReader.sample>},
     "gpu_source": "nvml" | "nvidia-smi" | "none",
     "gpu_error": "..."}                   # only when GPU data is missing or degraded
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import trio

from .gpu import GpuSource
from .memory import RamReader

Sample = dict[str, Any]
# How long stopping waits for the sampling thread; it only overruns while NVML is wedged, and
# then it is left behind (a daemon thread) rather than holding up the watchdog's exit.
STOP_WAIT_S = 1.0


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
        # The sampling thread and trio both sample and read the ring: one at a time. A wedged
        # NVML call holds it, so heartbeats stop too and vlmd reports the agent lost.
        self._lock = threading.Lock()

    def sample(self, pid: int | None) -> Sample:
        """A wire sample of the process tree rooted at `pid` (the wrapper), kept in the ring."""
        with self._lock:
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
        with self._lock:
            return [s for s in self._ring if s["t"] >= since]

    def window(self, start: float, end: float) -> tuple[list[Sample], float | None]:
        """The kept samples that bracket [start, end] (the last one before it, those in it,
        the first one after it), oldest first, and the time of the latest sample."""
        with self._lock:
            if not self._ring:
                return [], None
            ring = list(self._ring)  # ~600 references: a copy is cheaper than holding the lock
        latest = ring[-1]["t"]
        first = next((i for i in range(len(ring) - 1, -1, -1) if ring[i]["t"] < start), 0)
        last = next((i for i in range(first, len(ring)) if ring[i]["t"] > end), len(ring) - 1)
        return ring[first:last + 1], latest

    def summary(self) -> dict[str, Any]:
        """The latest sample in brief, for heartbeats: time, rss, and GPU memory per device."""
        with self._lock:
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


def tick_every(interval_s: float, tick: Callable[[], object], wait: Callable[[float], bool],
               clock: Callable[[], float] = time.monotonic) -> None:
    """Call `tick` every `interval_s` until `wait(seconds)` returns True; blocks (a thread's loop).

    `wait` waits for a stop (``threading.Event.wait``) and says whether it came. Ticks are on a
    fixed grid of `clock` (start + k * interval), so the rate does not drift; ticks missed while
    the process was stalled are skipped, not caught up in a burst.
    """
    start, k = clock(), 0
    while True:
        k = max(k + 1, math.ceil((clock() - start) / interval_s))
        if wait(max(0.0, start + k * interval_s - clock())):
            return
        tick()


async def run_sampler(sampler: Sampler, pid_fn: Callable[[], int | None],
                      on_batch: Callable[[list[Sample]], None], *, batch_s: float = 1.0) -> None:
    """Sample every ``sampler.interval_s`` in a thread; give `on_batch` the samples every `batch_s`.

    `pid_fn` names the process tree to measure and is called in the sampling thread, so it must
    only read a value (never poll a `trio.Process`). `on_batch` runs in trio, is synchronous and
    must not block (hand the list to a memory channel); it gets no empty batches. Runs until
    cancelled, then stops the thread within one sample and delivers the last partial batch. An
    exception in the thread stops sampling and is raised here at the next batch.
    """
    taken: deque[Sample] = deque()  # appended by the thread, drained by trio
    failed: list[BaseException] = []
    stop = threading.Event()

    def loop() -> None:
        try:
            tick_every(sampler.interval_s, lambda: taken.append(sampler.sample(pid_fn())),
                       stop.wait)
        except BaseException as e:  # handed to trio, which raises it
            failed.append(e)

    def deliver() -> None:
        if taken:
            on_batch([taken.popleft() for _ in range(len(taken))])

    thread = threading.Thread(target=loop, name="vlmd sampler", daemon=True)
    thread.start()
    start = trio.current_time()
    k = 0
    try:
        while not failed:
            k = max(k + 1, math.ceil((trio.current_time() - start) / batch_s))
            await trio.sleep_until(start + k * batch_s)
            deliver()
        raise failed[0]
    finally:
        stop.set()
        thread.join(STOP_WAIT_S)
        deliver()
