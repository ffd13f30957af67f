"""The fold says how a run ended and why: its outcome, its commonest item errors, what its agents
are doing before the first item, how tokens and VRAM were measured, and names shared by runs."""

from __future__ import annotations

from typing import Any

import pytest

from tests.events import completed, ev, failed, finished, started, stored, submitted, typed_body
from vlmd.projections import summary, tracker


def fold(*envelopes: dict[str, Any], batched: bool = False) -> tracker.RunState:
    events = stored(list(envelopes))
    folded = (tracker.apply_many(tracker.Tracker(), events) if batched
              else tracker.fold(events))
    return folded.runs["a"]


def fail(item: int, reason: str, message: str, attempt: int = 0) -> dict[str, Any]:
    e = failed("a", item, reason, attempt)
    e["body"]["message"] = message
    return e


def phase(name: str, shard: str | None = None, **extra: Any) -> dict[str, Any]:
    return ev("a", "run.phase", {"phase": name, **extra, **({"shard": shard} if shard else {})})


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize(("events", "outcome"), [
    ([started("a"), completed("a", 1)], None),
    ([started("a"), completed("a", 1), finished("a")], "finished"),
    ([started("a"), completed("a", 1), fail(2, "oom", "x"), finished("a")],
     "finished_with_failures"),
    # a failed item retried and completed leaves a clean run
    ([started("a"), fail(2, "oom", "x"), completed("a", 2), finished("a")], "finished"),
    ([started("a"), ev("a", "run.failed", {"reason": "r"})], "failed"),
    ([started("a"), fail(1, "oom", "x"), ev("a", "run.cancelled", {})], "cancelled"),
])
def test_the_outcome_tells_a_clean_finish_from_one_with_failed_items(
        events: list[dict[str, Any]], outcome: str | None, batched: bool) -> None:
    state = fold(*events, batched=batched)
    assert state.outcome == outcome
    assert state.to_dict()["outcome"] == outcome


@pytest.mark.parametrize("batched", [False, True])
def test_failures_are_counted_by_reason_and_message_commonest_first(batched: bool) -> None:
    refused = "ConnectError: connection refused (http://127.0.0.1:9/v1)"
    events = [started("a", total=12),
              *(fail(i, "backend_error", refused) for i in range(6)),
              *(fail(i, "timeout", "no answer within 2 s") for i in range(6, 8)),
              *(fail(i, "bad_input", f"cannot decode image {i}") for i in range(8, 15)),
              completed("a", 0)]  # a retry that worked is no failure any more
    state = fold(*events, batched=batched)
    got = summary.summarize(state)["failures"]
    assert got[:2] == [{"reason": f"backend_error: {refused}", "count": 5},
                       {"reason": "timeout: no answer within 2 s", "count": 2}]
    # five distinct errors are shown, the four other decode errors are summed up
    assert len(got) == 6 and got[-1] == {"reason": "other", "count": 4}
    assert sum(f["count"] for f in got) == state.failed == 14


def test_an_item_error_reads_as_answers_csv_writes_it() -> None:
    failed = typed_body("item.failed", {"item": "1", "reason": "oom",
                                        "message": "CUDA out of memory"})
    assert tracker.item_error(failed) == "oom: CUDA out of memory"  # type: ignore[arg-type]


def test_the_phase_is_the_latest_word_of_a_shard_still_at_work() -> None:
    state = fold(submitted("a"), phase("resolving", "0/2"), phase("loading", "1/2", size_mb=600.0))
    assert state.phase is not None
    assert (state.phase["phase"], state.phase["shard"], state.phase["size_mb"]) == (
        "loading", "1/2", 600.0)
    state = fold(submitted("a"), phase("building", "0/2", step=3, steps=10),
                 phase("loading", "1/2"), phase("building", "0/2", step=4, steps=10))
    assert state.phase is not None and (state.phase["shard"], state.phase["step"]) == ("0/2", 4)
    # shard 0 finished: shard 1's word is what is left
    state = fold(submitted("a"), phase("loading", "1/2"), phase("evaluating", "0/2"),
                 ev("a", "run.finished", {"shard": "0/2"}))
    assert state.phase is not None and state.phase["shard"] == "1/2"
    assert state.to_dict()["phase"]["phase"] == "loading"
    # an ended run has no phase
    state = fold(submitted("a"), phase("loading"), ev("a", "run.failed", {"reason": "r"}))
    assert state.phase is None and state.to_dict()["phase"] is None


@pytest.mark.parametrize(("metrics", "sources", "note"), [
    ([{"tokens_source": "usage", "vram_note": "remote server: not measured by the client",
       "vram_peak_delta_mb": None}] * 3,
     {"usage": 3}, "remote server: not measured by the client"),
    ([{"tokens_source": "tokenizer", "vram_note": "cpu: no VRAM measured",
       "vram_peak_delta_mb": None}] * 2 + [{"tokens_source": "chunks", "vram_note": None,
                                           "vram_peak_delta_mb": 12.0}],
     {"tokenizer": 2, "chunks": 1}, "cpu: no VRAM measured"),
    # NVML saw ~0 on every request: a server that reserved its memory up front
    ([{"tokens_source": "usage", "vram_peak_delta_mb": 0.25 * (i % 3 - 1)} for i in range(6)],
     {"usage": 6}, summary.PREALLOCATED_NOTE),
    # real deltas: nothing to explain
    ([{"tokens_source": "tokenizer", "vram_peak_delta_mb": 40.0 + i} for i in range(6)],
     {"tokenizer": 6}, None),
    # too few items to call ~0 a preallocation
    ([{"tokens_source": "usage", "vram_peak_delta_mb": 0.0}] * 2, {"usage": 2}, None),
])
def test_the_summary_says_how_tokens_and_vram_were_measured(
        metrics: list[dict[str, Any]], sources: dict[str, int], note: str | None) -> None:
    for batched in (False, True):
        state = fold(started("a"), *(completed("a", i, **m) for i, m in enumerate(metrics)),
                     batched=batched)
        s = summary.summarize(state)
        assert s["tokens_source"] == sources
        assert s["vram_note"] == note


def test_a_name_two_runs_share_is_an_error_that_lists_them() -> None:
    folded = tracker.fold(stored([submitted("r1", name="nightly"), submitted("r2", name="once"),
                                  submitted("r3", name="nightly")]))
    with pytest.raises(tracker.AmbiguousName) as info:
        folded.find("nightly")
    assert info.value.runs == ["r1", "r3"]
    assert "'nightly' matches 2 runs (r1, r3)" in str(info.value)
    found = folded.find("once")
    assert found is not None and found.run == "r2"
    found = folded.find("r3")
    assert found is not None and found.run == "r3"  # an id is never ambiguous
    assert folded.find("nope") is None
