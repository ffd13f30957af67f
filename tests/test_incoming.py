"""Envelopes are decoded once into typed bodies; a refused batch is explained field by field;
the log keeps each body's JSON as sent and hands typed bodies back."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tests.events import T0, completed, ev, failed, stored, submitted
from vlmd.projections import tracker
from vlmd.store import incoming
from vlmd.store.log import NOT_READ, EventLog
from vlmd_agent import catalog

NOW = T0 + 10


def test_a_batch_decodes_into_typed_bodies_that_keep_their_json_as_sent() -> None:
    raw = b'[{"key":"k1","run":"r","kind":"item.completed","ts":%d,' \
          b'"body":{"item":7, "answer":"B","ttft_ms":12,"custom":{"x":1}}}]' % T0
    [e] = incoming.decode(raw, now=NOW)
    assert isinstance(e.body, catalog.ItemCompleted)
    assert (e.body.item, e.body.answer, e.body.ttft_ms, e.body.score) == (7, "B", 12.0, None)
    assert e.body_json == '{"item":7, "answer":"B","ttft_ms":12,"custom":{"x":1}}'
    one = orjson.dumps(submitted("r1"))  # one envelope, not in an array
    assert [type(e.body) for e in incoming.decode(one, now=NOW)] == [catalog.RunSubmitted]


@pytest.mark.parametrize(("events", "index", "field", "why"), [
    ([completed("r", 1), ev("r", "item.completed", {"item": "2", "answer": 3})],
     1, "body.answer", "expected a string, got integer"),
    ([ev("r", "item.failed", {"item": "1", "reason": "flaky", "message": "m"})],
     0, "body.reason", "'flaky' is not one of backend_error, bad_input, oom, timeout"),
    ([ev("r", "run.started", {"total": 1, "host": "h", "pid": 1, "shard": "2/2"})],
     0, "body.shard", "expected 'i/n' with 0 <= i < n"),
    ([ev("r", "watchdog.sample", {"host": "h", "t": 1.0})],
     0, "body.gpus", "required field is missing"),
    ([ev("r", "made.up", {})], 0, "kind", "unknown kind 'made.up'"),
    ([{**completed("r", 1), "ts": NOW + 10 * 365 * 86_400}], 0, "ts", "more than a year ahead"),
    ([{**completed("r", 1), "extra": 1}], 0, "extra", "unknown envelope field"),
])
def test_a_refused_batch_names_the_event_and_field(events: list[dict[str, object]], index: int,
                                                   field: str, why: str) -> None:
    with pytest.raises(incoming.Invalid) as refused:
        incoming.decode(orjson.dumps(events), now=NOW)
    first = refused.value.errors[0]
    assert (first.index, first.field) == (index, field)
    assert why in first.message


def test_a_key_twice_in_one_batch_is_refused() -> None:
    twice = [completed("r", 1), completed("r", 1)]
    with pytest.raises(incoming.Invalid) as refused:
        incoming.decode(orjson.dumps(twice), now=NOW)
    assert [(e.index, e.field) for e in refused.value.errors] == [(1, "key")]


@pytest.mark.parametrize("raw", [b'[{"key": ', b'["\xff\xfe"]', b"", b"nope"])
def test_what_is_not_json_says_so(raw: bytes) -> None:
    with pytest.raises(incoming.Invalid) as refused:
        incoming.decode(raw, now=NOW)
    assert refused.value.not_json is not None and "not valid JSON" in refused.value.not_json


def test_the_log_hands_back_typed_bodies_or_their_json_alone(tmp_path: Path) -> None:
    log = EventLog.open(tmp_path / "v.db")
    log.append([submitted("r"), completed("r", 1), failed("r", 2)], received=NOW)
    typed = list(log.read())
    assert [type(e.body) for e in typed] == [catalog.RunSubmitted, catalog.ItemCompleted,
                                             catalog.ItemFailed]
    raw = list(log.read(typed=False))
    assert all(e.body is NOT_READ for e in raw)
    assert [e.body_json for e in raw] == [e.body_json for e in typed]


def test_a_stored_body_the_catalog_no_longer_accepts_loses_its_bad_fields_not_the_read(
        tmp_path: Path) -> None:
    """An older vlmd accepted what this one may not: the read goes on, the fold ignores what
    it cannot read."""
    body = incoming.body_of("item.completed", '{"item": "1", "answer": "B", "ttft_ms": "fast"}')
    assert isinstance(body, catalog.ItemCompleted) and body.ttft_ms is None
    assert type(incoming.body_of("item.completed", '{"answer": "B"}')) is incoming.Unknown
    assert type(incoming.body_of("some.future_kind", '{"x": 1}')) is incoming.Unknown
    events = stored([submitted("r"), completed("r", 1)])
    unreadable = events[1]._replace(body=incoming.body_of("item.completed", '{"answer": "B"}'))
    state = tracker.fold([events[0], unreadable]).runs["r"]
    assert (state.done, state.failed) == (0, 0)
