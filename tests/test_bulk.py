"""Bulk reads (``GET /api/events``): streamed in chunks, bounded in rows and bytes, a few at a
time; and a POST whose client leaves mid-body is one quiet 400, not an ERROR."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest
import trio

from tests.conftest import TOKEN, DaemonProcess
from tests.events import completed, submitted
from vlmd.daemon.serve import Daemon
from vlmd.web import bulk

AUTH = {"authorization": f"Bearer {TOKEN}"}


async def fill(d: Daemon, n: int, note: int = 1_000) -> None:
    async with httpx.AsyncClient(base_url=d.url, headers=AUTH, timeout=60) as c:
        assert (await c.post("/api/events", json=[submitted("r1")])).status_code == 200
        for first in range(0, n, 500):
            r = await c.post("/api/events", json=[completed("r1", i, note="n" * note)
                                                  for i in range(first, min(n, first + 500))])
            assert r.status_code == 200


async def test_events_are_streamed_and_an_answer_stops_at_the_byte_bound(
        daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    await fill(daemon, 300)
    monkeypatch.setattr(bulk, "MAX_BYTES", 50_000)
    got: list[dict[str, Any]] = []
    pages = 0
    async with httpx.AsyncClient(base_url=daemon.url) as c:
        while True:
            r = await c.get("/api/events", params={"after": got[-1]["seq"] if got else 0,
                                                   "limit": 100_000})
            assert r.status_code == 200
            assert "content-length" not in r.headers  # streamed, not built whole first
            page = orjson.loads(r.content)
            if not page:
                break
            assert len(r.content) < 50_000 + 2_000  # the bound, give or take one event
            got += page
            pages += 1
    assert [e["seq"] for e in got] == list(range(1, 302))  # each event once, in order
    assert pages >= 6


async def test_no_more_than_a_few_bulk_reads_run_at_once(
        daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    await fill(daemon, 2_000, note=100)
    running, most = [0], [0]
    lock = threading.Lock()
    real = bulk.read_chunk

    def counted(*args: Any) -> Any:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            time.sleep(0.01)  # long enough for the others to pile up
            return real(*args)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(bulk, "read_chunk", counted)
    monkeypatch.setattr(bulk, "CHUNK_EVENTS", 100)

    async def read_all(c: httpx.AsyncClient) -> None:
        r = await c.get("/api/events", params={"limit": 100_000})
        assert len(orjson.loads(r.content)) == 2_001

    async with httpx.AsyncClient(base_url=daemon.url, timeout=60) as c, \
            trio.open_nursery() as nursery:
        for _ in range(6):
            nursery.start_soon(read_all, c)
        with trio.fail_after(30):
            while most[0] < bulk.CONCURRENT:
                await trio.sleep(0.01)
            t0 = trio.current_time()
            assert (await c.get("/healthz")).status_code == 200
            assert trio.current_time() - t0 < 5.0
    assert most[0] == bulk.CONCURRENT == 2


def test_a_client_that_leaves_in_the_middle_of_its_body_is_not_an_error(
        daemon_proc: DaemonProcess) -> None:
    parts = urlsplit(daemon_proc.url)
    for _ in range(3):
        with socket.create_connection((parts.hostname, parts.port)) as s:
            s.sendall(f"POST /api/events HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                      f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
                      "Content-Length: 100000\r\n\r\n[{\"key\": ".encode())
            time.sleep(0.2)
    time.sleep(0.5)
    assert daemon_proc.post([submitted("r1")]).json()["appended"] == 1
    assert "Traceback" not in daemon_proc.stderr
    assert " ERROR " not in daemon_proc.stderr
    assert daemon_proc.stop() == 0

