"""Builders of valid event envelopes for tests."""

from __future__ import annotations

from typing import Any

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
