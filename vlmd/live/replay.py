"""Replay and time travel: past runs played into a live channel, and the tracker at any point.

A replay never touches the log. `vlmd replay` reads a run's events (from the daemon, or from any
log file with ``--db``) and posts them, paced by their original ``ts`` spacing divided by the
speed, to ``POST /api/replay``; the daemon publishes them unchanged (original seq, key, ts) to
``live.replays``, which dashboards follow at ``WS /api/replay?run=RUN``. They are not put on the
live feed: its clients resume by seq, so old seqs there would be skipped or double-counted.
`state_at` folds a prefix of the log: the tracker as it was at a seq or a time.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import trio
from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket, WebSocketDisconnect

from vlmd.live.state import Live
from vlmd.projections import tracker
from vlmd.store.log import Event, EventLog, connect
from vlmd_agent import wire

BATCH_S = 0.02  # events due within this many seconds of each other go in one POST
MAX_BATCH = 5_000
WS_TRY_AGAIN = 1013
WS_GOING_AWAY = 1001
WS_POLICY = 1008


def open_readonly(path: str | Path) -> EventLog:
    """An `EventLog` over any log file that only reads (no migration, no WAL switch)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such event log")
    return EventLog(path, connect(path, readonly=True))


def resolve_run(log: EventLog, run_or_name: str) -> str | None:
    """The run id of `run_or_name` (an id, or the name of one run), else None.

    Raises `tracker.AmbiguousName` when the name is no id and several runs carry it.
    """
    conn = connect(log.path, readonly=True)
    try:
        if conn.execute("SELECT 1 FROM events WHERE run = ? LIMIT 1", (run_or_name,)).fetchone():
            return run_or_name
        rows = conn.execute("SELECT DISTINCT run FROM events WHERE kind = 'run.submitted' "
                            "AND json_extract(body, '$.name') = ? ORDER BY seq",
                            (run_or_name,)).fetchall()
    finally:
        conn.close()
    if len(rows) > 1:
        raise tracker.AmbiguousName(run_or_name, [str(r[0]) for r in rows])
    return str(rows[0][0]) if rows else None


def parse_at(text: str) -> tuple[int | None, float | None]:
    """``--at``: digits are a seq; ``@EPOCH`` or an ISO 8601 time is a time. (seq, time)."""
    if text.isdigit():
        return int(text), None
    if text.startswith("@"):
        return None, float(text[1:])
    when = dt.datetime.fromisoformat(text)
    if when.tzinfo is None:
        when = when.astimezone()  # a local time, as the user reads clocks
    return None, when.timestamp()


def seq_at_time(log: EventLog, when: float) -> int:
    """The last seq of the longest prefix of the log that vlmd had received by `when`."""
    conn = connect(log.path, readonly=True)
    try:
        first_after = conn.execute("SELECT min(seq) FROM events WHERE received > ?",
                                   (when,)).fetchone()[0]
        last = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
    finally:
        conn.close()
    return int(last if first_after is None else first_after - 1)


def state_at(log: EventLog, seq: int | None = None) -> tracker.Tracker:
    """The tracker folded from the log up to and including `seq` (all of it when None)."""
    return tracker.fold(log.read(after=0, until=seq))


def event_dict(event: Event) -> dict[str, Any]:
    """A stored event as the JSON object `GET /api/events` and `POST /api/replay` use."""
    parsed: dict[str, Any] = orjson.loads(event.to_json())
    return parsed


def schedule(events: Sequence[dict[str, Any]], speed: float) -> Iterator[tuple[float, list[Any]]]:
    """Batches of events with the offset (seconds from the start) at which each is due.

    Offsets follow the events' ``ts`` spacing divided by `speed`, never going backwards (a
    producer clock that steps back does not reorder the log).
    """
    if not events:
        return
    t0, due = events[0]["ts"], 0.0
    batch: list[Any] = []
    batch_due = 0.0
    for event in events:
        due = max(due, (event["ts"] - t0) / speed)
        if batch and (due - batch_due > BATCH_S or len(batch) >= MAX_BATCH):
            yield batch_due, batch
            batch = []
        if not batch:
            batch_due = due
        batch.append(event)
    yield batch_due, batch


def play(events: Sequence[dict[str, Any]], speed: float,
         send: Callable[[list[Any]], None]) -> float:
    """Send `events` in paced batches through `send`; returns the seconds it took."""
    start = time.monotonic()
    for due, batch in schedule(events, speed):
        wait = due - (time.monotonic() - start)
        if wait > 0:
            time.sleep(wait)
        send(batch)
    return time.monotonic() - start


def _stored(raw: Any, index: int) -> Event | str:
    if type(raw) is not dict or type(raw.get("seq")) is not int or raw["seq"] < 1:
        return f"event {index}: expected a stored event with a positive integer seq"
    received: Any = raw.get("received", raw.get("ts"))
    if type(received) not in (int, float):
        return f"event {index}: received: expected a number"
    envelope = {k: raw.get(k) for k in wire.ENVELOPE_FIELDS}
    errors = wire.event_errors(envelope, index, time.time())
    if errors:
        return str(errors[0])
    body: dict[str, Any] = raw["body"]
    return Event(raw["seq"], str(raw["key"]), str(raw["run"]), str(raw["kind"]),
                 float(raw["ts"]), float(received), body, orjson.dumps(body).decode())


class Replays:
    """``POST /api/replay`` (publish past events, token needed) and ``WS /api/replay``."""

    def __init__(self, live: Live, authorize: Callable[[Request], None],
                 read_body: Callable[[Request], Awaitable[bytes]]) -> None:
        self.live = live
        self.authorize = authorize
        self.read_body = read_body

    async def post(self, request: Request) -> Response:
        """Publish a JSON array of stored events (as `GET /api/events` returns them)."""
        self.authorize(request)
        try:
            batch = orjson.loads(await self.read_body(request))
        except orjson.JSONDecodeError as e:
            return _json({"error": f"body is not valid JSON: {e}"}, 400)
        if type(batch) is not list:
            return _json({"error": "expected a JSON array of stored events"}, 422)
        events = [_stored(raw, i) for i, raw in enumerate(batch)]
        errors = [e for e in events if isinstance(e, str)]
        if errors:
            return _json({"error": f"{errors[0]}; nothing was published"}, 422)
        ordered = sorted((e for e in events if isinstance(e, Event)), key=lambda e: e.seq)
        self.live.replays.publish(ordered)
        return _json({"published": len(ordered),
                      "clients": len(self.live.replays.subscribers)})

    async def feed(self, ws: WebSocket) -> None:
        """Stream replayed events (JSON arrays, as the live feed) for one run or all."""
        await ws.accept()
        run = ws.query_params.get("run") or None
        if run is not None:
            try:
                found = self.live.tracker.find(run)
            except tracker.AmbiguousName as e:
                await ws.close(WS_POLICY, str(e)[:120])
                return
            run = found.run if found else run
        sub = self.live.replays.subscribe(run, 0)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_wait_disconnect, ws, nursery.cancel_scope)
                async for frame in sub.receive:
                    await ws.send_text(frame.text)
                await ws.close(WS_TRY_AGAIN if sub.dropped else WS_GOING_AWAY,
                               "too slow" if sub.dropped else "vlmd is stopping")
                nursery.cancel_scope.cancel()
        except* WebSocketDisconnect:
            pass
        finally:
            self.live.replays.unsubscribe(sub)


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status, media_type="application/json")


async def _wait_disconnect(ws: WebSocket, scope: trio.CancelScope) -> None:
    while (await ws.receive())["type"] != "websocket.disconnect":
        pass
    scope.cancel()
