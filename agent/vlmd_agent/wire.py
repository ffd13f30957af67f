"""The event envelope and the body schema of every kind: what producers send and vlmd validates.

An envelope is a JSON object ``{"key", "run", "kind", "ts", "body"}``:

- ``key``: the producer's idempotency key; re-sending an event with the same key is harmless.
- ``run``: the run id (letters, digits, ``.``, ``_``, ``-``, ``:``; no ``/``).
- ``kind``: one of `KINDS`, or ``alert.<name>``.
- ``ts``: the producer's wall clock, seconds since the epoch.
- ``body``: an object whose fields depend on the kind (`vlmd_agent.catalog`, `BODIES`).

The schemas come from `vlmd_agent.catalog`, where every kind and field is declared with its
meaning and unit. This module is shared by the agent and the daemon; it needs the standard
library and msgspec only.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from msgspec import inspect as mi

from vlmd_agent import catalog

MAX_KEY = 256
MAX_ID = catalog.MAX_ID
FUTURE_SLACK_S = 366 * 86_400.0  # a year: catches milliseconds and broken clocks, not skew
RUN_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
SHARD_RE = re.compile(r"(\d{1,6})/(\d{1,6})")
ALERT_RE = re.compile(catalog.ALERT_PATTERN)
ENVELOPE_FIELDS = ("key", "run", "kind", "ts", "body")


@dataclass(frozen=True)
class SchemaError:
    """One reason an event was refused: the event's index in its batch, the field, and why."""

    index: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"event {self.index}: {self.field}: {self.message}"


Check = Callable[[Any], str | None]


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
            dict: "object"}.get(type(value), type(value).__name__)


def _fast(check: Check, test: str, **names: Any) -> Check:
    """Attach to `check` the same test as a Python expression over ``v`` (True: valid), which
    `Body` inlines into its compiled fast path; `names` are the objects the expression uses."""
    check.fast = (test, names)  # type: ignore[attr-defined]
    return check


def _string(limit: int | None = None, pattern: re.Pattern[str] | None = None) -> Check:
    def check(v: Any) -> str | None:
        if type(v) is not str:
            return f"expected a string, got {_type_name(v)}"
        if limit is not None and len(v) > limit:
            return f"longer than {limit} characters"
        if pattern is not None and not pattern.fullmatch(v):
            return f"{v[:80]!r} does not match {pattern.pattern}"
        return None
    test = "type(v) is str"
    test += "" if limit is None else f" and len(v) <= {limit}"
    test += "" if pattern is None else " and P.fullmatch(v) is not None"
    return _fast(check, test, P=pattern)


def _number(minimum: float | None = None) -> Check:
    def check(v: Any) -> str | None:
        t = type(v)
        if t is not float and t is not int:
            return f"expected a number, got {_type_name(v)}"
        if t is float and not math.isfinite(v):
            return "must be finite"
        if minimum is not None and v < minimum:
            return f"must be >= {minimum:g}"
        return None
    low = "-INF <" if minimum is None else f"{float(minimum)!r} <="
    return _fast(check, f"(type(v) is float or type(v) is int) and {low} v < INF",
                 INF=math.inf)


def _integer(minimum: int | None = 0) -> Check:
    def check(v: Any) -> str | None:
        if type(v) is not int:
            return f"expected an integer, got {_type_name(v)}"
        if minimum is not None and v < minimum:
            return f"must be >= {minimum}"
        return None
    return _fast(check, "type(v) is int" + ("" if minimum is None else f" and v >= {minimum}"))


def _ident(v: Any) -> str | None:
    if type(v) is int:
        return None
    if type(v) is not str:
        return f"expected a string or integer id, got {_type_name(v)}"
    if not v or len(v) > MAX_ID:
        return f"must be 1 to {MAX_ID} characters"
    return None


_fast(_ident, f"type(v) is int or (type(v) is str and 0 < len(v) <= {MAX_ID})")


def _of_type(*types: type) -> Check:
    names = " or ".join(_type_name(t()) for t in types)

    def check(v: Any) -> str | None:
        return None if type(v) in types else f"expected {names}, got {_type_name(v)}"
    return _fast(check, "type(v) in T", T=types)


