"""The tracker's batch fold (`apply_many`, what ingest calls) equals folding one event at a time."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.events import completed, ev, failed, finished, started, stored, submitted
from vlmd.projections import tracker

RUNS = ["a", "b"]


def rotation(run: str, item: int, score: float | None, attempt: int) -> dict[str, object]:
    """An outcome of rotation `item` of a circular file (its question: item % 3), a failure
    when `score` is None; `attempt` makes retries."""
    e = failed(run, item, attempt=attempt) if score is None else completed(run, item, score)
    e["body"]["circular_group"] = str(item % 3)
    e["key"] = f"{run}/item/{item}/{attempt}"
    return e


one_event = st.one_of(
    st.builds(completed, st.sampled_from(RUNS), st.integers(0, 4), st.sampled_from([0.0, 1.0])),
    st.builds(failed, st.sampled_from(RUNS), st.integers(0, 4)),
    st.builds(rotation, st.sampled_from(RUNS), st.integers(10, 16),
              st.sampled_from([0.0, 1.0, None]), st.integers(0, 3)),
    st.builds(started, st.sampled_from(RUNS)),
    st.builds(submitted, st.sampled_from(RUNS)),
    st.builds(finished, st.sampled_from(RUNS)),
    st.builds(lambda run: ev(run, "watchdog.heartbeat", {"host": "h", "pid": 1,
                                                        "wrapper_pid": None,
                                                        "wrapper_state": "idle"}),
              st.sampled_from(RUNS)),
    st.builds(lambda run: ev(run, "alert.hang", {"message": "m"}), st.sampled_from(RUNS)),
    st.builds(lambda run, resume: ev(run, "run.scheduled", {
        "scheduler": "slurm", "job": "1", "shards": [0], "of": 1, "resume": resume}),
        st.sampled_from(RUNS), st.booleans()),
    st.builds(lambda run: ev(run, "run.cancelled", {"reason": "by the user"}),
              st.sampled_from(RUNS)),
)


@settings(max_examples=300)
@given(batches=st.lists(st.lists(one_event, max_size=12), max_size=6))
def test_apply_many_equals_applying_each_event(batches: list[list[dict[str, object]]]) -> None:
    events = stored([e for batch in batches for e in batch])
    one_by_one = tracker.fold(events)
    batched, at = tracker.Tracker(), 0
    for batch in batches:
        tracker.apply_many(batched, events[at:at + len(batch)])
        at += len(batch)
    assert batched == one_by_one


def test_a_retried_item_that_completes_counts_once_as_done() -> None:
    events = stored([started("a"), failed("a", 1), failed("a", 1, attempt=1), completed("a", 1),
                     failed("a", 1, attempt=2), completed("a", 2)])
    state = tracker.apply_many(tracker.Tracker(), events).runs["a"]
    assert (state.done, state.failed) == (2, 0)
    assert state.items["1"].ok and state.last_seq == 6


def test_accuracy_follows_the_kept_outcomes() -> None:
    events = stored([started("a"), completed("a", 1, score=1.0), completed("a", 2, score=0.0),
                     {**completed("a", 2, score=1.0), "key": "a/item/2/1"},  # a better retry
                     failed("a", 1, attempt=1),  # does not undo item 1
                     failed("a", 3), {**completed("a", 3, score=0.0), "key": "a/item/3/1"}])
    state = tracker.fold(events).runs["a"]
    assert (state.done, state.failed, state.scored, state.accuracy) == (3, 0, 3, 2 / 3)
