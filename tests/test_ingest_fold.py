"""The ingest fold: `tracker.outcomes` (worked out while the COMMIT runs) then
`tracker.apply_many` give the tracker that folding the events one at a time gives, whatever the
mix: runs interleaved, items as ints, retries, failures after completions, agents lost between
items, samples and unknown kinds."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.events import completed, ev, failed, finished, started, stored, submitted
from vlmd.projections import tracker

RUNS = st.sampled_from(["a", "b", "c"])
ITEMS = st.integers(0, 5)




def int_item(run: str, item: int, ok: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"item": item, "ttft_ms": 3.0}
    body.update({"answer": "B", "score": 0.5} if ok else {"reason": "timeout", "message": "slow"})
    return ev(run, "item.completed" if ok else "item.failed", body)


one_event = st.one_of(
    st.builds(completed, RUNS, ITEMS, st.sampled_from([0.0, 1.0])),
    st.builds(completed, RUNS, ITEMS, st.just(1.0), st.floats(1, 500)),
    st.builds(failed, RUNS, ITEMS, st.just("oom"), st.integers(0, 2)),
    st.builds(int_item, RUNS, ITEMS, st.booleans()),
    st.builds(started, RUNS),
    st.builds(submitted, RUNS),
    st.builds(finished, RUNS),
    st.builds(lambda run: ev(run, "alert.agent_lost", {"message": "gone"}), RUNS),
    st.builds(lambda run: ev(run, "watchdog.heartbeat", {
        "host": "h", "pid": 1, "wrapper_pid": 2, "wrapper_state": "running"}), RUNS),
    st.builds(lambda run: ev(run, "watchdog.sample", {
        "host": "h", "t": 1.0, "gpus": [], "ram": {}}), RUNS),
    st.builds(lambda run: ev(run, "custom.thing", {}), RUNS),
)


@settings(max_examples=400, deadline=None)
@given(batches=st.lists(st.lists(one_event, max_size=15), max_size=6))
def test_outcomes_then_apply_many_equals_folding_one_at_a_time(
        batches: list[list[dict[str, Any]]]) -> None:
    events = stored([e for batch in batches for e in batch])
    one_by_one = tracker.fold(events)
    ahead, inline, at = tracker.Tracker(), tracker.Tracker(), 0
    for batch in batches:
        part = events[at:at + len(batch)]
        found = tracker.outcomes(part)
        assert len(found) == len(part)
        tracker.apply_many(ahead, part, found)
        tracker.apply_many(inline, part)
        at += len(batch)
    assert ahead == one_by_one
    assert inline == one_by_one


def test_outcomes_change_nothing_and_an_agent_lost_between_items_stalls_only_till_the_next(
        ) -> None:
    lost = {"message": "gone"}
    events = stored([started("a"), completed("a", 1), ev("a", "alert.agent_lost", lost),
                     completed("a", 2), completed("b", 1), ev("b", "alert.agent_lost", lost)])
    state = tracker.fold(events[:1])
    before = repr(state)
    found = tracker.outcomes(events)
    assert repr(state) == before
    assert [f is None for f in found] == [True, False, True, False, False, True]
    folded = tracker.apply_many(state, events[1:], found[1:])
    a, b = folded.runs["a"], folded.runs["b"]
    assert (a.stalled, a.done, a.last_seq, a.last_event_at) == (False, 2, 4, events[3].ts)
    assert (b.stalled, b.done, b.last_seq) == (True, 1, 6)
    assert folded.last_seq == 6
