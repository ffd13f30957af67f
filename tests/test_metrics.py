"""`GET /metrics` is valid Prometheus text with the daemon's counters, gauges and histogram."""

from __future__ import annotations

from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import TOKEN
from tests.events import completed, ev, failed, finished, started, submitted
from tests.test_views import gpu, sample_batch, sample_one
from vlmd.daemon.serve import Daemon

AUTH = {"authorization": f"Bearer {TOKEN}"}


def parse(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """name -> {sorted labels: value}, for every sample."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


async def scrape(d: Daemon) -> tuple[httpx.Response, dict[str, Any]]:
    async with httpx.AsyncClient(base_url=d.url, headers=AUTH) as c:
        r = await c.get("/metrics")
    return r, parse(r.text)


async def test_metrics_parse_and_report_kinds_runs_items_latency_and_gpus(daemon: Daemon) -> None:
    batches = [
        [submitted("m1", total=3, name="nightly"), started("m1")],
        [completed("m1", 1), failed("m1", 2), sample_one("m1", 1.79e9, [gpu(0, 1000.0)])],
        [sample_batch("m1", 1.79e9 + 1, 3), completed("m1", 3), finished("m1")],
        [submitted("m2"), started("m2"), ev("m2", "alert.hang", {"message": "stuck"})],
    ]
    async with httpx.AsyncClient(base_url=daemon.url, headers=AUTH) as c:
        for batch in batches:
            assert (await c.post("/api/events", json=batch)).status_code == 200
    r, m = await scrape(daemon)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    kinds = {dict(k)["kind"]: v for k, v in m["vlmd_events_appended_total"].items()}
    assert kinds == {"run.submitted": 2, "run.started": 2, "item.completed": 2,
                     "item.failed": 1, "watchdog.sample": 2, "run.finished": 1, "alert.hang": 1}
    assert m["vlmd_log_last_seq"][()] == 11
    assert m["vlmd_ingest_latency_seconds_count"][()] == 4
    assert m["vlmd_ingest_latency_seconds_bucket"][(("le", "+Inf"),)] == 4
    assert 0 < m["vlmd_ingest_latency_seconds_sum"][()] < 4 * 5.0
    buckets = sorted((float(dict(k)["le"]), v)
                     for k, v in m["vlmd_ingest_latency_seconds_bucket"].items())
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
    assert m["vlmd_runs"][(("status", "finished"),)] == 1
    assert m["vlmd_runs"][(("status", "running"),)] == 1
    assert m["vlmd_runs"][(("status", "failed"),)] == 0
    assert m["vlmd_run_items_done"][(("name", "nightly"), ("run", "m1"))] == 2
    assert m["vlmd_run_items_failed"][(("name", "nightly"), ("run", "m1"))] == 1
    assert m["vlmd_feed_clients"][(("feed", "live"),)] == 0
    used = {(dict(k)["host"], dict(k)["gpu"]): v
            for k, v in m["vlmd_gpu_memory_used_bytes"].items()}
    # node-1 GPU 0 from the inline sample; node-2 from the last sample of the batch
    assert used == {("node-1", "0"): 1000.0 * 2**20, ("node-2", "0"): 1002.0 * 2**20,
                    ("node-2", "1"): 1998.0 * 2**20}
    util = m["vlmd_gpu_utilization_ratio"]
    assert set(util.values()) == {0.87}
    stamps = m["vlmd_gpu_sample_timestamp_seconds"]
    assert max(stamps.values()) == 1.79e9 + 1 + 2 * 0.05


async def test_a_restarted_daemon_reports_the_gpus_from_the_log(daemon: Daemon) -> None:
    async with httpx.AsyncClient(base_url=daemon.url, headers=AUTH) as c:
        await c.post("/api/events", json=[sample_one("g", 1.79e9, [gpu(3, 777.0)])])
    daemon.live.gpus.devices.clear()
    await daemon.live.rebuild()
    _, m = await scrape(daemon)
    assert m["vlmd_gpu_memory_used_bytes"] == {
        (("gpu", "3"), ("host", "node-1"), ("run", "g")): 777.0 * 2**20}


async def test_label_values_are_escaped(daemon: Daemon) -> None:
    async with httpx.AsyncClient(base_url=daemon.url, headers=AUTH) as c:
        await c.post("/api/events", json=[submitted("q1", name="a-b")])
    daemon.live.tracker.runs["q1"].name = 'say "hi"\\\n'
    _, m = await scrape(daemon)
    assert m["vlmd_run_items_done"] == {(("name", 'say "hi"\\\n'), ("run", "q1")): 0}
