"""The APIWrapper: runs a dataset (or one shard of it) through a model backend, one event per item.

It runs as the watchdog's child process (``python -m vlmd_agent.evaluate.wrapper CONFIG_JSON``) and
talks to the watchdog through a status pipe (``$VLMD_STATUS_FD``): one JSON line per milestone
(``loading``, ``ready``, ``item``, ``done``), so the watchdog knows when the last item finished.
SIGUSR1 makes it dump every thread's Python stack to ``$VLMD_STACKS`` (faulthandler), which the
watchdog attaches to a hang alert. SIGTERM stops it after the current item (after the items in
flight, with ``concurrency`` above 1: `vlmd_agent.evaluate.inflight`).

Under a watchdog, the wrapper's events travel in those lines too: an ``item`` line carries the
item's outcome (`run_item`: its answer and metrics), and the watchdog scores it, builds the event
(`scored_event`) and spools it in the wrapper's outbox (``wrapper.db``), which it holds. So the
model's process spends one line an item on reporting (~30 µs: orjson and one write, against
~190 µs for scoring, validating, encoding, spooling and sending beside the model), and a line
written survives the wrapper's crash: the kernel keeps it in the pipe, and the watchdog reads
it. Run on its own, the wrapper spools its events itself. An item's completion has a
deterministic key (``RUN/item/ID/ok``), so an item redone after a crash is a duplicate in the
log, never a second answer.
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx

from vlmd_agent import scoring, wire
from vlmd_agent.breaker import Breaker
from vlmd_agent.evaluate import datasets, schemas
from vlmd_agent.evaluate.backends import BackendError, Request, load_backend
from vlmd_agent.evaluate.backends.base import RequestOptions
from vlmd_agent.evaluate.inflight import run_each
from vlmd_agent.evaluate.judge import Judge, verdict_event
from vlmd_agent.evaluate.phases import Phases
from vlmd_agent.evaluate.preflight import PreflightError, check_model, model_size_mb, parse_spec
from vlmd_agent.outbox.spool import Outbox
from vlmd_agent.pipe import (
    EXIT_BACKEND,
    EXIT_BAD_INPUT,
    EXIT_OK,
    EXIT_ORPHANED,
    Status,
    WrapperConfig,
    open_outbox,
    scored_event,
)

log = logging.getLogger("vlmd_agent.evaluate.wrapper")

RESUME_TRIES_S = 30.0


class Spool:
    """Where the wrapper's events go: lines to the watchdog (`Status`), or, on its own, its
    own outbox (`open_outbox`); both take an envelope (`put`) or an item's outcome (`item`)."""

    def __init__(self, cfg: WrapperConfig, status: Status, box: Outbox | None) -> None:
        self.cfg, self.status, self.box = cfg, status, box

    def put(self, event: dict[str, Any]) -> None:
        if self.box is None:
            self.status.event(event)
        else:
            self.box.put(event)

    def item(self, outcome: dict[str, Any]) -> None:
        if (judged := outcome.pop("judged", None)) is not None:
            self.put(judged)  # the verdict first: the item's score follows it
        if self.box is None:
            self.status.item(outcome)
        else:
            self.box.put(scored_event(self.cfg.run, outcome))


