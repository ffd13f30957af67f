"""The fold's benchmark table: accuracy per category and l2-category, CircularEval's accuracy
(MMBench's rule as VLMEvalKit applies it) and the unparsed answers, kept as items come and
change, and the same when recomputed from the items."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.events import completed, failed, started, stored, submitted
from vlmd.projections import summary, tracker
from vlmd.projections.circular import Tally


def item(run: str, index: int, score: float | None, category: str | None = None,
         l2: str | None = None, attempt: int = 0, **extra: Any) -> dict[str, Any]:
    """Item `index` of an MMBench-style file: its group is index % 1,000,000 when circular;
    a failure when `score` is None."""
    e = failed(run, index, attempt=attempt) if score is None else completed(run, index, score)
    e["key"] = f"{run}/item/{index}/{attempt}"
    body = e["body"]
    for name, value in (("category", category), ("l2_category", l2), *extra.items()):
        if value is not None:
            body[name] = value
    return e


def circular(run: str, question: int, scores: list[float | None], category: str,
             l2: str = "perception") -> list[dict[str, Any]]:
    """A question's rotations k = 0, 1, ... (index question + k * 1,000,000), scored so."""
    return [item(run, question + k * 1_000_000, s, category, l2,
                 circular_group=str(question)) for k, s in enumerate(scores)]


def folded(events: list[dict[str, Any]], run: str = "m") -> tracker.RunState:
    return tracker.fold(stored([submitted(run, total=len(events)), started(run), *events])
                        ).runs[run]


def test_circular_eval_credits_a_question_only_when_every_rotation_is_right() -> None:
    # 4 questions x 4 rotations; the model is right on 12 of 16 rotations (plain 0.75) but on
    # every rotation of only two questions: CircularEval says 0.5
    events = [*circular("m", 0, [1.0, 1.0, 1.0, 1.0], "attribute"),
              *circular("m", 1, [1.0, 0.0, 1.0, 1.0], "attribute"),
              *circular("m", 2, [1.0, 1.0, 1.0, 1.0], "counting"),
              *circular("m", 3, [0.0, 1.0, 0.0, 0.0], "counting", l2="reasoning")]
    state = folded(events)
    assert state.accuracy == 12 / 16
    assert state.circular_accuracy == 2 / 4
    assert state.to_dict()["circular_accuracy"] == 0.5
    s = summary.summarize(state)
    assert (s["accuracy"], s["circular_accuracy"], s["circular_groups"]) == (0.75, 0.5, 4)
    assert s["by_category"] == {
        "attribute": {"items": 8, "accuracy": 7 / 8, "circular_groups": 2,
                      "circular_accuracy": 0.5},
        "counting": {"items": 8, "accuracy": 5 / 8, "circular_groups": 2,
                     "circular_accuracy": 0.5}}
    assert s["by_l2_category"] == {
        "perception": {"items": 12, "accuracy": 11 / 12, "circular_groups": 3,
                       "circular_accuracy": 2 / 3},
        "reasoning": {"items": 4, "accuracy": 0.25, "circular_groups": 1,
                      "circular_accuracy": 0.0}}


def test_a_plain_file_has_categories_and_no_circular_accuracy() -> None:
    events = [item("m", 1, 1.0, "OCR"), item("m", 2, 0.0, "OCR", unparsed=True),
              item("m", 3, 1.0, "counting"), item("m", 4, None, "counting"),
              item("m", 5, 1.0), item("m", 6, None, "celebrity")]
    state = folded(events)
    s = summary.summarize(state)
    assert state.circular_accuracy is None and state.to_dict()["circular_accuracy"] is None
    assert (s["circular_accuracy"], s["circular_groups"], s["unparsed"]) == (None, 0, 1)
    # a category's items are its completed, scored ones (the accuracy's); one whose items all
    # failed is listed with none; items without a category are in no row
    assert s["by_category"] == {"OCR": {"items": 2, "accuracy": 0.5},
                                "celebrity": {"items": 0, "accuracy": None},
                                "counting": {"items": 1, "accuracy": 1.0}}
    assert list(s["by_category"]) == ["OCR", "celebrity", "counting"]  # sorted by name
    assert s["by_l2_category"] == {}


def test_a_failed_rotation_is_not_right_and_a_later_outcome_replaces_it() -> None:
    q = circular("m", 7, [1.0, None, 1.0], "attribute")
    state = folded(q)
    assert (state.accuracy, state.circular_accuracy) == (1.0, 0.0)  # the failure: not right
    retry = item("m", 1_000_007, 1.0, "attribute", attempt=1, circular_group="7")
    state = folded([*q, retry])
    assert (state.done, state.failed, state.circular_accuracy) == (3, 0, 1.0)
    worse = item("m", 7, 0.0, "attribute", attempt=2, circular_group="7")  # latest answer wins
    state = folded([*q, retry, worse])
    assert (state.circular_accuracy, summary.summarize(state)["by_category"]["attribute"]) == (
        0.0, {"items": 3, "accuracy": 2 / 3, "circular_groups": 1, "circular_accuracy": 0.0})
    later_failure = item("m", 2_000_007, None, "attribute", attempt=3, circular_group="7")
    assert folded([*q, retry, later_failure]).circular_accuracy == 1.0  # an answer stays


def test_the_tally_forgets_a_question_whose_last_rotation_it_takes_back() -> None:
    t = Tally()
    t.add("1", True)
    t.add("2", False)
    assert (t.credited, t.accuracy) == (1, 0.5)
    t.remove("2", False)
    assert (t.groups, t.credited, t.accuracy) == ({"1": [1, 1]}, 1, 1.0)
    t.remove("1", True)
    assert (t.groups, t.credited, t.accuracy) == ({}, 0, None)


def brute_force(state: tracker.RunState) -> float | None:
    """CircularEval recomputed from the kept outcomes (the definition, not the tally)."""
    questions: dict[str, list[bool]] = {}
    for r in state.items.values():
        if r.circular_group is not None:
            questions.setdefault(r.circular_group, []).append(
                r.ok and r.score is not None and r.score >= 0.5)
    return sum(all(v) for v in questions.values()) / len(questions) if questions else None


@settings(max_examples=200)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 80))
def test_the_kept_tally_equals_recomputing_it_from_the_items(seed: int, n: int) -> None:
    rng = random.Random(seed)
    events = []
    for attempt in range(n):
        index = rng.randrange(4) + rng.randrange(3) * 1_000_000
        events.append(item("m", index, rng.choice([0.0, 1.0, 0.5, 0.25, None]),
                           rng.choice(["a", "b"]), attempt=attempt,
                           circular_group=str(index % 1_000_000)))
    state = folded(events)
    assert state.circular_accuracy == brute_force(state)
    table = summary.summarize(state)["by_category"]
    assert sum(row["items"] for row in table.values()) == state.scored


@pytest.mark.parametrize("level", ["category", "l2_category"])
def test_by_category_of_no_items_is_empty(level: str) -> None:
    assert summary.by_category([], level, circular=True) == {}
