"""The wire schema's fast path (compiled `Body.valid`, `_valid`, `validate`'s shortcut) must
give the same answer as the slow path that explains errors, for every kind and any value."""

from __future__ import annotations

import math
import time
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.events import completed, ev, failed, started, submitted
from vlmd_agent import wire

EDGE_VALUES = st.sampled_from([
    None, True, False, 0, -1, 1, 2**70, -(2**70), 0.0, -0.0, -1e-9, 1.5, 1e308, -1e308,
    math.inf, -math.inf, math.nan, "", "x", "B", "0/1", "1/2", "2/2", "a/b", "oom", "timeout",
    "x" * 257, "x" * 2000, [], ["a"], ["a", 1], [1.0], {}, {"a": 1}])
VALUES = EDGE_VALUES | st.integers() | st.floats() | st.text(max_size=300) | st.lists(
    st.text(max_size=3) | st.integers(), max_size=3)
BODIES = [
    (kind, schema, [*schema.required, *schema.optional]) for kind, schema in wire.BODIES.items()]
EXAMPLES = {e["kind"]: e["body"] for e in [
    submitted("w"), started("w", shard="0/2"), completed("w", 3), failed("w", 4)]}


FIELDS = [(schema, name) for _, schema, fields in BODIES for name in fields]
EXAMPLE_OF = {id(schema): EXAMPLES.get(kind, {}) for kind, schema, _ in BODIES}


@st.composite
def bodies(draw: st.DrawFn) -> tuple[wire.Body, dict[str, Any]]:
    """A kind's example body (or an empty one) with one or two fields set or dropped, maybe a
    field the schema does not name: mostly one thing wrong, so each check is tested alone."""
    schema, name = draw(st.sampled_from(FIELDS))
    body = dict(EXAMPLE_OF[id(schema)])
    names = [name, *draw(st.lists(st.sampled_from([*schema.required, *schema.optional]),
                                  max_size=1))]
    for name in names:
        if draw(st.integers(0, 5)) == 0:
            body.pop(name, None)
        else:
            body[name] = draw(VALUES)
    if draw(st.integers(0, 3)) == 0:  # fields not in the schema are allowed
        body[draw(st.text(max_size=8))] = draw(VALUES)
    return schema, body


@settings(max_examples=3000)
@given(case=bodies())
def test_compiled_body_check_agrees_with_the_explaining_one(
        case: tuple[wire.Body, dict[str, Any]]) -> None:
    schema, body = case
    assert schema.valid(body) == (schema.errors(body) == []), (body, schema.errors(body))


SAMPLE_FIELDS = st.fixed_dictionaries({}, optional={
    "t": VALUES | st.floats(0, 1e10), "gpus": VALUES, "ram": VALUES})


@settings(max_examples=1500)
@given(host=VALUES | st.just("h"), one=SAMPLE_FIELDS,
       samples=st.none() | st.just("missing") | VALUES | st.lists(SAMPLE_FIELDS | VALUES,
                                                                  max_size=3))
def test_sample_fast_path_agrees_with_the_explaining_one(host: Any, one: dict[str, Any],
                                                         samples: Any) -> None:
    body: dict[str, Any] = {"host": host, **({} if samples != "missing" else one)}
    if samples != "missing":
        body["samples"] = samples
    event = ev("w", "watchdog.sample", body)
    now = time.time()
    assert wire._valid(event, now) == (wire._explain(event, 0, now) == [])


@settings(max_examples=3000)
@given(kind=st.sampled_from([*sorted(wire.KINDS - {"watchdog.sample"}), "alert.hang"]),
       field=st.sampled_from([*wire.ENVELOPE_FIELDS, "more"]),
       value=st.one_of(EDGE_VALUES, VALUES, st.floats(0, 2e9)),
       drop=st.integers(0, 5))
def test_envelope_fast_path_agrees_with_the_explaining_one(kind: str, field: str, value: Any,
                                                           drop: int) -> None:
    body = EXAMPLES.get(kind, {"message": "m", "reason": "r", "host": "h", "pid": 1,
                               "wrapper_pid": None, "wrapper_state": "idle"})
    event = ev("w", kind, dict(body))
    if drop == 0 and field in event:
        del event[field]
    else:
        event[field] = value
    now = time.time()
    slow = wire._explain(event, 0, now)
    assert wire._valid(event, now) == (slow == []) or (
        # an envelope the fast path does not cover (alerts, scheduler events) is only ever
        # sent on to the slow path: it may say "look closer" but never "valid" wrongly
        not wire._valid(event, now) and slow == [])
    assert (wire.validate([event], now) == []) == (slow == [])


def test_validate_shortcut_still_refuses_duplicate_keys_and_names_them() -> None:
    a, b = completed("w", 1), completed("w", 2)
    b["key"] = a["key"]
    errors = wire.validate([a, b])
    assert [str(e) for e in errors] == ["event 1: key: same key as event 0 in this batch"]
    assert wire.validate([a, completed("w", 2)]) == []


def test_a_reason_of_the_wrong_type_is_a_schema_error_not_a_crash() -> None:
    event = failed("w", 9)
    event["body"]["reason"] = ["oom"]  # unhashable: `in frozenset` would raise
    assert [e.field for e in wire.validate([event])] == ["body.reason"]
