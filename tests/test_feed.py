"""The live feed: after commit, in seq order, no gap or duplicate at the seam, slow clients out."""

from __future__ import annotations

import json
import threading
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from wsproto.extensions import PerMessageDeflate

from tests.conftest import TOKEN, daemon_config
from tests.events import completed, submitted
from vlmd.cli.wsclient import Closed, WsClient, open_ws
from vlmd.daemon.serve import Daemon, serve
from vlmd.live import wsframes
from vlmd.live.state import FRAME_EVENTS, _frames
from vlmd.store.log import NOT_READ, Appended, Event

AUTH = {"authorization": f"Bearer {TOKEN}"}


def ws_url(d: Daemon, **query: Any) -> str:
    params = "&".join(f"{k}={v}" for k, v in query.items())
    return d.url.replace("http://", "ws://") + "/api/feed" + (f"?{params}" if params else "")


async def frames(ws: WsClient, until_seq: int) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    while not got or got[-1]["seq"] < until_seq:
        got += json.loads(await ws.get_message())
    return got


async def test_backlog_then_live_events_in_order(daemon: Daemon) -> None:
    async with httpx.AsyncClient(base_url=daemon.url, headers=AUTH) as c:
        await c.post("/api/events", json=[submitted("r1"), completed("r1", 1)])
        async with open_ws(ws_url(daemon, after=0)) as ws:
            backlog = json.loads(await ws.get_message())
            await c.post("/api/events", json=[completed("r1", 2), completed("r1", 3)])
            live = json.loads(await ws.get_message())
    assert [e["seq"] for e in backlog] == [1, 2]
    assert [e["seq"] for e in live] == [3, 4]
    assert live[0]["body"]["item"] == "2"
    assert live[0]["received"] >= live[0]["ts"] - 1e9


async def test_clients_with_and_without_deflate_get_the_same_frames(daemon: Daemon) -> None:
    offers: list[PerMessageDeflate | bool] = [
        False, True, PerMessageDeflate(server_max_window_bits=9)]
    answers = [f"answer {i} " * (i % 7) for i in range(400)]
    async with httpx.AsyncClient(base_url=daemon.url, headers=AUTH) as c, \
            AsyncExitStack() as stack:
        await c.post("/api/events", json=[submitted("r1")] + [
            completed("r1", i, answer=answers[i]) for i in range(200)])
        clients = [await stack.enter_async_context(open_ws(ws_url(daemon, after=0), deflate=o))
                   for o in offers]
        with trio.fail_after(10):
            while len(daemon.live.feed.subscribers) < 3:
                await trio.sleep(0.01)
        assert sorted(s.deflate for s in daemon.live.feed.subscribers) == [0, 9, 15]
        await c.post("/api/events", json=[
            completed("r1", i, answer=answers[i]) for i in range(200, 400)])
        got = [await frames(ws, 401) for ws in clients]
    assert got[0] == got[1] == got[2]
    assert [e["seq"] for e in got[0]] == list(range(1, 402))
    assert [e["body"]["answer"] for e in got[0][1:]] == answers


