"""Replay into the live channel, time travel with `vlmd state --at`, and `vlmd export`."""

from __future__ import annotations

import csv
import importlib
import importlib.util
import io
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import trio

from tests.conftest import TOKEN
from tests.events import completed, ev, failed, finished, started, submitted
from tests.test_views import sample_batch
from vlmd.cli.wsclient import open_ws
from vlmd.daemon.serve import Daemon
from vlmd.projections import answers, tracker
from vlmd.store.log import Event

AUTH = {"authorization": f"Bearer {TOKEN}"}


def run_events(run: str, items: int = 60) -> list[dict[str, Any]]:
    out = [submitted(run, total=items, name=f"{run}-name"), started(run, total=items)]
    for i in range(items):
        out.append(failed(run, i, "timeout") if i % 7 == 3 else completed(run, i, ttft=10.0 + i))
        if i % 10 == 0:
            out.append(sample_batch(run, 1.79e9 + i, 2))
        if i % 14 == 3:  # a retry that succeeds after the failure
            out.append({**completed(run, i, ttft=5.0), "key": f"{run}/item/{i}/1"})
    out.append(ev(run, "alert.vram_high", {"message": "VRAM 95%"}))
    return [*out, finished(run)]


def config_file(tmp_path: Path, d: Daemon) -> Path:
    path = tmp_path / "cli.toml"
    path.write_text(f'[server]\nport = {d.url.rsplit(":", 1)[1]}\ntoken = "{TOKEN}"\n'
                    f'[log]\npath = "{d.live.log.path}"\n[datasette]\nenabled = false\n')
    return path


async def vlmd(*args: str) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process([sys.executable, "-m", "vlmd", *args], capture_stdout=True,
                                  capture_stderr=True, check=False)


async def post_all(d: Daemon, events: list[dict[str, Any]], size: int = 25) -> None:
    async with httpx.AsyncClient(base_url=d.url, headers=AUTH) as c:
        for i in range(0, len(events), size):
            assert (await c.post("/api/events", json=events[i:i + size])).status_code == 200


