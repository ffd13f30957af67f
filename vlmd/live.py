"""Live: the daemon's current state, kept as the fold of the log plus every committed append.

All appends go through `Live.append`, which holds one lock across commit, fold and publish, so
subscribers see batches in seq order and the tracker never lags the feed.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import trio

from vlmd.feed import Feed, Subscription
from vlmd.liveness import Liveness
from vlmd.log import Appended, EventLog
from vlmd.metrics import Histogram, LatestGpus
from vlmd.projections import tracker

log = logging.getLogger("vlmd")


class WriteRefused(Exception):
    """The log cannot take writes now (disk full, failing storage); nothing was appended.

    ``status`` is the HTTP answer: 507 when the disk (or SQLite's page limit) is full, else 503.
    """

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.message, self.status = message, status


def _describe(e: sqlite3.Error, path: object) -> tuple[str, int]:
    if getattr(e, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_FULL:
        return f"disk full: {e} (log {path}); writes resume when space is freed", 507
    return f"cannot write the log {path}: {e}", 503


class Live:
    """The log, its tracker fold, the feed, and ingest counters."""

    def __init__(self, log: EventLog, feed: Feed) -> None:
        self.log = log
        self.feed = feed
        self.tracker = tracker.Tracker()
        self.appended_by_kind: Counter[str] = Counter()
        self.ingest_latency = Histogram()
        self.gpus = LatestGpus()
        self.replays = Feed(feed.buffer)  # replayed past events: never appended, never in `feed`
        self.datasette_url: str | None = None
        self.liveness: Liveness | None = None
        self.started_at = time.time()
        self.write_error: str | None = None  # why the last append failed; None once one works
        self._lock = trio.Lock()

    @property
    def head(self) -> int:
        """The seq of the last event folded and published."""
        return self.tracker.last_seq

    async def rebuild(self) -> None:
        """Replay the whole log into a fresh tracker (at start-up)."""
        now = trio.current_time()

        def replay() -> tracker.Tracker:
            events = self.gpus.watch(self.log.read(after=0))
            if self.liveness is not None:
                events = self.liveness.watch(events, now)
            return tracker.fold(events)
        self.tracker = await trio.to_thread.run_sync(replay)

    async def append(self, events: Sequence[dict[str, Any]]) -> Appended:
        """Append validated envelopes, then fold and publish what was stored.

        Shielded: once a batch is handed to the writer it is committed, folded and published
        even if the request that brought it is cancelled, so the state never diverges from the
        log. Raises WriteRefused when SQLite cannot write (disk full, I/O error): the batch is
        rolled back whole, `write_error` says why until an append works again.
        """
        with trio.CancelScope(shield=True):
            async with self._lock:
                received, began = time.time(), time.perf_counter()
                try:
                    done = await trio.to_thread.run_sync(self.log.append, events, received)
                except sqlite3.OperationalError as e:
                    message, status = _describe(e, self.log.path)
                    if self.write_error is None:
                        log.error("refusing writes: %s", message)
                    self.write_error = message
                    raise WriteRefused(message, status) from None
                if self.write_error is not None:
                    log.warning("writes work again (the log is at seq %d)", done.last_seq)
                    self.write_error = None
                for event in done.events:
                    tracker.apply(self.tracker, event)
                    self.appended_by_kind[event.kind] += 1
                    self.gpus.apply(event)
                if self.liveness is not None:
                    self.liveness.observe(done.events, trio.current_time())
                self.feed.publish(done.events)
                self.ingest_latency.observe(time.perf_counter() - began)
        return done

    def subscribe(self, run: str | None) -> Subscription:
        """A feed subscription that starts right after `head` (read the backlog up to there)."""
        return self.feed.subscribe(run, self.head)
