"""The APIWrapper: runs a dataset (or one shard of it) through a model backend, one event per item.

It runs as the watchdog's child process (``python -m vlmd_agent.evaluate.wrapper CONFIG_JSON``) and
talks to the watchdog through a status pipe (``$VLMD_STATUS_FD``): one JSON line per milestone
(``loading``, ``ready``, ``item``, ``done``), so the watchdog knows when the last item finished.
SIGUSR1 makes it dump every thread's Python stack to ``$VLMD_STACKS`` (faulthandler), which the
watchdog attaches to a hang alert. SIGTERM stops it after the current item.

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
import json
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from vlmd_agent import wire
from vlmd_agent.evaluate import datasets, scoring
from vlmd_agent.evaluate.backends import BackendError, Request, load_backend
from vlmd_agent.outbox.spool import Outbox

log = logging.getLogger("vlmd_agent.evaluate.wrapper")

EXIT_OK = 0
EXIT_BAD_INPUT = 3
EXIT_BACKEND = 4
EXIT_ORPHANED = 5
RESUME_TRIES_S = 30.0
# While items flow, one POST a second (up to 500 events): the dashboard stays live, and the
# sender's HTTP work (and vlmd's per-batch work) takes CPU from the model once a second instead
# of every 100 ms. A lone item still goes out within the outbox's flush_s.
OUTBOX_PACE_S = 1.0
OUTBOX_BATCH_MAX = 500


@dataclass(frozen=True)
class WrapperConfig:
    """What one wrapper process runs: the run, its model and dataset share, and where to report."""

    url: str
    run: str
    model: str
    dataset: str
    spool: str
    shard: str | None = None
    limit: int | None = None
    max_new_tokens: int = 32
    device: str = "auto"
    attempt: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WrapperConfig:
        return cls(**json.loads(text))


class Status:
    """The status pipe to the watchdog (file descriptor `fd`); a no-op without one (the wrapper
    runs on its own). A line is one write(2) of JSON; nothing here waits for the watchdog, which
    polls the pipe (a write then wakes no other process)."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    def send(self, state: str, **extra: Any) -> None:
        """One status line; a watchdog that is gone is ignored (keep evaluating)."""
        if self.fd is not None:
            self._write(orjson.dumps({"state": state, "t": time.time(), **extra},
                                     option=orjson.OPT_APPEND_NEWLINE))

    def item(self, outcome: dict[str, Any]) -> None:
        """An ``item`` line carrying the item's `run_item` outcome, for the watchdog to spool.

        When the watchdog is gone, the wrapper exits (`EXIT_ORPHANED`), as `_die_with_watchdog`
        makes it: nobody would spool what it evaluates.
        """
        self._write(orjson.dumps({"state": "item", "item": outcome["body"]["item"],
                                  "t": outcome["ts"], "outcome": outcome},
                                 option=orjson.OPT_APPEND_NEWLINE), lost=True)

    def event(self, event: dict[str, Any]) -> None:
        """An ``event`` line carrying an envelope for the watchdog to spool (no watchdog: as
        `item`); ValueError naming the field if it is not a valid envelope."""
        wire_errors = wire.event_errors(event, 0, time.time())
        if wire_errors:
            raise ValueError(f"not a valid event: {wire_errors[0]}")
        self._write(orjson.dumps({"state": "event", "t": time.time(), "event": event},
                                 option=orjson.OPT_APPEND_NEWLINE), lost=True)

    def _write(self, line: bytes, *, lost: bool = False) -> None:
        fd, view = self.fd, memoryview(line)
        assert fd is not None
        try:
            while view:  # a pipe takes it whole unless a signal cuts the write short
                view = view[os.write(fd, view):]
        except OSError as e:
            if lost:
                log.error("the watchdog is gone (%s): exiting", e)
                os._exit(EXIT_ORPHANED)
            self.fd = None  # the watchdog is gone; keep evaluating


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


