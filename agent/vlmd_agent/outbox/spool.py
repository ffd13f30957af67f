"""The durable outbox: events are spooled to a local SQLite file, then POSTed to vlmd in batches.

`Outbox.put` appends an event to the spool's put log (`vlmd_agent.outbox.putlog`, one write) and
returns; it never waits on the network, nor on SQLite. A sender thread moves logged events into
the spool's table, sends the spool in order and deletes events only once vlmd acknowledged them
(200), so no event is lost when vlmd is down or this process dies; vlmd dedupes by ``key``, so an
event re-sent after a lost acknowledgement is counted as a duplicate, never appended twice.

Example::

    with Outbox(Path("spool.db"), "http://127.0.0.1:8470", token) as box:
        box.put(wire.envelope(run, "item.completed", {"item": "12", "answer": "B"}))
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import json
import logging
import random
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import orjson

from vlmd_agent.outbox.putlog import PutLog
from vlmd_agent.wire import event_errors

log = logging.getLogger("vlmd_agent.outbox.spool")

SCHEMA = """
CREATE TABLE IF NOT EXISTS pending(id INTEGER PRIMARY KEY, key TEXT UNIQUE NOT NULL,
                                   event TEXT NOT NULL, queued REAL NOT NULL);
CREATE TABLE IF NOT EXISTS dead(id INTEGER PRIMARY KEY, key TEXT NOT NULL, event TEXT NOT NULL,
                                status INTEGER, error TEXT NOT NULL, died REAL NOT NULL);
"""
QUIET_S = 30.0  # an unchanged failure is logged at WARNING at most this often, else at DEBUG
AGAIN, BACKOFF, SLOW = "again", "backoff", "slow"  # retry at once, backing off, at the slowest
INSERT = "INSERT OR IGNORE INTO pending(event, key, queued) VALUES (?, ?, ?)"
_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)  # made once
Row = tuple[int, str, str]  # id, key, event JSON


@dataclass(frozen=True)
class OutboxStats:
    """A snapshot: `pending` events; `sent` events vlmd acknowledged (`duplicates` of them it had
    already) in `batches` POSTs; `retries` failed attempts; `dead` events vlmd refused for good;
    the `last_error`; `last_ack_at` (wall clock); the age of the oldest pending event."""

    pending: int
    sent: int
    duplicates: int
    batches: int
    retries: int
    dead: int
    last_error: str | None
    last_ack_at: float | None
    oldest_pending_age_s: float | None


@dataclass(frozen=True)
class Response:
    """vlmd's answer to one POST: the HTTP status, its reason phrase and the body."""

    status: int
    reason: str
    body: bytes

    def json(self) -> Any:
        """The body as JSON; ValueError if it is not."""
        return json.loads(self.body)


class Connection:
    """One keep-alive HTTP/1.1 connection to vlmd at `url` (http or https) for POST /api/events.

    The standard library's `http.client` rather than httpx: a POST costs about a third of the
    CPU (docs/BENCHMARKS.md, Scale). It connects on first use and again after any error, or
    when vlmd says it closes; https verifies vlmd's certificate against the system's CAs
    (``SSL_CERT_FILE`` and ``SSL_CERT_DIR`` are honoured). Proxy variables are not used.
    """

    def __init__(self, url: str, token: str, timeout_s: float) -> None:
        """ValueError unless `url` is ``http[s]://HOST[:PORT][/PREFIX]``."""
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if parts.scheme not in ("http", "https") or not parts.hostname or port == -1:
            raise ValueError(f"vlmd URL {url!r}: expected http://HOST:PORT")
        self._https, self._host, self._port = parts.scheme == "https", parts.hostname, port
        self._path = parts.path.rstrip("/") + "/api/events"
        self._headers = {"authorization": f"Bearer {token}", "content-type": "application/json",
                         "user-agent": "vlmd-agent"}
        self.timeout_s = timeout_s
        self._conn: http.client.HTTPConnection | None = None

    def post(self, body: bytes) -> Response:
        """POST `body` as JSON; raises OSError or `http.client.HTTPException` if no answer came.

        A kept-alive connection that vlmd closed while idle fails at once: then the request is
        sent once more on a new connection (vlmd dedupes by key, so a resend is harmless).
        """
        reused = self._conn is not None
        try:
            return self._exchange(body)
        except (ConnectionError, http.client.RemoteDisconnected):  # reset, broken pipe, EOF
            if not reused:
                raise
            return self._exchange(body)

    def _exchange(self, body: bytes) -> Response:
        if self._conn is None:
            make = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = make(self._host, self._port, timeout=self.timeout_s)
        try:
            self._conn.request("POST", self._path, body, self._headers)
            r = self._conn.getresponse()
            answer = Response(r.status, r.reason, r.read())
        except BaseException:
            self.close()
            raise
        if r.will_close:
            self.close()
        return answer

    def close(self) -> None:
        """Close the connection, if open; the next `post` opens another."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None


@dataclass(frozen=True)
class DeadEvent:
    """An event vlmd refused for good: its key, the envelope as JSON text, the HTTP status and
    vlmd's reason."""

    key: str
    event: str
    status: int
    error: str


