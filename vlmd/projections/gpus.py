"""GPU samples as folds: each sample's rows (the ``samples`` view's Python twin), the serving
engine's reads (``server_samples``'s twin) and the latest sample of every GPU (what
``GET /metrics`` shows)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from vlmd.store.log import Event

SAMPLE_COLUMNS = (
    "seq", "part", "run", "host", "t", "gpu", "gpu_name", "gpu_lost", "mem_used_mb",
    "mem_total_mb", "proc_mem_mb", "util_gpu", "util_mem", "power_w", "temp_c", "rss_mb",
    "host_used_mb", "host_total_mb", "cgroup_usage_mb", "cgroup_limit_mb", "oom_kills",
)
_GPU_FIELDS = ("mem_used_mb", "mem_total_mb", "proc_mem_mb", "util_gpu", "util_mem", "power_w",
               "temp_c")
_RAM_FIELDS = ("rss_mb", "host_used_mb", "host_total_mb", "cgroup_usage_mb", "cgroup_limit_mb",
               "oom_kills")


def samples_of(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The samples in a ``watchdog.sample`` body: the body itself, or its ``samples`` list."""
    samples = body.get("samples")
    return samples if isinstance(samples, list) else [body]


def sample_rows(event: Event) -> list[dict[str, Any]]:
    """One row per GPU per sample (one row with ``gpu`` None for a sample without GPUs): the
    Python twin of the ``samples`` view, with its `SAMPLE_COLUMNS`."""
    rows = []
    host = event.body.get("host")
    for part, sample in enumerate(samples_of(event.body)):
        ram = sample.get("ram") or {}
        common = {"seq": event.seq, "part": part, "run": event.run, "host": host,
                  "t": sample.get("t"), **{k: ram.get(k) for k in _RAM_FIELDS}}
        for gpu in sample.get("gpus") or [None]:
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
    scrapes = event.body.get("server")
    if not isinstance(scrapes, list):
        return []
    host = event.body.get("host")
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
        host = str(event.body.get("host"))
        for sample in samples_of(event.body):
            for gpu in sample.get("gpus") or ():
                if isinstance(gpu, dict) and isinstance(gpu.get("index"), int):
                    self.devices[host, gpu["index"]] = (float(sample.get("t") or event.ts),
                                                        event.run, gpu)

    def watch(self, events: Iterable[Event]) -> Iterator[Event]:
        """Pass `events` through, folding each on the way (to ride along another fold)."""
        for event in events:
            if event.kind == "watchdog.sample":
                self.apply(event)
            yield event
