"""The agent's durable outbox against a real `vlmd serve`, real spool files and real signals."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import TOKEN, DaemonProcess, start_daemon
from tests.events import T0, completed
from tests.ports import free_port
from vlmd_agent.outbox.putlog import PutLog
from vlmd_agent.outbox.spool import Outbox

FAST = (0.05, 0.5)  # backoff for tests: vlmd comes back soon

CHILD = """
import sys, threading
from pathlib import Path
from vlmd_agent.outbox.spool import Outbox
box = Outbox(Path(sys.argv[1]), sys.argv[2], "test-token", backoff=(0.05, 0.2)).start()
for i in range(int(sys.argv[3])):
    box.put({"key": f"r-child/item/{i}/0", "run": "r-child", "kind": "item.completed",
             "ts": 1790000000.0 + i, "body": {"item": str(i), "answer": "B"}})
print("spooled", box.backlog(), flush=True)
threading.Event().wait()
"""




def logged_keys(db: Path) -> list[str]:
    """Every key in vlmd's event log, in seq order (read-only, beside the running daemon)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [k for (k,) in conn.execute("SELECT key FROM events ORDER BY seq")]
    finally:
        conn.close()


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll `condition` until it holds; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout}s"
        time.sleep(0.005)


def items(run: str, n: int, start: int = 0, **extra: Any) -> list[dict[str, Any]]:
    return [completed(run, i, **extra) for i in range(start, start + n)]


def keys(events: list[dict[str, Any]]) -> list[str]:
    return [e["key"] for e in events]


def test_put_validates_and_a_bad_event_spools_nothing(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "spool.db", "http://127.0.0.1:9", TOKEN)
    good = completed("r-val", 1)
    with pytest.raises(ValueError, match=r"body\.answer: required field is missing"):
        box.put({**good, "body": {"item": "1"}})
    with pytest.raises(ValueError, match=r"event 1: ts"):
        box.put_many([good, {**good, "key": "other", "ts": "yesterday"}])
    with pytest.raises(ValueError, match=r"body\.score: must be finite"):
        box.put({**good, "body": {**good["body"], "score": float("nan")}})
    with pytest.raises(ValueError, match="not JSON"):
        box.put({**good, "body": {**good["body"], "answer": "\ud800"}})
    with pytest.raises(ValueError, match="not JSON"):
        box.put({**good, "body": {**good["body"], "extra": {1, 2}}})
    assert box.backlog() == 0
    box.put(good)
    box.put(good)
    assert box.backlog() == 1
    box.close()


def test_events_put_while_vlmd_is_down_are_delivered_once_it_starts(tmp_path: Path) -> None:
    port = free_port()
    events = items("r-down", 300)
    with Outbox(tmp_path / "spool.db", f"http://127.0.0.1:{port}", TOKEN, backoff=FAST) as box:
        box.put_many(events[:100])
        for e in events[100:]:
            box.put(e)
        wait_for(lambda: box.stats().retries >= 2)
        assert box.backlog() == 300
        assert "unreachable (ConnectionRefusedError)" in (box.stats().last_error or "")
        vlmd = start_daemon(tmp_path / "vlmd.db", port=port)
        try:
            assert box.flush(60)
            assert box.backlog() == 0
            stats = box.stats()
            assert (stats.sent, stats.duplicates, stats.pending) == (300, 0, 0)
            assert logged_keys(vlmd.db) == keys(events)
        finally:
            vlmd.stop()


def test_sigkill_of_vlmd_mid_stream_then_restart_delivers_each_event_once(tmp_path: Path) -> None:
    vlmd = start_daemon(tmp_path / "vlmd.db")
    port = httpx.URL(vlmd.url).port
    assert port is not None
    events = items("r-kill", 2_000)
    box = Outbox(tmp_path / "spool.db", vlmd.url, TOKEN, batch_max=10, backoff=FAST).start()
    try:
        box.put_many(events[:1_000])
        wait_for(lambda: box.stats().sent > 0)
        vlmd.stop(signal.SIGKILL)
        assert 0 < box.stats().sent < 1_000, "the kill should land mid-stream"
        box.put_many(events[1_000:])
        vlmd = start_daemon(vlmd.db, port=port)
        assert box.flush(120)
        logged = logged_keys(vlmd.db)
        assert len(logged) == len(set(logged)) == 2_000
        assert set(logged) == set(keys(events))
        assert box.stats().sent == 2_000  # every event acknowledged once, resends as duplicates
    finally:
        box.close()
        vlmd.stop()


