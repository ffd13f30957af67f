"""Datasette as a real child process of the daemon, read-only on the live log; `vlmd datasette`."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import trio

from tests.conftest import TOKEN, daemon_config
from tests.events import completed, ev, failed, finished, started, submitted
from tests.ports import free_port
from tests.test_views import gpu, sample_batch, sample_one
from vlmd.daemon.datasette_meta import QUERIES, TABLES
from vlmd.daemon.serve import Daemon, serve
from vlmd.store.migrations import MIGRATIONS

AUTH = {"authorization": f"Bearer {TOKEN}"}
VIEWS = ("runs", "items", "samples", "alerts", "model_summary", "category_summary")


def datasette_children() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True)
            if "datasette" in " ".join(p.cmdline())]


async def wait_up(url: str, timeout: float = 60) -> None:
    deadline = trio.current_time() + timeout
    async with httpx.AsyncClient() as c:
        while True:
            try:
                if (await c.get(f"{url}/-/versions.json")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert trio.current_time() < deadline, f"Datasette did not answer at {url}"
            await trio.sleep(0.1)


async def keep_appending(d: Daemon, stop: trio.Event) -> None:
    async with httpx.AsyncClient(base_url=d.url, headers=AUTH) as c:
        i = 0
        while not stop.is_set():
            batch = [completed("ds", 100 + i, ttft=float(i)),
                     sample_one("ds", 1.79e9 + i, [gpu(0, 1000.0 + i)])]
            assert (await c.post("/api/events", json=batch)).status_code == 200
            i += 1
            await trio.sleep(0.01)


def seed_events() -> list[dict[str, Any]]:
    return [submitted("ds", total=500, name="dash"), started("ds", total=500),
            completed("ds", 1, ttft=900.0, category="OCR"), failed("ds", 2, "oom"),
            failed("ds", 3, "timeout"),
            sample_batch("ds", 1.79e9, 3),
            ev("ds", "alert.vram_high", {"message": "95%"}, ts=1.79e9 + 0.05),
            submitted("other"), finished("other")]


async def test_the_daemon_runs_datasette_over_the_live_log(tmp_path: Path,
                                                           nursery: trio.Nursery) -> None:
    port = free_port()
    config = daemon_config(tmp_path / "live.db").replace(datasette={"enabled": True,
                                                                    "port": port})
    d: Daemon = await nursery.start(serve, config)
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=d.url, headers=AUTH) as c:
        assert (await c.post("/api/events", json=seed_events())).status_code == 200
        assert (await c.get("/healthz")).json()["datasette_url"] == url
    await wait_up(url)
    stop = trio.Event()
    nursery.start_soon(keep_appending, d, stop)
    async with httpx.AsyncClient(base_url=f"{url}/vlmd", timeout=30) as ds:
        counts = []
        for _ in range(3):  # the rows grow while the daemon appends
            for view in ("events", *VIEWS):
                r = await ds.get(f"/{view}.json", params={"_shape": "array", "_size": "max"})
                assert r.status_code == 200, (view, r.text)
                assert isinstance(r.json(), list) and r.json(), view
            items = (await ds.get("/items.json", params={"_shape": "array", "_size": "max",
                                                         "run": "ds"})).json()
            counts.append(len(items))
            await trio.sleep(0.2)
        assert counts == sorted(counts) and counts[-1] > counts[0] >= 3
        answers = {}
        for name in QUERIES:
            r = await ds.get(f"/{name}.json", params={"_shape": "array", "run": "",
                                                      "window_s": ""})
            assert r.status_code == 200, (name, r.text)
            answers[name] = r.json()
        assert answers["slowest_items"][0]["e2e_ms"] == 1000.0  # item 1: ttft 900 + 100
        assert {(a["run"], a["reason"]) for a in answers["failed_by_reason"]} == {
            ("ds", "oom"), ("ds", "timeout")}
        peaks = {(p["host"], p["gpu"]): p["peak_mem_used_mb"] for p in answers["vram_peaks"]}
        assert peaks[("node-2", 0)] == 1002.0 and peaks[("node-2", 1)] == 2000.0
        assert answers["samples_around_alerts"][0]["kind"] == "alert.vram_high"
        write = await ds.get(f"{url}/vlmd.json", params={"sql": "DELETE FROM events"})
        assert write.status_code == 400
        meta = (await ds.get(f"{url}/-/metadata.json")).json()["databases"]["vlmd"]
        for table, (_, _, columns) in TABLES.items():
            assert set(meta["tables"][table]["columns"]) == {c for c, _, _ in columns}
        assert meta["tables"]["items"]["units"]["ttft_ms"] == "ms"
    stop.set()

    [child] = datasette_children()
    child.kill()
    await trio.sleep(0.2)
    await wait_up(url)
    [again] = datasette_children()
    assert again.pid != child.pid
    d.shutdown.set()
    with trio.fail_after(30):
        while again.is_running() and again.status() != psutil.STATUS_ZOMBIE:
            await trio.sleep(0.05)


@pytest.mark.parametrize("applied", [1, 2])  # no views yet; the views of 0002
def test_vlmd_datasette_opens_an_old_copy_without_writing_it(tmp_path: Path,
                                                               applied: int) -> None:
    old = tmp_path / "old-log.db"
    conn = sqlite3.connect(old, isolation_level=None)
    conn.execute("CREATE TABLE migrations (name TEXT PRIMARY KEY, applied REAL)")
    for name, steps in MIGRATIONS[:applied]:
        for step in steps:
            conn.execute(step)
        conn.execute("INSERT INTO migrations VALUES (?, 0)", (name,))
    conn.execute("INSERT INTO events (key, run, kind, ts, received, body) VALUES "
                 "('k1', 'old', 'item.completed', 1, 2, '{\"item\": 7, \"answer\": \"C\"}')")
    conn.close()
    before = old.read_bytes()
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "vlmd", "datasette", str(old), "--port",
                             str(port)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env={**os.environ, "VLMD_CONFIG": ""})
    try:
        rows = None
        deadline = time.monotonic() + 60
        while rows is None and time.monotonic() < deadline:
            try:
                rows = httpx.get(f"http://127.0.0.1:{port}/vlmd/items.json",
                                 params={"_shape": "array"}).json()
            except httpx.TransportError:
                time.sleep(0.1)
        assert rows is not None and [(r["run"], r["item"], r["answer"], r["outcome"])
                                     for r in rows] == [("old", "7", "C", "unscored")]
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert "predates this vlmd's SQL views: serving a migrated snapshot" in out
    assert old.read_bytes() == before


def test_the_metadata_describes_every_column_of_every_view(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "v.db")
    conn.execute("CREATE TABLE migrations (name TEXT PRIMARY KEY, applied REAL)")
    for _, steps in MIGRATIONS:
        for step in steps:
            conn.execute(step)
    for table, (_, _, columns) in TABLES.items():
        have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        assert have == {c for c, _, _ in columns}, table
    conn.close()
