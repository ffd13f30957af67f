"""Live: the daemon's current state, kept as the fold of the log plus every committed append.

All appends go through `Live.append`, which holds one lock across commit, fold and publish, so
subscribers see batches in seq order and the tracker never lags the feed. Two streams leave it:
the feed (the committed events) and the state stream (`vlmd.live.states`: what the fold made of
them).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import outcome
import trio

from vlmd.live import wsframes
from vlmd.live.counters import Histogram
from vlmd.live.feed import Feed, Frames, Subscription
from vlmd.live.liveness import Liveness
from vlmd.live.states import States, Summaries
from vlmd.projections import tracker
from vlmd.projections.gpus import LatestGpus
from vlmd.store.incoming import Incoming, all_typed
from vlmd.store.log import Appended, Event, EventLog, Written

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


FRAME_EVENTS = 1_000  # batches committed together share a feed frame up to this many events


def _frames(results: Sequence[Appended]) -> list[list[Event]]:
    """The events of a group commit cut into feed frames, in seq order: small batches (many
    agents posting at once) share a frame, so each subscriber gets one message and one send
    for them, not one per batch; a batch never splits, and a frame that holds `FRAME_EVENTS`
    or more takes no other batch."""
    frames: list[list[Event]] = []
    for done in results:
        if not done.events:
            continue
        if frames and len(frames[-1]) + len(done.events) <= FRAME_EVENTS:
            frames[-1].extend(done.events)
        else:
            frames.append(list(done.events))
    return frames


class _Build:
    """`wsframes.build` of the feed's compressed frames in a worker thread, started at once
    (zlib releases the GIL, so it runs beside the COMMIT and the fold); `done` when it ended.
    A failure only costs time: the sends build what is missing themselves."""

    def __init__(self, wanted: list[tuple[wsframes.FrameText, int]]) -> None:
        self.done = trio.Event()
        token = trio.lowlevel.current_trio_token()

        def deliver(result: outcome.Outcome[None]) -> None:
            token.run_sync_soon(self._finished, result)

        trio.lowlevel.start_thread_soon(lambda: wsframes.build(wanted), deliver,
                                        name="vlmd feed frames")

    def _finished(self, result: outcome.Outcome[None]) -> None:
        if isinstance(result, outcome.Error):
            log.error("building compressed feed frames failed (the sends build them): %r",
                      result.error)
        self.done.set()


_Ahead = tuple[list[Event], list[str], tracker.Outcomes,
               list[tuple[list[Event], Frames | None]], _Build | None]


class _Write:
    """`EventLog.write` of one group in a worker thread, started at once. `written` is set
    when the rows are in the transaction (`pending` holds them) and the COMMIT begins, or
    when the write ended before that; `finished` when it ended (`outcome` holds its result).

    Not `trio.to_thread.run_sync`: that returns only at the end, and it checkpoints before
    it starts the thread. Here the trio thread works while the COMMIT's fsync runs.
    """

    def __init__(self, log: EventLog, batches: list[list[Incoming]], received: float) -> None:
        self.written, self.finished = trio.Event(), trio.Event()
        self.pending: Written | None = None
        self.outcome: outcome.Outcome[Written] | None = None
        token = trio.lowlevel.current_trio_token()

        def before_commit(pending: Written) -> None:
            token.run_sync_soon(self._written, pending)

        def deliver(result: outcome.Outcome[Written]) -> None:
            token.run_sync_soon(self._finished, result)

        trio.lowlevel.start_thread_soon(
            lambda: log.write(batches, received, before_commit), deliver,
            name="vlmd writer")

    def _written(self, pending: Written) -> None:
        self.pending = pending
        self.written.set()

    def _finished(self, result: outcome.Outcome[Written]) -> None:
        self.outcome = result
        self.written.set()
        self.finished.set()


@dataclass(eq=False)
class _Waiting:
    """One `Live.append` call in a group commit: its batch, whether its feed frames wait for
    `Live.release_feed`, then its outcome."""

    events: list[Incoming]
    hold_feed: bool = False
    done: Appended | None = None
    error: Exception | None = None


class Live:
    """The log, its tracker fold, the feed, the state stream, and ingest counters."""

    def __init__(self, log: EventLog, feed: Feed) -> None:
        self.log = log
        self.feed = feed
        self.tracker = tracker.Tracker()
        self.summaries = Summaries()
        self.states = States(feed.buffer, self.summaries, feed.budget)
        self.appended_by_kind: Counter[str] = Counter()
        self.ingest_latency = Histogram()
        self.gpus = LatestGpus()
        self.replaying = 0  # replays being streamed (each its own fold of the log)
        self.datasette_url: str | None = None
        self.liveness: Liveness | None = None
        self.started_at = time.time()
        self.write_error: str | None = None  # why the last append failed; None once one works
        self.log_warning: str | None = None  # what is wrong with the log as vlmd found it
        self.acked: Callable[[int], None] | None = None
        """Told the last seq of every commit, before any writer hears of it (`LogLock.acked`)."""
        self._lock = trio.Lock()
        self._waiting: list[_Waiting] = []  # batches for the next group commit
        self._held: list[tuple[list[Event], Frames | None]] = []  # see `append`'s hold_feed
        self._held_states: list[tuple[list[Event], Frames]] = []  # the same for `states`

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

    async def append(self, events: Sequence[Incoming | Mapping[str, Any]], *,
                     hold_feed: bool = False) -> Appended:
        """Append envelopes, then fold and publish what was stored. `Incoming` envelopes are
        valid and typed (`vlmd.store.incoming.decode`); vlmd's own, built as mappings, are
        checked and typed here (ValueError for an invalid one: a bug).

        `hold_feed`: keep the batch's feed frames until `release_feed` (or the next append
        without it), so that a POST's answer goes out before the WebSocket sends: its client
        then posts the next batch while vlmd writes the frames, instead of after.

        Group commit: batches that arrive while a commit runs wait for the lock, and the first
        of them to get it commits them all in one transaction (one writer-thread hop and one
        fsync for many POSTs); each caller still gets its own `Appended`.

        Shielded: once a batch is handed to the writer it is committed, folded and published
        even if the request that brought it is cancelled, so the state never diverges from the
        log. Raises WriteRefused when SQLite cannot write (disk full, I/O error): the batch is
        rolled back whole, `write_error` says why until an append works again.
        """
        mine = _Waiting(all_typed(events), hold_feed)
        with trio.CancelScope(shield=True):
            self._waiting.append(mine)
            async with self._lock:
                if mine.done is None and mine.error is None:
                    await self._commit()
        if mine.error is not None:
            raise mine.error
        assert mine.done is not None
        return mine.done

    async def _commit(self) -> None:
        """Commit, fold and publish every waiting batch; called with the lock held.

        The writer thread tells us the batch's seqs before its COMMIT: the Event tuples and
        the feed frames are built here while the COMMIT's fsync runs (it releases the GIL);
        the fold, the counters and the publish wait for the COMMIT to succeed.
        """
        group, self._waiting = self._waiting, []
        received, began = time.time(), time.perf_counter()
        write = _Write(self.log, [w.events for w in group], received)
        await write.written.wait()
        ahead: _Ahead | None = None
        if write.pending is not None and write.outcome is None:  # the COMMIT runs now
            ahead = self._prepare(write.pending.appended())
        await write.finished.wait()
        assert write.outcome is not None
        try:
            results = write.outcome.unwrap().appended()
        except sqlite3.OperationalError as e:
            message, status = _describe(e, self.log.path)
            if self.write_error is None:
                log.error("refusing writes: %s", message)
            self.write_error = message
            for w in group:
                w.error = WriteRefused(message, status)
            return
        except Exception as e:  # a bug: every caller of the group hears of it
            for w in group:
                w.error = e
            return
        if self.acked is not None:
            self.acked(results[-1].last_seq)
        if self.write_error is not None:
            log.warning("writes work again (the log is at seq %d)", results[-1].last_seq)
            self.write_error = None
        stored, kinds, found, frames, building = (self._prepare(results) if ahead is None
                                                  else ahead)
        tracker.apply_many(self.tracker, stored, found)
        changes = self.states.changes(self.tracker, stored, found)  # None: nobody subscribes
        if changes is not None:
            self._held_states.append((stored, changes))
        self.appended_by_kind.update(kinds)
        if "watchdog.sample" in kinds:
            for event in stored:
                self.gpus.apply(event)  # samples only
        if self.liveness is not None:
            self.liveness.observe(stored, trio.current_time())
        if building is not None:
            await building.done.wait()
        self._held += frames  # after frames held by earlier appends: seq order
        if not all(w.hold_feed for w in group):
            self.release_feed()
        took = time.perf_counter() - began
        for w, done in zip(group, results, strict=True):
            w.done = done
            self.ingest_latency.observe(took)

    def release_feed(self) -> None:
        """Publish the frames that appends with ``hold_feed`` keep, feed and state stream, in
        seq order (idempotent). A subscriber that came meanwhile read them in its backlog."""
        held, self._held = self._held, []
        for events, encoded in held:
            self.feed.publish(events, encoded)
        changes, self._held_states = self._held_states, []
        for events, frames in changes:
            self.states.feed.publish(events, frames)

    def _prepare(self, results: list[Appended]) -> _Ahead:
        """What `_commit` needs of a group's results, built without changing any state: the
        stored events in seq order, their kinds, what the fold will store for their items,
        and the feed frames (encoded for the current subscribers, and compressed for those
        that deflate, in a worker thread)."""
        stored = [event for done in results for event in done.events]  # in seq order
        kinds = [event.kind for event in stored]
        feed = self.feed
        frames = [(events, feed.encode(events) if feed.subscribers else None)
                  for events in _frames(results)]
        wanted = [pair for _, encoded in frames if encoded for pair in feed.compressed(encoded)]
        building = _Build(wanted) if wanted else None
        return stored, kinds, tracker.outcomes(stored), frames, building

    def subscribe(self, run: str | None, kinds: Sequence[str] | None = None,
                  deflate: int = wsframes.PLAIN) -> Subscription:
        """A feed subscription that starts right after `head` (read the backlog up to there);
        `deflate`: the window bits its WebSocket negotiated."""
        return self.feed.subscribe(run, self.head, kinds, deflate)

    def subscribe_states(self, run: str | None, deflate: int = wsframes.PLAIN
                         ) -> Subscription:
        """A state-stream subscription (every run's rows, or one run's rows, items and
        summary) that starts right after `head`; `States.first` builds its first message."""
        return self.states.subscribe(run, self.head, deflate)
