"""EventLog: append-only, idempotent, all-or-nothing, ordered reads."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from tests.events import completed, ev, started, submitted
from vlmd.store import incoming, migrations
from vlmd.store.log import EventLog
from vlmd.store.migrations import MIGRATIONS


def test_append_assigns_seq_in_order_and_returns_the_stored_events(tmp_path: Path) -> None:
    log = EventLog.open(tmp_path / "v.db")
    done = log.append([submitted("r1"), started("r1"), completed("r1", 1)], received=time.time())
    assert [e.seq for e in done.events] == [1, 2, 3]
    assert [e.kind for e in done.events] == ["run.submitted", "run.started", "item.completed"]
    assert done.last_seq == log.last_seq == 3
    assert done.duplicates == 0


def test_resending_a_key_is_a_duplicate_not_a_second_row(tmp_path: Path) -> None:
    log = EventLog.open(tmp_path / "v.db")
    first = [submitted("r1"), completed("r1", 1)]
    log.append(first, received=1.0)
    again = log.append([*first, completed("r1", 2)], received=2.0)
    assert again.duplicates == 2
    assert [(e.seq, e.key) for e in again.events] == [(3, "r1/item/2/0")]
    assert log.count() == 3
    assert [e.key for e in log.read()] == ["r1/submitted", "r1/item/1/0", "r1/item/2/0"]


def test_update_and_delete_are_rejected_by_the_database_itself(tmp_path: Path) -> None:
    log = EventLog.open(tmp_path / "v.db")
    log.append([submitted("r1")], received=1.0)
    log.close()
    conn = sqlite3.connect(tmp_path / "v.db")
    with pytest.raises(sqlite3.DatabaseError, match="append-only: UPDATE"):
        conn.execute("UPDATE events SET body = '{}'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only: DELETE"):
        conn.execute("DELETE FROM events")
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 1


def test_a_failing_batch_appends_nothing(tmp_path: Path) -> None:
    log = EventLog.open(tmp_path / "v.db")
    # a NOT NULL violation in the middle of the batch
    bad = incoming.typed(ev("r1", "item.completed", {"item": "1", "answer": "x"}))._replace(
        run=None)  # type: ignore[arg-type]
    with pytest.raises(sqlite3.IntegrityError):
        log.append([submitted("r1"), bad, completed("r1", 2)], received=1.0)
    assert log.count() == 0
    assert log.last_seq == 0
    assert log.append([submitted("r1")], received=1.0).last_seq == 1


def test_read_filters_by_after_until_run_kinds_and_limit(tmp_path: Path) -> None:
    log = EventLog.open(tmp_path / "v.db")
    log.append([submitted("a"), submitted("b"), completed("a", 1), completed("b", 1),
                ev("a", "alert.hang", {"message": "stuck"}), completed("a", 2)], received=1.0)
    assert [e.seq for e in log.read(after=2)] == [3, 4, 5, 6]
    assert [e.seq for e in log.read(after=2, until=4)] == [3, 4]
    assert [e.seq for e in log.read(run="a")] == [1, 3, 5, 6]
    assert [e.seq for e in log.read(kinds=["alert.*", "run.submitted"])] == [1, 2, 5]
    assert [e.seq for e in log.read(run="a", kinds=["item.completed"], limit=1)] == [3]
    assert list(log.read(kinds=[])) == []


def test_read_streams_past_the_chunk_size_in_order(tmp_path: Path) -> None:
    log = EventLog.open(tmp_path / "v.db")
    log.append([completed("r", i) for i in range(5_000)], received=1.0)
    seqs = [e.seq for e in log.read()]
    assert seqs == list(range(1, 5_001))
    assert len(list(log.read(after=10, limit=2_500))) == 2_500


def test_a_read_does_not_block_an_append(tmp_path: Path) -> None:
    log = EventLog.open(tmp_path / "v.db")
    log.append([completed("r", i) for i in range(3_000)], received=1.0)
    snapshot, stream = log.read(until=log.last_seq), log.read()
    next(snapshot), next(stream)  # both are reading on their own connections
    log.append([completed("r", "late")], received=2.0)
    assert log.last_seq == 3_001
    assert sum(1 for _ in snapshot) == 2_999
    assert sum(1 for _ in stream) == 3_000  # a stream without `until` goes on to newer events


def test_migrations_are_recorded_and_applied_once(tmp_path: Path) -> None:
    EventLog.open(tmp_path / "v.db").close()
    EventLog.open(tmp_path / "v.db").close()
    conn = sqlite3.connect(tmp_path / "v.db")
    names = [r[0] for r in conn.execute(
        "SELECT name FROM _sqlite_migrations WHERE migration_set = 'vlmd' ORDER BY id")]
    assert names == [name for name, _ in MIGRATIONS]
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_log_that_recorded_migrations_in_the_old_table_is_adopted(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "old.db", isolation_level=None)
    conn.execute("CREATE TABLE migrations (name TEXT PRIMARY KEY, applied REAL)")
    for step in MIGRATIONS[0][1]:
        conn.execute(step)
    conn.execute("INSERT INTO migrations VALUES ('0001_events', 0)")
    conn.execute("INSERT INTO events (key, run, kind, ts, received, body) "
                 "VALUES ('k', 'r', 'run.finished', 1, 1, '{}')")
    conn.close()
    log = EventLog.open(tmp_path / "old.db")  # no "table events already exists"
    assert [e.key for e in log.read()] == ["k"]
    log.close()
    conn = sqlite3.connect(tmp_path / "old.db")
    assert [r[0] for r in conn.execute("SELECT name FROM _sqlite_migrations ORDER BY id")] == [
        name for name, _ in MIGRATIONS]
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'migrations'"
                        ).fetchone()[0] == 0
    assert migrations.pending(conn) == []


def test_a_failing_migration_leaves_nothing_behind(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    broken = (*MIGRATIONS, ("9000_broken", ("CREATE TABLE half (x)", "NOT SQL")))
    monkeypatch.setattr(migrations, "MIGRATIONS", broken)
    with pytest.raises(sqlite3.OperationalError):
        EventLog.open(tmp_path / "v.db")
    conn = sqlite3.connect(tmp_path / "v.db")
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert "half" not in tables and "events" not in tables  # one transaction: all or nothing
    assert migrations.pending(conn) == [name for name, _ in broken]


def test_a_log_from_a_newer_vlmd_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    EventLog.open(tmp_path / "v.db").close()
    conn = sqlite3.connect(tmp_path / "v.db")
    conn.execute("INSERT INTO _sqlite_migrations (migration_set, name, applied_at) "
                 "VALUES ('vlmd', '9999_future', 'now')")
    conn.commit()
    with pytest.raises(RuntimeError, match=r"9999_future.*upgrade vlmd"):
        EventLog.open(tmp_path / "v.db")