class Outbox:
    """A durable spool of events for vlmd at `url` (its base URL), and a thread that sends it.

    The spool is SQLite (WAL, ``synchronous=NORMAL``) and its put log (``PATH.puts``): a put
    that returned survives a crash of this process, but a power loss may lose its last moments.
    What is left in the spool is sent first by the next Outbox opened on the file. One Outbox per
    file (a lock file beside it).

    A batch (at most `batch_max` events and `max_batch_bytes`) goes out when `batch_max` are
    pending or `flush_s` after the oldest was put, but (unless `batch_max` are pending, or on
    `flush` and `close`) no sooner than `pace_s` after vlmd acknowledged the previous batch: a
    lone event goes out within `flush_s`, a steady stream once per `pace_s`, so the sender's
    HTTP work does not take the GIL from the producer every few events. Connection errors,
    timeouts, 429 and 5xx are retried forever with jittered exponential `backoff` (min, max
    seconds); 413 halves the batch; events vlmd refuses (422, or 400/413 when alone) move to the
    ``dead`` table with a warning; 401 and any other refusal are logged as errors and retried at
    the slowest pace. One keep-alive connection carries every request (see `Connection`).
    """

    def __init__(self, path: Path, url: str, token: str, *, batch_max: int = 100,
                 flush_s: float = 0.1, pace_s: float = 0.0,
                 max_batch_bytes: int = 4 * 1024 * 1024,
                 backoff: tuple[float, float] = (0.1, 5.0), timeout_s: float = 10.0) -> None:
        self._conn = Connection(url, token, timeout_s)  # checks the URL; connects on first use
        self.path, self.url = Path(path), url.rstrip("/")
        self.batch_max, self.flush_s, self.pace_s = batch_max, flush_s, pace_s
        self.backoff = backoff
        self._acked_at = float("-inf")  # time.monotonic() of the last acknowledgement
        self._max_bytes = max_batch_bytes  # lowered for good when vlmd answers 413
        self._split: int | None = None  # fewer events per batch while isolating a bad one
        self._lock = self.path.with_name(self.path.name + ".lock").open("a")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise RuntimeError(f"spool {self.path} is in use by another Outbox") from None
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._cond = threading.Condition()  # guards the connection and every field below
        self._puts = PutLog(self.path.with_name(self.path.name + ".puts"))
        self._pending = self._unfiled = 0  # unfiled: in the put log, not yet in the table
        self._first_unfiled: float | None = None  # when the put log's first event was put
        if problem := self._file_puts():  # a put log that a crashed Outbox left
            log.error("%s; they stay there for the next Outbox", problem)
        self._pending = int(self._db.execute("SELECT count(*) FROM pending").fetchone()[0])
        self._dead = int(self._db.execute("SELECT count(*) FROM dead").fetchone()[0])
        self._oldest = self._oldest_queued()
        self._sent = self._dups = self._batches = self._retries = self._flushing = 0
        self._last_error: str | None = None
        self._last_ack: float | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None
        if self._pending:
            log.info("%s holds %s unsent events; sending them first", self.path,
                     f"{self._pending:,}")

    def put(self, event: Mapping[str, Any]) -> None:
        """Spool one envelope (see `vlmd_agent.wire`); durable once this returns.

        Raises ValueError naming the field if it is not valid (nothing is spooled), OSError if
        the spool's disk refuses the write. A key already in the spool is ignored: the first
        event with a key wins.
        """
        now = time.time()
        text = _encode(event, 0, now)
        with self._cond:
            self._puts.append(((event["key"], text),), now)
            self._spooled(1, now)

    def put_many(self, events: Iterable[Mapping[str, Any]]) -> None:
        """Spool several events at once: all of them, or none if one is not valid."""
        now = time.time()
        logged = [(e["key"], _encode(e, i, now)) for i, e in enumerate(events)]
        if logged:
            with self._cond:
                self._puts.append(logged, now)
                self._spooled(len(logged), now)

    def start(self) -> Outbox:
        """Start the sender thread (a daemon thread: what it has not sent stays in the spool)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="vlmd-outbox", daemon=True)
            self._thread.start()
        return self

    def flush(self, timeout: float | None = None) -> bool:
        """Send what is pending without waiting `flush_s`, and wait until the spool is empty.

        True once it is (dead events do not count); False if `timeout` seconds pass first or the
        sender is not running.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._flushing += 1
            self._cond.notify_all()
            try:
                while self._pending and self._thread is not None and not self._stopping:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        break
                    self._cond.wait(left)
                return not self._pending
            finally:
                self._flushing -= 1

    def backlog(self) -> int:
        """How many events wait in the spool."""
        with self._cond:
            self._file_puts()  # exact once filed (a repeated key is not an event to send)
            return self._pending

    def stats(self) -> OutboxStats:
        """An immutable snapshot of this Outbox's counters."""
        with self._cond:
            self._file_puts()  # as in `backlog`
            age = None if self._oldest is None else max(0.0, time.time() - self._oldest)
            return OutboxStats(self._pending, self._sent, self._dups, self._batches,
                               self._retries, self._dead, self._last_error, self._last_ack, age)

    def dead_letters(self) -> list[DeadEvent]:
        """Every event vlmd refused for good, oldest first (the spool's ``dead`` table)."""
        with self._cond:
            rows = self._db.execute("SELECT key, event, status, error FROM dead ORDER BY id")
            return [DeadEvent(*row) for row in rows.fetchall()]

    def close(self, flush_timeout: float = 5.0) -> None:
        """Flush for up to `flush_timeout` seconds, stop the sender, close the spool.

        What is still pending stays in the file for the next Outbox. A request in flight is
        waited for (at most about `timeout_s`).
        """
        if self._thread is not None:
            self.flush(flush_timeout)
            with self._cond:
                self._stopping = True
                self._cond.notify_all()
            self._thread.join()
            self._conn.close()  # the sender's, and the sender is gone
        with self._cond:
            if problem := self._file_puts():
                log.error("%s; they stay there for the next Outbox", problem)
            self._puts.close()
            self._db.close()
            self._lock.close()

    def __enter__(self) -> Outbox:
        return self.start()

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _spooled(self, added: int, now: float) -> None:
        """Count `added` events logged at `now`; wake the sender for a first event or a full
        batch (the caller holds the lock)."""
        was, self._pending = self._pending, self._pending + added
        if not self._unfiled:
            self._first_unfiled = now
        self._unfiled += added
        if not was:
            self._oldest = now
        if not was or was < self.batch_max <= self._pending:
            self._cond.notify_all()

    def _file_puts(self) -> str | None:
        """Move the put log's events into the pending table, in one transaction, then empty the
        log; returns what went wrong, if anything (the events then stay in the log). The caller
        holds the lock.

        A crash between the commit and emptying the log files the events again at the next
        start; their keys make that harmless (ignored while pending, a duplicate for vlmd after).
        """
        if not self._puts.size:
            return None
        try:
            rows, torn = self._puts.read()
            with self._transaction():
                added = self._db.executemany(INSERT, rows).rowcount if rows else 0
        except (sqlite3.Error, OSError) as e:
            return f"cannot move the events in {self._puts.path} into {self.path} ({e})"
        if torn:
            log.warning("%s: dropped the last %d bytes, a put cut short by a crash (it never "
                        "returned)", self._puts.path, torn)
        # Keys already spooled were not added; a crashed Outbox's events were not counted yet.
        self._pending += added - self._unfiled
        self._unfiled, self._first_unfiled = 0, None
        self._oldest = self._oldest_queued()
        try:
            self._puts.clear()
        except OSError as e:  # filed again next time: harmless, see above
            return f"cannot empty {self._puts.path} ({e})"
        return None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        with self._cond:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _oldest_queued(self) -> float | None:
        """When the oldest pending event was put: the table's first row, else the put log's."""
        row = self._db.execute("SELECT queued FROM pending ORDER BY id LIMIT 1").fetchone()
        return self._first_unfiled if row is None else float(row[0])

    def _run(self) -> None:
        failures, since, said = 0, 0.0, ("", 0.0)
        while self._wait_until_due():
            try:
                batch, problem = self._take_batch()
                if not batch and not problem:
                    continue  # nothing left to send after all
                error, pace = self._send(batch) if batch else (problem, BACKOFF)
            except Exception as e:  # e.g. the spool's disk is full: the events stay, retry
                log.exception("outbox %s failed", self.path)
                error, pace = f"outbox error ({type(e).__name__}: {e})", SLOW
            if error is None and failures:
                log.info("vlmd at %s acknowledged again after %d failed attempts in %.1f s",
                         self.url, failures, time.monotonic() - since)
                failures = 0
            if error is None:
                continue
            with self._cond:
                self._retries += 1
                self._last_error = error
            if pace == AGAIN:
                continue
            failures, since = failures + 1, since if failures else time.monotonic()
            lo, hi = self.backoff
            delay = hi if pace == SLOW else min(hi, lo * 2 ** (failures - 1))
            delay *= random.uniform(0.5, 1.0)
            level = logging.ERROR if pace == SLOW else logging.WARNING
            if error == said[0] and time.monotonic() - said[1] < QUIET_S:
                level = logging.DEBUG  # the same trouble again: not every few seconds
            else:
                said = (error, time.monotonic())
            log.log(level, "%s; %s events waiting; retrying in %.2f s", error,
                    f"{self.backlog():,}", delay)
            self._sleep(delay)

    def _wait_until_due(self) -> bool:
        """Wait until a batch is due; False once stopping."""
        with self._cond:
            while not self._stopping:
                if self._pending and self._oldest is not None:
                    wait = self.flush_s - (time.time() - self._oldest)
                    if not 0 < wait <= self.flush_s:  # due, or the wall clock went back
                        wait = 0.0
                    wait = max(wait, self._acked_at + self.pace_s - time.monotonic())
                    if wait <= 0 or self._pending >= self.batch_max or self._flushing:
                        break
                    self._cond.wait(wait)
                else:
                    self._cond.wait()
            return not self._stopping

    def _take_batch(self) -> tuple[list[Row], str | None]:
        """File the put log, then the next batch in spool order, and any trouble filing."""
        with self._cond:
            problem = self._file_puts()
            rows = self._db.execute("SELECT id, key, event FROM pending ORDER BY id LIMIT ?",
                                    (self._split or self.batch_max,)).fetchall()
            if not rows and problem is None:  # all filed, none pending: never spin on a count
                self._pending, self._oldest = 0, None
        batch: list[Row] = []
        size = 2
        for row in rows:
            size += len(row[2].encode()) + 1
            if batch and size > self._max_bytes:
                break
            batch.append(row)
        return batch, problem

    def _send(self, batch: list[Row]) -> tuple[str | None, str]:
        """POST one batch and act on the answer: the error, if any, and when to try again."""
        payload = ("[" + ",".join(row[2] for row in batch) + "]").encode()
        try:
            r = self._conn.post(payload)
        except (OSError, http.client.HTTPException) as e:  # refused, reset, timed out, TLS
            return f"vlmd at {self.url} unreachable ({type(e).__name__})", BACKOFF
        status, reason = r.status, _reason(r)
        if status == 200:
            self._acknowledged(batch, r)
            return None, AGAIN
        if status == 429 or status >= 500:
            return f"vlmd at {self.url} busy or failing ({status}: {reason})", BACKOFF
        if status == 413 and len(batch) > 1:
            self._max_bytes = max(1, len(payload) // 2)
            log.warning("vlmd refused a batch of %s bytes as too large; sending at most %s bytes "
                        "per request from now on", f"{len(payload):,}", f"{self._max_bytes:,}")
            return f"413: {reason}", AGAIN
        if status in (400, 413, 422):
            named = _named(r, len(batch)) if status == 422 else {}
            if not named and len(batch) == 1:
                named = {0: reason}
            if named:
                self._bury([(*batch[i], why) for i, why in sorted(named.items())], status)
            else:  # the culprit is not named: halve the batch until it is alone
                self._split = max(1, len(batch) // 2)
            return f"{status}: {reason}", AGAIN
        what = "vlmd refused the token" if status in (401, 403) else "vlmd refused the events"
        return f"{what} at {self.url} ({status}: {reason}); check the agent's settings", SLOW

    def _acknowledged(self, batch: list[Row], r: Response) -> None:
        try:
            dups = int(r.json().get("duplicates", 0))
        except (ValueError, AttributeError, TypeError):
            dups = 0  # a 200 means committed, whatever the body says
        with self._cond:
            # Ids only grow, so every pending row up to the batch's last id is in the batch.
            gone = self._db.execute("DELETE FROM pending WHERE id <= ?", (batch[-1][0],)).rowcount
            self._pending -= gone
            self._oldest = self._oldest_queued()
            self._sent, self._dups, self._batches = self._sent + len(batch), self._dups + dups, \
                self._batches + 1
            self._last_ack, self._acked_at, self._split = time.time(), time.monotonic(), None
            self._cond.notify_all()

    def _bury(self, rows: list[tuple[int, str, str, str]], status: int) -> None:
        """Move events vlmd will never accept (id, key, event, why) to the dead table."""
        now = time.time()
        with self._transaction():
            self._db.executemany("INSERT INTO dead(key, event, status, error, died) "
                                 "VALUES (?, ?, ?, ?, ?)",
                                 [(key, ev, status, why, now) for _, key, ev, why in rows])
            self._db.executemany("DELETE FROM pending WHERE id = ?", [(r[0],) for r in rows])
            self._pending -= len(rows)
            self._dead += len(rows)
            self._oldest = self._oldest_queued()
            self._cond.notify_all()
        for _, key, _, why in rows:
            log.warning("vlmd refused event %r for good (%d: %s); kept in the dead table of %s",
                        key, status, why, self.path)

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        with self._cond:
            while not self._stopping and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)


def _encode(event: Mapping[str, Any], index: int, now: float) -> str:
    """The event as compact JSON text; ValueError naming the field if vlmd would refuse it."""
    errors = event_errors(dict(event) if isinstance(event, Mapping) else event, index, now)
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ValueError(f"not a valid event: {errors[0]}{more}")
    if text := _fast_json(event):
        return text
    try:
        text = _JSON.encode(event)
        text.encode()  # lone surrogates: vlmd would refuse the whole batch as bad JSON
    except (TypeError, ValueError) as e:
        raise ValueError(f"event {index}: not JSON that vlmd accepts: {e}") from None
    return text


def _fast_json(event: Any) -> str | None:
    """`event` as JSON by orjson (a 38 KB sample event: 65 µs, the standard library: 840), or
    None where the standard library must decide: orjson refuses what it does not know (a
    set, an int key, a lone surrogate, an int past 64 bits) and writes NaN and infinities as
    ``null``. So text with a ``null`` in it must read back as `event` (a None, not a NaN), or
    the standard library makes it again and refuses what JSON cannot hold."""
    try:
        data = orjson.dumps(event)
        if b"null" in data and orjson.loads(data) != event:
            return None
    except TypeError:  # orjson.JSONEncodeError
        return None
    return data.decode()


def _reason(r: Response) -> str:
    try:
        return str(r.json()["error"])[:500]
    except (ValueError, KeyError, TypeError):
        return r.body[:200].decode(errors="replace") or r.reason


def _named(r: Response, size: int) -> dict[int, str]:
    """The events a 422 names (vlmd lists them under ``errors``), each with its reasons."""
    named: dict[int, str] = {}
    try:
        for e in r.json()["errors"]:
            i = e["index"]
            if type(i) is int and 0 <= i < size:
                named[i] = "; ".join(filter(None, (named.get(i), f"{e['field']}: {e['message']}")))
    except (ValueError, KeyError, TypeError):
        return {}
    return named
