"""What the log appends: envelopes decoded once into typed bodies (`vlmd_agent.catalog`).

`decode` turns a POST's bytes into `Incoming` envelopes with msgspec, in one pass that also
validates them against the catalog; each keeps its body's JSON exactly as the producer sent it
(the log stores that text, so fields the catalog does not name survive). A batch that does not
pass is explained by `vlmd_agent.wire.validate`, which names every faulty field of every event.
`typed` does the same for an envelope built in Python (vlmd's own events, tests).
`body_of` decodes a stored body when the log is read.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Annotated, Any, NamedTuple

import msgspec
import orjson
from msgspec import Meta

from vlmd_agent import catalog, wire


class Incoming(NamedTuple):
    """A valid envelope on its way into the log: its body typed, and as the producer sent it."""

    key: str
    run: str
    kind: str
    ts: float
    body: catalog.Body
    body_json: str


class Invalid(Exception):
    """A batch that may not be appended: every error found (an event's index, field, why), or
    the JSON parser's complaint (`not_json`)."""

    def __init__(self, errors: list[wire.SchemaError], not_json: str | None = None) -> None:
        super().__init__(not_json or "; ".join(map(str, errors[:3])))
        self.errors, self.not_json = errors, not_json


class _Envelope(msgspec.Struct, forbid_unknown_fields=True, frozen=True, gc=False):
    key: Annotated[str, Meta(min_length=1, max_length=wire.MAX_KEY)]
    run: str  # its pattern is checked once per run id a batch names (`_run_ok`)
    kind: Annotated[str, Meta(max_length=128)]
    ts: Annotated[float, Meta(ge=0, le=1e12)]
    body: msgspec.Raw


_BATCH = msgspec.json.Decoder(list[_Envelope] | _Envelope)
_ALERT = re.compile(catalog.ALERT_PATTERN)
_MSGSPEC_AT = re.compile(r"^(.*) - at `\$(?:\[(\d+)\])?\.?(.*)`$")


@cache
def _decoder(kind: str) -> msgspec.json.Decoder[Any] | None:
    body = catalog.KINDS.get(kind)
    if body is None and _ALERT.fullmatch(kind):
        body = catalog.Alert
    return None if body is None else msgspec.json.Decoder(body)


def decode(raw: bytes, now: float | None = None) -> list[Incoming]:
    """The envelopes of a POST body (a JSON array of them, or one object), typed.

    Raises `Invalid` naming what is wrong; nothing of a refused batch may be appended.
    """
    now = time.time() if now is None else now
    try:
        batch = _BATCH.decode(raw)
        if isinstance(batch, _Envelope):
            batch = [batch]
        found = []
        latest = now + wire.FUTURE_SLACK_S
        runs: set[str] = set()
        for e in batch:
            decoder = _decoder(e.kind)
            if decoder is None or e.ts > latest:
                raise _Explain
            body = decoder.decode(e.body)
            if type(body) in _CHECKED and not _sound(body):
                raise _Explain
            runs.add(e.run)
            found.append(Incoming(e.key, e.run, e.kind, e.ts, body, bytes(e.body).decode()))
        if not all(run in _RUNS_SEEN or _run_ok(run) for run in runs):
            raise _Explain
    except msgspec.DecodeError as e:
        if not isinstance(e, msgspec.ValidationError):
            raise Invalid([], f"body is not valid JSON: {e}") from None
        raise Invalid(_explained(raw, now, str(e))) from None
    except _Explain:
        raise Invalid(_explained(raw, now, None)) from None
    if len({e.key for e in found}) != len(found):
        raise Invalid(_explained(raw, now, None))
    return found


def typed(envelope: Mapping[str, Any], now: float | None = None) -> Incoming:
    """An envelope built in Python (`vlmd_agent.wire.envelope`), checked and typed.

    Raises ValueError naming the first fault.
    """
    errors = wire.event_errors(dict(envelope), 0, time.time() if now is None else now)
    if errors:
        raise ValueError(f"not a valid event: {errors[0]}")
    body_json = orjson.dumps(envelope["body"]).decode()
    decoder = _decoder(envelope["kind"])
    assert decoder is not None  # event_errors knows the kind
    return Incoming(envelope["key"], envelope["run"], envelope["kind"], float(envelope["ts"]),
                    decoder.decode(body_json), body_json)


def all_typed(events: Sequence[Incoming | Mapping[str, Any]]) -> list[Incoming]:
    """`events`, each typed (`typed`) unless it already is."""
    return [e if isinstance(e, Incoming) else typed(e) for e in events]


def body_of(kind: str, body_json: str | bytes) -> catalog.Body:
    """A stored body, typed. A body the catalog no longer accepts (a log written by an older
    vlmd, or a kind it does not know) loses the fields that do not fit, rather than the read."""
    decoder = _decoder(kind)
    if decoder is not None:
        try:
            return decoder.decode(body_json)  # type: ignore[no-any-return]
        except msgspec.ValidationError:
            pass
    return _lenient(kind, orjson.loads(body_json))


class Unknown(catalog.Body, kw_only=True, frozen=True):
    """The body of a stored event whose kind this vlmd does not know: no fields are read."""


def _lenient(kind: str, body: Any) -> catalog.Body:
    body_type = catalog.body_type(kind)
    if body_type is None or not isinstance(body, dict):
        return Unknown()
    for _ in range(len(body) + 1):  # drop one faulty field at a time
        try:
            return msgspec.convert(body, body_type)
        except msgspec.ValidationError as e:
            m = _MSGSPEC_AT.match(str(e))
            field = m[3].split(".")[0].split("[")[0] if m else ""
            if field not in body:
                break
            del body[field]
    return Unknown()


class _Explain(Exception):
    """The fast path found a fault that only the explaining path can name."""


_RUN = re.compile(catalog.RUN_PATTERN)
_RUNS_SEEN: set[str] = set()  # run ids that matched: a batch names a few, many times
_SHARDS_SEEN: set[str] = set()  # shards that passed `wire.check_shard`
_BODY_TYPES: tuple[type[catalog.Body], ...] = (*catalog.KINDS.values(), catalog.Alert)
_CHECKED = frozenset(t for t in _BODY_TYPES
                     if t is catalog.WatchdogSample
                     or any(f.name == "shard" for f in msgspec.structs.fields(t)))
"""The body types `_sound` has something to check in."""


def _run_ok(run: str) -> bool:
    if _RUN.fullmatch(run) is None:
        return False
    if len(_RUNS_SEEN) >= 4096:
        _RUNS_SEEN.clear()
    _RUNS_SEEN.add(run)
    return True


def _sound(body: catalog.Body) -> bool:
    """What the catalog's types cannot say: a shard's ``i < n``, and a sample body that is one
    sample or a batch of them."""
    shard = getattr(body, "shard", None)
    if shard is not None and shard not in _SHARDS_SEEN:
        if wire.check_shard(shard) is not None:
            return False
        if len(_SHARDS_SEEN) >= 4096:
            _SHARDS_SEEN.clear()
        _SHARDS_SEEN.add(shard)
    if isinstance(body, catalog.WatchdogSample):
        inline = (body.t, body.gpus, body.ram)
        return (all(v is None for v in inline) if body.samples is not None
                else all(v is not None for v in inline))
    return True


def _explained(raw: bytes, now: float, decoder_said: str | None) -> list[wire.SchemaError]:
    """Every error `wire.validate` names in the batch; where it finds none (the decoder's
    types are stricter in places), the decoder's own complaint, at its index and field.
    Raises `Invalid` when the body is no JSON after all."""
    try:
        batch = orjson.loads(raw)
    except orjson.JSONDecodeError as e:  # valid to msgspec's tokenizer, not as UTF-8 text
        raise Invalid([], f"body is not valid JSON: {e}") from None
    errors = wire.validate([batch] if type(batch) is dict else batch, now)
    if errors:
        return errors
    m = _MSGSPEC_AT.match(decoder_said or "")
    if m is None:
        return [wire.SchemaError(-1, "(batch)", decoder_said or "not a valid batch")]
    index = int(m[2]) if m[2] is not None else 0
    return [wire.SchemaError(index, m[3] or "(event)", m[1])]