def completed_items(url: str, token: str, run: str, deadline_s: float = RESUME_TRIES_S) -> set[str]:
    """Ids of the run's items vlmd already holds as completed (resume); empty for a new run.

    Retries while vlmd is unreachable, then gives up (a redone item is a harmless duplicate).
    """
    deadline = time.monotonic() + deadline_s
    delay = 0.2
    while True:
        try:
            r = httpx.get(f"{url}/api/runs/{run}/items", params={"status": "completed"},
                          headers={"authorization": f"Bearer {token}"}, timeout=10)
            if r.status_code == 404:
                return set()
            r.raise_for_status()
            return set(r.json()["items"])
        except (httpx.HTTPError, KeyError, ValueError) as e:
            if time.monotonic() + delay > deadline:
                log.warning("cannot ask vlmd which items are done (%s); running them all", e)
                return set()
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def run_item(cfg: WrapperConfig, item: datasets.Item, backend: Any,
             judge: Judge | None = None) -> dict[str, Any]:
    """Run one item through the backend: its outcome, all that `scored_event` needs.

    ``{"key", "kind", "ts", "body", "metrics", "scorer", "choices"}``: the event's key and kind,
    when the item ended, the body without the score and the metrics (an ``item.failed`` body
    is whole, its metrics empty), and what scoring needs besides ``body.expected``. The body
    carries the item's `datasets.Item.metadata` (scorer, options, category, ...).

    With a `judge`, a multiple-choice answer the rules cannot read is put to it: the outcome
    then holds its ``verdict`` (for `scored_event`) and ``judged``, the ``item.judged``
    envelope, which `Spool.item` sends first.
    """
    request = Request(item.prompt(cfg.prompt_template), item.image, item.image_mime,
                      cfg.max_new_tokens, item.extra_images)
    expected: str | list[str] = (item.answer if isinstance(item.answer, str)
                                 else list(item.answer))
    body: dict[str, Any] = {"item": item.id, "question": item.question, "expected": expected}
    if cfg.shard:
        body["shard"] = cfg.shard
    body.update(item.metadata())
    try:
        generation = backend.generate(request)
    except BackendError as e:
        body["reason"], body["message"] = e.reason, e.message
        return {"key": f"{cfg.run}/item/{item.id}/failed/{cfg.attempt}-{uuid.uuid4().hex[:8]}",
                "kind": "item.failed", "ts": time.time(), "body": body, "metrics": {},
                "scorer": item.scorer, "choices": item.choices}
    body["answer"] = generation.text
    metrics = generation.metrics()
    if cfg.concurrency > 1 and metrics["vram_source"]:  # other requests ran beside this one
        metrics["vram_source"] += "-shared"
    outcome = {"key": f"{cfg.run}/item/{item.id}/ok", "kind": "item.completed",
               "ts": time.time(), "body": body, "metrics": metrics, "scorer": item.scorer,
               "choices": item.choices}
    if (judge is not None and item.scorer == "mcq"
            and not scoring.read_choice(generation.text, item.choices).decided):
        verdict = judge.read(item.question, item.choices, generation.text)
        outcome["verdict"] = verdict.letter
        outcome["judged"] = wire.envelope(
            cfg.run, "item.judged", verdict_event(item.id, judge.spec, verdict, cfg.shard),
            key=f"{cfg.run}/item/{item.id}/judged")
    return outcome


def item_event(cfg: WrapperConfig, item: datasets.Item, backend: Any) -> dict[str, Any]:
    """Run one item through the backend and build its ``item.completed``/``item.failed`` event."""
    return scored_event(cfg.run, run_item(cfg, item, backend))


@contextlib.contextmanager
def open_spool(cfg: WrapperConfig, token: str, status: Status) -> Iterator[Spool]:
    """The wrapper's `Spool`: through the watchdog when there is one, else its own outbox
    (flushed for up to 5 s at the end)."""
    if status.fd is not None:
        yield Spool(cfg, status, None)
        return
    with open_outbox(cfg, token) as box:
        yield Spool(cfg, status, box)


def run(cfg: WrapperConfig, token: str, status: Status) -> int:
    """Evaluate the shard; returns the process exit status."""
    stop = {"requested": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(requested=True))
    shard_body = {"shard": cfg.shard} if cfg.shard else {}
    with open_spool(cfg, token, status) as box:
        status.send("loading")
        phases = Phases(box.put, cfg.run, cfg.shard)
        phases.say("resolving", f"reading {cfg.dataset}")
        try:
            data = datasets.load(cfg.dataset, columns=schemas.parse_columns(cfg.columns))
            index, count = wire.shard_of(cfg.shard) if cfg.shard else (0, 1)
            items = datasets.shard(data.items[:cfg.limit], index, count)
        except (datasets.DatasetError, ValueError, OSError) as e:
            return _fail(box, cfg, shard_body, f"bad dataset: {e}", EXIT_BAD_INPUT, status)
        done = completed_items(cfg.url, token, cfg.run)
        try:
            backend = _load(cfg, phases)
        except Exception as e:  # any load failure ends the run with the reason, not a traceback
            why = str(e) if isinstance(e, PreflightError) else f"cannot load {cfg.model}: {e}"
            return _fail(box, cfg, shard_body, why, EXIT_BACKEND, status)
        box.put(wire.envelope(cfg.run, "run.started", {
            "total": len(items), "host": socket.gethostname(), "pid": os.getpid(),
            **shard_body}))
        todo = [item for item in items if item.id not in done]
        status.send("ready", total=len(items), todo=len(todo))
        judge = Judge(cfg.judge) if cfg.judge else None
        phases.say("warmup", "first items (a server may load the model on its first request)")
        breaker = Breaker(cfg.fail_after, cfg.max_failed)  # the watchdog's twin: it says why

        def deliver(outcome: dict[str, Any]) -> None:
            box.item(outcome)
            phases.item_done()
            if breaker.record(item_error(outcome)) is not None:
                stop["requested"] = True  # no new request; those in flight are delivered

        try:
            run_each(todo, lambda item: run_item(cfg, item, backend, judge), deliver,
                     stopped=lambda: stop["requested"], concurrency=cfg.concurrency,
                     rate=cfg.rate)
        finally:
            backend.close()
            if judge is not None:
                judge.close()
        if stop["requested"]:
            status.send("stopped")
            return EXIT_OK
        # a random key: a shard resumed later (any host, any spool) must finish again
        box.put(wire.envelope(cfg.run, "run.finished", shard_body))
    status.send("done")
    return EXIT_OK


