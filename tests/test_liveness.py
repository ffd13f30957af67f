"""Liveness: heartbeat deadlines per agent, on trio's autojump clock, plus one real daemon."""

from __future__ import annotations

from typing import Any

import httpx
import trio

from tests.conftest import TOKEN
from tests.events import ev, finished, started, submitted, typed_body
from vlmd.daemon.serve import Daemon
from vlmd.live.liveness import Liveness, watch
from vlmd.store.log import Event

AUTH = {"authorization": f"Bearer {TOKEN}"}


def heartbeat(run: str = "r1", pid: int = 7, seq: int = 1, **extra: Any) -> Event:
    body = {"host": "gpu-1", "pid": pid, "wrapper_pid": 8, "wrapper_state": "running", **extra}
    return Event(seq, f"hb{seq}", run, "watchdog.heartbeat", 100.0 + seq, 100.0,
                 typed_body("watchdog.heartbeat", body), "")


def test_an_agent_is_lost_three_heartbeats_after_the_last_one_and_reported_once() -> None:
    book = Liveness(heartbeat_s=1.0)
    book.observe([heartbeat(seq=1)], now=10.0)
    assert book.expired(12.99) == []
    gone = book.expired(13.0)
    assert [(a.run, a.host, a.pid) for a in gone] == [("r1", "gpu-1", 7)]
    assert book.expired(20.0) == []
    book.observe([heartbeat(seq=2)], now=21.0)  # heard again: armed again
    assert book.next_deadline() == 24.0


def test_the_heartbeat_can_announce_its_own_interval() -> None:
    book = Liveness(heartbeat_s=1.0)
    book.observe([heartbeat(heartbeat_s=0.1)], now=0.0)
    assert abs(book.next_deadline() - 0.3) < 1e-9


def test_a_finished_run_or_shard_forgets_its_agents() -> None:
    book = Liveness(heartbeat_s=1.0)
    book.observe([heartbeat(pid=1, seq=1, shard="0/2"), heartbeat(pid=2, seq=2, shard="1/2")],
                 now=0.0)
    book.observe([Event(3, "f", "r1", "run.finished", 1.0, 1.0,
                        typed_body("run.finished", {"shard": "0/2"}), "")], now=1.0)
    assert [a.pid for a in book.agents.values()] == [2]
    book.observe([Event(4, "c", "r1", "run.cancelled", 1.0, 1.0, typed_body("run.cancelled", {}),
                        "")], now=1.0)
    assert book.agents == {}
    assert book.expired(100.0) == []


async def test_watch_appends_agent_lost_at_the_deadline(autojump_clock: Any) -> None:
    book = Liveness(heartbeat_s=1.0)
    appended: list[tuple[float, dict[str, Any]]] = []

    async def append(events: list[dict[str, Any]]) -> None:
        appended.extend((trio.current_time(), e) for e in events)

    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        book.observe([heartbeat(seq=5)], now=start)
        await nursery.start(watch, book, append)
        await trio.sleep(2.9)
        assert appended == []
        await trio.sleep(0.5)
        assert len(appended) == 1
        at, event = appended[0]
        assert 3.0 <= at - start <= 3.0 + 0.25
        assert event["kind"] == "alert.agent_lost"
        assert event["key"] == "r1/agent_lost/gpu-1/7/5"
        assert "no heartbeat from the agent on gpu-1 (pid 7) for 3 s" in event["body"]["message"]
        await trio.sleep(10)
        assert len(appended) == 1  # once per silence
        book.observe([heartbeat(seq=6)], now=trio.current_time())
        await trio.sleep(3.3)
        assert len(appended) == 2
        nursery.cancel_scope.cancel()


async def test_a_silent_agent_stalls_its_run_and_a_heartbeat_clears_it(daemon: Daemon) -> None:
    beat = {"host": "gpu-1", "pid": 9, "wrapper_pid": 10, "wrapper_state": "running",
            "heartbeat_s": 0.1}
    async with httpx.AsyncClient(base_url=daemon.url, headers=AUTH) as c:
        await c.post("/api/events", json=[submitted("r1"), started("r1"),
                                          ev("r1", "watchdog.heartbeat", beat)])
        with trio.fail_after(10):
            while (await c.get("/api/runs/r1")).json()["status"] != "stalled":
                await trio.sleep(0.05)
        alerts = (await c.get("/api/events", params={"kind": "alert.agent_lost"})).json()
        assert [a["body"]["pid"] for a in alerts] == [9]
        await c.post("/api/events", json=[ev("r1", "watchdog.heartbeat", beat)])
        assert (await c.get("/api/runs/r1")).json()["status"] == "running"
        await c.post("/api/events", json=[finished("r1")])
        await trio.sleep(0.5)
        run = (await c.get("/api/runs/r1")).json()
    assert run["status"] == "finished"
    assert run["alerts"] == 1


def test_heartbeats_after_a_shard_ended_do_not_arm_a_deadline_until_it_starts_again() -> None:
    book = Liveness(heartbeat_s=1.0)
    book.observe([Event(1, "f", "r1", "run.finished", 1.0, 1.0,
                        typed_body("run.finished", {"shard": "0/2"}), "")], now=0.0)
    book.observe([heartbeat(seq=2, shard="0/2")], now=1.0)  # the agent flushing on its way out
    assert book.agents == {}
    book.observe([heartbeat(seq=3, shard="1/2")], now=1.0)
    assert [a.shard for a in book.agents.values()] == ["1/2"]
    book.observe([Event(4, "s", "r1", "run.started", 2.0, 2.0, typed_body(
        "run.started", {"total": 3, "host": "h", "pid": 1, "shard": "0/2"}), "")], now=2.0)
    book.observe([heartbeat(pid=8, seq=5, shard="0/2")], now=2.0)  # resumed: watched again
    assert sorted(a.shard or "" for a in book.agents.values()) == ["0/2", "1/2"]
