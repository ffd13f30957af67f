"""Feed: publish-after-commit broadcasting of committed events to live subscribers.

`Feed.publish` is synchronous and never blocks: each subscriber has a bounded buffer of frames,
and one whose buffer is full is dropped (its stream ends; the WebSocket handler tells the client
to reconnect with ``after=``). A frame is a JSON array of events, serialised once per publish
and per run filter, however many subscribers share it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import trio

from vlmd.log import Event


class Frame(NamedTuple):
    """A batch of events as one JSON array, with the seq range it covers."""

    first_seq: int
    last_seq: int
    text: str


def encode(events: Sequence[Event]) -> Frame:
    """Serialise events (in seq order) into one frame."""
    body = b",".join(e.to_json() for e in events)
    return Frame(events[0].seq, events[-1].seq, "[" + body.decode() + "]")


@dataclass(eq=False)
class Subscription:
    """One subscriber: the frames published after it subscribed, for one run or for all."""

    run: str | None
    head: int
    send: trio.MemorySendChannel[Frame]
    receive: trio.MemoryReceiveChannel[Frame]
    dropped: bool = False


@dataclass
class Feed:
    """The broadcaster. `buffer` is how many frames a subscriber may fall behind."""

    buffer: int = 256
    subscribers: set[Subscription] = field(default_factory=set)
    published: int = 0
    dropped: int = 0

    def subscribe(self, run: str | None, head: int) -> Subscription:
        """Register a subscriber for frames published from now on; `head` is the last seq the
        caller has already covered (it reads the backlog up to there itself)."""
        send, receive = trio.open_memory_channel[Frame](self.buffer)
        sub = Subscription(run, head, send, receive)
        self.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Forget `sub` and end its stream."""
        self.subscribers.discard(sub)
        sub.send.close()

    def publish(self, events: Sequence[Event]) -> None:
        """Send committed events (in seq order) to every subscriber; drop those that lag."""
        if not events or not self.subscribers:
            return
        self.published += len(events)
        frames: dict[str | None, Frame | None] = {}
        for sub in list(self.subscribers):
            if sub.run not in frames:
                chosen = events if sub.run is None else [e for e in events if e.run == sub.run]
                frames[sub.run] = encode(chosen) if chosen else None
            frame = frames[sub.run]
            if frame is None:
                continue
            try:
                sub.send.send_nowait(frame)
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
