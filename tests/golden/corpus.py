"""The golden corpus: event sequences that cover every kind and the hard paths of the fold.

Each scenario is one run, written as what happened to it; `corpus()` interleaves nothing (each
run's events stay in order, runs one after another), so the log's seq order is the order here.
Keys and timestamps are fixed, so the corpus is the same log every time.

What each run must end as is not written here: the Python fold decides it, and the golden test
checks that the SQL views and the dashboard show the same.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

T0 = 1_790_000_000.0
HOST = "gpu-node-1"
Envelope = dict[str, Any]


class Run:
    """Builds one run's envelopes with deterministic keys and timestamps (1 s apart)."""

    def __init__(self, run: str, start: float) -> None:
        self.run = run
        self.t = start
        self.events: list[Envelope] = []

    def add(self, kind: str, body: dict[str, Any], gap: float = 1.0) -> Run:
        self.t += gap
        self.events.append({"key": f"{self.run}/{len(self.events)}", "run": self.run,
                            "kind": kind, "ts": round(self.t, 3), "body": body})
        return self

    def submitted(self, total: int | None = None, name: str | None = None,
                  shards: int | None = None, model: str = "demo:tiny") -> Run:
        body: dict[str, Any] = {"model": model, "dataset": "/data/golden.jsonl"}
        for field, value in (("total", total), ("name", name), ("shards", shards)):
            if value is not None:
                body[field] = value
        return self.add("run.submitted", body)

    def started(self, total: int, shard: str | None = None) -> Run:
        body: dict[str, Any] = {"total": total, "host": HOST, "pid": 4242}
        if shard:
            body["shard"] = shard
        return self.add("run.started", body)

    def done(self, item: str | int, score: float | None = 1.0, ttft: float = 100.0,
             shard: str | None = None, answer: str = "B", **extra: Any) -> Run:
        """A completed item; `extra` adds body fields (its benchmark fields)."""
        body: dict[str, Any] = {
            "item": item, "answer": answer, "expected": "B", "question": f"what is {item}?",
            "ttft_ms": ttft, "tpot_ms": ttft / 10, "e2e_ms": ttft * 3, "input_tokens": 64,
            "output_tokens": 9, "vram_before_mb": 1000.0, "vram_peak_delta_mb": ttft / 4,
            **extra}
        if score is not None:
            body["score"] = score
        if shard:
            body["shard"] = shard
        return self.add("item.completed", body, gap=0.5)

    def judged(self, item: str | int, letter: str) -> Run:
        """A judge model's reading of an answer; the item's completion follows it."""
        return self.add("item.judged", {"item": item, "judge": "openai:judge@http://judge:8000",
                                        "prompt": f"Which option does the answer to {item} "
                                                  "name?", "reply": letter, "letter": letter},
                        gap=0.25)

    def fail(self, item: str | int, reason: str = "oom", message: str = "CUDA out of memory",
             shard: str | None = None, **extra: Any) -> Run:
        body: dict[str, Any] = {"item": item, "reason": reason, "message": message,
                                "question": f"what is {item}?", **extra}
        if shard:
            body["shard"] = shard
        return self.add("item.failed", body, gap=0.5)

    def end(self, kind: str, shard: str | None = None, reason: str | None = None) -> Run:
        body: dict[str, Any] = {}
        if shard:
            body["shard"] = shard
        if reason is not None:
            body["reason"] = reason
        return self.add(f"run.{kind}", body)

    def heartbeat(self, state: str = "running") -> Run:
        return self.add("watchdog.heartbeat", {"host": HOST, "pid": 4242, "wrapper_pid": 4243,
                                               "wrapper_state": state})

    def sample(self, used: float, batch: int = 0) -> Run:
        def one(t: float, mb: float) -> dict[str, Any]:
            return {"t": t, "gpus": [{"index": 0, "uuid": "GPU-0", "name": "H100",
                                      "mem_used_mb": mb, "mem_total_mb": 81559.0,
                                      "util_gpu": 80.0, "proc_mem_mb": mb - 500}],
                    "ram": {"rss_mb": 2048.0, "host_used_mb": 30000.0}}
        if batch:
            return self.add("watchdog.sample", {"host": HOST, "samples": [
                one(self.t + 0.05 * i, used + i) for i in range(batch)]}, gap=0.25)
        return self.add("watchdog.sample", {"host": HOST, **one(self.t + 0.25, used)}, gap=0.25)

    def phase(self, phase: str, shard: str | None = None, **extra: Any) -> Run:
        body: dict[str, Any] = {"phase": phase, **extra}
        if shard:
            body["shard"] = shard
        return self.add("run.phase", body)

    def alert(self, name: str, message: str, **extra: Any) -> Run:
        return self.add(f"alert.{name}", {"message": message, **extra})

    def scheduled(self, shards: list[int], of: int, job: str, resume: bool = False) -> Run:
        return self.add("run.scheduled", {"scheduler": "slurm", "job": job, "shards": shards,
                                          "of": of, "resume": resume})

    def task(self, job: str, shard: str, state: str, **extra: Any) -> Run:
        return self.add("scheduler.task", {"scheduler": "slurm", "job": job, "shard": shard,
                                           "state": state, **extra})


