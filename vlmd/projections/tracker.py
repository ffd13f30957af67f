"""TaskTracker: per-run progress as a fold over the event log.

``apply(tracker, event)`` is deterministic in the log alone (no clock, no I/O): replaying the same
events always gives the same state. For speed it updates the state it is given in place and returns
it; callers that need an old state replay a prefix of the log (`vlmd state --at`).

This fold is the one place that decides a run's status, counters, shard states and accuracy
(CircularEval's too, `vlmd.projections.circular`); the dashboard, the CLI and the state stream
show what it decides, and the SQL views (`vlmd.store.views`) are held to it by tests.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

import msgspec

from vlmd.projections.circular import Tally, is_right
from vlmd.projections.serving import RunCosts
from vlmd.store.incoming import Unknown
from vlmd.store.log import Event
from vlmd_agent import catalog
from vlmd_agent.catalog import (
    ItemCompleted,
    ItemFailed,
    RunCancelled,
    RunFailed,
    RunFinished,
    RunScheduled,
    RunStarted,
    RunSubmitted,
    WatchdogSample,
)

RATE_WINDOW_S = 60.0
RATE_POINTS = 256
TERMINAL = ("finished", "failed", "cancelled")


def supersedes(old_ok: bool, new_ok: bool) -> bool:
    """The item-outcome rule: whether an item's new outcome replaces its earlier one. A
    completion replaces anything (the latest answer wins); a failure replaces only a failure: a
    retry that fails does not undo an answer. The tracker and answers.csv both follow it."""
    return new_ok or not old_ok


class ItemResult(NamedTuple):
    """The latest outcome of one item: the fields the summary needs.

    ``error`` is a failed item's ``"reason: message"`` (as answers.csv writes it);
    ``tokens_source`` and ``vram_note`` say how a completed item's tokens and VRAM were measured;
    ``category``, ``l2_category`` and ``circular_group`` are the item's, and ``unparsed`` says
    that no rule could read a multiple-choice answer.
    """

    ok: bool
    score: float | None
    ttft_ms: float | None
    tpot_ms: float | None
    e2e_ms: float | None
    vram_peak_delta_mb: float | None
    error: str | None = None
    tokens_source: str | None = None
    vram_note: str | None = None
    category: str | None = None
    l2_category: str | None = None
    circular_group: str | None = None
    unparsed: bool | None = None


class AmbiguousName(LookupError):
    """A run name that several runs share: the caller must pick one by its id."""

    def __init__(self, name: str, runs: Sequence[str]) -> None:
        self.name, self.runs = name, list(runs)
        super().__init__(f"the name {name!r} matches {len(runs)} runs ({', '.join(runs)}); "
                         "name one by its id")


def item_error(body: ItemFailed) -> str:
    """A failed item's error as answers.csv and the run summary write it: ``reason: message``."""
    return f"{body.reason}: {body.message}"


