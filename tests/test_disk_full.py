"""A full disk: vlmd keeps serving reads, refuses writes with 507 (and says why in /healthz and
its log), agents' outboxes keep the events and retry, and once space returns everything is
appended exactly once, with an intact log.

Two ways to fill the disk, both ending in SQLite's real SQLITE_FULL from the real writer:
``tmpfs``: the log lives on a 4 MiB tmpfs that a ballast file fills to the last byte (needs
permission to mount; without it this case falls back to the next one and says so);
``page_limit``: ``PRAGMA max_page_count`` on the writer connection caps the file at its current
size, which is how SQLite reports a full disk without needing one.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trio

from tests.conftest import TOKEN, daemon_config
from tests.events import ev, started, submitted
from vlmd.cli.wsclient import open_ws
from vlmd.daemon.serve import Daemon, serve
from vlmd_agent.outbox.spool import Outbox

AUTH = {"authorization": f"Bearer {TOKEN}"}
RUN = "full-1"
MAX_PAGES = 4_294_967_294  # SQLite's largest max_page_count: no limit


class Disk:
    """Where the log lives, and how to fill and free its disk."""

    def __init__(self, folder: Path, method: str) -> None:
        self.folder, self.method = folder, method
        self.ballast = folder / "ballast"

    def fill(self, daemon: Daemon) -> None:
        if self.method == "tmpfs":
            fd = os.open(self.ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            try:
                for size in (1 << 16, 1 << 12, 1):  # to the last byte
                    try:
                        while True:
                            os.write(fd, b"\0" * size)
                    except OSError as e:
                        assert e.errno == errno.ENOSPC
            finally:
                os.close(fd)
            return
        log = daemon.live.log
        with log._lock:
            pages = log._conn.execute("PRAGMA page_count").fetchone()[0]
            log._conn.execute(f"PRAGMA max_page_count = {pages}")

    def free(self, daemon: Daemon) -> None:
        if self.method == "tmpfs":
            self.ballast.unlink()
            return
        log = daemon.live.log
        with log._lock:
            log._conn.execute(f"PRAGMA max_page_count = {MAX_PAGES}")


def _mount_tmpfs(folder: Path) -> bool:
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)],
                          capture_output=True, check=False)
    return done.returncode == 0


@pytest.fixture(params=["tmpfs", "page_limit"])
def disk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Disk]:
    folder = tmp_path / "disk"
    if request.param == "tmpfs" and _mount_tmpfs(folder):
        yield Disk(folder, "tmpfs")
        subprocess.run(["umount", str(folder)], check=True)
        return
    if request.param == "tmpfs":
        print("tmpfs: mounting is not permitted here; filling by max_page_count instead")
    folder.mkdir(exist_ok=True)
    yield Disk(folder, "page_limit")


@pytest.fixture
async def full_daemon(disk: Disk, nursery: trio.Nursery) -> AsyncIterator[Daemon]:
    d: Daemon = await nursery.start(serve, daemon_config(disk.folder / "vlmd.db"))
    yield d
    d.shutdown.set()


def items(n: int, tag: str) -> list[dict[str, Any]]:
    """`n` item events with ~2 KB answers, fresh keys."""
    return [ev(RUN, "item.completed", {"item": f"{tag}-{i}", "answer": "x" * 2000},
               key=f"{RUN}/item/{tag}-{i}/0") for i in range(n)]


def stored_keys(db: Path) -> list[str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = conn.execute("SELECT key, body FROM events ORDER BY seq").fetchall()
    finally:
        conn.close()
    for _, body in rows:  # no half-written row: every body is whole JSON
        assert isinstance(orjson.loads(body), dict)
    return [key for key, _ in rows]


async def test_a_full_disk_refuses_writes_with_507_serves_reads_and_recovers(
        disk: Disk, full_daemon: Daemon, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    d = full_daemon
    acked: list[str] = []
    async with httpx.AsyncClient(base_url=d.url, headers=AUTH, timeout=30) as c:
        first = [submitted(RUN), started(RUN), *items(20, "a")]
        assert (await c.post("/api/events", json=first)).status_code == 200
        acked += [e["key"] for e in first]

        await trio.to_thread.run_sync(disk.fill, d)
        refused: list[dict[str, Any]] = []
        for batch_no in range(400):  # until SQLite runs out of room (the WAL may hold some)
            batch = items(25, f"b{batch_no}")
            r = await c.post("/api/events", json=batch)
            if r.status_code == 507:
                refused = batch
                break
            assert r.status_code == 200, r.text
            acked += [e["key"] for e in batch]
        assert refused, "the disk never filled up"
        assert "disk full" in r.json()["error"] and "nothing was appended" in r.json()["error"]
        count = d.live.log.count()
        assert count == len(acked)

        # full: writes are refused again and again, nothing is appended; reads all work
        assert (await c.post("/api/events", json=refused)).status_code == 507
        health = (await c.get("/healthz")).json()
        assert health["ok"] is False and health["write_error"].startswith("disk full")
        assert (await c.get(f"/api/runs/{RUN}")).json()["done"] == len(acked) - 2
        listed = (await c.get("/api/events?after=0&limit=100000")).json()
        assert [e["key"] for e in listed] == acked
        async with open_ws(d.url.replace("http", "ws") + f"/api/feed?after={count - 1}") as ws:
            assert orjson.loads(await ws.get_message())[0]["seq"] == count
        assert d.live.log.count() == count

        # an agent's outbox holds what vlmd refuses and keeps trying
        outbox = Outbox(tmp_path / "spool.db", d.url, TOKEN, backoff=(0.05, 0.3)).start()
        later = items(10, "c")
        outbox.put_many([*refused, *later])
        await trio.sleep(1.5)
        stats = outbox.stats()
        assert stats.pending == len(refused) + len(later)
        assert stats.retries >= 2 and "507" in (stats.last_error or "")
        assert stats.dead == 0

        await trio.to_thread.run_sync(disk.free, d)
        with trio.fail_after(30):
            while outbox.backlog():
                await trio.sleep(0.05)
        await trio.to_thread.run_sync(outbox.close)
        acked += [e["key"] for e in [*refused, *later]]
        health = (await c.get("/healthz")).json()
        assert health["ok"] is True and health["write_error"] is None
        assert (await c.post("/api/events", json=items(5, "d"))).status_code == 200
        acked += [f"{RUN}/item/d-{i}/0" for i in range(5)]

    keys = stored_keys(d.live.log.path)
    assert keys == acked  # every acknowledged event, once, in order; nothing half-written
    assert d.live.tracker.find(RUN) is not None
    assert d.live.tracker.find(RUN).done == len(acked) - 2  # type: ignore[union-attr]
    refusals = [r for r in caplog.records if "refusing writes: disk full" in r.getMessage()]
    assert len(refusals) == 1 and refusals[0].levelno == logging.ERROR
    assert any("writes work again" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if r.exc_info]  # no traceback anywhere


async def test_vlmds_own_events_wait_for_space_instead_of_being_lost(
        disk: Disk, full_daemon: Daemon) -> None:
    """An agent that stops heartbeating while the disk is full: its alert.agent_lost is
    appended once space returns (the liveness task retries; it does not crash the daemon)."""
    d = full_daemon
    hb = {"host": "h", "pid": 7, "wrapper_pid": None, "wrapper_state": "running",
          "interval_s": 1.0}
    async with httpx.AsyncClient(base_url=d.url, headers=AUTH, timeout=30) as c:
        beat = [submitted(RUN), started(RUN),
                ev(RUN, "watchdog.heartbeat", hb, key=f"hb-{uuid.uuid4()}")]
        assert (await c.post("/api/events", json=beat)).status_code == 200
        await trio.to_thread.run_sync(disk.fill, d)
        for size in (25, 1):  # big batches, then single events into the last free bytes
            while (await c.post("/api/events", json=[
                    ev(RUN, "item.completed", {"item": uuid.uuid4().hex, "answer": "x" * 10})
                    for _ in range(size)])).status_code == 200:
                pass
        await trio.sleep(4)  # past the 3 missed heartbeats
        assert not [e for e in d.live.log.read(after=0) if e.kind == "alert.agent_lost"]
        assert (await c.get("/healthz")).json()["ok"] is False
        await trio.to_thread.run_sync(disk.free, d)
        with trio.fail_after(15):
            while not [e for e in d.live.log.read(after=0) if e.kind == "alert.agent_lost"]:
                await trio.sleep(0.1)
    assert os.path.exists(d.live.log.path)
