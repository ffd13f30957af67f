"""The replay routes' work over `vlmd.live.replay`: a run folded up to a position
(``GET /api/runs/{run}/state``) and a run's fold played at a speed (``WS /api/replay``).

A replay reads the log in a worker thread (the read and the fold of each message), waits on the
trio clock for each message's time, and sends it; a client that reads slowly slows its own
replay and nothing else (there is no buffer to fill).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import trio
from starlette.websockets import WebSocket

from vlmd.live import replay
from vlmd.store.log import EventLog

WS_NORMAL = 1000


def position(log: EventLog, run: str, seq: int | None, ts: float | None, until: int
             ) -> dict[str, Any]:
    """The run folded up to `seq` and replay time `ts` (within the log up to `until`), with
    what there is to replay of it (`replay.span`); run it in a worker thread."""
    events = log.read(run=run, until=min(until, seq) if seq is not None else until)
    return {**replay.position(events, ts=ts), "span": replay.span(log, run, until)}


async def stream(ws: WebSocket, log: EventLog, run: str, *, after: int, speed: float,
                 until: int) -> None:
    """Send the replay of `run` (its events up to `until`) from after `after` at `speed` to
    `ws`, each message at its time, then close it normally."""
    span = await trio.to_thread.run_sync(replay.span, log, run, until)
    messages: Iterator[tuple[float, dict[str, Any]]] = replay.play(
        log.read(run=run, until=until), after=after, speed=speed)
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

    while (got := await trio.to_thread.run_sync(step)) is not None:
        due, text = got
        await trio.sleep_until(start + due)
        await ws.send_text(text.decode())
    await ws.close(WS_NORMAL, "replay ended")
