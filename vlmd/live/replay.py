"""Replay and time travel: a past run played through the fold, and the fold at any point.

A replay never touches the log or the daemon's live state. The run's events are read in seq
order and folded afresh by the same fold (`vlmd.projections.tracker` and `answers`) into
messages shaped as the state stream's (`vlmd.live.states`)::

    {"seq": S, "ts": T, "folded": N, "runs": [the run's row], "items": [item rows],
     "summary": {...}, "events": [the step's samples and alerts], "end": true}

- ``seq``, ``ts``, ``folded``: the position: the last seq folded, the replay clock (the running
  maximum of the events' ``ts``, so a producer clock that steps back reorders nothing) and how
  many of the run's events are folded;
- ``items``: the rows that changed (every row in a first message), ``summary`` when the items
  changed (at most every `SUMMARY_EVERY_S` of replay time, and in the last message), ``events``
  (for charts and the alert list: rendering, not folding) when there are any, ``end`` in the
  last message.

`position` folds the run up to a seq or a time (``GET /api/runs/{run}/state``); `play` yields the
messages paced by the events' ``ts`` spacing divided by the speed (``WS /api/replay``,
`vlmd replay`). `state_at` folds a prefix of the whole log (`vlmd state --at`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from vlmd.live.states import SUMMARY_EVERY_S
from vlmd.projections import answers, tracker
from vlmd.projections.summary import summarize
from vlmd.store.log import Event, EventLog, connect

BATCH_S = 0.02  # events due within this many seconds (of the replay's pace) share a message
MAX_BATCH = 5_000
MAX_SPEED = 1e6


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


class Fold:
    """One run folded from its own events: the tracker, the event each item's row comes from,
    and the position."""

    def __init__(self) -> None:
        self.tracker = tracker.Tracker()
        self.kept: dict[str, Event] = {}
        self.seq = 0
        self.clock: float | None = None
        self.folded = 0

    def apply(self, event: Event) -> str | None:
        """Fold one event; the item whose row changed, if any."""
        tracker.apply(self.tracker, event)
        self.seq = event.seq
        self.clock = event.ts if self.clock is None else max(self.clock, event.ts)
        self.folded += 1
        return answers.keep(self.kept, event)

    def message(self, items: Iterable[str] | None, *, summary: bool,
                raw: list[Event] | None = None) -> dict[str, Any]:
        """The state as a message: `items` the rows to send (None: all), the summary or not,
        `raw` the samples and alerts to pass on."""
        states = list(self.tracker.runs.values())
        out: dict[str, Any] = {
            "seq": self.seq, "ts": self.clock, "folded": self.folded,
            "runs": [s.to_dict() for s in states],
            "items": [answers.served(self.kept[i]) for i in (self.kept if items is None
                                                             else items)]}
        if summary and states:
            out["summary"] = summarize(states[0])
        if raw:
            out["events"] = [e.wire() for e in raw]
        return out


def _rendered(event: Event) -> bool:
    """Whether the page draws this event itself (charts, the alert list)."""
    return event.kind == "watchdog.sample" or event.kind.startswith("alert.")


def position(events: Iterable[Event], *, seq: int | None = None, ts: float | None = None
             ) -> dict[str, Any]:
    """The run's state after its events up to `seq` and up to replay time `ts` (all: None),
    every item row and the summary: one message."""
    fold = Fold()
    for event in events:
        if seq is not None and event.seq > seq:
            break
        if ts is not None and max(event.ts, fold.clock or event.ts) > ts:
            break
        fold.apply(event)
    return fold.message(None, summary=True)


def play(events: Iterable[Event], *, after: int = 0, speed: float = 1.0
         ) -> Iterator[tuple[float, dict[str, Any]]]:
    """The messages of a replay of one run's `events` (in seq order) from after seq `after`,
    each with when it is due: seconds from the start, the events' ``ts`` spacing divided by
    `speed`. The first, due at once, is the state at `after` with every item row."""
    fold = Fold()
    stream = iter(events)
    upcoming = None
    for event in stream:
        if event.seq > after:
            upcoming = event
            break
        fold.apply(event)
    first = fold.message(None, summary=True)
    if upcoming is None:
        yield 0.0, {**first, "end": True}
        return
    yield 0.0, first
    start = upcoming.ts if fold.clock is None else fold.clock
    summarized = 0.0  # when the last summary was due
    stale = False  # items changed since
    while upcoming is not None:
        due = (max(upcoming.ts, fold.clock or upcoming.ts) - start) / speed
        changed: dict[str, None] = {}
        raw: list[Event] = []
        for _ in range(MAX_BATCH):
            if (upcoming.ts - start) / speed - due > BATCH_S:
                break
            if (item := fold.apply(upcoming)) is not None:
                changed[item] = None
            if _rendered(upcoming):
                raw.append(upcoming)
            upcoming = next(stream, None)
            if upcoming is None:
                break
        stale = stale or bool(changed)
        summary = stale and (upcoming is None or due - summarized >= SUMMARY_EVERY_S)
        if summary:
            summarized, stale = due, False
        message = fold.message(changed, summary=summary, raw=raw)
        if upcoming is None:
            message["end"] = True
        yield due, message


def span(log: EventLog, run: str, until: int | None = None) -> dict[str, Any]:
    """How much there is to replay of `run`: its events, first and last seq, and the replay
    clock's range (the first event's ``ts`` to the latest ``ts``)."""
    conn = connect(log.path, readonly=True)
    try:
        n, first, last, latest = conn.execute(
            "SELECT count(*), min(seq), max(seq), max(ts) FROM events WHERE run = ? "
            "AND seq <= ?", (run, until if until is not None else 2**63 - 1)).fetchone()
        row = conn.execute("SELECT ts FROM events WHERE seq = ?", (first,)).fetchone()
    finally:
        conn.close()
    return {"events": n, "first_seq": first, "last_seq": last,
            "first_ts": None if row is None else row[0], "last_ts": latest}
