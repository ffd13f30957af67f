"""GPU samples as folds: each sample's rows (the ``samples`` view's Python twin), the serving
engine's reads (``server_samples``'s twin) and the latest sample of every GPU (what
``GET /metrics`` shows)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from vlmd.store.log import Event
from vlmd_agent import catalog
from vlmd_agent.catalog import WatchdogSample

SAMPLE_COLUMNS = (
    "seq", "part", "run", "host", "t", "gpu", "gpu_name", "gpu_lost", "mem_used_mb",
    "mem_total_mb", "proc_mem_mb", "util_gpu", "util_mem", "power_w", "temp_c", "rss_mb",
    "host_used_mb", "host_total_mb", "cgroup_usage_mb", "cgroup_limit_mb", "oom_kills",
)
_GPU_FIELDS = ("mem_used_mb", "mem_total_mb", "proc_mem_mb", "util_gpu", "util_mem", "power_w",
               "temp_c")
_RAM_FIELDS = ("rss_mb", "host_used_mb", "host_total_mb", "cgroup_usage_mb", "cgroup_limit_mb",
               "oom_kills")


class OneSample(NamedTuple):
    """One sample of a ``watchdog.sample`` body: its time, GPUs (device dicts) and RAM."""

    t: float | None
    gpus: list[Any]
    ram: dict[str, Any]


def samples_of(body: catalog.Body) -> list[OneSample]:
    """The samples in a ``watchdog.sample`` body: the inline one, or its ``samples`` list
    (none for any other body)."""
    if not isinstance(body, WatchdogSample):
        return []
    if body.samples is not None:
        return [OneSample(s.t, s.gpus, s.ram) for s in body.samples]
    return [OneSample(body.t, body.gpus or [], body.ram or {})]


def sample_rows(event: Event) -> list[dict[str, Any]]:
    """One row per GPU per sample (one row with ``gpu`` None for a sample without GPUs): the
    Python twin of the ``samples`` view, with its `SAMPLE_COLUMNS`."""
    rows = []
    host = getattr(event.body, "host", None)
    for part, sample in enumerate(samples_of(event.body)):
        ram = sample.ram
        common = {"seq": event.seq, "part": part, "run": event.run, "host": host,
                  "t": sample.t, **{k: ram.get(k) for k in _RAM_FIELDS}}
        for gpu in sample.gpus or [None]:
            g = gpu or {}
            rows.append({**common, "gpu": g.get("index"), "gpu_name": g.get("name"),
                         "gpu_lost": int(bool(g.get("lost"))),
                         **{k: g.get(k) for k in _GPU_FIELDS}})
    return [{c: row[c] for c in SAMPLE_COLUMNS} for row in rows]


SERVER_COLUMNS = ("seq", "part", "run", "host", "t", "engine", "kv_cache_usage", "running",
                  "waiting", "error")


def server_rows(event: Event) -> list[dict[str, Any]]:
    """One row per read of the serving engine's /metrics in a ``watchdog.sample`` event (its
    ``server`` list): the Python twin of the ``server_samples`` view."""
    body = event.body
    scrapes = body.server if isinstance(body, WatchdogSample) else None
    if scrapes is None:
        return []
    host = getattr(body, "host", None)
    return [{"seq": event.seq, "part": part, "run": event.run, "host": host,
             **{c: s.get(c) for c in SERVER_COLUMNS[4:]}}
            for part, s in enumerate(scrapes) if isinstance(s, dict)]


@dataclass
class LatestGpus:
    """The latest sample of every GPU, by (host, device index), folded from watchdog samples."""

    devices: dict[tuple[str, int], tuple[float, str, dict[str, Any]]] = field(default_factory=dict)

    def apply(self, event: Event) -> None:
        """Fold one event (anything but a ``watchdog.sample`` is ignored)."""
        if event.kind != "watchdog.sample":
            return
        host = str(getattr(event.body, "host", None))
        for sample in samples_of(event.body):
            for gpu in sample.gpus:
                if isinstance(gpu, dict) and isinstance(gpu.get("index"), int):
                    self.devices[host, gpu["index"]] = (float(sample.t or event.ts), event.run,
                                                        gpu)

    def watch(self, events: Iterable[Event]) -> Iterator[Event]:
        """Pass `events` through, folding each on the way (to ride along another fold)."""
        for event in events:
            if event.kind == "watchdog.sample":
                self.apply(event)
            yield event
