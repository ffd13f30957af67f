"""EventLog: the append-only SQLite event log, the only source of truth in vlmd.

One writer appends batches in ``BEGIN IMMEDIATE`` transactions; readers open their own
connections, so in WAL mode a read never blocks the writer and the writer never blocks a read.
The methods are synchronous; the daemon calls them from a worker thread.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from vlmd.store import incoming
from vlmd.store.incoming import Incoming, body_of
from vlmd.store.migrations import migrate
from vlmd_agent import catalog

READ_CHUNK = 2_000
SYNCHRONOUS = ("off", "normal", "full")
NOT_READ = incoming.Unknown()
"""The body of an event read without ``typed`` (its JSON is in ``body_json``)."""


class Event(NamedTuple):
    """A stored event: the producer's envelope plus ``seq`` (log order) and ``received``.

    ``body`` is typed (its kind's `vlmd_agent.catalog` struct); ``body_json`` is the body
    exactly as stored, so it can be re-sent without re-encoding.
    """

    seq: int
    key: str
    run: str
    kind: str
    ts: float
    received: float
    body: catalog.Body
    body_json: str

    def to_json(self) -> bytes:
        """The event as one JSON object, the form the feed and exports use."""
        return orjson.dumps(self.wire())

    def wire(self) -> dict[str, Any]:
        """The event as `to_json` writes it, for ``orjson.dumps`` (the body is not re-encoded)."""
        return {"seq": self.seq, "key": self.key, "run": self.run, "kind": self.kind,
                "ts": self.ts, "received": self.received, "body": orjson.Fragment(self.body_json)}


def dumps_events(events: Iterable[Event]) -> bytes:
    """Events as one JSON array, in one pass (the feed's frames, ``GET /api/events``); the
    same objects as `Event.wire`, built inline (a method call per event is 10 % of it)."""
    fragment = orjson.Fragment
    return orjson.dumps([{"seq": e[0], "key": e[1], "run": e[2], "kind": e[3], "ts": e[4],
                          "received": e[5], "body": fragment(e[7])} for e in events])


@dataclass(frozen=True)
class Appended:
    """What one `EventLog.append` did: the events it stored (in seq order) and the duplicates."""

    events: list[Event]
    duplicates: int
    last_seq: int


class Written:
    """What `EventLog.write` put in its transaction: the rows, their seqs and the answers
    (`appended`), which can be worked out while the COMMIT runs (see `EventLog.write`)."""

    __slots__ = ("_appended", "_batches", "_first", "_picks", "_rows", "_seqs", "last_seq")

    def __init__(self, batches: Sequence[Sequence[Incoming]],
                 rows: list[tuple[str, str, str, float, float, str]],
                 picks: list[list[tuple[Incoming, int]]] | None, first: int,
                 seqs: list[int | None] | None, last_seq: int) -> None:
        self._batches, self._rows, self._picks = batches, rows, picks
        self._first, self._seqs, self.last_seq = first, seqs, last_seq
        self._appended: list[Appended] | None = None

    def appended(self) -> list[Appended]:
        """One `Appended` per batch, in order (built once; it touches no shared state)."""
        if self._appended is not None:
            return self._appended
        new = tuple.__new__  # Event(...) without the keyword-capable __new__: ~2x faster
        rows, seqs, last, done = self._rows, self._seqs, self.last_seq, []
        if self._picks is None and seqs is None:  # the common case: every row stored, in order
            start = 0
            for events in self._batches:
                end = start + len(events)
                kept = [new(Event, (q, k, r, c, ts, rc, e[4], b))
                        for q, (k, r, c, ts, rc, b), e
                        in zip(range(self._first + start, self._first + end),
                               rows[start:end], events, strict=True)]
                done.append(Appended(kept, 0, last))
                start = end
        else:
            picks = self._picks
            if picks is None:
                picks, start = [], 0
                for events in self._batches:
                    picks.append([(e, start + j) for j, e in enumerate(events)])
                    start += len(events)
            if seqs is None:
                seqs = list(range(self._first, self._first + len(rows)))
            for events, mine in zip(self._batches, picks, strict=True):
                kept = [new(Event, (q, *rows[i][:5], e[4], rows[i][5])) for e, i in mine
                        if (q := seqs[i]) is not None]
                done.append(Appended(kept, len(events) - len(kept), last))
        self._appended = done
        return done


def connect(path: str | Path, *, readonly: bool = False) -> sqlite3.Connection:
    """Open `path` for vlmd: autocommit mode (we BEGIN ourselves), WAL, a busy timeout."""
    if readonly:
        conn = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True,
                               isolation_level=None, check_same_thread=False)
    else:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 10000")
    return conn


class EventLog:
    """The event log in one SQLite file.

    Example::

        log = EventLog.open("vlmd.db")
        log.append([envelope], received=time.time())
        for event in log.read(after=0, run="r-1"):
            ...

    Errors: ``sqlite3.Error`` from the database (disk full, a corrupt file) propagate; an append
    that fails leaves the log as it was.
    Resources: one writer connection, plus one short-lived connection per `read`.
    """

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn
        self._lock = threading.Lock()
        self._last_seq: int = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]

    @classmethod
    def open(cls, path: str | Path, *, synchronous: str = "full") -> EventLog:
        """Open or create the log at `path`, in WAL mode, with every migration applied."""
        if synchronous not in SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {SYNCHRONOUS}, not {synchronous!r}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = connect(path)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        migrate(conn)
        return cls(path, conn)

    @property
    def last_seq(self) -> int:
        """The seq of the newest committed event (0 for an empty log)."""
        return self._last_seq

    def append(self, events: Sequence[Incoming | Mapping[str, Any]], received: float
               ) -> Appended:
        """Append envelopes in one transaction; all or nothing. Envelopes given as mappings
        are checked and typed first (`incoming.typed`: ValueError for an invalid one).

        An event whose key is already in the log is a duplicate: it is counted, not stored.
        The batch must not repeat a key (`vlmd_agent.wire.validate` refuses that).
        """
        return self.append_many([events], received)[0]

    def append_many(self, batches: Sequence[Sequence[Incoming | Mapping[str, Any]]],
                    received: float) -> list[Appended]:
        """Append several batches in one transaction (a group commit); all or nothing.

        Each batch gets its own `Appended`; a key that an earlier batch of the group carries
        is a duplicate in the later one, as if the batches had been appended one by one.
        """
        return self.write([incoming.all_typed(events) for events in batches], received
                          ).appended()

    def write(self, batches: Sequence[Sequence[Incoming]], received: float,
              before_commit: Callable[[Written], object] | None = None) -> Written:
        """`append_many`, returning the `Written` its answer comes from.

        `before_commit` is called (in this thread) once the rows are in the transaction and
        their seqs known, just before the COMMIT: a caller can start work that needs the
        seqs (`Written.appended`) while the COMMIT's fsync runs, but must not act on it
        (fold, publish) before `write` returns: the COMMIT may still fail, and then nothing
        was appended. If `before_commit` raises, the transaction is rolled back.
        """
        rows = [(e[0], e[1], e[2], e[3], received, e[5]) for events in batches for e in events]
        picks: list[list[tuple[Incoming, int]]] | None = None  # None: every row, in order
        if len({row[0] for row in rows}) != len(rows):  # a later batch repeats a key
            seen: set[str] = set()
            unique: list[tuple[str, str, str, float, float, str]] = []
            picks, all_rows = [], iter(rows)
            for events in batches:
                mine = []
                for e, row in zip(events, all_rows, strict=False):  # events first
                    if row[0] not in seen:
                        seen.add(row[0])
                        mine.append((e, len(unique)))
                        unique.append(row)
                picks.append(mine)
            rows = unique
        with self._lock:
            conn = self._conn
            first = self._last_seq + 1
            conn.execute("BEGIN IMMEDIATE")
            try:
                before = conn.total_changes
                conn.executemany("INSERT INTO events (key, run, kind, ts, received, body)"
                                 " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING", rows)
                stored = conn.total_changes - before
                seqs: list[int | None] | None = None  # None: first, first + 1, ... for every row
                if stored != len(rows):
                    by_key = dict(conn.execute("SELECT key, seq FROM events WHERE seq >= ?",
                                               (first,)).fetchall())
                    seqs = [by_key.get(r[0]) for r in rows]
                    last = max(by_key.values(), default=self._last_seq)
                else:
                    last = first + stored - 1 if stored else self._last_seq
                written = Written(batches, rows, picks, first, seqs, last)
                if before_commit is not None:
                    before_commit(written)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            self._last_seq = last
        return written

    def read(self, *, after: int = 0, run: str | None = None, kinds: Iterable[str] | None = None,
             limit: int | None = None, until: int | None = None, typed: bool = True
             ) -> Generator[Event, None, None]:
        """Stream events with ``after < seq [<= until]`` in seq order, optionally filtered.

        `kinds` entries ending in ``.*`` match a prefix (``alert.*``). The stream reads in chunks
        over its own connection, so a long read neither blocks the writer nor holds a lock;
        the connection is closed when the stream ends or is closed (``close()``). Without
        `typed`, bodies are left as their JSON (``body`` is `NOT_READ`): for readers that only
        pass events on (the feed's backlog, ``GET /api/events``).
        """
        where: list[str] = ["seq > ?"]
        params: list[int | str] = []
        if until is not None:
            where.append("seq <= ?")
            params.append(until)
        if run is not None:
            where.append("run = ?")
            params.append(run)
        if kinds is not None:
            kinds = list(kinds)
            exact = [k for k in kinds if not k.endswith(".*")]
            clauses = [f"kind IN ({', '.join('?' * len(exact))})"] if exact else []
            clauses += ["kind LIKE ?" for k in kinds if k.endswith(".*")]
            params += exact + [k[:-1].replace("_", r"\_") + "%" for k in kinds if k.endswith(".*")]
            where.append("(" + " OR ".join(clauses or ["0"]) + ")")
        sql = ("SELECT seq, key, run, kind, ts, received, body FROM events WHERE "
               + " AND ".join(where) + " ORDER BY seq LIMIT ?")
        sql = sql.replace("kind LIKE ?", r"kind LIKE ? ESCAPE '\'")
        remaining = limit
        conn = connect(self.path, readonly=True)
        try:
            while remaining is None or remaining > 0:
                chunk = READ_CHUNK if remaining is None else min(READ_CHUNK, remaining)
                rows = conn.execute(sql, (after, *params, chunk)).fetchall()
                for seq, key, run_, kind, ts, rec, body in rows:
                    yield Event(seq, key, run_, kind, ts, rec,
                                body_of(kind, body) if typed else NOT_READ, body)
                if len(rows) < chunk:
                    return
                after = rows[-1][0]
                if remaining is not None:
                    remaining -= len(rows)
        finally:
            conn.close()

    def count(self) -> int:
        """How many events the log holds."""
        with self._lock:
            return int(self._conn.execute("SELECT count(*) FROM events").fetchone()[0])

    def close(self) -> None:
        """Close the writer connection (checkpointing the WAL)."""
        with self._lock:
            self._conn.close()