def test_a_producer_killed_before_sending_leaves_its_events_to_the_next_outbox(
        tmp_path: Path, daemon_proc: DaemonProcess) -> None:
    spool = tmp_path / "spool.db"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(spool),
                              f"http://127.0.0.1:{free_port()}", "500"],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    assert child.stdout.readline() == "spooled 500\n"
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait(30) == -signal.SIGKILL
    child.stdout.close()
    box = Outbox(spool, daemon_proc.url, TOKEN, backoff=FAST)
    assert box.backlog() == 500
    with box:
        assert box.flush(60)
    assert logged_keys(daemon_proc.db) == [f"r-child/item/{i}/0" for i in range(500)]


def test_a_put_log_left_by_a_crash_is_sent_and_a_write_cut_short_is_dropped_whole(
        tmp_path: Path, daemon_proc: DaemonProcess, caplog: pytest.LogCaptureFixture) -> None:
    spool, events = tmp_path / "spool.db", items("r-torn", 6)
    puts = PutLog(tmp_path / "spool.db.puts")  # as an Outbox writes it: one frame per put
    puts.append([(e["key"], json.dumps(e)) for e in events[:2]], time.time())  # a put_many
    puts.append([(events[2]["key"], json.dumps(events[2]))], time.time())
    puts.append([(e["key"], json.dumps(e)) for e in events[3:]], time.time())  # cut short
    puts.close()
    log_file = tmp_path / "spool.db.puts"
    log_file.write_bytes(log_file.read_bytes()[:-5])
    with Outbox(spool, daemon_proc.url, TOKEN, backoff=FAST) as box:
        assert box.backlog() == 3
        assert log_file.stat().st_size == 0  # filed into the spool's table
        assert box.flush(30)
    assert logged_keys(daemon_proc.db) == keys(events[:3])  # in order; the torn put_many: none
    assert any(r.levelno == logging.WARNING and "cut short by a crash" in r.getMessage()
               for r in caplog.records)


def test_the_put_log_reads_back_keys_and_events_of_any_characters(tmp_path: Path) -> None:
    path = tmp_path / "spool.db.puts"
    events = [("r/k:1\n2", '{"a":"\u00e9 \\n"}'), ("r/\u043a\u043b\u044e\u0447", '{"b":"\u2713"}')]
    puts = PutLog(path)
    puts.append(events, 1790000000.25)
    puts.close()
    with path.open("ab") as f:
        f.write('1 1790000001.0\n6:r/\u043a'.encode()[:-1])  # torn mid-key, mid-character
    again = PutLog(path)
    assert again.read() == ([(text, key, 1790000000.25) for key, text in events], 20)
    again.clear()
    assert again.read() == ([], 0) and path.stat().st_size == 0
    again.close()


def test_an_event_vlmd_refuses_goes_to_dead_and_the_rest_are_delivered(
        tmp_path: Path, daemon_proc: DaemonProcess, caplog: pytest.LogCaptureFixture) -> None:
    spool, events = tmp_path / "spool.db", items("r-dead", 10)
    old = Outbox(spool, daemon_proc.url, TOKEN)
    old.put_many(events[:5])
    old.close()
    # An event an older agent spooled that today's vlmd refuses: it sits amid good ones.
    bad: dict[str, Any] = {"key": "r-dead/item/bad/0", "run": "r-dead", "kind": "item.completed",
                           "ts": T0, "body": {"item": "bad"}}
    with sqlite3.connect(spool) as conn:
        conn.execute("INSERT INTO pending(key, event, queued) VALUES (?, ?, ?)",
                     (bad["key"], json.dumps(bad), time.time()))
    conn.close()
    with Outbox(spool, daemon_proc.url, TOKEN, backoff=FAST) as box:
        box.put_many(events[5:])
        assert box.flush(30)
        assert box.stats().dead == 1
        [dead] = box.dead_letters()
    assert (dead.key, json.loads(dead.event), dead.status) == (bad["key"], bad, 422)
    assert "body.answer: required field is missing" in dead.error
    assert logged_keys(daemon_proc.db) == keys(events)
    assert any(r.levelno == logging.WARNING and bad["key"] in r.getMessage()
               for r in caplog.records)


def test_a_spooled_row_vlmd_cannot_parse_is_isolated_by_halving_and_buried(
        tmp_path: Path, daemon_proc: DaemonProcess) -> None:
    spool, events = tmp_path / "spool.db", items("r-garbled", 40)
    Outbox(spool, daemon_proc.url, TOKEN).close()  # creates the spool's tables
    with sqlite3.connect(spool) as conn:
        rows = [(e["key"], json.dumps(e), time.time()) for e in events]
        rows.insert(23, ("garbled", '{"key": "garbled", "torn', time.time()))
        conn.executemany("INSERT INTO pending(key, event, queued) VALUES (?, ?, ?)", rows)
    conn.close()
    with Outbox(spool, daemon_proc.url, TOKEN, backoff=FAST) as box:
        assert box.flush(30)
        [dead] = box.dead_letters()
        assert box.stats().dead == 1
    assert (dead.key, dead.event, dead.status) == ("garbled", '{"key": "garbled", "torn', 400)
    assert "not valid JSON" in dead.error
    assert logged_keys(daemon_proc.db) == keys(events)


