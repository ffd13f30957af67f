"""Feed: publish-after-commit broadcasting of committed events to live subscribers.

`Feed.publish` is synchronous and never blocks: each subscriber has a bounded buffer, counted
in frames (`Feed.buffer`) and in bytes (`Feed.budget`, the text of the frames published to it
and not yet sent), and one whose buffer is full is dropped (its stream ends; the WebSocket
handler tells the client to reconnect with ``after=``). A frame is a JSON array of events,
serialised once per publish and per distinct filter (run, kinds), however many subscribers share
it, so subscribers that lag together hold the same frames, not a copy each.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import trio

from vlmd.live.wsframes import PLAIN, FrameText
from vlmd.store.log import Event, dumps_events


class Frame(NamedTuple):
    """A batch of events as one JSON array, with the seq range it covers; its text keeps the
    WebSocket frames built from it (`vlmd.live.wsframes`)."""

    first_seq: int
    last_seq: int
    text: FrameText


def encode(events: Sequence[Event]) -> Frame:
    """Serialise events (in seq order) into one frame."""
    return Frame(events[0].seq, events[-1].seq, FrameText.of(dumps_events(events)))


def _encoded(events: Sequence[Event], wants: Callable[[Event], bool] | None) -> Frame | None:
    """The frame of the `events` a filter `wants` (all for None); None when it wants none."""
    chosen = events if wants is None else [e for e in events if wants(e)]
    return encode(chosen) if chosen else None


def kind_filter(kinds: Iterable[str] | None) -> Callable[[str], bool] | None:
    """A test of event kinds against `kinds` (exact, or ``prefix.*``) as `EventLog.read`
    applies them; None (everything) for None."""
    if kinds is None:
        return None
    wanted = set(kinds)
    exact = frozenset(k for k in wanted if not k.endswith(".*"))
    prefixes = tuple(k[:-1] for k in wanted if k.endswith(".*"))
    return lambda kind: kind in exact or kind.startswith(prefixes)


@dataclass(eq=False)
class Subscription:
    """One subscriber: the frames published after it subscribed, for one run or for all, of
    the `kinds` it asked for (None: every kind)."""

    run: str | None
    head: int
    send: trio.MemorySendChannel[Frame]
    receive: trio.MemoryReceiveChannel[Frame]
    dropped: bool = False
    queued: int = 0
    """Characters of the frames published to it that its client has not been sent yet."""
    kinds: frozenset[str] | None = None
    deflate: int = PLAIN
    """The deflate window bits its WebSocket negotiated (`vlmd.live.wsframes.negotiated`)."""
    wants: Callable[[Event], bool] | None = field(init=False, repr=False)
    """The filter of events (run and kinds), None when this subscriber takes every event."""

    def __post_init__(self) -> None:
        of_kind, run = kind_filter(self.kinds), self.run
        self.wants = None if run is None and of_kind is None else (
            lambda e: (run is None or e.run == run) and (of_kind is None or of_kind(e.kind)))

    def sent(self, frame: Frame) -> None:
        """Its client has been sent `frame` (taken from `receive`): it no longer counts."""
        self.queued = max(0, self.queued - len(frame.text))


Frames = dict[tuple[str | None, frozenset[str] | None], Frame | None]
"""The frames of one publish, by subscriber filter (run, kinds); None where nothing matches."""


@dataclass
class Feed:
    """The broadcaster. A subscriber may fall `buffer` frames and `budget` characters of frame
    text behind (a single frame bigger than `budget` still goes to one that has none pending)."""

    buffer: int = 256
    budget: int = 8 << 20
    subscribers: set[Subscription] = field(default_factory=set)
    published: int = 0
    dropped: int = 0

    def subscribe(self, run: str | None, head: int, kinds: Iterable[str] | None = None,
                  deflate: int = PLAIN) -> Subscription:
        """Register a subscriber for frames published from now on; `head` is the last seq the
        caller has already covered (it reads the backlog up to there itself); `kinds` as in
        `EventLog.read` (None: every kind); `deflate`: its connection's window bits."""
        send, receive = trio.open_memory_channel[Frame](self.buffer)
        sub = Subscription(run, head, send, receive,
                           kinds=None if kinds is None else frozenset(kinds), deflate=deflate)
        self.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Forget `sub` and end its stream."""
        self.subscribers.discard(sub)
        sub.send.close()

    def encode(self, events: Sequence[Event]) -> Frames:
        """The frames `publish` would send for `events`, one per distinct filter (run, kinds)
        of the current subscribers; for `publish(events, frames)` later (the ingest path
        encodes while the COMMIT's fsync runs). A filter that comes later is encoded then."""
        frames: Frames = {}
        for sub in self.subscribers:
            key = (sub.run, sub.kinds)
            if key not in frames:
                frames[key] = _encoded(events, sub.wants)
        return frames

    def compressed(self, frames: Frames) -> list[tuple[FrameText, int]]:
        """The compressed frames the current subscribers will need of `frames` (from
        `encode`), each once: (text, window bits), for `vlmd.live.wsframes.build`."""
        wanted: dict[tuple[int, int], tuple[FrameText, int]] = {}
        for sub in self.subscribers:
            if sub.deflate != PLAIN and (frame := frames.get((sub.run, sub.kinds))) is not None:
                wanted[id(frame.text), sub.deflate] = (frame.text, sub.deflate)
        return list(wanted.values())

    def publish(self, events: Sequence[Event], frames: Frames | None = None) -> None:
        """Send committed events (in seq order) to every subscriber that subscribed before
        them; drop those that lag. `frames`: what `encode(events)` returned, if it was called
        (it is filled in here), or frames of another kind (the state stream's) built for every
        filter of the subscribers at the time."""
        if not events or not self.subscribers:
            return
        self.published += len(events)
        if frames is None:
            frames = {}
        last = events[-1].seq
        for sub in list(self.subscribers):
            if sub.head >= last:  # it subscribed since: it read these in its backlog
                continue
            key = (sub.run, sub.kinds)
            if key not in frames:
                frames[key] = _encoded(events, sub.wants)
            frame = frames[key]
            if frame is None:
                continue
            size = len(frame.text)
            try:
                if sub.queued and sub.queued + size > self.budget:
                    raise trio.WouldBlock
                sub.send.send_nowait(frame)
                sub.queued += size
            except trio.WouldBlock:
                sub.dropped = True
                self.dropped += 1
                self.unsubscribe(sub)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.unsubscribe(sub)

    def close(self) -> None:
        """End every subscriber's stream (at shutdown)."""
        for sub in list(self.subscribers):
            self.unsubscribe(sub)
