"""Hostile WebSocket clients: one that stops reading holds no SQLite connection and little
memory, is cut off after ``server.send_timeout_s``, frees everything the moment it leaves; each
client has a byte budget; the number of clients is capped. (`scripts/bench_stalled` is the load
check: 500 such clients and 20 agents.)"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.conftest import TOKEN, daemon_config
from tests.events import completed, submitted
from tests.stalled import open_connections, stalled_client
from vlmd.cli.wsclient import Closed, open_ws
from vlmd.daemon.serve import Daemon, serve
from vlmd.live.feed import Feed
from vlmd.store.log import NOT_READ, Event

AUTH = {"authorization": f"Bearer {TOKEN}"}


async def start(tmp_path: Path, nursery: trio.Nursery, **server: Any) -> Daemon:
    """A daemon whose log holds ~6 MB of events: many backlog chunks for `after=0`."""
    d: Daemon = await nursery.start(serve, daemon_config(tmp_path / "vlmd.db", **server))
    async with httpx.AsyncClient(base_url=d.url, headers=AUTH, timeout=60) as c:
        assert (await c.post("/api/events", json=[submitted("r1")])).status_code == 200
        for first in range(0, 3_000, 500):
            r = await c.post("/api/events", json=[completed("r1", i, note="n" * 2_000)
                                                  for i in range(first, first + 500)])
            assert r.status_code == 200
    return d


async def wait_for(condition: Any, seconds: float = 10.0) -> None:
    with trio.fail_after(seconds):
        while not condition():
            await trio.sleep(0.05)


def stuck_writing(d: Daemon, n: int, for_s: float = 0.5) -> bool:
    """Whether `n` of `d`'s connections have had a write blocked for `for_s` seconds."""
    assert d.conns is not None
    since = trio.current_time() - for_s
    return sum(c.writing_since is not None and c.writing_since < since
               for c in d.conns.open) == n


async def test_a_stalled_client_holds_no_sqlite_connection_and_leaving_frees_everything(
        tmp_path: Path, nursery: trio.Nursery) -> None:
    d = await start(tmp_path, nursery, send_timeout_s=600.0)
    db = tmp_path / "vlmd.db"
    before = open_connections(os.getpid(), db)
    sockets = [await trio.to_thread.run_sync(stalled_client, d.url) for _ in range(3)]
    await wait_for(lambda: stuck_writing(d, 3), 30)  # each has read a backlog chunk
    assert open_connections(os.getpid(), db) == before == 1  # the writer's: no reader waits
    for s in sockets:
        s.close()
    await wait_for(lambda: not d.live.feed.subscribers)
    assert open_connections(os.getpid(), db) == before
    d.shutdown.set()


async def test_a_client_that_stops_reading_is_cut_off_after_send_timeout_s(
        tmp_path: Path, nursery: trio.Nursery) -> None:
    d = await start(tmp_path, nursery, send_timeout_s=1.0)
    s = await trio.to_thread.run_sync(stalled_client, d.url)
    await wait_for(lambda: len(d.live.feed.subscribers) == 1)
    await wait_for(lambda: not d.live.feed.subscribers, 10.0)

    def drain(s: socket.socket) -> int:  # what vlmd sent before it closed, then the end
        s.settimeout(10)
        got = 0
        try:
            while chunk := s.recv(1 << 16):
                got += len(chunk)
        except ConnectionResetError:
            pass
        return got

    got = await trio.to_thread.run_sync(drain, s)
    s.close()
    assert 0 < got < 6_000_000  # part of the backlog, then the connection was closed
    async with httpx.AsyncClient(base_url=d.url) as c:
        assert (await c.get("/healthz")).json()["feed_clients"] == 0
    async with open_ws(d.url.replace("http", "ws") + "/api/feed?after=3000") as ws:
        assert '"seq":3001' in await ws.get_message()  # and the feed serves on
    d.shutdown.set()


def _event(seq: int, size: int) -> Event:
    body = '{"item": "%d", "answer": "%s"}' % (seq, "a" * size)  # noqa: UP031
    return Event(seq, f"k{seq}", "r1", "item.completed", 1.0, 2.0, NOT_READ, body)


async def test_a_subscriber_is_dropped_once_its_unsent_frames_pass_its_byte_budget() -> None:
    feed = Feed(buffer=1_000, budget=10_000)
    slow, reader = feed.subscribe(None, 0), feed.subscribe(None, 0)
    for seq in range(1, 4):  # 3 x ~3 KB: within the budget
        feed.publish([_event(seq, 3_000)])
        reader.sent(reader.receive.receive_nowait())
    assert not slow.dropped and 9_000 < slow.queued <= 10_000
    feed.publish([_event(4, 3_000)])  # far below 1,000 frames, but over 10,000 bytes
    reader.sent(reader.receive.receive_nowait())
    assert slow.dropped and feed.dropped == 1 and slow not in feed.subscribers
    assert not reader.dropped and reader.queued == 0 and reader in feed.subscribers
    big = feed.subscribe(None, 4)
    feed.publish([_event(5, 50_000)])  # one frame over the budget goes to an idle client
    assert not big.dropped and big.queued > 50_000


async def test_more_clients_than_max_ws_clients_are_told_to_try_again(
        tmp_path: Path, nursery: trio.Nursery) -> None:
    d: Daemon = await nursery.start(serve, daemon_config(tmp_path / "vlmd.db",
                                                         max_ws_clients=2))
    base = d.url.replace("http", "ws")
    async with open_ws(base + "/api/feed") as first, open_ws(base + "/api/state") as second:
        await wait_for(lambda: len(d.live.feed.subscribers)
                       + len(d.live.states.feed.subscribers) == 2)
        for path in ("/api/feed", "/api/state"):
            async with open_ws(base + path) as third:
                with pytest.raises(Closed) as closed:
                    await third.get_message()
            assert closed.value.code == 1013
            assert "too many WebSocket clients (2)" in closed.value.reason
        assert first is not second
    await wait_for(lambda: not d.live.feed.subscribers and not d.live.states.feed.subscribers)
    async with httpx.AsyncClient(base_url=d.url, headers=AUTH) as c, \
            open_ws(base + "/api/feed") as again:
        await wait_for(lambda: len(d.live.feed.subscribers) == 1)
        assert (await c.post("/api/events", json=[submitted("r2")])).status_code == 200
        assert '"run":"r2"' in await again.get_message()
    d.shutdown.set()
