"""`WS /api/state`: the fold's state, then its changes commit by commit, over a real daemon."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import trio

from tests.conftest import TOKEN, daemon_config
from tests.events import completed, failed, finished, started, stored, submitted
from vlmd.cli.wsclient import Closed, WsClient, open_ws
from vlmd.daemon.serve import Daemon, serve
from vlmd.live.states import SUMMARY_EVERY_S, SUMMARY_SHARE, Summaries
from vlmd.projections import answers, tracker

AUTH = {"authorization": f"Bearer {TOKEN}"}
WINDOWED = ("rate", "eta_s")  # depend on when they are read, not on the log alone




def state_url(d: Daemon, **query: Any) -> str:
    params = "&".join(f"{k}={v}" for k, v in query.items())
    return d.url.replace("http://", "ws://") + "/api/state" + (f"?{params}" if params else "")


async def message(ws: WsClient) -> dict[str, Any]:
    with trio.fail_after(10):
        got: dict[str, Any] = json.loads(await ws.get_message())
    return got


def same(row: dict[str, Any], api: dict[str, Any]) -> bool:
    return {k: v for k, v in row.items() if k not in WINDOWED} == {
        k: v for k, v in api.items() if k in row and k not in WINDOWED}


async def test_every_run_then_each_commits_changed_rows_in_seq_order(daemon: Daemon) -> None:
    async with httpx.AsyncClient(base_url=daemon.url, headers=AUTH) as c:
        await c.post("/api/events", json=[submitted("a", name="alpha"), started("a"),
                                          completed("a", 1), submitted("b")])
        async with open_ws(state_url(daemon)) as ws:
            first = await message(ws)
            api = (await c.get("/api/runs")).json()
            assert first["seq"] == api["last_seq"] == 4
            assert [r["run"] for r in first["runs"]] == ["a", "b"]
            assert all(same(r, a) for r, a in zip(first["runs"], api["runs"], strict=True))
            assert "items" not in first
            await c.post("/api/events", json=[completed("a", 2, score=0.0)])
            await c.post("/api/events", json=[started("b"), failed("b", 9)])
            one, two = await message(ws), await message(ws)
            rows = {r["run"]: r for r in (await c.get("/api/runs")).json()["runs"]}
    assert (one["seq"], [r["run"] for r in one["runs"]]) == (5, ["a"])
    assert (one["runs"][0]["done"], one["runs"][0]["accuracy"]) == (2, 0.5)
    assert same(one["runs"][0], rows["a"])
    assert (two["seq"], [r["run"] for r in two["runs"]]) == (7, ["b"])
    assert same(two["runs"][0], rows["b"]) and two["runs"][0]["status"] == "running"


async def test_one_runs_reader_gets_its_item_rows_as_answers_csv_has_them(
        daemon: Daemon) -> None:
    run = "r1"
    async with httpx.AsyncClient(base_url=daemon.url, headers=AUTH) as c:
        await c.post("/api/events", json=[
            submitted(run, total=4, name="one"), started(run, total=4), completed(run, 1),
            failed(run, 2), completed("other", 1), completed(run, 3, score=0.0)])
        async with open_ws(state_url(daemon, run="one", after=0)) as ws:
            first = await message(ws)
            detail = (await c.get(f"/api/runs/{run}")).json()
            kept = answers.latest(daemon.live.log.read(run=run))
            assert first["items"] == [answers.served(e) for e in kept.values()]
            assert [(r["item"], r["outcome"]) for r in first["items"]] == [
                ("1", "correct"), ("2", "failed"), ("3", "wrong")]
            assert [r["run"] for r in first["runs"]] == [run]
            assert same(first["runs"][0], detail)
            assert first["summary"] == detail["summary"]

            # a failed retry of a completed item changes no row; a retry that completes does
            await c.post("/api/events", json=[failed(run, 1, attempt=1)])
            undone = await message(ws)
            await c.post("/api/events", json=[completed("other", 2)])  # not this run's
            await c.post("/api/events", json=[{**completed(run, 2), "key": f"{run}/item/2/1"}])
            retried = await message(ws)
            await c.post("/api/events", json=[finished(run)])
            end = await message(ws)
            final = (await c.get(f"/api/runs/{run}")).json()
    assert (undone["items"], undone["runs"][0]["done"]) == ([], 2)
    assert [(r["item"], r["outcome"], r["error"]) for r in retried["items"]] == [
        ("2", "correct", None)]
    assert retried["seq"] == undone["seq"] + 2
    assert end["runs"][0]["status"] == "finished" and end["items"] == []
    assert end["summary"] == final["summary"]  # a run that ended always gets its summary
    assert end["summary"]["completed"] == 3


async def test_after_resumes_with_only_what_changed_since(daemon: Daemon) -> None:
    async with httpx.AsyncClient(base_url=daemon.url, headers=AUTH) as c:
        await c.post("/api/events", json=[submitted("a"), completed("a", 1), submitted("b"),
                                          completed("b", 1)])
        await c.post("/api/events", json=[completed("a", 2), failed("a", 1, attempt=1)])
    async with open_ws(state_url(daemon, after=4)) as ws:
        everything = await message(ws)
    async with open_ws(state_url(daemon, run="a", after=4)) as ws:
        one = await message(ws)
    assert everything["seq"] == 6 and [r["run"] for r in everything["runs"]] == ["a"]
    assert [r["item"] for r in one["items"]] == ["2"]  # item 1 kept its completion
    async with open_ws(state_url(daemon, after=6)) as ws, \
            httpx.AsyncClient(base_url=daemon.url, headers=AUTH) as c:
        assert await message(ws) == {"seq": 6, "runs": []}
        await c.post("/api/events", json=[completed("b", 2)])
        assert [r["run"] for r in (await message(ws))["runs"]] == ["b"]


async def test_nothing_is_built_while_nobody_follows_the_state(daemon: Daemon) -> None:
    states = daemon.live.states
    async with httpx.AsyncClient(base_url=daemon.url, headers=AUTH) as c:
        for i in range(5):
            await c.post("/api/events", json=[completed("a", i)])
        assert states.built == 0
        async with open_ws(state_url(daemon)) as ws:
            await message(ws)
            await c.post("/api/events", json=[completed("a", 9)])
            await message(ws)
            assert states.built == 1
        with trio.fail_after(10):
            while states.feed.subscribers:
                await trio.sleep(0.01)
        await c.post("/api/events", json=[completed("a", 10)])
    assert states.built == 1


async def test_a_slow_state_reader_is_dropped_with_a_reconnect_hint(
        tmp_path: Path, nursery: trio.Nursery) -> None:
    d: Daemon = await nursery.start(serve, daemon_config(tmp_path / "v.db", feed_buffer=2))
    async with open_ws(state_url(d, run="r1")) as slow:
        await message(slow)
        async with httpx.AsyncClient(base_url=d.url, headers=AUTH, timeout=10) as c:
            with trio.fail_after(60):
                batches = 0
                while d.live.states.feed.dropped == 0 and batches < 2_000:
                    r = await c.post("/api/events", json=[
                        completed("r1", f"{batches}-{j}", question="q" * 4_000)
                        for j in range(20)])
                    assert r.status_code == 200
                    batches += 1
        code, reason = None, ""
        try:
            while True:
                await slow.get_message()
        except Closed as closed:
            code, reason = closed.code, closed.reason
    assert code == 1013 and reason.startswith("too slow; reconnect with after=")
    d.shutdown.set()


async def test_a_bad_after_or_an_ambiguous_name_is_refused(daemon: Daemon) -> None:
    async with httpx.AsyncClient(base_url=daemon.url, headers=AUTH) as c:
        await c.post("/api/events", json=[submitted("x1", name="twin"),
                                          submitted("x2", name="twin")])
    for query, says in (({"after": "-1"}, "after must be a non-negative integer"),
                        ({"run": "twin"}, "matches 2 runs")):
        async with open_ws(state_url(daemon, **query)) as ws:
            try:
                await ws.get_message()
                raise AssertionError("expected a policy close")
            except Closed as closed:
                assert closed.code == 1008 and says in closed.reason



def test_a_live_summary_comes_at_most_every_half_second_or_less_often_for_big_runs() -> None:
    now = [100.0]
    summaries = Summaries(clock=lambda: now[0])
    state = tracker.fold(stored([started("s"), completed("s", 1)])).runs["s"]
    old = Summaries.key(state)
    summaries.get(state)
    assert not summaries.due(state, old)  # the reader has this one
    tracker.apply(tracker.Tracker(runs={"s": state}), stored([completed("s", 2)], first=3)[0])
    assert summaries.due(state, old) is False  # changed, but the last one is 0 s old
    now[0] += SUMMARY_EVERY_S
    assert summaries.due(state, old)

    slow = iter([200.0, 201.0])  # a summary that took 1 s: 20 s between live ones
    summaries.clock = lambda: next(slow, now[0])
    summaries.get(state)
    key = Summaries.key(state)
    tracker.apply(tracker.Tracker(runs={"s": state}), stored([completed("s", 3)], first=4)[0])
    now[0] = 201.0 + 19.0
    assert not summaries.due(state, key)
    now[0] = 201.0 + 1 / SUMMARY_SHARE
    assert summaries.due(state, key)
    tracker.apply(tracker.Tracker(runs={"s": state}), stored([finished("s")], first=5)[0])
    now[0] = 201.0 + 1.0
    assert summaries.due(state, key)  # a run that ended gets its summary at once
