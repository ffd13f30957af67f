"""The replay routes' work over `vlmd.live.replay`: a run folded up to a position
(``GET /api/runs/{run}/state``) and a run's fold played at a speed (``WS /api/replay``).

A replay reads the log in worker threads (the read and the fold of each message; events come in
chunks, each read over its own connection, closed at once: `vlmd.web.bulk`), waits on the trio
clock for each message's time, and sends it; a client that reads slowly slows its own replay and
nothing else (there is no buffer to fill), and holds no connection to the log meanwhile.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import trio

from vlmd.live import replay
from vlmd.store.log import EventLog
from vlmd.web.bulk import Query, Reader, events
from vlmd.web.wsstream import WsSession

WS_NORMAL = 1000


def position(log: EventLog, run: str, seq: int | None, ts: float | None, until: int
             ) -> dict[str, Any]:
    """The run folded up to `seq` and replay time `ts` (within the log up to `until`), with
    what there is to replay of it (`replay.span`); run it in a worker thread."""
    upto = min(until, seq) if seq is not None else until
    return {**replay.position(events(log, Query(0, upto, run)), ts=ts),
            "span": replay.span(log, run, until)}


async def stream(session: WsSession, reader: Reader, run: str, *, after: int, speed: float,
                 until: int) -> None:
    """Send the replay of `run` (its events up to `until`) from after `after` at `speed` to
    the `session`, each message at its time, then close it normally."""
    log = reader.log
    span = await reader.run_sync(lambda: replay.span(log, run, until))
    messages: Iterator[tuple[float, dict[str, Any]]] = replay.play(
        events(log, Query(0, until, run)), after=after, speed=speed)
    start = trio.current_time()
    first = [True]

    def step() -> tuple[float, bytes] | None:  # off the trio thread: the read and the fold
        got = next(messages, None)
        if got is None:
            return None
        due, message = got
        if first.pop() if first else False:
            message["span"] = span  # the first message says how much there is to play
        return due, orjson.dumps(message)

    while (got := await reader.run_sync(step)) is not None:
        due, text = got
        await trio.sleep_until(start + due)
        await session.send(text.decode())
    await session.close(WS_NORMAL, "replay ended")