def run_item(cfg: WrapperConfig, item: datasets.Item, backend: Any) -> dict[str, Any]:
    """Run one item through the backend: its outcome, all that `scored_event` needs.

    ``{"key", "kind", "ts", "body", "metrics", "scorer", "choices"}``: the event's key and kind,
    when the item ended, the body without the score and the metrics (an ``item.failed`` body
    is whole, its metrics empty), and what scoring needs besides ``body.expected``.
    """
    request = Request(item.prompt(), item.image, item.image_mime, cfg.max_new_tokens)
    expected: str | list[str] = (item.answer if isinstance(item.answer, str)
                                 else list(item.answer))
    body: dict[str, Any] = {"item": item.id, "question": item.question, "expected": expected}
    if cfg.shard:
        body["shard"] = cfg.shard
    try:
        generation = backend.generate(request)
    except BackendError as e:
        body["reason"], body["message"] = e.reason, e.message
        return {"key": f"{cfg.run}/item/{item.id}/failed/{cfg.attempt}-{uuid.uuid4().hex[:8]}",
                "kind": "item.failed", "ts": time.time(), "body": body, "metrics": {},
                "scorer": item.scorer, "choices": item.choices}
    body["answer"] = generation.text
    return {"key": f"{cfg.run}/item/{item.id}/ok", "kind": "item.completed", "ts": time.time(),
            "body": body, "metrics": generation.metrics(), "scorer": item.scorer,
            "choices": item.choices}


def scored_event(run: str, outcome: dict[str, Any]) -> dict[str, Any]:
    """The ``item.completed``/``item.failed`` envelope of a `run_item` outcome, scored.

    Raises ValueError when it cannot be scored (an unknown scorer), KeyError or TypeError when
    `outcome` is not one.
    """
    body = outcome["body"]
    if outcome["kind"] == "item.completed":
        expected = body["expected"]
        item = datasets.Item(id=body["item"], question=body["question"], image=b"",
                             image_mime="", answer=expected if isinstance(expected, str)
                             else tuple(expected), choices=outcome["choices"], hint=None,
                             category=None, scorer=outcome["scorer"])
        body = {**body, "score": scoring.score(item, body["answer"]), **outcome["metrics"]}
    return wire.envelope(run, outcome["kind"], body, key=outcome["key"], ts=outcome["ts"])


def item_event(cfg: WrapperConfig, item: datasets.Item, backend: Any) -> dict[str, Any]:
    """Run one item through the backend and build its ``item.completed``/``item.failed`` event."""
    return scored_event(cfg.run, run_item(cfg, item, backend))


def open_outbox(cfg: WrapperConfig, token: str) -> Outbox:
    """The wrapper's durable outbox in ``cfg.spool`` (not started: use it as a context manager)."""
    Path(cfg.spool).mkdir(parents=True, exist_ok=True)
    return Outbox(Path(cfg.spool) / "wrapper.db", cfg.url, token, pace_s=OUTBOX_PACE_S,
                  batch_max=OUTBOX_BATCH_MAX)


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
        try:
            data = datasets.load(cfg.dataset)
            index, count = wire.shard_of(cfg.shard) if cfg.shard else (0, 1)
            items = datasets.shard(data.items[:cfg.limit], index, count)
        except (datasets.DatasetError, ValueError, OSError) as e:
            return _fail(box, cfg, shard_body, f"bad dataset: {e}", EXIT_BAD_INPUT, status)
        done = completed_items(cfg.url, token, cfg.run)
        try:
            backend = load_backend(cfg.model, max_new_tokens=cfg.max_new_tokens, device=cfg.device)
        except Exception as e:  # any load failure ends the run with the reason, not a traceback
            return _fail(box, cfg, shard_body, f"cannot load {cfg.model}: {e}", EXIT_BACKEND,
                         status)
        box.put(wire.envelope(cfg.run, "run.started", {
            "total": len(items), "host": socket.gethostname(), "pid": os.getpid(),
            **shard_body}))
        todo = [item for item in items if item.id not in done]
        status.send("ready", total=len(items), todo=len(todo))
        try:
            for item in _until_stopped(todo, stop):
                box.item(run_item(cfg, item, backend))
        finally:
            backend.close()
        if stop["requested"]:
            status.send("stopped")
            return EXIT_OK
        # a random key: a shard resumed later (any host, any spool) must finish again
        box.put(wire.envelope(cfg.run, "run.finished", shard_body))
    status.send("done")
    return EXIT_OK


def _until_stopped(items: Iterable[datasets.Item], stop: dict[str, bool]
                   ) -> Iterable[datasets.Item]:
    for item in items:
        if stop["requested"]:
            return
        yield item


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
