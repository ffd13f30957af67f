"""Ingest builds the answer, the feed frames and the fold's item outcomes while the COMMIT's
fsync runs (`Live._commit` over `EventLog.write`), and acts on them only once the COMMIT
returned: a COMMIT that fails leaves the tracker, the feed and the counters as a replay of the
log has them."""

from __future__ import annotations

import json
import sqlite3
import threading
import zlib
from collections.abc import Callable, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.events import completed, failed, started, submitted
from tests.test_ingest_feed import got
from vlmd.live import wsframes
from vlmd.live.feed import Feed, Frames, Subscription
from vlmd.live.state import Live, WriteRefused
from vlmd.projections import tracker
from vlmd.store import incoming
from vlmd.store.log import Event, EventLog
from vlmd.web import api


class HookedCommit:
    """A writer connection whose COMMIT first runs `hook` (in the writer thread)."""

    def __init__(self, conn: sqlite3.Connection, hook: Callable[[], None]) -> None:
        self._conn, self.hook = conn, hook

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql == "COMMIT":
            self.hook()
        return self._conn.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def hook_commit(log: EventLog, hook: Callable[[], None]) -> Callable[[], None]:
    """Run `hook` before each COMMIT of `log`; returns the undo."""
    conn = log._conn
    log._conn = HookedCommit(conn, hook)  # type: ignore[assignment]

    def undo() -> None:
        log._conn = conn
    return undo


