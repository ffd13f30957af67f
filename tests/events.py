"""Builders of valid event envelopes for tests."""

from __future__ import annotations

from typing import Any

import orjson

from vlmd.store import incoming
from vlmd.store.log import Event
from vlmd_agent import catalog

T0 = 1_790_000_000.0


def ev(run: str, kind: str, body: dict[str, Any], key: str | None = None,
       ts: float | None = None, n: list[int] = [0]) -> dict[str, Any]:  # noqa: B006
    """One envelope; keys are unique within the test session unless given."""
    n[0] += 1
    return {"key": key or f"{run}/{kind}/{n[0]}", "run": run, "kind": kind,
            "ts": T0 + n[0] * 0.01 if ts is None else ts, "body": body}


def submitted(run: str, total: int = 3, model: str = "demo:tiny", **extra: Any) -> dict[str, Any]:
    return ev(run, "run.submitted", {"model": model, "dataset": "demo.jsonl", "total": total,
                                     **extra}, key=f"{run}/submitted")


def started(run: str, total: int = 3, shard: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"total": total, "host": "test-host", "pid": 1234}
    if shard:
        body["shard"] = shard
    return ev(run, "run.started", body, key=f"{run}/started/{shard or '0/1'}")


def completed(run: str, item: str | int, score: float = 1.0, ttft: float = 100.0,
              **metrics: Any) -> dict[str, Any]:
    body = {"item": str(item), "answer": "B", "expected": "B" if score else "A", "score": score,
            "ttft_ms": ttft, "tpot_ms": 10.0, "e2e_ms": ttft + 100.0, "input_tokens": 50,
            "output_tokens": 11, "vram_before_mb": 1000.0, "vram_peak_delta_mb": 12.5,
            **metrics}
    return ev(run, "item.completed", body, key=f"{run}/item/{item}/0")


def failed(run: str, item: str | int, reason: str = "oom", attempt: int = 0) -> dict[str, Any]:
    body = {"item": str(item), "reason": reason, "message": "CUDA out of memory"}
    return ev(run, "item.failed", body, key=f"{run}/item/{item}/{attempt}")


def finished(run: str) -> dict[str, Any]:
    return ev(run, "run.finished", {}, key=f"{run}/finished")


def stored(envelopes: list[dict[str, Any]], first: int = 1,
           received: float | None = None) -> list[Event]:
    """`envelopes` as the log would hand them back (seqs from `first`, bodies typed), without
    a log: for folds tested on their own. An invalid envelope of a known kind is a ValueError;
    one of a kind vlmd does not know gets the body the log gives it (`incoming.Unknown`)."""
    events = []
    for seq, e in enumerate(envelopes, first):
        if catalog.body_type(e["kind"]) is None:
            body_json = orjson.dumps(e["body"]).decode()
            events.append(Event(seq, e["key"], e["run"], e["kind"], e["ts"],
                                e["ts"] if received is None else received,
                                incoming.body_of(e["kind"], body_json), body_json))
            continue
        typed = incoming.typed(e, now=float(e["ts"]))
        events.append(Event(seq, typed.key, typed.run, typed.kind, typed.ts,
                            typed.ts if received is None else received, typed.body,
                            typed.body_json))
    return events


def body(event: Event) -> dict[str, Any]:
    """A stored event's body as its producer sent it (a dict)."""
    return dict(orjson.loads(event.body_json))


def typed_body(kind: str, body: dict[str, Any]) -> catalog.Body:
    """`body` checked and typed as a body of `kind` (a ValueError when it is not valid)."""
    return incoming.typed({"key": "k", "run": "r", "kind": kind, "ts": T0, "body": body}).body