async def test_a_deflating_clients_backlog_is_compressed_off_the_trio_thread(
        daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    on_trio_thread: list[bool] = []
    build = wsframes.build

    def spy(wanted: list[tuple[wsframes.FrameText, int]]) -> None:
        on_trio_thread.append(threading.current_thread() is threading.main_thread())
        build(wanted)
    monkeypatch.setattr(wsframes, "build", spy)
    async with httpx.AsyncClient(base_url=daemon.url, headers=AUTH) as c:
        await c.post("/api/events", json=[submitted("r1")] + [
            completed("r1", i) for i in range(1500)])
    async with open_ws(ws_url(daemon, after=0)) as ws:
        got = await frames(ws, 1501)
    assert [e["seq"] for e in got] == list(range(1, 1502))
    assert len(on_trio_thread) >= 2 and not any(on_trio_thread)  # each built in a thread


async def test_without_after_only_new_events_arrive_and_run_filters(daemon: Daemon) -> None:
    async with httpx.AsyncClient(base_url=daemon.url, headers=AUTH) as c:
        await c.post("/api/events", json=[submitted("a"), submitted("b")])
        async with open_ws(ws_url(daemon, run="b")) as ws:
            await c.post("/api/events", json=[completed("a", 1), completed("b", 1)])
            got = json.loads(await ws.get_message())
    assert [(e["seq"], e["run"]) for e in got] == [(4, "b")]


async def test_reconnecting_with_after_sees_every_event_exactly_once(daemon: Daemon) -> None:
    total = 60

    async def producer() -> None:
        async with httpx.AsyncClient(base_url=daemon.url, headers=AUTH) as c:
            for i in range(total):
                await c.post("/api/events", json=[completed("r1", f"{i}-{j}") for j in range(5)])
                await trio.sleep(0.003)

    seen: list[int] = []
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(producer)
            while not seen or seen[-1] < total * 5:
                after = seen[-1] if seen else 0
                async with open_ws(ws_url(daemon, after=after)) as ws:
                    for _ in range(3):  # read a few frames, then drop the connection
                        seen += [e["seq"] for e in json.loads(await ws.get_message())]
                        if seen[-1] >= total * 5:
                            break
    assert seen == list(range(1, total * 5 + 1))


async def test_a_slow_client_is_dropped_with_a_reconnect_hint_and_ingest_goes_on(
        tmp_path: Path, nursery: trio.Nursery) -> None:
    d: Daemon = await nursery.start(serve, daemon_config(tmp_path / "v.db", feed_buffer=2))
    big = "x" * 4_000
    async with open_ws(ws_url(d, after=0)) as slow:
        async with httpx.AsyncClient(base_url=d.url, headers=AUTH, timeout=10) as c:
            with trio.fail_after(60):  # a stalled ingest would hang here
                batches = 0
                while d.live.feed.dropped == 0 and batches < 2_000:
                    r = await c.post("/api/events", json=[
                        completed("r1", f"{batches}-{j}", note=big) for j in range(20)])
                    assert r.status_code == 200
                    batches += 1
        assert d.live.feed.dropped == 1
        assert d.live.log.last_seq == batches * 20
        code, reason = None, ""
        try:
            while True:
                await slow.get_message()
        except Closed as closed:
            code, reason = closed.code, closed.reason
    assert code == 1013
    assert reason.startswith("too slow; reconnect with after=")
    d.shutdown.set()


async def test_a_bad_after_is_refused_with_a_policy_close(daemon: Daemon) -> None:
    async with open_ws(ws_url(daemon, after="minus-one")) as ws:
        try:
            await ws.get_message()
            raise AssertionError("expected the server to close")
        except Closed as closed:
            assert closed.code == 1008
            assert "after must be a non-negative integer" in closed.reason


async def test_stopping_the_daemon_tells_clients_to_reconnect(daemon: Daemon) -> None:
    async with open_ws(ws_url(daemon)) as ws:
        daemon.shutdown.set()
        try:
            await ws.get_message()
            raise AssertionError("expected the server to close")
        except Closed as closed:
            assert closed.code == 1001
            assert "reconnect with after=0" in closed.reason


def test_a_group_commit_is_cut_into_frames_of_whole_batches() -> None:
    def appended(first: int, n: int) -> Appended:
        events = [Event(s, f"k{s}", "r", "item.completed", 1.0, 2.0, NOT_READ, "{}")
                  for s in range(first, first + n)]
        return Appended(events, 0, first + n - 1)

    def cut(*sizes: int) -> list[list[int]]:
        results, first = [], 1
        for n in sizes:
            results.append(appended(first, n))
            first += n
        return [[e.seq for e in frame] for frame in _frames(results)]

    assert cut(2, 3) == [[1, 2, 3, 4, 5]]  # small batches share a frame
    assert cut(FRAME_EVENTS - 1, 1, 1) == [list(range(1, FRAME_EVENTS + 1)), [FRAME_EVENTS + 1]]
    assert cut(FRAME_EVENTS + 5, 1) == [list(range(1, FRAME_EVENTS + 6)), [FRAME_EVENTS + 6]]
    assert cut(1, 0, 1) == [[1, 2]]  # a batch of duplicates only adds nothing
    assert cut(0) == []


async def test_batches_posted_at_once_reach_a_client_in_fewer_frames(daemon: Daemon) -> None:
    posts = 40
    async with httpx.AsyncClient(base_url=daemon.url, headers=AUTH) as c:
        await c.post("/api/events", json=[submitted("r1")])
        async with open_ws(ws_url(daemon)) as ws:
            async def post(i: int) -> None:
                r = await c.post("/api/events", json=[completed("r1", i)])
                assert r.status_code == 200

            async with trio.open_nursery() as nursery:
                for i in range(posts):
                    nursery.start_soon(post, i)
            messages: list[list[dict[str, Any]]] = []
            while sum(map(len, messages)) < posts:
                messages.append(json.loads(await ws.get_message()))
    assert [e["seq"] for m in messages for e in m] == list(range(2, posts + 2))
    assert len(messages) < posts  # the batches that waited for one commit came as one frame