async def collect(url: str, count: int, into: list[dict[str, Any]],
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    async with open_ws(url) as ws:
        task_status.started()
        while len(into) < count:
            into.extend(json.loads(await ws.get_message()))


def as_event(e: dict[str, Any]) -> Event:
    return Event(e["seq"], e["key"], e["run"], e["kind"], e["ts"], e["received"], e["body"],
                 orjson.dumps(e["body"]).decode())


async def test_replay_reproduces_the_run_without_touching_the_log(
        daemon: Daemon, tmp_path: Path, nursery: trio.Nursery) -> None:
    await post_all(daemon, run_events("rp") + run_events("other", 5))
    count = daemon.live.log.count()
    async with httpx.AsyncClient(base_url=daemon.url) as c:
        original = (await c.get("/api/runs/rp")).json()
        original_csv = (await c.get("/api/runs/rp/answers.csv")).text
    n = sum(1 for _ in daemon.live.log.read(run="rp"))
    got: list[dict[str, Any]] = []
    ws_url = daemon.url.replace("http", "ws") + "/api/replay?run=rp-name"
    await nursery.start(collect, ws_url, n, got)
    done = await vlmd("replay", "rp-name", "--speed", "1000", "--config",
                      str(config_file(tmp_path, daemon)))
    assert done.returncode == 0, done.stderr.decode()
    assert f"replayed {n} events of rp" in done.stdout.decode()
    with trio.fail_after(10):
        while len(got) < n:
            await trio.sleep(0.01)
    assert [e["seq"] for e in got] == [e.seq for e in daemon.live.log.read(run="rp")]
    replayed = tracker.fold(as_event(e) for e in got).runs["rp"].to_dict()
    assert replayed == {k: v for k, v in original.items() if k in replayed}
    rows = answers.fold(as_event(e) for e in got).values()
    assert "".join(answers.csv_chunks(rows)) == original_csv
    assert daemon.live.log.count() == count
    assert daemon.live.head == count


async def test_replay_keeps_the_spacing_scaled_by_speed_and_reads_any_log_file(
        daemon: Daemon, tmp_path: Path, nursery: trio.Nursery) -> None:
    events = [ev("sp", "watchdog.heartbeat", {"host": "h", "pid": 1, "wrapper_pid": None,
                                              "wrapper_state": "idle"}, ts=1.79e9 + i * 0.2)
              for i in range(11)]  # 2 s of heartbeats
    await post_all(daemon, events)
    copy = tmp_path / "copy.db"
    src = sqlite3.connect(daemon.live.log.path)
    with sqlite3.connect(copy) as dst:
        src.backup(dst)
    src.close()
    got: list[dict[str, Any]] = []
    await nursery.start(collect, daemon.url.replace("http", "ws") + "/api/replay?run=sp",
                        11, got)
    began = time.monotonic()
    done = await vlmd("replay", "sp", "--speed", "4", "--db", str(copy), "--config",
                      str(config_file(tmp_path, daemon)))
    took = time.monotonic() - began
    assert done.returncode == 0, done.stderr.decode()
    assert 0.5 <= took < 0.5 + 5.0  # 2 s of events at 4x, plus start-up
    played = float(done.stdout.decode().split(" in ")[1].split(" s")[0])
    assert 0.49 <= played < 0.8
    with trio.fail_after(5):
        while len(got) < 11:
            await trio.sleep(0.01)
    assert [e["ts"] for e in got] == [e["ts"] for e in events]


async def test_replay_posts_need_the_token_and_well_formed_events(daemon: Daemon) -> None:
    async with httpx.AsyncClient(base_url=daemon.url) as c:
        anonymous = await c.post("/api/replay", json=[])
        bad = await c.post("/api/replay", json=[{"seq": "x"}], headers=AUTH)
        ok = await c.post("/api/replay", json=[], headers=AUTH)
    assert anonymous.status_code == 401
    assert bad.status_code == 422 and "seq" in bad.json()["error"]
    assert ok.json() == {"published": 0, "clients": 0}


async def test_state_at_a_seq_or_time_matches_what_the_daemon_showed_then(
        daemon: Daemon, tmp_path: Path) -> None:
    events = run_events("st", 30)
    await post_all(daemon, events[:20])
    async with httpx.AsyncClient(base_url=daemon.url) as c:
        then = (await c.get("/api/runs/st")).json()
    seq, when = then.pop("head"), time.time()
    await trio.sleep(0.05)
    await post_all(daemon, events[20:])
    cfg = str(config_file(tmp_path, daemon))
    by_seq = await vlmd("state", "--at", str(seq), "st-name", "--config", cfg)
    by_time = await vlmd("state", "--at", f"@{when}", "st", "--config", cfg)
    everything = await vlmd("state", "--at", str(seq), "--config", cfg)
    now = await vlmd("state", "st", "--config", cfg)
    assert by_seq.returncode == 0, by_seq.stderr.decode()
    assert json.loads(by_seq.stdout) == then
    assert json.loads(by_time.stdout) == then
    assert json.loads(everything.stdout) == {"last_seq": seq, "runs": [
        {k: v for k, v in then.items() if k != "summary"}]}
    assert json.loads(now.stdout)["status"] == "finished" != then["status"]
    bad = await vlmd("state", "--at", "yesterday", "--config", cfg)
    assert bad.returncode == 2 and b"--at 'yesterday'" in bad.stderr


async def test_export_writes_csv_jsonl_and_explains_parquet(daemon: Daemon, tmp_path: Path) -> None:
    await post_all(daemon, run_events("ex", 12))
    async with httpx.AsyncClient(base_url=daemon.url) as c:
        original_csv = (await c.get("/api/runs/ex/answers.csv")).text
    cfg = str(config_file(tmp_path, daemon))
    as_csv = await vlmd("export", "ex-name", "--config", cfg)
    assert as_csv.stdout.decode() == original_csv
    out = tmp_path / "ex.jsonl"
    as_jsonl = await vlmd("export", "ex", "--format", "jsonl", "-o", str(out), "--config", cfg)
    assert as_jsonl.returncode == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [list(r) for r in rows] == [list(answers.COLUMNS)] * 12
    assert rows == list(answers.fold(daemon.live.log.read(run="ex")).values())
    assert [r["item"] for r in rows] == [r["item"] for r in csv.DictReader(io.StringIO(
        original_csv))]
    parquet = tmp_path / "ex.parquet"
    as_parquet = await vlmd("export", "ex", "--format", "parquet", "-o", str(parquet),
                            "--config", cfg)
    if importlib.util.find_spec("pyarrow") is None:
        assert as_parquet.returncode == 2
        assert b"parquet export needs pyarrow" in as_parquet.stderr
        assert b"pip install pyarrow" in as_parquet.stderr
        assert not parquet.exists()
    else:
        pq = importlib.import_module("pyarrow.parquet")
        assert as_parquet.returncode == 0
        assert pq.read_table(parquet).num_rows == 12