def options(cfg: WrapperConfig) -> RequestOptions:
    """The request options of `cfg` (serving models only)."""
    return RequestOptions(temperature=cfg.temperature, system_prompt=cfg.system_prompt,
                          extra_body=cfg.extra_body, api_key_env=cfg.api_key_env)


def _load(cfg: WrapperConfig, phases: Phases) -> Any:
    """The backend, saying each phase on the way: preflight (an ``openai:`` server, unless
    ``cfg.preflight`` is off), building (a demo model, step by step), loading (with the size)."""
    spec = parse_spec(cfg.model)
    if spec.kind == "openai" and cfg.preflight:
        phases.say("preflight", f"asking {spec.api_root}/models for {spec.name!r}")
        check_model(cfg.model, api_key_env=cfg.api_key_env)
    size = model_size_mb(spec.path) if spec.path is not None else None
    loading = f"loading {cfg.model}" + (f" ({size:.0f} MiB)" if size else "")
    phases.say("loading", loading, size_mb=None if size is None else round(size, 1))

    def built(step: int, steps: int) -> None:
        phases.step("building", f"building demo model {spec.name}: training step "
                    f"{step}/{steps}", step, steps)
        if step == steps:
            phases.say("loading", loading)

    return load_backend(cfg.model, max_new_tokens=cfg.max_new_tokens, device=cfg.device,
                        options=options(cfg), progress=built)


def item_error(outcome: dict[str, Any]) -> str | None:
    """A `run_item` outcome's error as answers.csv writes it (``reason: message``), else None."""
    if outcome["kind"] != "item.failed":
        return None
    return f"{outcome['body']['reason']}: {outcome['body']['message']}"


def _fail(box: Spool, cfg: WrapperConfig, shard_body: dict[str, Any], reason: str, code: int,
          status: Status) -> int:
    log.error("%s", reason)
    box.put(wire.envelope(cfg.run, "run.failed", {"reason": reason, **shard_body}))
    status.send("failed", reason=reason)
    return code


def _die_with_watchdog(status_fd: int) -> None:
    """Exit at once when the watchdog process dies, however it dies: an orphaned wrapper would
    go on evaluating beside the one a restarted agent starts.

    The watchdog holds the only read end of the status pipe, so the kernel closes it when the
    watchdog dies, and our write end then polls POLLERR; a thread waits for that on a private
    duplicate of the descriptor. Not PR_SET_PDEATHSIG: it fires when the *thread* that forked
    us exits, and trio forks from a worker thread that exits after 10 s idle.
    """
    lifeline = os.dup(status_fd)

    def wait() -> None:
        poller = select.poll()
        poller.register(lifeline, 0)  # POLLERR and POLLHUP are always reported
        while True:
            for _, events in poller.poll():
                if events & (select.POLLERR | select.POLLHUP):
                    os._exit(EXIT_ORPHANED)

    threading.Thread(target=wait, name="vlmd-lifeline", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    """``python -m vlmd_agent.evaluate.wrapper CONFIG_JSON``; the token comes from
    ``$VLMD_TOKEN``."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
    args = sys.argv[1:] if argv is None else argv
    cfg = WrapperConfig.from_json(args[0])
    stacks = os.environ.get("VLMD_STACKS")
    if stacks:
        stacks_file = open(stacks, "w")  # noqa: SIM115 (kept open for faulthandler)
        faulthandler.register(signal.SIGUSR1, file=stacks_file, all_threads=True)
    fd = os.environ.get("VLMD_STATUS_FD")
    if fd:
        _die_with_watchdog(int(fd))
    status = Status(int(fd) if fd else None)
    return run(cfg, os.environ.get("VLMD_TOKEN", ""), status)


if __name__ == "__main__":
    sys.exit(main())
