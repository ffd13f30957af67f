"""The watchdog: the agent's parent process, which runs the wrapper and watches it from outside.

It imports neither torch nor a model, so it keeps sampling and heartbeating while the wrapper is
stuck in a CUDA call, swapping, or dead. Concurrently it samples GPU/RAM (batched into
``watchdog.sample`` events), heartbeats, reads the wrapper's status pipe, and reports deaths,
OOM kills, hangs and high memory as ``alert.*`` events carrying the last 10 s of samples. It
restarts a wrapper that died (up to ``max_restarts``) or, by policy, hung. The process around
it (signals, spools, the final flush) is `vlmd_agent.cli.run_agent`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import trio

from vlmd_agent import wire
from vlmd_agent.breaker import Breaker
from vlmd_agent.outbox.spool import Outbox
from vlmd_agent.pipe import PIPE_BYTES, WrapperConfig, scored_event, status_pipe
from vlmd_agent.watch.detect import (
    Exit,
    HangClock,
    HighWater,
    ask_stacks,
    classify_exit,
    ram_fraction,
    status_line,
    vram_fraction,
    watch_hangs,
)
from vlmd_agent.watch.itemcost import CostQueue, Costs, model_gpus, model_place
from vlmd_agent.watch.memory import CgroupPaths
from vlmd_agent.watch.sampler import Sample, Sampler, run_sampler
from vlmd_agent.watch.server import ServerMetrics

log = logging.getLogger("vlmd_agent.watch.watchdog")

EXIT_FINISHED, EXIT_FAILED = 0, 1
ALERT_SAMPLES_S = 10.0  # every alert carries this much history
SAMPLE_BATCH_S = 1.0  # one watchdog.sample event per second
STATUS_DRAIN_S = 0.5  # status lines still read after the wrapper exited
STATUS_POLL_S = 0.05  # the status pipe is read this often (not waited on: see `read_lines`)
LINES_PER_TURN = 64  # status lines handled between two trio checkpoints (~100 us each)
SETTLE_S = 10.0  # how long a failing agent lets the wrapper's outbox deliver before its word


@dataclass(frozen=True)
class WatchdogConfig:
    """One agent: the wrapper's config, the token, and the watch policy."""

    wrapper: WrapperConfig
    token: str
    interval_s: float = 0.05
    heartbeat_s: float = 1.0
    hang_after_s: float = 120.0
    loading_hang_s: float = 600.0  # silence allowed while starting, loading or finishing up
    on_hang: str = "report"  # or "restart"
    max_restarts: int = 3
    vram_high: float = 0.95
    ram_high: float = 0.95
    stop_timeout_s: float = 20.0
    cgroup: CgroupPaths | None = None  # None: this process's own memory cgroup
    server_metrics: str | None = None  # the serving engine's /metrics URL
    server_metrics_s: float = 0.25
    server_metrics_guessed: bool = False  # found beside the model's URL: may not exist
    fail_after: int = 10  # the circuit breaker (`vlmd_agent.breaker`), the wrapper's too
    max_failed: float = 0.5


