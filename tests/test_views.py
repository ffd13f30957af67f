"""The SQL views agree with the Python folds (tracker, answers, summary, samples) on one log."""

from __future__ import annotations

import json
import math
import random
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.events import completed, ev, failed, finished, started, submitted
from vlmd.projections import answers, summary, tracker
from vlmd.projections.gpus import SAMPLE_COLUMNS, sample_rows, server_rows
from vlmd.store import views
from vlmd.store.log import EventLog
from vlmd.store.migrations import MIGRATIONS, migrate

RUN_FIELDS = ("run", "name", "model", "dataset", "status", "done", "failed", "total",
              "submitted_at", "started_at", "finished_at", "last_event_at", "last_heartbeat",
              "alerts", "last_alert", "reason", "last_seq", "outcome")


def gpu(index: int, used: float) -> dict[str, Any]:
    return {"index": index, "uuid": f"GPU-{index}", "name": "H100", "mem_used_mb": used,
            "mem_total_mb": 81559.0, "mem_reserved_mb": None, "util_gpu": 87.0,
            "util_mem": 40.0, "power_w": 312.5, "temp_c": 61.0, "proc_mem_mb": used - 500,
            "proc_mem_source": "nvml", "na": ["mem_reserved_mb"]}


RAM = {"rss_mb": 2048.0, "host_used_mb": 30000.0, "host_available_mb": 98000.0,
       "host_total_mb": 128000.0, "cgroup_usage_mb": 4096.0, "cgroup_limit_mb": None,
       "oom_kills": 0}


def sample_one(run: str, t: float, gpus: list[dict[str, Any]]) -> dict[str, Any]:
    return ev(run, "watchdog.sample", {"host": "node-1", "t": t, "gpus": gpus, "ram": RAM})


def sample_batch(run: str, t: float, n: int) -> dict[str, Any]:
    samples = [{"t": t + i * 0.05, "gpus": [gpu(0, 1000.0 + i), gpu(1, 2000.0 - i)],
                "ram": RAM} for i in range(n)]
    server = [{"t": t + 0.1, "engine": "vllm", "kv_cache_usage": 0.42, "running": 3.0,
               "waiting": 1.0}, {"t": t + 0.35, "error": "HTTP 503"}]
    return ev(run, "watchdog.sample", {"host": "node-2", "samples": samples, "server": server,
                                       "model_gpus": [0, 1]})


def benchmark(rng: random.Random, run: str, item: int) -> dict[str, Any]:
    """An item's benchmark fields: runs r0 and r1 hold a circular file (item % 4 is the
    question), r2 categories only, r3 none; an item's category is fixed, an unparsed answer
    random."""
    if run == "r3":
        return {}
    fields: dict[str, Any] = {"category": "cat-" + "abc"[item % 3]}
    if item % 3:
        fields["l2_category"] = "perception" if item % 3 == 1 else "reasoning"
    if run in ("r0", "r1"):
        fields["circular_group"] = str(item % 4)
    if rng.random() < 0.2:
        fields["unparsed"] = True
    if item % 2:
        fields["options"] = {"A": "red", "B": f"blue {item}", "C": "vert clair é"}
        fields["choice"] = rng.choice("ABC")
    return fields


