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
import trio

from tests.conftest import TOKEN
from tests.events import completed, ev, failed, finished, started, submitted
from tests.test_views import sample_batch
from vlmd.cli.wsclient import Closed, open_ws
from vlmd.daemon.serve import Daemon
from vlmd.projections import answers, tracker

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


async def replayed(url: str) -> tuple[list[dict[str, Any]], int, str]:
    """Every message of a replay, the close code and its reason."""
    got: list[dict[str, Any]] = []
    async with open_ws(url) as ws:
        try:
            with trio.fail_after(30):
                while True:
                    got.append(json.loads(await ws.get_message()))
        except Closed as closed:
            return got, closed.code, closed.reason


def replay_url(d: Daemon, **query: Any) -> str:
    params = "&".join(f"{k}={v}" for k, v in query.items())
    return d.url.replace("http", "ws", 1) + f"/api/replay?{params}"


async def test_replay_plays_the_run_through_the_fold_without_touching_the_log(
        daemon: Daemon) -> None:
    await post_all(daemon, run_events("rp") + run_events("other", 5))
    count = daemon.live.log.count()
    async with httpx.AsyncClient(base_url=daemon.url) as c:
        original = (await c.get("/api/runs/rp")).json()
    messages, code, _ = await replayed(replay_url(daemon, run="rp-name", speed=1000))
    assert code == 1000
    events = list(daemon.live.log.read(run="rp"))
    first, last = messages[0], messages[-1]
    assert (first["seq"], first["folded"], first["runs"], first["items"]) == (0, 0, [], [])
    assert first["span"] == {"events": len(events), "first_seq": events[0].seq,
                             "last_seq": events[-1].seq, "first_ts": events[0].ts,
                             "last_ts": max(e.ts for e in events)}
    assert [m["seq"] for m in messages] == sorted({m["seq"] for m in messages})
    assert last["end"] is True and last["folded"] == len(events)
    assert last["runs"] == [{k: v for k, v in original.items() if k not in ("summary", "head")}]
    assert last["summary"] == original["summary"]
    rows: dict[str, Any] = {}
    for m in messages:
        rows.update((r["item"], r) for r in m["items"])
    kept = answers.latest(events)
    assert rows == {item: answers.served(e) for item, e in kept.items()}
    played = [e for m in messages for e in m.get("events", [])]
    assert [e["seq"] for e in played] == [e.seq for e in events
                                          if e.kind in ("watchdog.sample", "alert.vram_high")]
    assert daemon.live.log.count() == count and daemon.live.head == count


async def test_replay_keeps_the_spacing_scaled_by_speed_here_or_from_any_log_file(
        daemon: Daemon, tmp_path: Path) -> None:
    events = [ev("sp", "watchdog.heartbeat", {"host": "h", "pid": 1, "wrapper_pid": None,
                                              "wrapper_state": "idle"}, ts=1.79e9 + i * 0.2)
              for i in range(11)]  # 2 s of heartbeats
    await post_all(daemon, events)
    began = time.monotonic()
    messages, code, _ = await replayed(replay_url(daemon, run="sp", speed=4))
    took = time.monotonic() - began
    assert code == 1000 and 0.5 <= took < 0.5 + 1.0
    assert [m["ts"] for m in messages[1:]] == [e["ts"] for e in events]
    assert messages[-1]["runs"][0]["last_heartbeat"] == events[-1]["ts"]

    copy = tmp_path / "copy.db"
    src = sqlite3.connect(daemon.live.log.path)
    with sqlite3.connect(copy) as dst:
        src.backup(dst)
    src.close()
    began = time.monotonic()
    done = await vlmd("replay", "sp", "--speed", "4", "--db", str(copy), "--config",
                      str(config_file(tmp_path, daemon)))
    took = time.monotonic() - began
    assert done.returncode == 0, done.stderr.decode()
    assert 0.5 <= took < 0.5 + 5.0  # 2 s of events at 4x, plus start-up
    assert "replayed 11 events of sp in " in done.stdout.decode()
    played = float(done.stdout.decode().split(" in ")[1].split(" s")[0])
    assert 0.49 <= played < 0.8
    assert "sp [" in done.stderr.decode()


async def test_vlmd_replay_shows_the_run_as_a_status_line_and_names_the_page(
        daemon: Daemon, tmp_path: Path) -> None:
    await post_all(daemon, run_events("cl", 20))
    done = await vlmd("replay", "cl-name", "--speed", "100000", "--config",
                      str(config_file(tmp_path, daemon)))
    assert done.returncode == 0, done.stderr.decode()
    err = done.stderr.decode()
    assert f"watch it at {daemon.url}/replay.html?run=cl" in err
    lines = [line for line in err.splitlines() if line.startswith("cl [")]
    assert lines[-1].startswith(f"cl [{'#' * 24}] 20/20  1 failed") and lines[-1].endswith(
        "finished with failures")
    assert f"replayed {len(list(daemon.live.log.read(run='cl')))} events of cl" in \
        done.stdout.decode()


async def test_the_state_at_a_position_is_the_fold_of_the_run_up_to_it(daemon: Daemon) -> None:
    await post_all(daemon, run_events("pos", 30))
    events = list(daemon.live.log.read(run="pos"))
    mid = events[len(events) // 2]
    async with httpx.AsyncClient(base_url=daemon.url) as c:
        by_seq = (await c.get("/api/runs/pos-name/state", params={"at": mid.seq})).json()
        by_ts = (await c.get("/api/runs/pos/state", params={"ts": mid.ts})).json()
        whole = (await c.get("/api/runs/pos/state")).json()
        bad = await c.get("/api/runs/pos/state", params={"at": "soon"})
        missing = await c.get("/api/runs/nope/state")
    upto = [e for e in events if e.seq <= mid.seq]
    state = tracker.fold(upto).runs["pos"]
    assert by_seq["runs"] == [state.to_dict()] and by_seq["seq"] == mid.seq
    assert by_seq["items"] == [answers.served(e) for e in answers.latest(upto).values()]
    assert by_seq["folded"] == len(upto) and by_seq["span"]["events"] == len(events)
    assert by_ts == by_seq  # the run's ts rise with its seqs here
    assert whole["runs"][0]["status"] == "finished" and whole["seq"] == events[-1].seq
    assert bad.status_code == 400 and "at must be an integer" in bad.json()["error"]
    assert missing.status_code == 404

    # a replay from that position starts with that very state
    messages, _, _ = await replayed(replay_url(daemon, run="pos", speed=100000, after=mid.seq))
    assert {k: messages[0][k] for k in ("seq", "runs", "items", "summary")} == {
        k: by_seq[k] for k in ("seq", "runs", "items", "summary")}
    assert messages[-1]["runs"] == whole["runs"]


async def test_a_replay_needs_a_run_and_a_sane_speed(daemon: Daemon) -> None:
    await post_all(daemon, run_events("sane", 2))
    for query, says in (({"speed": 2}, "give the run to replay"),
                        ({"run": "nope"}, "names no run"),
                        ({"run": "sane", "speed": 0}, "speed must be a number above 0"),
                        ({"run": "sane", "speed": "fast"}, "speed must be")):
        messages, code, reason = await replayed(replay_url(daemon, **query))
        assert (messages, code) == ([], 1008) and says in reason, (query, reason)
    async with httpx.AsyncClient(base_url=daemon.url, headers=AUTH) as c:
        gone = await c.post("/api/replay", json=[])
    assert gone.status_code in (404, 405)  # the old POST /api/replay is no more


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