@dataclass
class RunState:
    """One run as the log tells it so far."""

    run: str
    name: str | None = None
    model: str | None = None
    dataset: str | None = None
    dataset_sha256: str | None = None  # the dataset's content hash, as read at submission
    submitted_total: int | None = None
    shard_totals: dict[str, int] = field(default_factory=dict)
    shards: dict[str, str] = field(default_factory=dict)
    shard_count: int | None = None
    ended: str | None = None
    reason: str | None = None  # the latest failure or cancellation reason, kept after a resume
    submitted_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    last_event_at: float | None = None
    last_heartbeat: float | None = None
    stalled: bool = False
    alerts: int = 0
    last_alert: str | None = None
    items: dict[str, ItemResult] = field(default_factory=dict)
    done: int = 0
    failed: int = 0
    score_sum: float = 0.0  # of the scores of completed items, kept as items change: accuracy
    scored: int = 0  # is O(1)
    circular: Tally = field(default_factory=Tally)  # CircularEval's questions, kept likewise
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=RATE_POINTS))
    # what each shard's agent said it is doing, latest last (a ``run.phase`` body), while it runs
    phases: dict[str, dict[str, Any]] = field(default_factory=dict)
    last_seq: int = 0
    item_seq: int = 0  # the seq of the last item event folded (the summary changes only then)
    costs: RunCosts = field(default_factory=RunCosts)  # energy and KV cache, from the samples

    @property
    def total(self) -> int | None:
        """Items in the run: as submitted, else the sum of the started shards' shares."""
        if self.submitted_total is not None:
            return self.submitted_total
        return sum(self.shard_totals.values()) if self.shard_totals else None

    @property
    def status(self) -> str:
        """submitted, running, stalled, finished, failed or cancelled."""
        if self.ended is not None:
            return self.ended
        if self.shard_count and len(self.shards) >= self.shard_count and all(
                s in ("finished", "failed") for s in self.shards.values()):
            return "failed" if "failed" in self.shards.values() else "finished"
        if self.stalled:
            return "stalled"
        return "submitted" if self.started_at is None else "running"

    @property
    def rate(self) -> float | None:
        """Items (completed or failed) per second over the last minute of item events."""
        times = self.recent
        if len(times) < 2:
            return None
        last = times[-1]
        first = next(t for t in times if t >= last - RATE_WINDOW_S)
        n = sum(1 for t in times if t >= first) - 1
        return n / (last - first) if last > first and n > 0 else None

    @property
    def accuracy(self) -> float | None:
        """The mean score of the completed items that have one."""
        return self.score_sum / self.scored if self.scored else None

    @property
    def circular_accuracy(self) -> float | None:
        """CircularEval's accuracy (`vlmd.projections.circular`); None without circular items."""
        return self.circular.accuracy

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the current rate, while the run is running."""
        total, rate = self.total, self.rate
        if total is None or not rate or self.status in TERMINAL:
            return None
        return max(total - self.done - self.failed, 0) / rate

    @property
    def outcome(self) -> str | None:
        """How an ended run ended: ``finished`` (no failed item), ``finished_with_failures``,
        ``failed`` or ``cancelled``; None while it is not over. `vlmd run`'s exit status and the
        dashboard's badge follow it."""
        status = self.status
        if status not in TERMINAL:
            return None
        return "finished_with_failures" if status == "finished" and self.failed else status

    @property
    def phase(self) -> dict[str, Any] | None:
        """What the run's agents last said they are doing (resolving, building, loading,
        preflight, warmup, evaluating...), while the run is not over; None otherwise."""
        if not self.phases or self.status in TERMINAL:
            return None
        return next(reversed(self.phases.values()))

    def to_dict(self) -> dict[str, Any]:
        """The run's row as every reader is served it (`GET /api/runs`, the state stream), without
        the per-item data."""
        return {
            "run": self.run, "name": self.name, "model": self.model, "dataset": self.dataset,
            "dataset_sha256": self.dataset_sha256, "status": self.status, "done": self.done,
            "failed": self.failed, "total": self.total, "accuracy": self.accuracy,
            "circular_accuracy": self.circular_accuracy, "rate": self.rate, "eta_s": self.eta_s,
            "submitted_at": self.submitted_at, "started_at": self.started_at,
            "finished_at": self.finished_at, "last_event_at": self.last_event_at,
            "last_heartbeat": self.last_heartbeat, "alerts": self.alerts,
            "last_alert": self.last_alert, "reason": self.reason,
            "shards": dict(sorted(self.shards.items())), "last_seq": self.last_seq,
            "outcome": self.outcome, "phase": self.phase, **self.costs.row(self.score_sum),
        }


@dataclass
class Tracker:
    """Every run by id, a name -> ids index (oldest first), and the seq of the last event
    folded in."""

    runs: dict[str, RunState] = field(default_factory=dict)
    names: dict[str, list[str]] = field(default_factory=dict)
    last_seq: int = 0

    def find(self, run_or_name: str) -> RunState | None:
        """A run by its id or its human name; None if there is none.

        Raises AmbiguousName when the name is no id and several runs carry it.
        """
        state = self.runs.get(run_or_name)
        if state is None and run_or_name in self.names:
            ids = self.names[run_or_name]
            if len(ids) > 1:
                raise AmbiguousName(run_or_name, ids)
            state = self.runs.get(ids[0])
        return state


def _submitted(s: RunState, e: Event, t: Tracker) -> None:
    b = cast(RunSubmitted, e.body)
    s.model, s.dataset, s.dataset_sha256 = b.model, b.dataset, b.dataset_sha256
    if b.total is not None:  # an optional field sent as null is not there
        s.submitted_total = b.total
    s.submitted_at = e.ts
    if b.shards:
        s.shard_count = b.shards
    if b.name:
        s.name = b.name
        ids = t.names.setdefault(b.name, [])
        if s.run not in ids:
            ids.append(s.run)


def _shard(body: catalog.Body) -> str:
    return str(getattr(body, "shard", None) or "0/1")


def _started(s: RunState, e: Event, t: Tracker) -> None:
    shard = _shard(e.body)
    s.shard_totals[shard] = cast(RunStarted, e.body).total
    s.shards[shard] = "running"
    s.shard_count = int(shard.split("/")[1])
    s.ended = s.finished_at = None
    if s.started_at is None:
        s.started_at = e.ts
    s.stalled = False


