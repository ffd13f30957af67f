"""The serving engine's own view of its memory: its Prometheus ``/metrics``, read beside NVML.

Engines that preallocate GPU memory (vLLM, SGLang) show no per-request change in NVML; what a
request really takes is KV cache, which they report. A scrape reads, from whichever engine
answers (a family's values summed over its label sets, the usage's maximum):

=============  ===================================================  =====================
engine         KV-cache usage (fraction 0..1)                       running / waiting
=============  ===================================================  =====================
vLLM           ``vllm:kv_cache_usage_perc`` (V1),                   ``vllm:num_requests_
               ``vllm:gpu_cache_usage_perc`` (V0)                   running`` / ``_waiting``
SGLang         ``sglang:token_usage``                               ``sglang:num_running_reqs``
                                                                    / ``num_queue_reqs``
=============  ===================================================  =====================

A scrape is ``{"t", "engine", "kv_cache_usage", "running", "waiting"}`` (a value the engine
does not give is null), or ``{"t", "error"}``. `ServerMetrics` scrapes in a thread at its own
rate and keeps the last minute; the watchdog sends them in its ``watchdog.sample`` events
(``server``) and gives each item the peak over its request (`vlmd_agent.watch.itemcost`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from typing import Any

import httpx

log = logging.getLogger("vlmd_agent.watch.server")

Scrape = dict[str, Any]
KEEP_S = 60.0
TIMEOUT_S = 2.0
FAMILIES: dict[str, dict[str, tuple[str, ...]]] = {
    "vllm": {"kv_cache_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
             "running": ("vllm:num_requests_running",),
             "waiting": ("vllm:num_requests_waiting",)},
    "sglang": {"kv_cache_usage": ("sglang:token_usage",),
               "running": ("sglang:num_running_reqs",),
               "waiting": ("sglang:num_queue_reqs",)},
}
_WANTED = {name for engine in FAMILIES.values() for names in engine.values() for name in names}


def metrics_url_of(model: str) -> str | None:
    """Where an ``openai:NAME@BASE_URL`` model's engine would serve ``/metrics`` (the base URL
    without ``/v1``); None for other models."""
    scheme, _, rest = model.partition(":")
    at = max(rest.rfind("@http://"), rest.rfind("@https://"))
    if scheme != "openai" or at <= 0:
        return None
    root = rest[at + 1:].rstrip("/")
    return (root[:-3] if root.endswith("/v1") else root) + "/metrics"


def parse(text: str) -> dict[str, list[float]]:
    """The samples of the families vlmd reads, by name, one value per label set."""
    found: dict[str, list[float]] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        end = line.find("{")
        if end < 0:
            end = line.find(" ")
        name = line[:end]
        if name not in _WANTED:
            continue
        # the value follows the labels (which may hold spaces inside quotes); a timestamp may
        # follow it
        rest = line[line.rfind("}") + 1:] if "{" in line[:end + 1] else line[end:]
        try:
            value = float(rest.split()[0])
        except (ValueError, IndexError):
            continue
        if math.isfinite(value):
            found.setdefault(name, []).append(value)
    return found


def scrape_of(text: str, t: float) -> Scrape | None:
    """A scrape from an exposition, or None when no engine vlmd knows is in it."""
    values = parse(text)
    for engine, families in FAMILIES.items():
        got: dict[str, float | None] = {}
        for field, names in families.items():
            name = next((n for n in names if n in values), None)
            if name is None:
                got[field] = None
            elif field == "kv_cache_usage":
                got[field] = max(values[name])
            else:
                got[field] = sum(values[name])
        if any(v is not None for v in got.values()):
            return {"t": t, "engine": engine, **got}
    return None


class ServerMetrics:
    """Scrapes `url` every `interval_s` in a thread; `required` False (found by guessing the
    URL): the first scrape that finds no engine stops it, with one log line."""

    def __init__(self, url: str, interval_s: float = 0.25, *, required: bool = True) -> None:
        self.url, self.interval_s, self.required = url, interval_s, required
        self._ring: deque[Scrape] = deque(maxlen=max(8, math.ceil(KEEP_S / interval_s)))
        self._lock = threading.Lock()
        self._new: list[Scrape] = []
        self._stop = threading.Event()
        self.active = True
        self._thread = threading.Thread(target=self._loop, name="vlmd server metrics",
                                        daemon=True)

    def start(self) -> ServerMetrics:
        """Start scraping; returns self."""
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the thread."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(TIMEOUT_S + 1.0)

    def take_new(self) -> list[Scrape]:
        """The scrapes taken since the last call (for the next ``watchdog.sample`` event)."""
        with self._lock:
            new, self._new = self._new, []
        return new

    def window(self, start: float, end: float) -> tuple[list[Scrape], float | None]:
        """The scrapes that saw the interval [start, end] (those taken in it, and the last one
        before it: the state in force when it began), and the time of the latest scrape."""
        with self._lock:
            kept = [s for s in self._ring if "error" not in s]
            latest = self._ring[-1]["t"] if self._ring else None
        before = [s for s in kept if s["t"] < start]
        during = [s for s in kept if start <= s["t"] <= end]
        return ([before[-1]] if before else []) + during, latest

    def _loop(self) -> None:
        warned = False
        with httpx.Client(timeout=TIMEOUT_S) as client:
            due = time.monotonic()
            while not self._stop.is_set():
                scrape = self._scrape(client)
                if "error" in scrape and not self.required:
                    log.info("no engine metrics at %s (%s): the server's KV cache is not "
                             "recorded; set --server-metrics URL if it serves them elsewhere",
                             self.url, scrape["error"])
                    self.active = False
                    return
                self.required = True  # found once: from now on, report what fails
                if "error" in scrape and not warned:
                    log.warning("cannot read %s: %s", self.url, scrape["error"])
                warned = "error" in scrape
                with self._lock:
                    self._ring.append(scrape)
                    self._new.append(scrape)
                due = max(due + self.interval_s, time.monotonic())
                self._stop.wait(due - time.monotonic())

    def _scrape(self, client: httpx.Client) -> Scrape:
        t = time.time()
        try:
            response = client.get(self.url)
        except httpx.HTTPError as e:
            return {"t": t, "error": f"{type(e).__name__}: {e}"[:300]}
        if response.status_code != 200:
            return {"t": t, "error": f"HTTP {response.status_code}"}
        scrape = scrape_of(response.text, t)
        if scrape is None:
            return {"t": t, "error": "no vLLM or SGLang metrics in the answer"}
        return scrape