def _one_of(choices: frozenset[str]) -> Check:
    def check(v: Any) -> str | None:
        if type(v) is str and v in choices:
            return None
        return f"{v!r} is not one of {', '.join(sorted(choices))}"
    return _fast(check, "type(v) is str and v in C", C=choices)


def check_shard(v: Any) -> str | None:
    """Why `v` is not a shard ``"i/n"`` with ``0 <= i < n``; None when it is one."""
    m = SHARD_RE.fullmatch(v) if type(v) is str else None
    if m is None or int(m[1]) >= int(m[2]):
        return "expected 'i/n' with 0 <= i < n"
    return None


_shard = check_shard


def _expected(v: Any) -> str | None:
    if type(v) is str:
        return None
    if type(v) is list and all(type(x) is str for x in v):
        return None
    return f"expected a string or an array of strings, got {_type_name(v)}"


_fast(_expected, "type(v) is str or E(v) is None", E=_expected)


def _nullable(check: Check) -> Check:
    """A required field that may be null (e.g. ``wrapper_pid`` while no wrapper runs)."""
    return lambda v: None if v is None else check(v)




@dataclass(frozen=True)
class Body:
    """The schema of one kind's body: required and optional fields, each with its check.

    Optional fields may be null; fields not named here are allowed and stored as sent.
    """

    required: Mapping[str, Check]
    optional: Mapping[str, Check]

    def __post_init__(self) -> None:
        object.__setattr__(self, "valid", _compile(self.required, self.optional))

    def valid(self, body: dict[str, Any]) -> bool:
        """True if `body` passes; the fast path of ingest (`errors` explains a False).

        Replaced per instance by a function compiled from the fields' checks (see `_compile`).
        """
        raise AssertionError("Body.__post_init__ compiles valid")

    def errors(self, body: Mapping[str, Any]) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        for name, check in self.required.items():
            if name not in body:
                found.append((f"body.{name}", "required field is missing"))
            elif (why := check(body[name])) is not None:
                found.append((f"body.{name}", why))
        for name, check in self.optional.items():
            value = body.get(name)
            if value is not None and (why := check(value)) is not None:
                found.append((f"body.{name}", why))
        return found


def _compile(required: Mapping[str, Check], optional: Mapping[str, Check]
             ) -> Callable[[dict[str, Any]], bool]:
    """One function that tests a body against every field, with each check's `_fast` test
    inlined (a call per field costs more than the test itself at ingest rates); a check without
    one is called. Same answers as `Body.errors(body) == []`, which the tests hold it to."""
    lines = ["def valid(body):"]
    names: dict[str, Any] = {}
    lines += [f"    if {name!r} not in body: return False" for name in required]
    for n, (name, check) in enumerate({**optional, **required}.items()):
        test, used = getattr(check, "fast", ("C(v) is None", {"C": check}))
        for var, value in used.items():  # give every field's objects their own names
            test = re.sub(rf"\b{var}\b", f"{var}{n}", test)
            names[f"{var}{n}"] = value
        lines.append(f"    v = body.get({name!r})")
        skip = "" if name in required else "v is not None and "
        lines.append(f"    if {skip}not ({test}): return False")
    lines.append("    return True")
    exec("\n".join(lines), names)  # the source is built above from our own schemas
    valid: Callable[[dict[str, Any]], bool] = names["valid"]
    return valid


def check_of(t: mi.Type) -> Check:
    """The check of a catalog type (`vlmd_agent.catalog`), with the messages of this module."""
    if isinstance(t, mi.Metadata):
        return check_of(t.type)
    if isinstance(t, mi.UnionType):
        members = [m.type if isinstance(m, mi.Metadata) else m for m in t.types
                   if not isinstance(m, mi.NoneType)]
        kinds = {type(m) for m in members}
        if kinds == {mi.IntType, mi.StrType}:
            return _ident
        if kinds == {mi.StrType, mi.ListType}:
            return _expected
        if len(members) == 1:
            return check_of(members[0])
        raise TypeError(f"the catalog's union {t} has no check here")
    if isinstance(t, mi.StrType):
        if t.pattern == catalog.SHARD_PATTERN:
            return _shard
        pattern = None if t.pattern is None else re.compile(t.pattern.strip("^$"))
        return _string(t.max_length, pattern)
    if isinstance(t, mi.IntType):
        return _integer(t.ge)
    if isinstance(t, mi.FloatType):
        return _number(None if t.ge is None or t.ge < 0 else float(t.ge))
    if isinstance(t, mi.LiteralType):
        return _one_of(frozenset(str(v) for v in t.values))
    types = {mi.BoolType: bool, mi.ListType: list, mi.DictType: dict}
    if type(t) in types:
        return _of_type(types[type(t)])
    if isinstance(t, mi.AnyType):
        return lambda v: None
    raise TypeError(f"the catalog's type {t} has no check here")


