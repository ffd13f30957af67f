"""`Feed.encode` ahead of `Feed.publish` (ingest encodes while the COMMIT runs): every
subscriber gets what a plain `publish` sends it, the frames encoded ahead are sent as they are,
and subscribers that came or left in between are served or skipped."""

from __future__ import annotations

from tests.events import completed, ev, stored, submitted
from vlmd.live.feed import Feed, Frame, Subscription
from vlmd.store.log import Event


def events() -> list[Event]:
    envs = [submitted("a"), completed("a", 1), completed("b", 1),
            ev("a", "alert.hang", {"message": "no item for 120 s"})]
    return stored(envs, first=10)


def got(sub: Subscription) -> list[Frame]:
    frames = []
    while sub.receive.statistics().current_buffer_used:
        frames.append(sub.receive.receive_nowait())
    return frames


async def test_frames_encoded_ahead_are_what_publish_sends() -> None:
    batch = events()
    plain, ahead = Feed(), Feed()
    filters: list[tuple[str | None, list[str] | None]] = [
        (None, None), (None, None), ("a", None), ("b", ["alert.*"]), (None, ["item.completed"])]
    plain_subs = [plain.subscribe(run, 9, kinds) for run, kinds in filters]
    ahead_subs = [ahead.subscribe(run, 9, kinds) for run, kinds in filters]
    frames = ahead.encode(batch)
    assert len(frames) == 4  # one per distinct filter; "b" with alerts matches nothing
    assert frames[("b", frozenset({"alert.*"}))] is None
    late = ahead.subscribe("b", 9, None)  # came after the encoding: encoded at publish
    ahead.unsubscribe(ahead_subs[4])  # left before the publish: skipped
    plain.publish(batch)
    ahead.publish(batch, frames)
    for p, a in zip(plain_subs[:4], ahead_subs[:4], strict=True):
        assert [f.text for f in got(p)] == [f.text for f in got(a)]
    assert got(ahead_subs[4]) == []
    assert [(f.first_seq, f.last_seq) for f in got(late)] == [(12, 12)]
    again = ahead.subscribe(None, 9)
    ahead.publish(batch, ahead.encode(batch))
    first = got(ahead_subs[0])[0]
    assert first is got(again)[0] is got(ahead_subs[1])[0]  # one frame for every subscriber
    assert ahead.published == plain.published + len(batch)