def test_a_second_outbox_on_the_same_spool_is_refused(tmp_path: Path) -> None:
    first = Outbox(tmp_path / "spool.db", "http://127.0.0.1:9", TOKEN)
    with pytest.raises(RuntimeError, match="in use by another Outbox"):
        Outbox(tmp_path / "spool.db", "http://127.0.0.1:9", TOKEN)
    first.close()
    Outbox(tmp_path / "spool.db", "http://127.0.0.1:9", TOKEN).close()


def test_a_batch_too_large_for_vlmd_is_split_and_a_lone_oversized_event_goes_to_dead(
        tmp_path: Path) -> None:
    config = tmp_path / "small.toml"
    config.write_text("[server]\nmax_body_mb = 0.02\n\n[datasette]\nenabled = false\n")
    vlmd = start_daemon(tmp_path / "vlmd.db", extra=["--config", str(config)])
    events = items("r-big", 200, question="q" * 400)
    huge = completed("r-big", "huge", question="q" * 30_000)
    try:
        with Outbox(tmp_path / "spool.db", vlmd.url, TOKEN, backoff=FAST) as box:
            box.put_many([*events[:100], huge, *events[100:]])
            assert box.flush(60)
            stats = box.stats()
            [dead] = box.dead_letters()
        assert logged_keys(vlmd.db) == keys(events)
        assert (dead.key, dead.status) == (huge["key"], 413)
        assert stats.batches >= 200 * 500 // 20_971  # every accepted batch fit under the limit
        assert stats.sent == 200
    finally:
        vlmd.stop()


def test_a_refused_token_keeps_the_events_and_says_so(
        tmp_path: Path, daemon_proc: DaemonProcess, caplog: pytest.LogCaptureFixture) -> None:
    spool, events = tmp_path / "spool.db", items("r-token", 10)
    with Outbox(spool, daemon_proc.url, "wrong-token", backoff=FAST) as box:
        box.put_many(events)
        wait_for(lambda: "vlmd refused the token" in (box.stats().last_error or ""))
        assert not box.flush(0.2)
        assert box.backlog() == 10
    assert any(r.levelno == logging.ERROR and "vlmd refused the token" in r.getMessage()
               for r in caplog.records)
    with Outbox(spool, daemon_proc.url, TOKEN, backoff=FAST) as fixed:
        assert fixed.flush(30)
    assert logged_keys(daemon_proc.db) == keys(events)


