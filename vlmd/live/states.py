"""The state stream: the fold's state as readers are served it, then its changes, commit by commit.

A message is one JSON object::

    {"seq": 1234, "runs": [run rows], "items": [item rows], "summary": {...}}

- ``seq``: the log position the message brings its reader to (resume with ``after=seq``);
- ``runs``: the rows (`RunState.to_dict`) of the runs that changed, whole;
- ``items`` (a subscriber of one run only): the rows (`answers.served`) of its items whose kept
  outcome changed, whole;
- ``summary`` (one run only): the run's `summarize`, when its items changed; in live messages
  at most every `SUMMARY_EVERY_S` per run (less often when the run is so big that its summary
  would take more than `SUMMARY_SHARE` of the time: it is computed on the ingest path), and
  always once the run has ended.

A reader upserts runs by ``run`` and items by ``item``; nothing is ever removed. The first
message is the state after ``after`` (everything for 0), read at the moment of subscribing;
the live messages follow in seq order, published through the `Feed` broadcaster (bounded
per-subscriber buffers; a subscriber that falls behind is dropped and resumes with ``after=``).
Nothing is built while nobody subscribes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from vlmd.live.feed import Feed, Frame, Frames, Subscription
from vlmd.live.wsframes import PLAIN, FrameText
from vlmd.projections import answers
from vlmd.projections.summary import summarize
from vlmd.projections.tracker import TERMINAL, Outcomes, RunState, Tracker
from vlmd.store.log import Event, EventLog

SUMMARY_EVERY_S = 0.5  # a run's summary is O(items): live messages carry it at most this often
SUMMARY_SHARE = 0.05  # and computing it may take at most this share of the time


class Summaries:
    """`summarize` of each run, cached until the run's items (or its start) change."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        # run -> (key, summary, when it was computed, how long that took)
        self._cache: dict[str, tuple[tuple[int, float | None], dict[str, Any], float, float]] = {}

    def get(self, state: RunState) -> dict[str, Any]:
        """The run's summary now (computed unless cached for its current items)."""
        key = self.key(state)
        cached = self._cache.get(state.run)
        if cached is None or cached[0] != key:
            began = self.clock()
            summary = summarize(state)
            now = self.clock()
            cached = self._cache[state.run] = (key, summary, now, now - began)
        return cached[1]

    def due(self, state: RunState, sent: tuple[int, float | None] | None) -> bool:
        """Whether a live message should carry the run's summary to a reader that last got the
        one of `sent` (its key): the items changed since, and the cached one is old enough or
        the run is over."""
        key = self.key(state)
        if key == sent:
            return False
        cached = self._cache.get(state.run)
        if cached is None or cached[0] == key or state.status in TERMINAL:
            return True
        every = max(SUMMARY_EVERY_S, cached[3] / SUMMARY_SHARE)
        return self.clock() - cached[2] >= every

    @staticmethod
    def key(state: RunState) -> tuple[int, float | None]:
        """What a summary depends on: the run's last item event and its start."""
        return (state.item_seq, state.started_at)


def _frame(first: int, last: int, message: dict[str, Any]) -> Frame:
    return Frame(first, last, FrameText.of(orjson.dumps(message)))


class States:
    """The state stream's broadcaster and the builder of its messages."""

    def __init__(self, buffer: int, summaries: Summaries, budget: int = Feed.budget) -> None:
        self.feed = Feed(buffer, budget)
        self.summaries = summaries
        self.built = 0  # messages built for live changes (none while nobody subscribes)
        self._sent: dict[str, tuple[int, float | None]] = {}  # run -> key of the last summary

    def subscribe(self, run: str | None, head: int, deflate: int = PLAIN) -> Subscription:
        """A subscriber of every run's rows (`run` None) or of one run's rows, items and
        summary, for the changes committed after `head`."""
        return self.feed.subscribe(run, head, None, deflate)

    def changes(self, tracker: Tracker, stored: Sequence[Event], found: Outcomes
                ) -> Frames | None:
        """The messages of one commit (`stored`, folded into `tracker` with the outcomes
        `found`) for the current subscribers' filters; None while there are none. Call it right
        after the fold: an item row changed when the fold kept its very outcome."""
        subs = self.feed.subscribers
        if not subs or not stored:
            return None
        changed: dict[str, RunState] = {}
        kept: dict[str, dict[str, Event]] = {}
        runs = tracker.runs
        for event, outcome in zip(stored, found, strict=True):
            run = event[2]
            state = changed.get(run)
            if state is None:
                state = changed[run] = runs[run]
            if outcome is not None and state.items.get(outcome[0]) is outcome[1]:
                kept.setdefault(run, {})[outcome[0]] = event
        first, last = stored[0].seq, stored[-1].seq
        rows = {run: state.to_dict() for run, state in changed.items()}
        frames: Frames = {}
        for sub in subs:
            key = (sub.run, sub.kinds)
            if key in frames:
                continue
            if sub.run is None:
                frames[key] = _frame(first, last, {"seq": last, "runs": list(rows.values())})
            elif sub.run in changed:
                frames[key] = _frame(first, last, self._one_run(
                    changed[sub.run], last, rows[sub.run], kept.get(sub.run, {})))
            else:
                frames[key] = None
        self.built += 1
        return frames

    def _one_run(self, state: RunState, seq: int, row: dict[str, Any],
                 kept: dict[str, Event]) -> dict[str, Any]:
        message: dict[str, Any] = {"seq": seq, "runs": [row],
                                   "items": [answers.served(e) for e in kept.values()]}
        if self.summaries.due(state, self._sent.get(state.run)):
            message["summary"] = self.summaries.get(state)
            self._sent[state.run] = self.summaries.key(state)
        return message

    def first(self, tracker: Tracker, sub: Subscription, after: int
              ) -> Callable[[EventLog], Frame]:
        """The subscriber's first message: the state after `after` as the fold holds it at the
        subscriber's head. The run rows (and summary) are taken now; the returned function
        reads the item rows from the log (in a worker thread) and builds the frame."""
        head = sub.head
        if sub.run is None:
            states = list(tracker.runs.values())
        else:
            one = tracker.runs.get(sub.run)
            states = [] if one is None else [one]
        rows = [s.to_dict() for s in states if s.last_seq > after]
        message: dict[str, Any] = {"seq": max(head, after), "runs": rows}
        if sub.run is None:
            return lambda log: _frame(after + 1, max(head, after), message)
        run = sub.run
        if states:
            message["summary"] = self.summaries.get(states[0])

        def build(log: EventLog) -> Frame:
            kept = answers.latest(log.read(run=run, kinds=answers.ITEM_KINDS, until=head))
            message["items"] = [answers.served(e) for e in kept.values() if e.seq > after]
            return _frame(after + 1, max(head, after), message)
        return build