def random_events(rng: random.Random, n: int) -> list[dict[str, Any]]:
    """A messy log: shards, retries, failures after completions, cancellations, alerts."""
    out: list[dict[str, Any]] = []
    begun: set[str] = set()
    for i in range(n):
        run = f"r{rng.randrange(4)}"
        roll = rng.random()
        if 0.06 <= roll < 0.12 or 0.86 <= roll < 0.93:
            begun.add(run)
        shard = rng.choice([None, None, "0/2", "1/2", "0/1"])
        if roll < 0.06:
            body: dict[str, Any] = {"model": f"demo:m{rng.randrange(3)}", "dataset": "d.jsonl"}
            if rng.random() < 0.6:
                body["total"] = rng.randrange(1, 20)
            if rng.random() < 0.4:
                body["name"] = rng.choice(["alpha", "beta"])
            if rng.random() < 0.3 and run not in begun:
                body["shards"] = rng.choice([1, 2])  # (a shard count changed later: see views)
            out.append(ev(run, "run.submitted", body))
        elif roll < 0.12:
            body = {"total": rng.randrange(1, 10), "host": "h", "pid": 1}
            if shard:
                body["shard"] = shard
            out.append(ev(run, "run.started", body))
        elif roll < 0.55:
            item = rng.randrange(12)
            score = rng.choice([0.0, 1.0, 0.5, None])
            metrics: dict[str, Any] = {
                "ttft_ms": rng.choice([None, round(rng.uniform(10, 900), 3)]),
                "vram_peak_delta_mb": round(rng.uniform(-50, 500), 2)}
            e = completed(run, item, score=1.0, **metrics, **benchmark(rng, run, item))
            e["body"]["score"] = score
            e["key"] = f"{run}/item/{item}/{i}"
            out.append(e)
        elif roll < 0.7:
            item = rng.randrange(12)
            e = failed(run, item, rng.choice(["oom", "timeout"]), attempt=i)
            e["body"].update(benchmark(rng, run, item))
            out.append(e)
        elif roll < 0.78:
            out.append(ev(run, "watchdog.heartbeat",
                          {"host": "h", "pid": 1, "wrapper_pid": 2, "wrapper_state": "running"}))
        elif roll < 0.86:
            out.append(ev(run, rng.choice(["alert.agent_lost", "alert.hang"]), {"message": "x"}))
        elif roll < 0.89:
            n = rng.choice([1, 2])
            out.append(ev(run, "run.scheduled", {
                "scheduler": "slurm", "job": str(i), "of": n, "resume": rng.random() < 0.5,
                "shards": rng.sample(range(n), rng.randrange(1, n + 1))}))
        elif roll < 0.90:
            out.append(ev(run, "scheduler.task", {"scheduler": "slurm", "job": f"{i}_0",
                                                  "shard": "0/1", "state": "PENDING"}))
        elif roll < 0.93:
            kind = rng.choice(["run.finished", "run.failed", "run.cancelled"])
            body = {"reason": rng.choice(["", "boom"])} if kind != "run.finished" else {}
            if shard and kind != "run.cancelled":
                body["shard"] = shard
            out.append(ev(run, kind, body))
        else:
            out.append(sample_one(run, 1.79e9 + i, [gpu(0, 100.0 + i)]))
    return out


def fixed_events() -> list[dict[str, Any]]:
    return [
        submitted("a", total=4, name="nightly"), started("a", total=4),
        completed("a", 1, ttft=120.0, request_start=1.79e9 + 0.5, energy_j=12.5,
                  energy_source="nvml", kv_cache_peak=0.42, server_running=3,
                  server_waiting=1, itl_ms=[20.5, 19.75], timing_source="kernel"),
        completed("a", 2, score=0.0, ttft=300.0),
        failed("a", 3), failed("a", 1, attempt=1), {**completed("a", 3, ttft=80.0),
                                                    "key": "a/item/3/1"},
        sample_one("a", 1.79e9, [gpu(0, 15000.0), gpu(1, 900.0)]),
        sample_one("a", 1.79e9 + 1, []), sample_batch("a", 1.79e9 + 2, 3),
        ev("a", "alert.vram_high", {"message": "94% VRAM", "host": "node-1"}),
        finished("a"),
        submitted("b", total=10), started("b", total=5, shard="0/2"),
        started("b", total=5, shard="1/2"), completed("b", "x", ttft=50.0),
        ev("b", "run.finished", {"shard": "0/2"}),
        ev("b", "alert.agent_lost", {"message": "no heartbeat for 3 s"}),
        ev("b", "run.failed", {"shard": "1/2", "reason": "CUDA error"}),
    ]


def make_log(path: Path, events: list[dict[str, Any]]) -> EventLog:
    log = EventLog.open(path)
    for i in range(0, len(events), 7):
        log.append(events[i:i + 7], received=1.8e9 + i)
    return log