def schema_of(body: type[catalog.Body]) -> Body:
    """The `Body` schema of a catalog body type: its required and optional fields' checks (a
    required field declared nullable accepts null)."""
    required: dict[str, Check] = {}
    optional: dict[str, Check] = {}
    for f in catalog.fields(body):
        check = check_of(f.type)
        nullable = isinstance(f.type, mi.UnionType) and any(
            isinstance(m, mi.NoneType) for m in f.type.types)
        if f.required:
            required[f.name] = _nullable(check) if nullable else check
        else:
            optional[f.name] = check
    return Body(required, optional)


BODIES: Mapping[str, Body] = {kind: schema_of(body) for kind, body in catalog.KINDS.items()
                              if kind != "watchdog.sample"}
"""The schema of every kind's body (but ``watchdog.sample``'s, checked by `_sample_errors`),
derived from `vlmd_agent.catalog`."""

ALERT_BODY = schema_of(catalog.Alert)
SAMPLE_ONE = schema_of(catalog.Sample)
KINDS: frozenset[str] = frozenset({*BODIES, "watchdog.sample"})
"""Every kind vlmd accepts, besides ``alert.<name>``."""


def _sample_errors(body: Mapping[str, Any]) -> list[tuple[str, str]]:
    found = [("body.host", why) for why in [_string(256)(body.get("host"))] if why]
    if "samples" not in body:
        return found + SAMPLE_ONE.errors(body)
    samples = body["samples"]
    if type(samples) is not list:
        return [*found, ("body.samples", f"expected an array, got {_type_name(samples)}")]
    for i, sample in enumerate(samples):
        if type(sample) is not dict:
            found.append((f"body.samples[{i}]", f"expected an object, got {_type_name(sample)}"))
            continue
        found += [(f"body.samples[{i}].{f[5:]}", why) for f, why in SAMPLE_ONE.errors(sample)]
    return found


def _valid(event: dict[str, Any], now: float) -> bool:
    """A quick yes for the common valid event; False means "look closer" (`event_errors`)."""
    if len(event) != 5:
        return False
    try:
        key, run, kind, ts, body = (event["key"], event["run"], event["kind"], event["ts"],
                                    event["body"])
    except KeyError:
        return False
    if type(kind) is not str or type(body) is not dict:
        return False
    if kind == "watchdog.sample":
        valid = _sample_valid
    else:
        schema = BODIES.get(kind)
        if schema is None:
            return False
        valid = schema.valid
    return (type(key) is str and 0 < len(key) <= MAX_KEY
            and type(run) is str and (run in _RUNS_SEEN or _run_valid(run))
            and (type(ts) is float or type(ts) is int) and 0 <= ts <= now + FUTURE_SLACK_S
            and valid(body))


_RUNS_SEEN: set[str] = set()  # run ids that matched RUN_RE: a batch names a few, many times


def _run_valid(run: str) -> bool:
    if RUN_RE.fullmatch(run) is None:
        return False
    if len(_RUNS_SEEN) >= 4096:
        _RUNS_SEEN.clear()
    _RUNS_SEEN.add(run)
    return True


def _sample_valid(body: dict[str, Any]) -> bool:
    """`_valid` for a ``watchdog.sample`` body: one sample, or ``host`` and ``samples``."""
    host = body.get("host")
    if type(host) is not str or len(host) > 256:
        return False
    samples = body.get("samples")
    if samples is None:
        return "samples" not in body and SAMPLE_ONE.valid(body)
    return type(samples) is list and all(type(s) is dict and SAMPLE_ONE.valid(s)
                                         for s in samples)