def completes_then_fails_on_retry(r: Run) -> None:
    """A completed item whose retry fails stays completed (the answer is not undone)."""
    r.submitted(total=4, name="retry-undone").phase("loading", size_mb=600.0).started(4)
    r.phase("evaluating").sample(15000.0)
    r.done(1, score=1.0, ttft=120.0).judged(2, "A").done(2, score=0.0, ttft=80.0)
    r.fail(1, "timeout", "no answer in 60 s").fail(3, "backend_error", "HTTP 500")
    r.done(4, score=None, ttft=95.0).heartbeat().end("finished")


def fails_then_completes(r: Run) -> None:
    """A failed item that completes on a retry counts as done, once; an item that fails twice
    keeps its latest failure; an item completed twice keeps its latest answer. Categories, no
    circular file: a category whose only item failed has no accuracy."""
    r.submitted(total=3).started(3)
    r.fail(7, "oom", category="OCR").done("7", score=0.5, ttft=210.0, category="OCR")
    r.fail("x", "oom").fail("x", "timeout", "again: no answer in 60 s", category="celebrity")
    r.done("y", score=0.0, ttft=50.0, answer="A", category="OCR")
    r.done("y", score=1.0, ttft=60.0, category="OCR")
    r.sample(16000.0, batch=3).end("finished")


def shard_fails(r: Run) -> None:
    """Two shards: one finishes, the other fails; the run fails with the shard's reason."""
    r.submitted(total=4, shards=2, name="two-shards")
    r.phase("warmup", "0/2", items_per_s=2.5).started(2, "0/2").started(2, "1/2")
    r.done("a", shard="0/2").done("b", shard="0/2", score=0.0)
    r.done("c", shard="1/2").fail("d", shard="1/2")
    r.end("finished", "0/2").alert("wrapper_died", "wrapper exited with signal 9", signal=9)
    r.end("failed", "1/2", reason="wrapper died (signal 9)")


def resumed_while_queued(r: Run) -> None:
    """A Slurm run whose shard fails, resumed by `vlmd resume`: live again while it waits in the
    queue (issue 15: the pages said failed, the API running)."""
    r.submitted(total=4, shards=2, name="resumed").scheduled([0, 1], 2, "812")
    r.task("812_0", "0/2", "PENDING", reason="Resources").task("812_1", "1/2", "PENDING",
                                                                reason="Resources")
    r.task("812_0", "0/2", "RUNNING", node="gpu17").task("812_1", "1/2", "RUNNING", node="gpu18")
    r.started(2, "0/2").started(2, "1/2")
    r.done(0, shard="0/2").done(1, shard="0/2").done(2, shard="1/2")
    r.end("finished", "0/2").task("812_0", "0/2", "COMPLETED", exit_code=0)
    r.task("812_1", "1/2", "NODE_FAIL", node="gpu18")
    r.end("failed", "1/2", reason="slurm: task 812_1 NODE_FAIL on gpu18")
    r.scheduled([1], 2, "813", resume=True).task("813_1", "1/2", "PENDING", reason="Priority")
    r.phase("resolving", "1/2", message="reading the dataset")


def run_wide_failure(r: Run) -> None:
    """A run-wide end ends every shard it saw (the shards' states are reset): when one shard is
    restarted and finishes, the other is still failed, and so is the run."""
    r.submitted(total=4, shards=2).started(2, "0/2").started(2, "1/2").done(0, shard="0/2")
    r.alert("oom", "the OOM killer stopped the wrapper", signal=9, exit_code=-9)
    r.end("failed", reason="out of memory on gpu-node-1")
    r.started(2, "1/2").done(2, shard="1/2").done(3, shard="1/2").end("finished", "1/2")


def cancelled(r: Run) -> None:
    """A cancel ends the run at once; a scheduler's late report does not bring it back."""
    r.submitted(total=5, name="stopped").scheduled([0], 1, "900").started(5)
    r.done(1).done(2, score=0.0)
    r.end("cancelled", reason="cancelled by the user")
    r.scheduled([0], 1, "900").task("900_0", "0/1", "CANCELLED")


def cancelled_then_resumed(r: Run) -> None:
    """A cancel, then `vlmd resume`: the run goes on and finishes."""
    r.submitted(total=3).started(3).done(1)
    r.end("cancelled", reason="cancelled by the user")
    r.scheduled([0], 1, "901", resume=True).started(3).done(2).done(3, score=0.0)
    r.end("finished")


