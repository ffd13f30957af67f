"""The WebSocket endpoints: ``WS /api/feed`` (the log), ``WS /api/state`` (the fold's state) and
``WS /api/replay`` (a run's fold played again).

All run through `vlmd.web.wsstream` (the client cap, cancellation the moment the client leaves,
writes that cannot block forever, the byte budget of each subscriber) and read the log through
`vlmd.web.bulk` (chunks, a connection per chunk that is closed before the chunk is sent, a few
reads at a time).
"""

from __future__ import annotations

import math
from contextlib import aclosing

from starlette.websockets import WebSocket

from vlmd.live import wsframes
from vlmd.live.feed import Frame
from vlmd.live.replay import MAX_SPEED
from vlmd.live.state import Live
from vlmd.projections.tracker import AmbiguousName
from vlmd.web import replays
from vlmd.web.bulk import Query, Reader, kinds_tuple
from vlmd.web.wsstream import WS_POLICY, WsHub, WsSession, close_reason

MAX_SEQ = 2**63 - 1  # SQLite's largest integer
MAX_KINDS = 64  # kind filters per request (each is an SQL clause)


class Feeds:
    """The WebSocket handlers over one `Live`."""

    def __init__(self, live: Live, hub: WsHub, reader: Reader) -> None:
        self.live, self.hub, self.reader = live, hub, reader

    async def _query(self, ws: WebSocket) -> tuple[int | None, str | None] | None:
        """A WebSocket's ``after`` and ``run`` (resolved to its id when it names one); None
        once it was refused with 1008 and the reason (a bad after, an ambiguous name)."""
        after_text = ws.query_params.get("after")
        run = ws.query_params.get("run") or None
        if after_text is not None and not (after_text.isascii() and after_text.isdigit()):
            await _refuse(ws, f"after must be a non-negative integer, not {after_text[:40]!r}")
            return None
        if run is not None:
            try:
                found = self.live.tracker.find(run)
            except AmbiguousName as e:
                await _refuse(ws, str(e))
                return None
            run = found.run if found else run
        return (None if after_text is None else int(after_text)), run

    async def feed(self, ws: WebSocket) -> None:
        """``WS /api/feed``: the committed events after ``after`` (default: from now), then
        live, for one run or all, of the kinds asked for (``kind``, repeatable, ``x.*``)."""
        query = await self._query(ws)
        if query is None:
            return
        given, run = query
        kinds = ws.query_params.getlist("kind") or None
        if kinds is not None and len(kinds) > MAX_KINDS:
            return await _refuse(ws, f"at most {MAX_KINDS} kind filters, not {len(kinds)}")
        deflate = wsframes.negotiated(ws.headers.get("sec-websocket-extensions"))

        async def stream(session: WsSession) -> None:
            live = self.live
            sub = live.subscribe(run, kinds, deflate)
            try:
                last = sub.head if given is None else given
                # the backlog up to the subscription's head, then its frames: no gap and no
                # duplicate at the seam, because the subscription only holds frames past it
                if last < sub.head:
                    backlog = Query(last, sub.head, run, kinds_tuple(sub.kinds))
                    async with aclosing(self.reader.frames(backlog, deflate)) as frames:
                        async for frame in frames:
                            await session.send(frame.text)
                            last = frame.last_seq
                await session.follow(sub, max(last, sub.head))
            finally:
                live.feed.unsubscribe(sub)

        await self.hub.serve(ws, stream)

    async def state(self, ws: WebSocket) -> None:
        """``WS /api/state``: the fold's state after ``after`` (default 0: all of it), then its
        changes (`vlmd.live.states`), for every run or one run with its items."""
        query = await self._query(ws)
        if query is None:
            return
        given, run = query
        deflate = wsframes.negotiated(ws.headers.get("sec-websocket-extensions"))

        async def stream(session: WsSession) -> None:
            live = self.live
            sub = live.subscribe_states(run, deflate)
            try:
                build = live.states.first(live.tracker, sub, given or 0)
                first: Frame = await self.reader.run_sync(lambda: build(live.log))
                await session.send(first.text)
                await session.follow(sub, max(given or 0, first.last_seq, sub.head))
            finally:
                live.states.feed.unsubscribe(sub)

        await self.hub.serve(ws, stream)

    async def replay(self, ws: WebSocket) -> None:
        """``WS /api/replay?run=RUN&speed=S&after=SEQ``: the run's fold played from after `SEQ`
        (default 0) at `S` times its pace (default 1), then a normal close."""
        query = await self._query(ws)
        if query is None:
            return
        given, run = query
        speed_text = ws.query_params.get("speed", "1")
        try:
            speed = float(speed_text)
        except ValueError:
            speed = math.nan
        state = None if run is None else self.live.tracker.runs.get(run)
        if state is None or not 0 < speed <= MAX_SPEED:
            return await _refuse(ws, f"speed must be a number above 0 and up to {MAX_SPEED:g}, "
                                     f"not {speed_text[:40]!r}" if state is not None else
                                 "run= names no run in the log" if run else
                                 "give the run to replay: ?run=RUN")
        live, replayed = self.live, state.run

        async def stream(session: WsSession) -> None:
            live.replaying += 1
            try:
                await replays.stream(session, self.reader, replayed, after=given or 0,
                                     speed=speed, until=live.head)
            finally:
                live.replaying -= 1

        await self.hub.serve(ws, stream)


async def _refuse(ws: WebSocket, reason: str) -> None:
    await ws.accept()
    await ws.close(WS_POLICY, close_reason(reason))