def spy_outcomes(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Set once ingest has worked out the fold's outcomes of a batch (the last thing it
    builds ahead, after the answer and the feed frames)."""
    built = threading.Event()
    original = tracker.outcomes

    def outcomes(events: Sequence[Event]) -> tracker.Outcomes:
        found = original(events)
        built.set()
        return found
    monkeypatch.setattr(tracker, "outcomes", outcomes)
    return built


def pending(sub: Subscription) -> int:
    return sub.receive.statistics().current_buffer_used


def disk_full() -> sqlite3.OperationalError:
    e = sqlite3.OperationalError("database or disk is full")
    e.sqlite_errorcode = sqlite3.SQLITE_FULL
    return e


async def test_the_frames_and_fold_outcomes_are_built_while_the_commit_runs_and_used_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    live = Live(EventLog.open(tmp_path / "v.db"), Feed())
    await live.append([submitted("r1"), started("r1")])
    sub = live.subscribe(None)
    encoded: list[Frames] = []
    encode = live.feed.encode

    def spy_encode(events: Sequence[Event]) -> Frames:
        encoded.append(encode(events))
        return encoded[-1]
    monkeypatch.setattr(live.feed, "encode", spy_encode)
    built = spy_outcomes(monkeypatch)
    during: dict[str, Any] = {}
    token = trio.lowlevel.current_trio_token()

    def hook() -> None:
        during["built"] = built.wait(10)
        # what the rest of the daemon sees while the COMMIT runs: nothing of the batch yet
        during["head"] = trio.from_thread.run_sync(lambda: live.head, trio_token=token)
        during["done"] = trio.from_thread.run_sync(lambda: live.tracker.runs["r1"].done,
                                                   trio_token=token)
        during["frames"] = trio.from_thread.run_sync(pending, sub, trio_token=token)
        # a subscriber that comes during the COMMIT, with a filter nobody had: it gets its frame
        during["late"] = trio.from_thread.run_sync(live.subscribe, "r1", ["item.failed"],
                                                   trio_token=token)
    undo = hook_commit(live.log, hook)
    done = await live.append([completed("r1", 1), failed("r1", 2)])
    undo()
    assert during["built"], "the fold's outcomes were not built while the COMMIT ran"
    assert len(encoded) == 1 and encoded[0]  # the frame was encoded ahead, for `sub`
    assert (during["head"], during["done"], during["frames"]) == (2, 0, 0)
    assert [e.seq for e in done.events] == [3, 4] and done.last_seq == live.head == 4
    assert live.tracker == tracker.fold(live.log.read())
    frame = sub.receive.receive_nowait()
    assert frame is next(iter(encoded[0].values()))  # published as encoded, not again
    assert (frame.first_seq, frame.last_seq) == (3, 4)
    late = during["late"].receive.receive_nowait()
    assert (late.first_seq, late.last_seq) == (4, 4)
    assert live.appended_by_kind == {"run.submitted": 1, "run.started": 1,
                                     "item.completed": 1, "item.failed": 1}


async def test_a_commit_that_fails_after_the_work_ahead_leaves_the_state_as_the_log_has_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    live = Live(EventLog.open(tmp_path / "v.db"), Feed())
    await live.append([submitted("r1"), started("r1"), completed("r1", 1)])
    sub, by_kind = live.subscribe(None), dict(live.appended_by_kind)
    built = spy_outcomes(monkeypatch)
    ahead: list[bool] = []

    def hook() -> None:
        ahead.append(built.wait(10))
        raise disk_full()
    undo = hook_commit(live.log, hook)
    async with trio.open_nursery() as nursery:  # two callers in one group commit, both refused
        refused: list[WriteRefused] = []

        async def post(events: list[dict[str, Any]]) -> None:
            with pytest.raises(WriteRefused) as caught:
                await live.append(events)
            refused.append(caught.value)
        nursery.start_soon(post, [completed("r1", 2), failed("r1", 1, attempt=1)])
        nursery.start_soon(post, [completed("r1", 3)])
    undo()
    assert ahead == [True] or ahead == [True, True]  # one group, or two
    assert [e.status for e in refused] == [507, 507]
    assert live.write_error is not None and "disk full" in live.write_error
    assert live.log.count() == 3 and live.log.last_seq == 3 and live.head == 3
    assert live.tracker == tracker.fold(live.log.read())
    assert live.tracker.runs["r1"].done == 1 and live.tracker.runs["r1"].failed == 0
    assert pending(sub) == 0 and live.feed.published == 0
    assert dict(live.appended_by_kind) == by_kind
    # space is back: the same events go in with the next seqs, and everything agrees again
    done = await live.append([completed("r1", 2), failed("r1", 1, attempt=1), completed("r1", 3)])
    assert [e.seq for e in done.events] == [4, 5, 6] and done.duplicates == 0
    assert live.write_error is None
    assert live.tracker == tracker.fold(live.log.read())
    assert (live.tracker.runs["r1"].done, live.tracker.runs["r1"].failed) == (3, 0)
    frame = sub.receive.receive_nowait()
    assert (frame.first_seq, frame.last_seq) == (4, 6) and pending(sub) == 0


async def test_a_write_that_fails_before_its_commit_refuses_the_batch(tmp_path: Path) -> None:
    live = Live(EventLog.open(tmp_path / "v.db"), Feed())
    await live.append([submitted("r1")])
    # NOT NULL: the INSERT fails, no COMMIT is tried
    bad = incoming.typed(completed("r1", 1))._replace(run=None)  # type: ignore[arg-type]
    with pytest.raises(sqlite3.IntegrityError):
        await live.append([completed("r1", 2), bad])
    assert live.log.count() == 1 and live.head == 1
    assert live.tracker == tracker.fold(live.log.read())
    assert (await live.append([completed("r1", 2)])).last_seq == 2


async def test_frames_of_deflating_subscribers_are_compressed_in_a_thread_before_publish(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    live = Live(EventLog.open(tmp_path / "v.db"), Feed())
    await live.append([submitted("r1"), started("r1")])
    plain = live.subscribe(None)
    builds: list[tuple[bool, list[tuple[int, int]]]] = []
    build = wsframes.build

    def spy_build(wanted: list[tuple[wsframes.FrameText, int]]) -> None:
        builds.append((threading.current_thread() is threading.main_thread(),
                       [(len(text), bits) for text, bits in wanted]))
        build(wanted)
    monkeypatch.setattr(wsframes, "build", spy_build)
    await live.append([completed("r1", 1)])
    assert builds == []  # nobody deflates: nothing to build ahead
    assert plain.receive.receive_nowait().text.wire == {}  # the plain frame is built at send

    browsers = [live.subscribe(None, None, 15), live.subscribe(None, None, 15)]
    small = live.subscribe("r1", None, 10)
    await live.append([completed("r1", i) for i in range(2, 300)])
    frame = plain.receive.receive_nowait()
    assert all(b.receive.receive_nowait() is frame for b in browsers)
    small_frame = small.receive.receive_nowait()
    assert len(builds) == 1 and builds[0][0] is False  # one build, not on the trio thread
    assert sorted(builds[0][1]) == sorted([(len(frame.text), 15), (len(small_frame.text), 10)])
    assert set(frame.text.wire) == {15} and set(small_frame.text.wire) == {10}  # once each
    wire = frame.text.wire[15]
    assert wire[:2] == bytes([0x80 | 0x40 | 0x1, 126])  # FIN, RSV1, TEXT; a 16-bit length
    payload = wire[4:]
    assert zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff") == \
        frame.text.encode()


async def test_frames_held_for_the_answer_go_out_on_release_or_before_the_next_batch(
        tmp_path: Path) -> None:
    live = Live(EventLog.open(tmp_path / "v.db"), Feed())
    await live.append([submitted("r1"), started("r1")])
    early = live.subscribe(None)
    await live.append([completed("r1", 1)], hold_feed=True)
    assert pending(early) == 0 and live.head == 3  # folded, not yet published
    late = live.subscribe(None)  # its backlog covers the held batch (head 3)
    await live.append([completed("r1", 2)], hold_feed=True)
    await live.append([completed("r1", 3)])  # not held: what is held goes first, in order
    assert [(f.first_seq, f.last_seq) for f in got(early)] == [(3, 3), (4, 4), (5, 5)]
    frames = got(late)  # the held batch is in its backlog (head 3): it is not sent again
    assert [(f.first_seq, f.last_seq) for f in frames] == [(4, 4), (5, 5)] and late.head == 3
    await live.append([completed("r1", 4)], hold_feed=True)
    live.release_feed()
    live.release_feed()  # nothing twice
    assert [(f.first_seq, f.last_seq) for f in got(early)] == [(6, 6)]
    assert live.tracker == tracker.fold(live.log.read())


async def test_state_messages_are_made_at_their_commit_and_held_with_the_feed(
        tmp_path: Path) -> None:
    live = Live(EventLog.open(tmp_path / "v.db"), Feed())
    await live.append([submitted("r1"), started("r1")])
    sub = live.subscribe_states("r1")
    await live.append([completed("r1", 1)], hold_feed=True)
    await live.append([completed("r1", 2), failed("r1", 1, attempt=1)], hold_feed=True)
    assert pending(sub) == 0
    live.release_feed()
    messages = [json.loads(f.text) for f in got(sub)]
    assert [(m["seq"], m["runs"][0]["done"], [r["item"] for r in m["items"]])
            for m in messages] == [(3, 1, ["1"]), (5, 2, ["2"])]


async def test_an_answer_that_cannot_be_sent_still_releases_its_frames(tmp_path: Path) -> None:
    live = Live(EventLog.open(tmp_path / "v.db"), Feed())
    sub = live.subscribe(None)
    await live.append([submitted("r1")], hold_feed=True)
    answer = api._FeedAfter(live, {})

    async def gone(message: MutableMapping[str, Any]) -> None:
        raise OSError("the client went away")

    async def nothing() -> dict[str, Any]:
        return {"type": "http.disconnect"}
    with pytest.raises(OSError):
        await answer({"type": "http"}, nothing, gone)
    assert [(f.first_seq, f.last_seq) for f in got(sub)] == [(1, 1)]