def query(log: EventLog, sql: str, *params: Any) -> list[dict[str, Any]]:
    conn = sqlite3.connect(log.path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql, params)]
    finally:
        conn.close()


def approx_or_none(value: float | None) -> Any:
    return None if value is None else pytest.approx(value, rel=1e-12)


def category_rows(log: EventLog, run: str) -> dict[tuple[str, str], dict[str, Any]]:
    """`category_summary`'s rows of `run` by (level, category)."""
    return {(r["level"], r["category"]): {k: r[k] for k in (
        "items", "accuracy", "circular_groups", "circular_accuracy")}
        for r in query(log, "SELECT * FROM category_summary WHERE run = ?", run)}


def category_table(want: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """The summary's ``by_category`` and ``by_l2_category`` as `category_rows` gives them."""
    return {(level, name): {"items": row["items"], "accuracy": approx_or_none(row["accuracy"]),
                            "circular_groups": row.get("circular_groups"),
                            "circular_accuracy": approx_or_none(row.get("circular_accuracy"))}
            for level in ("category", "l2_category")
            for name, row in want[f"by_{level}"].items()}


def check_agreement(log: EventLog) -> int:
    folded = tracker.fold(log.read())
    runs = {r["run"]: r for r in query(log, "SELECT * FROM runs")}
    assert list(runs) == list(folded.runs)
    for run, state in folded.runs.items():
        expected = state.to_dict()
        got = {f: runs[run][f] for f in RUN_FIELDS}
        assert got == {f: expected[f] for f in RUN_FIELDS}, run
        assert json.loads(runs[run]["shards"]) == expected["shards"], run
        assert list(json.loads(runs[run]["shards"])) == list(expected["shards"]), run
        assert runs[run]["accuracy"] == pytest.approx(expected["accuracy"], rel=1e-12), run
        items = query(log, "SELECT * FROM items WHERE run = ?", run)
        kept = answers.latest(log.read(run=run, kinds=answers.ITEM_KINDS))
        served = [answers.served(e) for e in kept.values()]
        columns = (*answers.COLUMNS, "seq", "outcome")
        assert [{c: r[c] for c in columns} for r in items] == [
            {c: (answers._cell(v, False) if isinstance(v, list | dict) else v)
             for c, v in row.items()}
            for row in served]
        [ms] = query(log, "SELECT * FROM model_summary WHERE run = ?", run)
        want = summary.summarize(state)
        assert (ms["completed"], ms["failed"], ms["scored"]) == (
            want["completed"], want["failed"], want["scored"])
        if want["accuracy"] is None:
            assert ms["accuracy"] is None
        else:
            assert ms["accuracy"] == pytest.approx(want["accuracy"], rel=1e-12)
        for metric in summary.METRICS:
            for q, _ in summary.QUANTILES:
                assert ms[f"{metric}_{q}"] == want[metric][q], (run, metric, q)
        assert (ms["circular_groups"], ms["unparsed"]) == (want["circular_groups"],
                                                           want["unparsed"]), run
        assert ms["circular_accuracy"] == approx_or_none(want["circular_accuracy"]), run
        assert category_rows(log, run) == category_table(want), run
        alerts = query(log, "SELECT kind FROM alerts WHERE run = ? ORDER BY seq", run)
        assert len(alerts) == state.alerts
        assert (alerts[-1]["kind"] if alerts else None) == state.last_alert
    samples = query(log, "SELECT * FROM samples")
    assert samples == [r for e in log.read(kinds=["watchdog.sample"]) for r in sample_rows(e)]
    scrapes = query(log, "SELECT * FROM server_samples")
    assert scrapes == [r for e in log.read(kinds=["watchdog.sample"]) for r in server_rows(e)]
    assert list(samples[0]) == list(SAMPLE_COLUMNS) if samples else True
    return len(folded.runs)


def test_every_view_agrees_with_its_python_fold(tmp_path: Path) -> None:
    log = make_log(tmp_path / "v.db", fixed_events())
    assert check_agreement(log) == 2
    a, b = query(log, "SELECT run, status, done, failed, total, name FROM runs")
    assert a == {"run": "a", "status": "finished", "done": 3, "failed": 0, "total": 4,
                 "name": "nightly"}
    assert b == {"run": "b", "status": "failed", "done": 1, "failed": 0, "total": 10,
                 "name": None}
    gpus = query(log, "SELECT host, t, gpu, mem_used_mb, util_gpu, power_w, rss_mb FROM samples")
    assert len(gpus) == 2 + 1 + 3 * 2  # two GPUs, a sample without GPUs, a batch of three
    assert gpus[0] == {"host": "node-1", "t": 1.79e9, "gpu": 0, "mem_used_mb": 15000.0,
                       "util_gpu": 87.0, "power_w": 312.5, "rss_mb": 2048.0}
    assert gpus[2]["gpu"] is None and gpus[2]["rss_mb"] == 2048.0
    [ms] = query(log, "SELECT * FROM model_summary WHERE run = 'a'")
    assert (ms["accuracy"], ms["ttft_ms_p50"], ms["ttft_ms_p90"]) == (2 / 3, 120.0, 264.0)
    [one] = query(log, "SELECT request_start, energy_j, kv_cache_peak, server_running, itl_ms, "
                       "timing_source FROM items WHERE run = 'a' AND item = '1'")
    assert one == {"request_start": 1.79e9 + 0.5, "energy_j": 12.5, "kv_cache_peak": 0.42,
                   "server_running": 3, "itl_ms": "[20.5,19.75]", "timing_source": "kernel"}
    scrapes = query(log, "SELECT part, engine, kv_cache_usage, waiting, error "
                         "FROM server_samples")
    assert scrapes == [{"part": 0, "engine": "vllm", "kv_cache_usage": 0.42, "waiting": 1.0,
                        "error": None},
                       {"part": 1, "engine": None, "kv_cache_usage": None, "waiting": None,
                        "error": "HTTP 503"}]


@pytest.mark.parametrize("seed", range(12))
def test_views_agree_with_the_folds_on_random_logs(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    log = make_log(tmp_path / "v.db", random_events(rng, 300))
    assert check_agreement(log) >= 1


def test_the_views_use_the_summary_percentiles_and_outcome_classes() -> None:
    assert views.METRICS == summary.METRICS
    assert views.QUANTILES == summary.QUANTILES
    assert views.CORRECT_AT == answers.CORRECT_AT


def test_a_log_made_by_0002_gets_the_views_of_0003_to_0005(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE migrations (name TEXT PRIMARY KEY, applied REAL)")
    for name, steps in MIGRATIONS[:2]:  # what a vlmd before 0003 left
        for step in steps:
            conn.execute(step)
        conn.execute("INSERT INTO migrations VALUES (?, 0)", (name,))
    assert [c[1] for c in conn.execute("PRAGMA table_info(runs)")].count("shards") == 0
    assert migrate(conn) == ["0003_views", "0004_serving_views", "0005_benchmark_views"]
    conn.close()
    log = make_log(path, [*fixed_events(), ev("b", "run.scheduled", {
        "scheduler": "slurm", "job": "9", "shards": [1], "of": 2, "resume": True})])
    assert check_agreement(log) == 2
    [b] = query(log, "SELECT status, shards FROM runs WHERE run = 'b'")
    assert b == {"status": "stalled", "shards": '{"0/2":"finished","1/2":"scheduled"}'}  # lost


def test_percentiles_interpolate_like_numpy_linear(tmp_path: Path) -> None:
    values = [5.0, 1.0, 9.5, 3.25, 7.0, 2.0, 100.0]
    log = make_log(tmp_path / "v.db", [submitted("p", total=7)] + [
        completed("p", i, ttft=v) for i, v in enumerate(values)])
    [ms] = query(log, "SELECT ttft_ms_p50, ttft_ms_p90, ttft_ms_p99 FROM model_summary")
    ordered = sorted(values)
    assert ms == {f"ttft_ms_{q}": summary.percentile(ordered, x) for q, x in summary.QUANTILES}
    assert math.isclose(ms["ttft_ms_p90"], 9.5 + (100.0 - 9.5) * 0.4)