class Watchdog:
    """Runs and watches the wrapper of one agent (`vlmd_agent.cli.run_agent` drives it).

    `box` is the watchdog's own outbox; `items` the wrapper's (``wrapper.db``), where the
    events the wrapper reports in its status lines go (`spool_report`); `sampler` measures the
    wrapper's process tree.
    """

    def __init__(self, cfg: WatchdogConfig, box: Outbox, sampler: Sampler,
                 items: Outbox | None = None) -> None:
        self.cfg, self.box, self.sampler = cfg, box, sampler
        self.items = box if items is None else items
        self.host = socket.gethostname()
        self.shard = {"shard": cfg.wrapper.shard} if cfg.wrapper.shard else {}
        self.proc: trio.Process | None = None
        # The running wrapper's pid for the sampling thread, which must not poll `proc`.
        self.sampled_pid: int | None = None
        self.state = "starting"  # the wrapper's, from its last status line
        self.between = "starting"  # while no wrapper runs: starting, restarting or exited
        self.last_item: str | int | None = None
        self.last_item_at: float | None = None
        self.restarts = 0
        self.hang = HangClock(cfg.hang_after_s, cfg.loading_hang_s)
        self.vram, self.ram = HighWater(cfg.vram_high), HighWater(cfg.ram_high)
        self.stopping: int | None = None  # the signal that asked this agent to stop
        self.killed: str | None = None  # why this watchdog SIGKILLed the wrapper, if it did
        self.spool_error: str | None = None  # why the wrapper's events cannot be spooled
        self.breaker = Breaker(cfg.fail_after, cfg.max_failed)
        self._stop_asked, self._kill_now = trio.Event(), trio.Event()
        self.ended = False  # no wrapper will run any more
        self.server = None if cfg.server_metrics is None else ServerMetrics(
            cfg.server_metrics, cfg.server_metrics_s, required=not cfg.server_metrics_guessed)
        self.place = model_place(cfg.wrapper.model)
        self.costs = CostQueue(Costs(sampler, self.server, self.place), self._spool)

    async def run(self) -> int:
        """Sample, heartbeat and watch for hangs while supervising wrappers; the exit status."""
        if self.server is not None:
            self.server.start()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: run_sampler(self.sampler, lambda: self.sampled_pid,
                                                       self.on_batch, batch_s=SAMPLE_BATCH_S))
                nursery.start_soon(self._heartbeats)
                nursery.start_soon(watch_hangs, self.hang, self.on_hang)
                nursery.start_soon(self._release_costs)
                code = await self._supervise()
                self.ended = True
                nursery.cancel_scope.cancel()
        finally:
            if self.server is not None:
                self.server.close()
        return code

    def wrapper_pid(self) -> int | None:
        """The live wrapper's pid, else None."""
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None

    def stop(self, signum: int) -> None:
        """Stop the wrapper (SIGTERM: after its current item; SIGKILL after `stop_timeout_s`)
        and start no other; a second call kills it at once. `signum` is the signal that asked,
        for the exit status."""
        if self.stopping is None:
            self.stopping = signum
            self._stop_asked.set()
        else:
            self._kill_now.set()

    async def _supervise(self) -> int:
        while self.stopping is None:
            outcome = await self._attempt(next_attempt(Path(self.cfg.wrapper.spool)))
            if self.spool_error is not None:
                # what the wrapper's outbox holds (its run.started too) goes to vlmd first: a
                # run.started folded after this run.failed would make the run live again
                await trio.to_thread.run_sync(self.items.flush, SETTLE_S)
                return self._fail(self.spool_error)
            if self.breaker.tripped is not None:
                # after the wrapper's own events (a run.finished too, if it got that far) in
                # the same outbox, so the shard's last word is this one
                return self._fail(self.breaker.tripped, self.items)
            if self.stopping is not None:
                return EXIT_FINISHED if self.state == "done" else 128 + self.stopping
            if self.killed is not None:
                reason, self.killed = self.killed, None
            elif outcome.outcome == "finished":
                if self.state != "stopped":
                    return EXIT_FINISHED
                return self._fail("the wrapper was stopped (SIGTERM) from outside the agent")
            elif outcome.outcome == "refused":
                return EXIT_FAILED  # the wrapper has sent run.failed with the reason
            else:
                reason = outcome.message
            if self.restarts >= self.cfg.max_restarts:
                return self._fail(f"{reason}; no restarts left ({self.cfg.max_restarts} allowed)")
            self.restarts += 1
            delay = min(0.25 * 2 ** self.restarts, 10.0)
            log.warning("%s; restarting it in %.1f s (restart %d of %d), resuming after the items "
                        "vlmd holds", reason, delay, self.restarts, self.cfg.max_restarts)
            self.between = "restarting"
            with trio.move_on_after(delay):
                await self._stop_asked.wait()
        return 128 + self.stopping

    async def _attempt(self, attempt: int) -> Exit:
        oom_before = self.sampler.sample(None)["ram"]["oom_kills"]
        read_fd, write_fd = status_pipe()
        env = {**os.environ, "VLMD_STATUS_FD": str(write_fd), "VLMD_TOKEN": self.cfg.token,
               "VLMD_STACKS": str(Path(self.cfg.wrapper.spool) / "stacks.txt")}
        # the wrapper's breaker and this one count the same outcomes: they trip at one item
        config = replace(self.cfg.wrapper, attempt=attempt, fail_after=self.cfg.fail_after,
                         max_failed=self.cfg.max_failed)
        self.breaker = Breaker(self.cfg.fail_after, self.cfg.max_failed)
        try:
            # Its own process group: a terminal's Ctrl-C reaches only the watchdog, which then
            # stops the wrapper in order.
            # -P: the working directory does not go first on sys.path (a stray httpx.py there
            # must not run inside the wrapper)
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-P", "-m", "vlmd_agent.evaluate.wrapper", config.to_json()],
                stdin=subprocess.DEVNULL, pass_fds=(write_fd,), env=env, process_group=0)
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        started = trio.current_time()
        self.proc, self.sampled_pid, self.state = proc, proc.pid, "starting"
        self.hang.reset(started, "starting")
        log.info("wrapper pid %d started (attempt %d) for %s on %s", proc.pid, attempt,
                 config.model, config.dataset)
        async with trio.open_nursery() as nursery:
            reader, stopper, exited = trio.CancelScope(), trio.CancelScope(), trio.Event()
            nursery.start_soon(self._read_status, read_fd, reader, exited)
            nursery.start_soon(self._stop_when_asked, proc, stopper)
            returncode = await proc.wait()
            exited.set()
            self.sampled_pid, self.between = None, "exited"
            self.hang.stop()
            stopper.cancel()
            self.sampler.sample(None)  # the counters just after the exit
            outcome = classify_exit(returncode, oom_kills_before=oom_before,
                                    samples_after=self.sampler.recent(2.0),
                                    ran_s=trio.current_time() - started)
            if self.killed is not None or self.stopping is not None:
                log.info("%s (%s)", outcome.message, self.killed or "asked to stop")
            elif outcome.alert is not None:
                self.alert(outcome.alert, outcome.message, pid=proc.pid, signal=outcome.signal,
                           exit_code=outcome.exit_code)
            else:
                log.info("%s", outcome.message)
            reader.deadline = trio.current_time() + STATUS_DRAIN_S
        self.costs.release(everything=True)
        self.proc = None
        return outcome

    async def _read_status(self, fd: int, scope: trio.CancelScope, exited: trio.Event) -> None:
        with scope:
            await read_lines(fd, self._on_status, writer_gone=exited)

    def _on_status(self, line: bytes) -> None:
        try:
            status = status_line(line)
        except ValueError as e:
            log.warning("ignoring a bad status line from the wrapper (%s): %r", e, line[:200])
            return
        state = status["state"]
        self.costs.push(status)
        if state == "event":
            return
        if state == "item":
            self.last_item, self.last_item_at = status.get("item"), status.get("t")
            self._count(status.get("outcome"))
        if self.hang.hung:
            log.warning("wrapper pid %s speaks again (%s)", self.wrapper_pid(), state)
        self.state = "running" if state in ("item", "ready") else state
        if state == "ready":
            log.info("wrapper ready: %s items in this share, %s to do", status.get("total"),
                     status.get("todo"))
        elif state == "failed":
            log.error("wrapper failed: %s", status.get("reason"))
        self.hang.reset(trio.current_time(), self.state)

    def _spool(self, status: Mapping[str, Any]) -> None:
        if (trouble := spool_report(self.items, self.cfg.wrapper.run, status)) is not None:
            self._cannot_spool(trouble)

    async def _release_costs(self) -> None:
        """Spool the item events whose costs were waiting for the samples after them (while
        there is anything to measure: no wakeups otherwise)."""
        while self.costs.costs.active or len(self.costs):
            await trio.sleep(STATUS_POLL_S)
            if len(self.costs):
                self.costs.release()

    def _count(self, outcome: Any) -> None:
        """Hand an item's outcome to the circuit breaker; when it trips, the wrapper (whose own
        breaker trips at the same item) stops, and the shard fails with the breaker's reason.
        The watchdog stops a wrapper that goes on all the same."""
        if not isinstance(outcome, dict):
            return
        body = outcome.get("body") or {}
        # the error as answers.csv, vlmd's summary and the wrapper's breaker write it
        error = (f"{body.get('reason')}: {body.get('message')}"
                 if outcome.get("kind") == "item.failed" else None)
        if (why := self.breaker.record(error)) is not None:
            log.error("circuit breaker: %s; stopping the wrapper", why)
            self._stop_asked.set()

    def _cannot_spool(self, trouble: str) -> None:
        """The wrapper's events can no longer be spooled: stop it rather than let it evaluate
        items whose answers would be lost; the run fails with `trouble` as the reason (the
        items it did not spool are evaluated again when the run is resumed)."""
        if self.spool_error is None:
            log.error("%s; stopping the wrapper", trouble)
            self.spool_error = trouble
            self.stop(signal.SIGTERM)

    async def _stop_when_asked(self, proc: trio.Process, scope: trio.CancelScope) -> None:
        with scope:
            await self._stop_asked.wait()
            log.warning("stopping wrapper pid %d (SIGTERM: it stops after the current item; "
                        "SIGKILL in %g s)", proc.pid, self.cfg.stop_timeout_s)
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            with trio.move_on_after(self.cfg.stop_timeout_s):
                await self._kill_now.wait()
            log.warning("wrapper pid %d has not stopped; SIGKILL", proc.pid)
            self.killed = "killed on stop"
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)

    async def on_hang(self, silence: float) -> None:
        """Report a hang: ask for the wrapper's stacks, send ``alert.hang``, maybe restart it."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        stacks, how = await ask_stacks(proc, Path(self.cfg.wrapper.spool) / "stacks.txt")
        at = time.strftime("%H:%M:%S", time.localtime(self.last_item_at or 0))
        last = "no item finished yet" if self.last_item_at is None else (
            f"last item {self.last_item} finished at {at}")
        message = (f"wrapper pid {proc.pid} alive but silent for {silence:.1f} s "
                   f"(state {self.state}; {last}); {how}")
        self.alert("alert.hang", message, pid=proc.pid, stacks=stacks, silence_s=round(silence, 3))
        if self.cfg.on_hang == "restart":
            log.warning("on-hang policy restart: SIGKILL wrapper pid %d", proc.pid)
            self.killed = f"hung wrapper pid {proc.pid} killed after {silence:.1f} s of silence"
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)

    def on_batch(self, samples: list[Sample]) -> None:
        """A second's samples (and the engine's scrapes): one ``watchdog.sample`` event, then the
        high-water checks."""
        body: dict[str, Any] = {"host": self.host, "samples": samples, **self.shard}
        if self.server is not None and (scrapes := self.server.take_new()):
            body["server"] = scrapes
        if samples[-1]["gpus"] and (gpus := model_gpus(samples[-1], self.place)) is not None:
            body["model_gpus"] = gpus
        self.put("watchdog.sample", body)
        for s in samples:
            vram, ram = vram_fraction(s), ram_fraction(s)
            if self.vram.update(vram[0] if vram else None) and vram:
                gpu = next(g for g in s["gpus"] if g.get("index") == vram[1])
                self.alert("alert.vram_high", f"GPU {vram[1]} memory at {vram[0]:.0%} "
                           f"({gpu['mem_used_mb']:.0f} of {gpu['mem_total_mb']:.0f} MB), at or "
                           f"above {self.cfg.vram_high:.0%}", pid=self.wrapper_pid())
            if self.ram.update(ram[0] if ram else None) and ram:
                self.alert("alert.ram_high", f"{ram[1]} memory at {ram[0]:.0%}, at or above "
                           f"{self.cfg.ram_high:.0%}", pid=self.wrapper_pid())

    async def _heartbeats(self) -> None:
        due = trio.current_time()
        while True:
            self.heartbeat()
            due += self.cfg.heartbeat_s
            due = max(due, trio.current_time())  # after a stall, do not catch up in a burst
            await trio.sleep_until(due)

    def heartbeat(self) -> None:
        """Send one ``watchdog.heartbeat``."""
        pid = self.wrapper_pid()
        state = ("stopping" if self.stopping is not None else "hung" if self.hang.hung
                 else self.between if pid is None else self.state)
        self.put("watchdog.heartbeat", {
            "host": self.host, "pid": os.getpid(), "wrapper_pid": pid, "wrapper_state": state,
            "last_item": self.last_item, "last_item_at": self.last_item_at,
            "restarts": self.restarts, "cpu_s": round(self.sampler.cpu_seconds(), 3),
            "outbox_backlog": self.box.backlog(), "summary": self.sampler.summary(),
            **self.shard})

    def alert(self, kind: str, message: str, *, pid: int | None, **extra: Any) -> None:
        """Send an alert with the last `ALERT_SAMPLES_S` of samples, and log it."""
        log.log(logging.WARNING if kind.endswith("_high") else logging.ERROR, "%s: %s", kind,
                message)
        body = {"message": message, "host": self.host, "wrapper_pid": pid,
                "samples": self.sampler.recent(ALERT_SAMPLES_S), **self.shard,
                **{k: v for k, v in extra.items() if v is not None}}
        self.put(kind, body)

    def _fail(self, reason: str, box: Outbox | None = None) -> int:
        shard = f" shard {self.cfg.wrapper.shard}" if self.shard else ""
        log.error("run %s%s failed: %s", self.cfg.wrapper.run, shard, reason)
        self.put("run.failed", {"reason": reason, **self.shard}, box)
        return EXIT_FAILED

    def put(self, kind: str, body: Mapping[str, Any], box: Outbox | None = None) -> None:
        """Spool one event (in the watchdog's outbox unless `box` is given); a full or broken
        spool disk is logged, never fatal to the watchdog."""
        try:
            (self.box if box is None else box).put(wire.envelope(self.cfg.wrapper.run, kind, body))
        except (OSError, sqlite3.Error, ValueError) as e:
            log.error("cannot spool a %s event: %s", kind, e)


async def read_lines(fd: int, on_line: Callable[[bytes], None],
                     poll_s: float = STATUS_POLL_S, writer_gone: trio.Event | None = None) -> None:
    """Hand each line of the pipe `fd` to `on_line` until its writers are gone; closes `fd`.

    Polled every `poll_s` seconds rather than waited on: a waiting reader is woken by every
    write, which costs the writer (the model's process, once an item) ~40 µs on a virtual
    machine (an inter-processor interrupt); a write to a pipe nobody waits on costs it ~3 µs.
    A line written stays in the pipe for the next poll, even if its writer died since. Once
    `writer_gone` is set (the wrapper exited), the rest is read at once, not at the next poll.
    """
    os.set_blocking(fd, False)
    pending = b""
    hurried = False
    try:
        while True:
            try:
                chunk = os.read(fd, PIPE_BYTES)
            except BlockingIOError:
                if writer_gone is None or hurried:
                    await trio.sleep(poll_s)
                else:
                    with trio.move_on_after(poll_s):
                        await writer_gone.wait()
                    hurried = writer_gone.is_set()  # then back to polling (another writer?)
                continue
            if not chunk:
                return
            *lines, pending = (pending + chunk).split(b"\n")
            for i, line in enumerate(lines, 1):
                on_line(line)
                if not i % LINES_PER_TURN:  # a fast model's backlog: let sampling go on
                    await trio.lowlevel.checkpoint()
            await trio.lowlevel.checkpoint()
    finally:
        os.close(fd)


def spool_report(items: Outbox, run: str, status: Mapping[str, Any]) -> str | None:
    """Spool what a status line of the wrapper reports: the event of an ``item`` line's
    outcome (scored here: `vlmd_agent.pipe.scored_event`), or an ``event`` line's
    envelope.

    Never raises: a line that is not a valid report is logged; when the spool cannot write
    (its disk is full or failing) the answer says why, and the event is not spooled.
    """
    try:
        if status["state"] == "item" and "outcome" in status:
            event = scored_event(run, status["outcome"])
        elif status["state"] == "event":
            event = status["event"]
        else:
            return None
        items.put(event)
    except (OSError, sqlite3.Error) as e:
        return f"cannot spool the wrapper's events in {items.path} ({e})"
    except (ValueError, KeyError, TypeError) as e:  # not what `run_item` makes: a bug
        log.error("the wrapper reported an event that cannot be spooled (%s: %s): %r",
                  type(e).__name__, e, dict(status))
    return None


def next_attempt(spool: Path) -> int:
    """A wrapper attempt number not used before with this spool (counted in ``spool/attempts``).

    Each wrapper start gets a new one, also across agent restarts on the same spool, so the
    keys the wrapper derives from it (``run.finished``, ``item.failed``) are never duplicates of
    an earlier attempt's.
    """
    counter = spool / "attempts"
    try:
        attempt = int(counter.read_text().strip() or 0)
    except (OSError, ValueError):
        attempt = 0
    counter.write_text(f"{attempt + 1}\n")
    return attempt