def _item(s: RunState, e: Event, t: Tracker) -> None:
    b = cast(ItemCompleted | ItemFailed, e.body)
    item = b.item
    if type(item) is not str:
        item = str(item)
    result = _result(b)
    s.recent.append(e.ts)
    s.stalled = False
    s.item_seq = e.seq
    old = s.items.get(item)
    if old is None:
        _first(s, result)
    elif supersedes(old[0], result[0]):
        _replace(s, old, result)
    else:
        return
    s.items[item] = result


def _first(s: RunState, result: ItemResult) -> None:
    """Count an item's first outcome."""
    if result[0]:
        s.done += 1
        if (score := result[1]) is not None:
            s.score_sum += score
            s.scored += 1
    else:
        s.failed += 1
    if (group := result[11]) is not None:
        s.circular.add(group, is_right(result[0], result[1]))


def _replace(s: RunState, old: ItemResult, new: ItemResult) -> None:
    """Count an item's new outcome in place of its old one (`supersedes` said it replaces it)."""
    if old[0]:
        s.done -= 1
        if (score := old[1]) is not None:
            s.score_sum -= score
            s.scored -= 1
    else:
        s.failed -= 1
    if (group := old[11]) is not None:
        s.circular.remove(group, is_right(old[0], old[1]))
    _first(s, new)


def _result(b: ItemCompleted | ItemFailed) -> ItemResult:
    """An item event's `ItemResult` (built without NamedTuple's slow ``__new__``)."""
    if type(b) is ItemCompleted:
        return tuple.__new__(ItemResult, (
            True, b.score, b.ttft_ms, b.tpot_ms, b.e2e_ms, b.vram_peak_delta_mb, None,
            b.tokens_source, b.vram_note, b.category, b.l2_category, b.circular_group,
            b.unparsed))
    return tuple.__new__(ItemResult, (False, None, b.ttft_ms, b.tpot_ms, b.e2e_ms,
                                      b.vram_peak_delta_mb, item_error(cast(ItemFailed, b)),
                                      None, None, b.category, b.l2_category, b.circular_group,
                                      None))


def _phase(s: RunState, e: Event, t: Tracker) -> None:
    shard = _shard(e.body)
    s.phases.pop(shard, None)  # re-inserted last: the latest word is the one shown
    s.phases[shard] = {**msgspec.structs.asdict(e.body), "shard": shard, "at": e.ts}


def _heartbeat(s: RunState, e: Event, t: Tracker) -> None:
    s.last_heartbeat = e.ts
    s.stalled = False


def _alert(s: RunState, e: Event, t: Tracker) -> None:
    s.alerts += 1
    s.last_alert = e.kind
    if e.kind == "alert.agent_lost":
        s.stalled = True


def _ended(s: RunState, e: Event, t: Tracker) -> None:
    status = e.kind.removeprefix("run.")
    b = cast(RunFinished | RunFailed | RunCancelled, e.body)
    shard = getattr(b, "shard", None)
    if shard and status != "cancelled":
        s.shards[shard] = status
        s.phases.pop(shard, None)
        if s.status in TERMINAL:
            s.finished_at = e.ts
    else:
        s.ended = status
        s.finished_at = e.ts
        s.phases.clear()
        if status != "cancelled":
            s.shards = dict.fromkeys(s.shards, status)
    if status != "finished":
        s.reason = getattr(b, "reason", None) or s.reason


def _scheduled(s: RunState, e: Event, t: Tracker) -> None:
    """A scheduler queued shards (first submission or `vlmd resume`): they are live again, and
    so is the run. A cancelled run comes back only with a resume: a scheduling reported after
    the cancel (the job the cancel stopped) changes nothing."""
    b = cast(RunScheduled, e.body)
    if s.ended == "cancelled" and not b.resume:
        return
    n = b.of
    s.shard_count = n
    for i in b.shards:
        s.shards[f"{i}/{n}"] = "scheduled"
    s.ended = s.finished_at = None


def _sample(s: RunState, e: Event, t: Tracker) -> None:
    s.costs.apply(cast(WatchdogSample, e.body), s.started_at,
                  s.finished_at if s.status in TERMINAL else None)


def _ignore(s: RunState, e: Event, t: Tracker) -> None:
    pass


