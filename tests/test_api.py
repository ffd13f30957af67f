"""The HTTP API against a real daemon on port 0 over a real SQLite file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import trio

from tests.conftest import TOKEN, daemon_config
from tests.events import body, completed, ev, failed, finished, started, submitted
from vlmd.daemon.serve import Daemon, serve
from vlmd.projections import tracker
from vlmd.store.log import EventLog, dumps_events

AUTH = {"authorization": f"Bearer {TOKEN}"}


def client(d: Daemon) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=d.url, headers=AUTH, timeout=30)


async def post(d: Daemon, events: Any, **kw: Any) -> httpx.Response:
    async with client(d) as c:
        return await c.post("/api/events", json=events, **kw)


async def test_post_appends_and_a_resend_is_a_duplicate(daemon: Daemon) -> None:
    batch = [submitted("r1"), started("r1"), completed("r1", 1)]
    first = await post(daemon, batch)
    assert first.status_code == 200
    assert first.json() == {"appended": 3, "duplicates": 0, "last_seq": 3}
    again = await post(daemon, batch)
    assert again.json() == {"appended": 0, "duplicates": 3, "last_seq": 3}
    assert daemon.live.log.count() == 3


async def test_the_adr_path_events_is_answered_too(daemon: Daemon) -> None:
    async with client(daemon) as c:
        r = await c.post("/events", json=[submitted("r1")])
    assert r.json()["appended"] == 1


async def test_writes_without_the_right_token_get_401_and_append_nothing(daemon: Daemon) -> None:
    async with httpx.AsyncClient(base_url=daemon.url) as c:
        missing = await c.post("/api/events", json=[submitted("r1")])
        wrong = await c.post("/api/events", json=[submitted("r1")],
                             headers={"authorization": "Bearer nope"})
    assert missing.status_code == 401
    assert "missing token" in missing.json()["error"]
    assert wrong.status_code == 401
    assert wrong.json()["error"] == "wrong token"
    assert daemon.live.log.count() == 0


async def test_a_422_batch_names_the_event_and_field_and_appends_nothing(daemon: Daemon) -> None:
    good = completed("r1", 1)
    bad = completed("r1", 2, score="high")  # type: ignore[arg-type]
    r = await post(daemon, [submitted("r1"), good, bad])
    assert r.status_code == 422
    assert r.json()["error"].startswith("event 2: body.score: expected a number, got string")
    assert r.json()["errors"] == [{"index": 2, "field": "body.score",
                                   "message": "expected a number, got string"}]
    assert daemon.live.log.count() == 0
    assert daemon.live.tracker.runs == {}


async def test_schema_errors_cover_unknown_kinds_missing_fields_and_duplicate_keys(
        daemon: Daemon) -> None:
    unknown = ev("r1", "item.exploded", {"item": "1"})
    missing = ev("r1", "item.failed", {"item": "1", "message": "x"})
    twice = completed("r1", 3)
    r = await post(daemon, [unknown, missing, twice, dict(twice)])
    assert r.status_code == 422
    fields = {(e["index"], e["field"]) for e in r.json()["errors"]}
    assert fields == {(0, "kind"), (1, "body.reason"), (3, "key")}
    assert daemon.live.log.count() == 0


async def test_alert_kinds_of_any_name_are_accepted(daemon: Daemon) -> None:
    r = await post(daemon, [ev("r1", "alert.disk_slow", {"message": "fsync took 3 s"})])
    assert r.json()["appended"] == 1


async def test_malformed_json_is_400_and_oversized_bodies_are_413(tmp_path: Path,
                                                                  nursery: trio.Nursery) -> None:
    config = daemon_config(tmp_path / "v.db", max_body_mb=0.01)
    d: Daemon = await nursery.start(serve, config)
    async with client(d) as c:
        broken = await c.post("/api/events", content=b'[{"key": ')
        not_utf8 = await c.post("/api/events", content=b'["\xff\xfe"]')
        big = await c.post("/api/events", json=[completed("r1", i) for i in range(200)])
    assert broken.status_code == 400
    assert "not valid JSON" in broken.json()["error"]
    assert not_utf8.status_code == 400
    assert big.status_code == 413
    assert "limit" in big.json()["error"]
    assert d.live.log.count() == 0
    d.shutdown.set()


async def test_run_status_counts_and_summary(daemon: Daemon) -> None:
    await post(daemon, [submitted("r1", total=4, name="first"), started("r1", total=4),
                        completed("r1", 1, ttft=100.0), completed("r1", 2, score=0.0, ttft=300.0),
                        failed("r1", 3)])
    async with client(daemon) as c:
        by_id = (await c.get("/api/runs/r1")).json()
        by_name = (await c.get("/api/runs/first")).json()
        missing = await c.get("/api/runs/nope")
    assert by_id == by_name
    assert (by_id["status"], by_id["done"], by_id["failed"], by_id["total"]) == (
        "running", 2, 1, 4)
    assert by_id["summary"]["accuracy"] == 0.5
    assert by_id["summary"]["ttft_ms"] == {"count": 2, "mean": 200.0, "p50": 200.0,
                                           "p90": 280.0, "p99": 298.0, "max": 300.0}
    assert missing.status_code == 404
    await post(daemon, [completed("r1", 4), finished("r1")])
    async with client(daemon) as c:
        done = (await c.get("/api/runs/r1")).json()
    assert (done["status"], done["done"], done["eta_s"]) == ("finished", 3, None)


EXPECTED_CSV = """\
run,item,question,answer,expected,score,ttft_ms,tpot_ms,e2e_ms,input_tokens,output_tokens,\
vram_before_mb,vram_peak_delta_mb,error,request_start,energy_j,kv_cache_peak,server_running,\
server_waiting,category,l2_category,split,circular_group,scorer,choice,unparsed,options
r1,1,What colour?,B,B,1.0,182.4,21.7,830.1,611,31,15234.0,412.5,,1796210000.25,41.5,0.42,3,0,\
attribute,perception,dev,1,mcq,B,,"{""A"":""red"",""B"":""blue""}"
r1,2,,,,,,,,,,,,oom: CUDA out of memory,,,,,,,,,,,,,
r1,3,"Say ""hi"", please",hi,"[""hi"",""hello""]",0.6667,,,,,,,,,,,,,,,,,,mcq,,True,
"""


async def test_answers_csv_matches_the_expected_text(daemon: Daemon) -> None:
    item1 = ev("r1", "item.completed", {
        "item": "1", "question": "What colour?", "answer": "B", "expected": "B", "score": 1.0,
        "ttft_ms": 182.4, "tpot_ms": 21.7, "e2e_ms": 830.1, "input_tokens": 611,
        "output_tokens": 31, "vram_before_mb": 15234.0, "vram_peak_delta_mb": 412.5,
        "request_start": 1796210000.25, "energy_j": 41.5, "kv_cache_peak": 0.42,
        "server_running": 3, "server_waiting": 0, "category": "attribute",
        "l2_category": "perception", "split": "dev", "circular_group": "1", "scorer": "mcq",
        "choice": "B", "options": {"A": "red", "B": "blue"}})
    item3 = ev("r1", "item.completed", {"item": 3, "question": 'Say "hi", please', "answer": "hi",
                                        "expected": ["hi", "hello"], "score": 0.6667,
                                        "scorer": "mcq", "unparsed": True})
    retry_fails = failed("r1", 1, attempt=1)  # a completed item stays completed
    await post(daemon, [submitted("r1"), item1, failed("r1", 2), item3, retry_fails])
    async with client(daemon) as c:
        r = await c.get("/api/runs/r1/answers.csv")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/csv")
    assert r.text == EXPECTED_CSV


async def test_the_live_fold_equals_a_fresh_replay_of_the_same_log(daemon: Daemon) -> None:
    for i in range(20):
        batch = [completed(f"r{i % 3}", i, score=float(i % 2), ttft=float(i))]
        if i % 5 == 0:
            batch.append(ev(f"r{i % 3}", "watchdog.heartbeat", {
                "host": "h", "pid": 1, "wrapper_pid": 2, "wrapper_state": "running"}))
        if i % 7 == 0:
            batch.append(ev(f"r{i % 3}", "alert.agent_lost", {"message": "no heartbeat"}))
        await post(daemon, [submitted(f"r{i % 3}"), started(f"r{i % 3}"), *batch])
    replayed = tracker.fold(EventLog.open(daemon.live.log.path).read())
    assert replayed == daemon.live.tracker
    assert replayed.last_seq == daemon.live.log.last_seq


async def test_after_a_restart_runs_are_reported_exactly_as_before(tmp_path: Path,
                                                                   nursery: trio.Nursery) -> None:
    config = daemon_config(tmp_path / "v.db")
    d1: Daemon = await nursery.start(serve, config)
    await post(d1, [submitted("r1", name="nightly"), started("r1"), completed("r1", 1),
                    failed("r1", 2), submitted("r2", total=10), started("r2", total=5, shard="0/2"),
                    completed("r2", 7), ev("r2", "alert.agent_lost", {"message": "gone"})])
    async with client(d1) as c:
        before = (await c.get("/api/runs")).json()
    d1.shutdown.set()
    await trio.sleep(0.2)
    d2: Daemon = await nursery.start(serve, config)
    async with client(d2) as c:
        after = (await c.get("/api/runs")).json()
        health = (await c.get("/healthz")).json()
    assert after == before
    assert [r["status"] for r in after["runs"]] == ["running", "stalled"]
    assert health["last_seq"] == 8
    d2.shutdown.set()


async def test_get_events_pages_the_log(daemon: Daemon) -> None:
    await post(daemon, [submitted("a"), submitted("b"), completed("a", 1)])
    async with client(daemon) as c:
        page = (await c.get("/api/events", params={"after": 1, "run": "a"})).json()
        bad = await c.get("/api/events", params={"after": "x"})
    assert [(e["seq"], e["kind"]) for e in page] == [(3, "item.completed")]
    assert page[0]["body"]["item"] == "1"
    assert bad.status_code == 400


def test_event_json_round_trips(tmp_path: Path) -> None:
    log = EventLog.open(tmp_path / "v.db")
    stored = log.append([completed("r1", 1)], received=5.0).events[0]
    assert json.loads(stored.to_json()) == {
        "seq": 1, "key": "r1/item/1/0", "run": "r1", "kind": "item.completed",
        "ts": stored.ts, "received": 5.0, "body": body(stored)}


def test_a_frame_is_each_events_own_json(tmp_path: Path) -> None:
    log = EventLog.open(tmp_path / "v.db")
    events = log.append([completed("r1", i) for i in range(3)] + [submitted("r2")],
                        received=5.5).events
    assert dumps_events(events) == b"[" + b",".join(e.to_json() for e in events) + b"]"
    assert json.loads(dumps_events(events))[3]["body"] == body(events[3])
