"""Bulk reads of the log: bounded, streamed, and only a few at a time.

A read of many events (``GET /api/events``, a feed client's backlog, answers.csv) is cut into
chunks of at most `CHUNK_EVENTS` events and about `CHUNK_BYTES` of JSON (small enough that a
client that takes nothing costs little, big enough that a client that takes everything gets it
at disk speed). Each chunk is read and
encoded in a worker thread over its own SQLite connection, which is closed before the chunk is
sent: a client that reads slowly, or not at all, holds one chunk and no connection, and one that
leaves holds nothing. At most `CONCURRENT` chunks are read at once, however many clients ask
(the others wait their turn), so reads cannot starve the trio thread, ingest and ``/healthz``
of the GIL, nor fill the memory with many readers' chunks at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import trio

from vlmd.live import wsframes
from vlmd.live.feed import Frame, encode
from vlmd.store.log import Event, EventLog, dumps_events

CHUNK_EVENTS = 1_000
CHUNK_BYTES = 64 << 10
CONCURRENT = 2
MAX_EVENTS = 100_000  # events in one GET /api/events answer
MAX_BYTES = 16 << 20  # about this many bytes of JSON in one answer (it ends after the chunk)
T = TypeVar("T")


@dataclass(frozen=True)
class Query:
    """Which events to read: ``after < seq <= until``, of one run or all, of some kinds."""

    after: int
    until: int
    run: str | None = None
    kinds: tuple[str, ...] | None = None


def read_chunk(log: EventLog, query: Query, limit: int = CHUNK_EVENTS,
               max_bytes: int = CHUNK_BYTES, *, typed: bool = False) -> list[Event]:
    """The first events of `query`: at most `limit`, and stopping once they hold about
    `max_bytes` of JSON (always at least one). The read's connection is closed on return.
    Bodies stay JSON unless `typed` (`EventLog.read`): these events are sent on as they are."""
    events: list[Event] = []
    size = 0
    with contextlib.closing(log.read(after=query.after, until=query.until, run=query.run,
                                     kinds=query.kinds, limit=limit, typed=typed)) as stream:
        for event in stream:
            events.append(event)
            size += len(event.body_json) + len(event.key) + 100  # the envelope's other fields
            if size >= max_bytes:
                break
    return events


def events(log: EventLog, query: Query) -> Iterator[Event]:
    """`query`'s events with typed bodies (to fold), read chunk by chunk as they are consumed
    (each chunk over its own connection, closed before the chunk is handed out)."""
    after = query.after
    while after < query.until:
        chunk = read_chunk(log, Query(after, query.until, query.run, query.kinds), typed=True)
        if not chunk:
            return
        yield from chunk
        after = chunk[-1].seq


class Reader:
    """Chunked reads of one log, at most `CONCURRENT` at once."""

    def __init__(self, log: EventLog) -> None:
        self.log = log
        self.limiter = trio.CapacityLimiter(CONCURRENT)

    async def run_sync(self, fn: Callable[[], T]) -> T:
        """`fn()` in a worker thread, as one of the reads taking turns."""
        return await trio.to_thread.run_sync(fn, limiter=self.limiter)

    async def frames(self, query: Query, deflate: int = wsframes.PLAIN
                     ) -> AsyncGenerator[Frame, None]:
        """`query`'s events as feed frames, one chunk each, compressed ahead for a client
        that deflates with `deflate` window bits."""
        after = query.after
        while after < query.until:
            chunk = Query(after, query.until, query.run, query.kinds)

            def read(chunk: Query = chunk) -> Frame | None:
                events = read_chunk(self.log, chunk)
                if not events:
                    return None
                frame = encode(events)
                if deflate != wsframes.PLAIN:
                    wsframes.build([(frame.text, deflate)])
                return frame

            frame = await self.run_sync(read)
            if frame is None:
                return
            yield frame
            after = frame.last_seq

    async def json_array(self, query: Query, limit: int) -> AsyncIterator[bytes]:
        """`query`'s first `limit` events (and about `MAX_BYTES` at most) as the bytes of one
        JSON array, chunk by chunk."""
        yield b"["
        after, sent, size = query.after, 0, 0
        while sent < limit and size < MAX_BYTES:
            want = min(CHUNK_EVENTS, limit - sent)
            chunk = Query(after, query.until, query.run, query.kinds)

            def read(chunk: Query = chunk, want: int = want, room: int = MAX_BYTES - size
                     ) -> tuple[int, int, bytes]:
                events = read_chunk(self.log, chunk, want, min(CHUNK_BYTES, room))
                return len(events), events[-1].seq if events else 0, dumps_events(events)

            n, last, data = await self.run_sync(read)
            if n == 0:
                break
            yield (b"," if sent else b"") + data[1:-1]
            after, sent, size = last, sent + n, size + len(data)
        yield b"]"


def kinds_tuple(kinds: Iterable[str] | None) -> tuple[str, ...] | None:
    """Kind filters as a `Query` holds them."""
    return None if kinds is None else tuple(kinds)