HANDLERS: dict[str, Callable[[RunState, Event, Tracker], None]] = {
    "run.submitted": _submitted, "run.started": _started, "item.completed": _item,
    "item.failed": _item, "watchdog.heartbeat": _heartbeat, "watchdog.sample": _sample,
    "run.finished": _ended, "run.failed": _ended, "run.cancelled": _ended,
    "run.scheduled": _scheduled, "scheduler.task": _ignore, "run.phase": _phase,
}


def apply(tracker: Tracker, event: Event) -> Tracker:
    """Fold one event into `tracker` and return it."""
    state = tracker.runs.get(event.run)
    if state is None:
        state = tracker.runs[event.run] = RunState(event.run)
    handler = HANDLERS.get(event.kind) or (_alert if event.kind.startswith("alert.") else _ignore)
    if type(event.body) is Unknown and handler is not _alert:
        handler = _ignore  # a stored body this vlmd cannot read (`vlmd.store.incoming`)
    handler(state, event, tracker)
    if event.kind != "watchdog.sample":
        state.last_event_at = event.ts
    state.last_seq = event.seq
    tracker.last_seq = event.seq
    return tracker


Outcomes = list[tuple[str, ItemResult] | None]
"""Per event of a batch: an item event's item id and `ItemResult`, None for other kinds."""


def outcomes(events: Sequence[Event]) -> Outcomes:
    """What `apply_many` would store for each item event of `events`, worked out without
    touching any state (ingest does it while the COMMIT's fsync runs)."""
    new = tuple.__new__
    found: Outcomes = []
    add = found.append
    for event in events:
        b = event[6]
        if type(b) is ItemCompleted:
            item = b.item
            add((item if type(item) is str else str(item), new(ItemResult, (  # no slow __new__
                True, b.score, b.ttft_ms, b.tpot_ms, b.e2e_ms, b.vram_peak_delta_mb, None,
                b.tokens_source, b.vram_note, b.category, b.l2_category, b.circular_group,
                b.unparsed))))
        elif type(b) is ItemFailed:
            item = b.item
            add((item if type(item) is str else str(item), _result(b)))
        else:
            add(None)
    return found


def apply_many(tracker: Tracker, events: Sequence[Event], found: Outcomes | None = None
               ) -> Tracker:
    """`apply` each of `events` in order (what ingest calls per batch): the same result, with
    the common case (a run's items) inline, from `found` (`outcomes(events)`, computed here
    unless given); the fields every item event sets (stalled, last_event_at, last_seq,
    item_seq) are set once per stretch of one run's items.

    The items keep the very `ItemResult` objects of `found`: an outcome was kept when
    ``state.items[item] is result`` afterwards (the state stream tells changed rows so)."""
    if found is None:
        found = outcomes(events)
    runs = tracker.runs
    state: RunState | None = None  # the run of the current stretch of item events
    items: dict[str, ItemResult] = {}
    recent: deque[float] = deque()
    last: Event | None = None  # the last item event of the stretch
    for event, outcome in zip(events, found, strict=True):
        if outcome is None:
            if last is not None:
                _items_seen(tracker, state, last)  # type: ignore[arg-type]
                last = None
            apply(tracker, event)
            state = None
            continue
        run = event[2]
        if state is None or state.run != run:
            if last is not None:
                _items_seen(tracker, state, last)  # type: ignore[arg-type]
            state = runs.get(run)
            if state is None:
                state = runs[run] = RunState(run)
            items, recent = state.items, state.recent
        last = event
        item, result = outcome
        recent.append(event[4])
        old = items.get(item)
        if old is None:  # the common case, inline: `_first`
            if result[0]:
                state.done += 1
                if (score := result[1]) is not None:
                    state.score_sum += score
                    state.scored += 1
            else:
                state.failed += 1
            if (group := result[11]) is not None:  # a circular file's rotation
                state.circular.add(group, is_right(result[0], result[1]))
        elif supersedes(old[0], result[0]):
            _replace(state, old, result)
        else:
            continue
        items[item] = result
    if last is not None:
        _items_seen(tracker, state, last)  # type: ignore[arg-type]
    return tracker


def _items_seen(tracker: Tracker, state: RunState, last: Event) -> None:
    """What every item event of a stretch sets, as its `last` one leaves it."""
    state.stalled = False
    state.last_event_at = last.ts
    state.last_seq = state.item_seq = tracker.last_seq = last.seq


def fold(events: Iterable[Event], tracker: Tracker | None = None) -> Tracker:
    """Fold every event into a tracker (a new one unless given)."""
    tracker = Tracker() if tracker is None else tracker
    for event in events:
        apply(tracker, event)
    return tracker
