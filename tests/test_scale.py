"""What scale needed: group commit of concurrent appends, kind filters on the live feed, and
`scripts/bench_scale` itself (a short smoke run)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.conftest import TOKEN
from tests.events import body, completed, ev, started, submitted
from vlmd.cli.wsclient import Closed, open_ws
from vlmd.daemon.serve import Daemon
from vlmd.live.feed import Feed
from vlmd.store.log import NOT_READ, Appended, Event, EventLog

ROOT = Path(__file__).resolve().parent.parent
AUTH = {"authorization": f"Bearer {TOKEN}"}


def sample(run: str, n: int) -> dict[str, Any]:
    return ev(run, "watchdog.sample", {"host": "h", "samples": [
        {"t": time.time(), "gpus": [], "ram": {}}]}, key=f"{run}/sample/{n}")


def test_append_many_stores_a_key_once_across_batches_and_answers_each_batch(
        tmp_path: Path) -> None:
    log = EventLog.open(tmp_path / "v.db")
    log.append([completed("r1", 0)], received=1.0)
    a, b, c = (log.append_many([[completed("r1", 1), completed("r1", 2)],
                                [completed("r1", 2), completed("r1", 0)],
                                [completed("r1", 3)]], received=2.0))
    assert [(e.seq, body(e)["item"]) for e in a.events] == [(2, "1"), (3, "2")]
    assert (b.events, b.duplicates) == ([], 2)
    assert [(e.seq, body(e)["item"]) for e in c.events] == [(4, "3")]
    assert a.last_seq == b.last_seq == c.last_seq == log.last_seq == 4
    assert [e.key for e in log.read()] == [completed("r1", i)["key"] for i in range(4)]


async def test_concurrent_appends_are_committed_together_and_each_caller_gets_its_own(
        daemon: Daemon) -> None:
    live = daemon.live
    results: dict[int, Appended] = {}
    frames: list[list[int]] = []
    sub = live.subscribe(None)

    async def append(i: int) -> None:
        results[i] = await live.append([completed("r1", i), completed("r1", "shared")])

    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(append, i)
    live.feed.unsubscribe(sub)
    async for frame in sub.receive:
        frames.append([e["seq"] for e in json.loads(frame.text)])
    stored = [e for r in results.values() for e in r.events]
    assert sorted(e.seq for e in stored) == list(range(1, 22))
    assert sum(r.duplicates for r in results.values()) == 19  # "shared": stored once
    assert len({e.key for e in live.log.read()}) == live.log.count() == 21
    assert [s for f in frames for s in f] == list(range(1, 22))  # in order, each once
    assert len({e.received for e in stored}) < 20  # some appends shared a commit
    assert live.tracker.runs["r1"].done == 21


def test_frames_are_encoded_once_per_distinct_run_and_kinds_filter() -> None:
    feed = Feed()
    everything, runs_page, also_runs_page, one_run = (
        feed.subscribe(None, 0), feed.subscribe(None, 0, ["run.*", "item.*"]),
        feed.subscribe(None, 0, ["item.*", "run.*"]), feed.subscribe("b", 0))
    body = {"item": "1", "answer": "A"}
    events = [Event(1, "k1", "a", "item.completed", 1.0, 1.0, NOT_READ, json.dumps(body)),
              Event(2, "k2", "a", "watchdog.sample", 1.0, 1.0, NOT_READ, "{}"),
              Event(3, "k3", "b", "run.started", 1.0, 1.0, NOT_READ, "{}")]
    feed.publish(events)
    got = {name: sub.receive.receive_nowait() for name, sub in (
        ("everything", everything), ("runs", runs_page), ("also", also_runs_page),
        ("one", one_run))}
    assert [e["seq"] for e in json.loads(got["everything"].text)] == [1, 2, 3]
    assert [e["seq"] for e in json.loads(got["runs"].text)] == [1, 3]
    assert got["runs"] is got["also"]  # the same filter: the same frame, serialised once
    assert [e["seq"] for e in json.loads(got["one"].text)] == [3]


async def test_the_feed_sends_only_the_kinds_asked_for_in_the_backlog_and_live(
        daemon: Daemon) -> None:
    url = daemon.url.replace("http://", "ws://") + "/api/feed"
    async with httpx.AsyncClient(base_url=daemon.url, headers=AUTH) as c:
        await c.post("/api/events", json=[submitted("r1"), sample("r1", 1), completed("r1", 1)])
        async with open_ws(f"{url}?after=0&kind=run.*&kind=item.completed") as ws:
            backlog = json.loads(await ws.get_message())
            await c.post("/api/events", json=[sample("r1", 2), started("r1")])
            live = json.loads(await ws.get_message())
        async with open_ws(f"{url}?after=0&" + "&".join(["kind=x"] * 65)) as ws:
            with pytest.raises(Closed, match="at most 64 kind filters"):
                await ws.get_message()
    assert [e["kind"] for e in backlog] == ["run.submitted", "item.completed"]
    assert [(e["seq"], e["kind"]) for e in live] == [(5, "run.started")]


@pytest.mark.slow
def test_bench_scale_runs_and_reports_every_figure() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_scale"), "--agents",
                           "2", "--seconds", "3", "--per-process", "2"],
                          capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for column in ("held", "samples/s", "ingest p50", "feed p50", "vlmd CPU%", "RSS MB"):
        assert column in done.stdout
    assert "highest N held:" in done.stdout
    row = json.loads(done.stdout.split("N=2 round 1: ", 1)[1].splitlines()[0])
    assert row["agents"] == 2 and row["logged_gpu_samples_s"] > 0
    assert row["feed_probes"] > 0 and row["ingest_p99_ms"] > 0
