"""``GET /metrics``: the daemon's state in the Prometheus text exposition format (version 0.0.4).

Written by hand (the format is small) so the daemon needs no client library; the tests parse it
with ``prometheus_client``. Units are Prometheus base units: seconds, bytes, ratios 0..1.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from vlmd.live.state import Live
from vlmd.projections.gpus import LatestGpus

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MIB = 1024 * 1024
STATUSES = ("submitted", "running", "stalled", "finished", "failed", "cancelled")
def _label(value: object) -> str:
    text = str(value).replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return f'"{text}"'


def _num(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if isinstance(value, float) else str(value)


class _Text:
    """A metric family at a time: HELP, TYPE, then its samples."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]

    def sample(self, metric: str, value: float, **labels: object) -> None:
        inner = ",".join(f"{k}={_label(v)}" for k, v in labels.items())
        self.lines.append(f"{metric}{{{inner}}} {_num(value)}" if inner
                          else f"{metric} {_num(value)}")


def render(live: Live) -> str:
    """Every metric, as the text `GET /metrics` answers."""
    out = _Text()
    out.family("vlmd_events_appended_total", "counter",
               "Events appended to the log since this daemon started, by kind.")
    for kind, n in sorted(live.appended_by_kind.items()):
        out.sample("vlmd_events_appended_total", n, kind=kind)
    out.family("vlmd_log_last_seq", "gauge", "Seq of the newest event in the log.")
    out.sample("vlmd_log_last_seq", live.head)
    hist = live.ingest_latency
    name = "vlmd_ingest_latency_seconds"
    out.family(name, "histogram",
               "Seconds from a batch reaching the log writer to committed, folded and published.")
    cumulative = 0
    for bound, n in zip(hist.buckets, hist.counts or [0] * len(hist.buckets), strict=True):
        cumulative += n
        out.sample(f"{name}_bucket", cumulative, le=_num(bound))
    out.sample(f"{name}_bucket", hist.count, le="+Inf")
    out.sample(f"{name}_sum", hist.total)
    out.sample(f"{name}_count", hist.count)
    out.family("vlmd_feed_clients", "gauge", "WebSocket clients following the live feed.")
    out.sample("vlmd_feed_clients", len(live.feed.subscribers), feed="live")
    out.sample("vlmd_feed_clients", len(live.states.feed.subscribers), feed="state")
    out.sample("vlmd_feed_clients", live.replaying, feed="replay")
    runs = live.tracker.runs.values()
    by_status = Counter(state.status for state in runs)
    out.family("vlmd_runs", "gauge", "Runs in the log, by status.")
    for status in STATUSES:
        out.sample("vlmd_runs", by_status[status], status=status)
    for outcome, help_text in (("done", "Items completed"), ("failed", "Items failed")):
        out.family(f"vlmd_run_items_{outcome}", "gauge", f"{help_text} in each run.")
        for state in runs:
            value = state.done if outcome == "done" else state.failed
            out.sample(f"vlmd_run_items_{outcome}", value, run=state.run, name=state.name or "")
    _gpus(out, live.gpus)
    return "\n".join(out.lines) + "\n"


def _gpus(out: _Text, gpus: LatestGpus) -> None:
    fields = (("vlmd_gpu_memory_used_bytes", "mem_used_mb", MIB, "GPU memory used"),
              ("vlmd_gpu_memory_total_bytes", "mem_total_mb", MIB, "GPU memory in total"),
              ("vlmd_gpu_utilization_ratio", "util_gpu", 0.01, "GPU utilisation, 0..1"),
              ("vlmd_gpu_power_watts", "power_w", 1.0, "GPU power draw"))
    latest = sorted(gpus.devices.items())
    for name, key, scale, help_text in fields:
        out.family(name, "gauge", f"{help_text}, in the latest sample of each agent's device.")
        for (host, index), (_, run, gpu) in latest:
            if isinstance(gpu.get(key), int | float):
                out.sample(name, gpu[key] * scale, host=host, gpu=index, run=run)
    out.family("vlmd_gpu_sample_timestamp_seconds", "gauge",
               "Agent clock (Unix seconds) of each device's latest sample; alert when stale.")
    for (host, index), (t, run, _) in latest:
        out.sample("vlmd_gpu_sample_timestamp_seconds", t, host=host, gpu=index, run=run)


def route(live: Live) -> Callable[[Request], Awaitable[Response]]:
    """The Starlette endpoint for ``GET /metrics`` over `live`."""
    async def metrics(request: Request) -> Response:
        return Response(render(live), media_type=CONTENT_TYPE)
    return metrics