def event_errors(event: Any, index: int, now: float) -> list[SchemaError]:
    """Every reason `event` (the `index`-th of its batch) is not a valid envelope at `now`."""
    if type(event) is dict and _valid(event, now):
        return []
    return _explain(event, index, now)


def _explain(event: Any, index: int, now: float) -> list[SchemaError]:
    """`event_errors` without the fast path: checks every field one by one, naming each fault."""
    if type(event) is not dict:
        return [SchemaError(index, "(event)", f"expected an object, got {_type_name(event)}")]
    found: list[tuple[str, str]] = []
    for name in event:
        if name not in ENVELOPE_FIELDS:
            found.append((str(name)[:80], "unknown envelope field"))
    for name in ENVELOPE_FIELDS:
        if name not in event:
            found.append((name, "required field is missing"))
    key, run, kind, ts, body = (event.get(n) for n in ENVELOPE_FIELDS)
    # a field given as null is checked (and refused) like any other wrong type
    if "key" in event and (why := _string(MAX_KEY)(key) or (None if key else "must not be empty")):
        found.append(("key", why))
    if "run" in event and (why := _string(128, RUN_RE)(run)):
        found.append(("run", why))
    if "ts" in event:
        if why := _number(0.0)(ts):
            found.append(("ts", why))
        elif isinstance(ts, int | float) and ts > now + FUTURE_SLACK_S:
            found.append(("ts", f"{ts} is more than a year ahead of vlmd's clock "
                                 "(milliseconds instead of seconds?)"))
    if "body" in event and type(body) is not dict:
        found.append(("body", f"expected an object, got {_type_name(body)}"))
        body = None
    if "kind" in event:
        if type(kind) is not str:
            found.append(("kind", f"expected a string, got {_type_name(kind)}"))
        elif kind == "watchdog.sample":
            found += _sample_errors(body) if body is not None else []
        elif kind in BODIES:
            found += BODIES[kind].errors(body) if body is not None else []
        elif ALERT_RE.fullmatch(kind):
            found += ALERT_BODY.errors(body) if body is not None else []
        else:
            found.append(("kind", f"unknown kind {kind[:80]!r} (known: {', '.join(sorted(KINDS))},"
                                  " alert.<name>)"))
    return [SchemaError(index, field, why) for field, why in found]


def validate(batch: Any, now: float | None = None) -> list[SchemaError]:
    """Every schema error in a batch (a JSON array of envelopes); empty when it may be appended.

    Duplicate keys within one batch are an error: a producer never means to send one event twice
    in the same request.
    """
    now = time.time() if now is None else now
    if type(batch) is not list:
        return [SchemaError(-1, "(batch)", f"expected an array of events, got {_type_name(batch)}")]
    if all(type(e) is dict and _valid(e, now) for e in batch) and (
            len({e["key"] for e in batch}) == len(batch)):
        return []  # the common case, without building any error
    found: list[SchemaError] = []
    seen: dict[str, int] = {}
    for i, event in enumerate(batch):
        found += _explain(event, i, now)
        key = event.get("key") if type(event) is dict else None
        if type(key) is str:
            if key in seen:
                found.append(SchemaError(i, "key", f"same key as event {seen[key]} in this batch"))
            else:
                seen[key] = i
    return found


def new_run_id() -> str:
    """A fresh run id: ``r-`` and 10 hex digits."""
    return "r-" + uuid.uuid4().hex[:10]


def envelope(run: str, kind: str, body: Mapping[str, Any], *, key: str | None = None,
             ts: float | None = None) -> dict[str, Any]:
    """Build an event envelope; without `key`, a random one (send it once, via an outbox)."""
    return {"key": key or f"{run}/{kind}/{uuid.uuid4().hex}", "run": run, "kind": kind,
            "ts": time.time() if ts is None else ts, "body": dict(body)}


def shard_of(value: Sequence[str] | str) -> tuple[int, int]:
    """Parse ``"i/n"`` into ``(i, n)``; raises ValueError naming the problem."""
    text = value if isinstance(value, str) else "/".join(value)
    if _shard(text) is not None:
        raise ValueError(f"shard {text!r}: expected 'i/n' with 0 <= i < n")
    i, n = text.split("/")
    return int(i), int(n)