def test_put_does_not_wait_while_the_sender_is_stuck_on_a_silent_server(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:
        silent.settimeout(30)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        box = Outbox(tmp_path / "spool.db", url, TOKEN, timeout_s=60, backoff=FAST).start()
        events = items("r-stuck", 1_000)
        box.put(events[0])
        conn, _ = silent.accept()  # the sender's request now waits for an answer that never comes
        started = time.monotonic()
        for e in events[1:]:
            box.put(e)
        elapsed = time.monotonic() - started
        assert box.backlog() == 1_000
        assert elapsed < 20, f"999 puts took {elapsed:.1f} s"
        conn.close()
    box.close(flush_timeout=0)
    again = Outbox(tmp_path / "spool.db", url, TOKEN)
    assert again.backlog() == 1_000
    again.close()


def test_a_lone_event_is_sent_within_flush_s_without_flush(
        tmp_path: Path, daemon_proc: DaemonProcess) -> None:
    with Outbox(tmp_path / "spool.db", daemon_proc.url, TOKEN, flush_s=0.05) as box:
        box.put(completed("r-lone", 1))
        wait_for(lambda: box.stats().batches == 1, timeout=10)
        assert box.backlog() == 0
        assert box.stats().oldest_pending_age_s is None
    assert logged_keys(daemon_proc.db) == ["r-lone/item/1/0"]


def test_events_put_while_a_batch_is_in_flight_go_out_without_flush(
        tmp_path: Path, daemon_proc: DaemonProcess) -> None:
    # A steady trickle: events keep arriving while batches are sent and acknowledged, so an
    # acknowledgement often empties the table while newer events wait in the put log.
    events = items("r-trickle", 300)
    with Outbox(tmp_path / "spool.db", daemon_proc.url, TOKEN, flush_s=0.02) as box:
        for e in events:
            box.put(e)
            time.sleep(0.002)
        wait_for(lambda: len(logged_keys(daemon_proc.db)) == 300, timeout=20)
        assert box.stats().batches > 5
    assert logged_keys(daemon_proc.db) == keys(events)


def test_a_steady_stream_goes_out_once_per_pace_s_and_a_lone_event_within_flush_s(
        tmp_path: Path, daemon_proc: DaemonProcess) -> None:
    events = items("r-pace", 151)
    with Outbox(tmp_path / "spool.db", daemon_proc.url, TOKEN, flush_s=0.02, pace_s=0.5) as box:
        started = time.monotonic()
        for e in events[:150]:  # 1.5 s of events
            box.put(e)
            time.sleep(0.01)
        took = time.monotonic() - started
        wait_for(lambda: len(logged_keys(daemon_proc.db)) == 150, timeout=20)
        assert box.stats().batches <= took / 0.5 + 2  # not one per flush_s
        time.sleep(0.8)  # idle for longer than pace_s: the next event goes out at once
        box.put(events[150])
        put = time.monotonic()
        wait_for(lambda: len(logged_keys(daemon_proc.db)) == 151, timeout=10)
        assert time.monotonic() - put < 0.4
    assert logged_keys(daemon_proc.db) == keys(events)


def test_put_latency_and_delivery_rate_to_a_local_vlmd(
        tmp_path: Path, daemon_proc: DaemonProcess) -> None:
    events = items("r-perf", 5_000)
    latencies = []
    with Outbox(tmp_path / "spool.db", daemon_proc.url, TOKEN) as box:
        started = time.perf_counter()
        for e in events:
            t = time.perf_counter_ns()
            box.put(e)
            latencies.append(time.perf_counter_ns() - t)
        assert box.flush(120)
        elapsed = time.perf_counter() - started
        stats = box.stats()
    median_us = statistics.median(latencies) / 1_000
    print(f"\nmedian put() {median_us:.1f} us, p99 "
          f"{statistics.quantiles(latencies, n=100)[98] / 1_000:.1f} us; delivered "
          f"{len(events) / elapsed:,.0f} events/s in {stats.batches} batches")
    assert stats.sent == 5_000
    assert len(logged_keys(daemon_proc.db)) == 5_000
    assert median_us < 50_000  # a sanity bound, not a benchmark


def test_events_are_encoded_as_the_standard_library_would_or_refused() -> None:
    from vlmd_agent.outbox.spool import _encode, _fast_json
    sample = {"key": "k-s", "run": "r-enc", "kind": "watchdog.sample", "ts": 1.7e9,
              "body": {"host": "h", "samples": [
                  {"t": 1.7e9 + i / 20, "ram": {"host_used_mb": 1e3 / 3, "rss_mb": 12.25},
                   "gpus": [{"index": g, "mem_used_mb": g * 1e4 / 7, "util_pct": 50.5}
                            for g in range(8)]} for i in range(20)]}}
    fast = _fast_json(sample)
    assert fast is not None and json.loads(fast) == json.loads(json.dumps(sample))
    assert _encode(sample, 0, 1.7e9) == fast
    good = completed("r-enc", 1)
    for extra in (float("nan"), float("inf"), [1.0, float("-inf")]):  # orjson: null; refused
        with pytest.raises(ValueError, match="not JSON"):
            _encode({**good, "body": {**good["body"], "extra": extra}}, 0, good["ts"])
    with_none = {**good, "body": {**good["body"], "extra": [None, 1.5], "vram_before_mb": None}}
    assert _fast_json(with_none) == json.dumps(with_none, separators=(",", ":"))  # a real null
    assert json.loads(_encode(with_none, 0, good["ts"]))["body"]["extra"] == [None, 1.5]
    with_tuple = {**good, "body": {**good["body"], "extra": (1, None)}}  # an array, as json's
    assert _fast_json(with_tuple) is None  # a null that reads back as [1, None], not (1, None)
    assert json.loads(_encode(with_tuple, 0, good["ts"]))["body"]["extra"] == [1, None]
    int_key = {**good, "body": {**good["body"], "extra": {1: "a"}}}
    assert _fast_json(int_key) is None
    assert json.loads(_encode(int_key, 0, good["ts"]))["body"]["extra"] == {"1": "a"}
    assert _fast_json({**good, "body": {**good["body"], "answer": "\ud800"}}) is None
    nan_gpu = json.loads(fast)  # inside a sample's gpus, which vlmd does not check field by field
    nan_gpu["body"]["samples"][3]["gpus"][2]["util_pct"] = float("nan")
    with pytest.raises(ValueError, match="not JSON"):
        _encode(nan_gpu, 0, 1.7e9)
