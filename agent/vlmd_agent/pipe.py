"""The wrapper and its watchdog: how one starts the other, and the status lines between them.

The watchdog starts the wrapper as ``python -m vlmd_agent.evaluate.wrapper CONFIG_JSON`` (a
`WrapperConfig`) with the write end of a pipe (`status_pipe`) in ``$VLMD_STATUS_FD``. The
wrapper writes one JSON line per milestone (`Status`):

- ``{"state": "loading" | "ready" | "stopped" | "done" | "failed", "t": ..., ...}``;
- ``{"state": "item", "item": ID, "t": ..., "outcome": OUTCOME}``: one item's outcome (its
  answer, metrics and what scoring needs), which the watchdog turns into the item's event with
  `scored_event` and spools in the wrapper's outbox (`open_outbox`);
- ``{"state": "event", "t": ..., "event": ENVELOPE}``: any other event, spooled as it is.

The wrapper's exit status says how it ended (`EXIT_OK`, ...). Neither side imports the other:
both import this module, which needs neither trio nor a model.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from vlmd_agent import scoring, wire
from vlmd_agent.outbox.spool import Outbox

log = logging.getLogger("vlmd_agent.pipe")

PIPE_BYTES = 1 << 20  # room for a poll's worth of status lines
EXIT_OK = 0
EXIT_BAD_INPUT = 3
EXIT_BACKEND = 4
EXIT_ORPHANED = 5
# While items flow, one POST a second (up to 500 events): the dashboard stays live, and the
# sender's HTTP work (and vlmd's per-batch work) takes CPU from the model once a second instead
# of every 100 ms. A lone item still goes out within the outbox's flush_s.
OUTBOX_PACE_S = 1.0
OUTBOX_BATCH_MAX = 500


@dataclass(frozen=True)
class WrapperConfig:
    """What one wrapper process runs: the run, its model and dataset share, and where to report;
    ``prompt_template`` (`vlmd_agent.evaluate.prompts`), ``columns`` (the ``--columns`` text)
    and ``judge`` (a judge model's SPEC) as the command line gave them."""

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
    concurrency: int = 1  # requests in flight at once
    rate: float | None = None  # requests started per second (None: as fast as they finish)
    temperature: float = 0.0  # the request options of serving models (RequestOptions)
    system_prompt: str | None = None
    extra_body: dict[str, Any] | None = None
    api_key_env: str | None = None  # the variable's name; its value never leaves the process
    prompt_template: str | None = None
    columns: str | None = None
    judge: str | None = None
    preflight: bool = True  # ask an openai: server for its models before the first item
    fail_after: int = 0  # the circuit breaker (`vlmd_agent.breaker`; the watchdog sets it); 0: none
    max_failed: float = 1.0

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


def status_pipe() -> tuple[int, int]:
    """A pipe for the wrapper's status lines (read end, write end), with room for `PIPE_BYTES`
    where Linux allows: the wrapper's writes block only when a poll's worth of lines overflow."""
    read_fd, write_fd = os.pipe()
    with contextlib.suppress(OSError):
        fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    return read_fd, write_fd


def scored_event(run: str, outcome: dict[str, Any]) -> dict[str, Any]:
    """The ``item.completed``/``item.failed`` envelope of a `run_item` outcome, scored.

    A completed item's body gains ``score`` and, from its `scoring.Grade`: ``choice`` (the
    option letter read from a multiple-choice answer), ``unparsed: true`` (no rule could read
    it: it scores 0) and ``judged: true`` (a judge's verdict, the outcome's ``verdict``,
    decided it).

    Raises ValueError when it cannot be scored (an unknown scorer), KeyError or TypeError when
    `outcome` is not one.
    """
    body = outcome["body"]
    if outcome["kind"] == "item.completed":
        graded = scoring.grade(outcome["scorer"], body["answer"], body["expected"],
                               outcome["choices"], verdict=outcome.get("verdict"))
        body = {**body, "score": graded.score, **outcome["metrics"]}
        if graded.choice is not None:
            body["choice"] = graded.choice
        if not graded.parsed:
            body["unparsed"] = True
        if graded.judged:
            body["judged"] = True
    return wire.envelope(run, outcome["kind"], body, key=outcome["key"], ts=outcome["ts"])


def open_outbox(cfg: WrapperConfig, token: str) -> Outbox:
    """The wrapper's durable outbox in ``cfg.spool`` (not started: use it as a context manager)."""
    Path(cfg.spool).mkdir(parents=True, exist_ok=True)
    return Outbox(Path(cfg.spool) / "wrapper.db", cfg.url, token, pace_s=OUTBOX_PACE_S,
                  batch_max=OUTBOX_BATCH_MAX)