def cancelled_then_resumed_while_queued(r: Run) -> None:
    """A cancel, then `vlmd resume`, the job still in the queue: the run is live again."""
    r.submitted(total=3, name="requeued").scheduled([0], 1, "902").started(3).done(1)
    r.end("cancelled", reason="cancelled by the user").task("902_0", "0/1", "CANCELLED")
    r.scheduled([0], 1, "903", resume=True).task("903_0", "0/1", "PENDING", reason="Priority")


def lost_before_starting(r: Run) -> None:
    """An agent lost while it loads the model, before its shard started: stalled."""
    r.submitted(total=2).phase("loading", size_mb=14000.0).heartbeat("loading")
    r.alert("agent_lost", "no heartbeat from gpu-node-1 for 30 s")


def agent_lost_then_back(r: Run) -> None:
    """No heartbeat for a while (vlmd's alert.agent_lost), then the agent comes back."""
    r.started(10).heartbeat().done(1).heartbeat()
    r.alert("agent_lost", "no heartbeat from gpu-node-1 for 30 s")
    r.heartbeat().done(2, ttft=140.0).alert("vram_high", "VRAM at 97%")


def agent_lost(r: Run) -> None:
    """An agent that never came back: the run stays stalled."""
    r.submitted(total=6, name="lost").started(6).done(1).done(2).heartbeat()
    r.alert("hang", "no progress for 30 s", stacks=["Thread 1:\n  File wrapper.py, line 9"])
    r.alert("agent_lost", "no heartbeat from gpu-node-1 for 30 s")


def restarted_after_finishing(r: Run) -> None:
    """A shard started again after the run finished: the run is running again."""
    r.submitted(total=2).started(2).done(1).end("finished").started(2).done(2, score=0.25)


def rotation(question: int, k: int, category: str, l2: str) -> dict[str, Any]:
    """Rotation `k` of an MMBench question (index question + k x 1,000,000, VLMEvalKit's
    convention): its options turned by k (the right one, option 1, moves from B to A to C),
    its benchmark fields."""
    texts = [f"{category} option {n}" for n in range(3)]
    turned = texts[k:] + texts[:k]
    return {"category": category, "l2_category": l2, "split": "dev", "scorer": "mcq",
            "hint": f"hint of question {question}", "circular_group": str(question),
            "options": dict(zip("ABC", turned, strict=True)), "expected": "BAC"[k]}


def circular_mmbench(r: Run) -> None:
    """A circular MMBench file: each question asked three times, its options rotated. 6 of 7
    rotations are right, but CircularEval credits a question only when all its rotations are:
    question 2 has one wrong (an answer no rule could read: unparsed), question 3's failed
    rotation is answered by a retry."""
    r.submitted(total=7, name="mmbench-circular").started(7)
    for k in range(3):
        r.done(1 + k * 1_000_000, answer="BAC"[k], choice="BAC"[k],
               **rotation(1, k, "attribute", "perception"))
    r.done(2, answer="B", choice="B", **rotation(2, 0, "attribute", "perception"))
    r.done(1_000_002, score=0.0, answer="I cannot tell", unparsed=True,
           **rotation(2, 1, "attribute", "perception"))
    r.done(3, answer="(B)", choice="B", **rotation(3, 0, "counting", "reasoning"))
    r.fail(1_000_003, "timeout", "no answer in 60 s", **rotation(3, 1, "counting", "reasoning"))
    r.done(1_000_003, answer="A", choice="A", ttft=130.0,
           **rotation(3, 1, "counting", "reasoning"))
    r.end("finished")


def never_started(r: Run) -> None:
    """Submitted, never started."""
    r.submitted(total=8, name="waiting")


SCENARIOS: dict[str, Callable[[Run], None]] = {
    "g-retry-undone": completes_then_fails_on_retry,
    "g-fail-then-ok": fails_then_completes,
    "g-shard-fails": shard_fails,
    "g-resumed": resumed_while_queued,
    "g-run-wide": run_wide_failure,
    "g-cancelled": cancelled,
    "g-cancel-resume": cancelled_then_resumed,
    "g-cancel-queued": cancelled_then_resumed_while_queued,
    "g-lost-early": lost_before_starting,
    "g-lost-back": agent_lost_then_back,
    "g-lost": agent_lost,
    "g-restarted": restarted_after_finishing,
    "g-circular": circular_mmbench,
    "g-waiting": never_started,
}


def corpus() -> list[Envelope]:
    """Every scenario's events, one run after another."""
    out: list[Envelope] = []
    for n, (run, scenario) in enumerate(SCENARIOS.items()):
        r = Run(run, T0 + 1000 * n)
        scenario(r)
        out += r.events
    return out
