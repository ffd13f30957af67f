"""The chaos's two phases: kills of vlmd under a run, then kills and stops of its agents and
wrappers; and finding, waiting for and reaping the agents."""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import psutil

from tests.chaos.audit import integrity
from tests.chaos.daemon import Daemon
from tests.chaos.record import FAULT_KINDS, Integrity, Record

MAX_WRAPPER_KILLS = 2  # per agent process: its watchdog restarts a wrapper at most 3 times
MAX_AGENT_KILLS = 3  # per shard: vlmd's launcher restarts an agent at most 5 times
RECOVER_S = 60.0
PHASE_S = 600.0


def log(message: str) -> None:
    """Say what the chaos does, with the time, as it does it."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass
class Agent:
    """One shard's processes right now: the watchdog (`python -m vlmd_agent`) and its wrapper."""

    shard: str
    proc: psutil.Process
    wrapper: psutil.Process | None


def _module(cmd: list[str]) -> str | None:
    """The module a `python [flags] -m MODULE ...` command line runs (None: not one)."""
    return cmd[cmd.index("-m") + 1] if "-m" in cmd[1:-1] else None


def agents(run: str) -> dict[str, Agent]:
    """The live agents of `run`, by shard, found by their command lines."""
    found: dict[str, Agent] = {}
    for p in psutil.process_iter(["cmdline", "status"]):
        cmd = p.info["cmdline"] or []
        if p.info["status"] == psutil.STATUS_ZOMBIE or _module(cmd) != "vlmd_agent":
            continue
        if "--run" not in cmd or cmd[cmd.index("--run") + 1] != run:
            continue
        shard = cmd[cmd.index("--shard") + 1] if "--shard" in cmd else "0/1"
        wrapper = None
        with contextlib.suppress(psutil.Error):
            for child in p.children():
                if _module(child.cmdline()) == "vlmd_agent.evaluate.wrapper" and \
                        child.status() != psutil.STATUS_ZOMBIE:
                    wrapper = child
        found[shard] = Agent(shard, p, wrapper)
    return found


def reap_orphans(daemon: Daemon, record: Record) -> None:
    """Reap the processes this child subreaper adopted (every child but the running vlmd): the
    agents a killed vlmd left, whose exit status `record.orphans` keeps, and killed wrappers."""
    for child in psutil.Process().children():
        if daemon.proc is not None and child.pid == daemon.proc.pid:
            continue
        with contextlib.suppress(ChildProcessError):
            pid, status = os.waitpid(child.pid, os.WNOHANG)
            if pid and pid in record.orphans:
                record.orphans[pid] = os.waitstatus_to_exitcode(status)


def wait_until(what: str, fn: Callable[[], bool], timeout: float, every: float = 0.05) -> None:
    """Wait until `fn()` is true.

    Raises:
        TimeoutError: it was not within `timeout` s; the message says what was awaited.
    """
    deadline = time.monotonic() + timeout
    while not fn():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def wait_finished(daemon: Daemon, run: str, record: Record) -> None:
    """Wait until `run` ended and its agents exited (reaping those this process adopted)."""
    wait_until(f"{run} to finish", lambda: (daemon.state(run) or {}).get("status") in (
        "finished", "failed", "cancelled"), PHASE_S, every=0.2)

    def gone() -> bool:
        reap_orphans(daemon, record)
        return not agents(run)
    wait_until(f"the agents of {run} to exit", gone, RECOVER_S, every=0.2)


def _progress_points(rng: random.Random, n: int) -> list[float]:
    return sorted(rng.uniform(0.05, 0.8) for _ in range(n))


def _reached(daemon: Daemon, run: str, done: float) -> bool:
    state = daemon.state(run)
    return state is not None and (state["done"] >= done or state["status"] == "finished")


def phase_daemon(daemon: Daemon, run: str, rng: random.Random, record: Record) -> None:
    """Kill vlmd at random points of `run`'s progress, each after a random 0.3-2.5 s up (so
    some kills land while it takes the agents' backlog), and start it again after a pause."""
    total = record.options.items
    for point in _progress_points(rng, record.options.daemon_kills):
        up = time.monotonic() + rng.uniform(0.3, 2.5)
        wait_until(f"{point:.0%} of {run}", partial(_reached, daemon, run, point * total),
                   PHASE_S)
        time.sleep(max(0.0, up - time.monotonic()))
        state = daemon.state(run) or {"done": 0}
        for agent in agents(run).values():
            record.orphans.setdefault(agent.proc.pid, None)
        daemon.kill()
        killed = time.monotonic()
        record.daemon_kills.append(state["done"] / total)
        kill = len(record.daemon_kills)
        record.integrity.append(Integrity(f"vlmd kill -9 #{kill}", integrity(daemon.db)))
        time.sleep(rng.uniform(0.1, 2.0))
        daemon.start()
        record.downtime_s.append(time.monotonic() - killed)
        log(f"vlmd kill -9 #{kill} at {state['done']}/{total} items; "
            f"down {record.downtime_s[-1]:.1f} s; integrity_check {record.integrity[-1].result}")
        reap_orphans(daemon, record)


def phase_agents(daemon: Daemon, run: str, rng: random.Random, record: Record) -> None:
    """Kill and stop `run`'s wrappers and agents at random points of its progress."""
    total = record.options.items
    faults = [kind for kind in FAULT_KINDS for _ in range(record.options.agent_faults)]
    rng.shuffle(faults)
    wrapper_kills: Counter[int] = Counter()
    agent_kills: Counter[str] = Counter()
    for kind, point in zip(faults, _progress_points(rng, len(faults)), strict=True):
        wait_until(f"{point:.0%} of {run}", partial(_reached, daemon, run, point * total),
                   PHASE_S)
        target = _pick(run, kind, rng, wrapper_kills, agent_kills)
        wrapper = target.wrapper
        assert wrapper is not None
        done = (daemon.state(run) or {"done": "?"})["done"]
        try:
            _inflict(kind, target, wrapper, rng, record)
        except psutil.NoSuchProcess:  # it finished in between: pick another moment
            log(f"{kind}: shard {target.shard} ended first; skipped")
            continue
        record.faults[kind] = record.faults.get(kind, 0) + 1
        log(f"{kind} on shard {target.shard} (agent {target.proc.pid}, wrapper {wrapper.pid}) "
            f"at {done}/{total} items")
        if kind == "wrapper kill -9":
            wrapper_kills[target.proc.pid] += 1
            wait_until(f"a new wrapper for shard {target.shard}",
                       partial(_replaced, run, target, wrapper.pid), RECOVER_S)
        elif kind == "agent kill -9":
            agent_kills[target.shard] += 1
            with contextlib.suppress(psutil.TimeoutExpired):
                wrapper.wait(5.0)  # it must die with its watchdog, not evaluate beside the next
            with contextlib.suppress(psutil.Error):
                record.stray_wrappers += wrapper.status() != psutil.STATUS_ZOMBIE
            wait_until(f"a new agent for shard {target.shard}",
                       partial(_replaced, run, target, target.proc.pid), RECOVER_S)


def _pick(run: str, kind: str, rng: random.Random, wrapper_kills: Counter[int],
          agent_kills: Counter[str]) -> Agent:
    """A random agent of `run` with a live wrapper that may take `kind` without failing the run:
    a watchdog restarts a wrapper 3 times at most, vlmd's launcher an agent 5 times."""
    deadline = time.monotonic() + RECOVER_S
    while time.monotonic() < deadline:
        ready = [a for a in agents(run).values() if a.wrapper is not None]
        if kind == "wrapper kill -9":
            ready = [a for a in ready if wrapper_kills[a.proc.pid] < MAX_WRAPPER_KILLS]
        elif kind == "agent kill -9":
            ready = [a for a in ready if agent_kills[a.shard] < MAX_AGENT_KILLS]
        if ready:
            return rng.choice(ready)
        time.sleep(0.05)
    raise TimeoutError(f"no agent of {run} could take a {kind} for {RECOVER_S:.0f} s")


def _inflict(kind: str, target: Agent, wrapper: psutil.Process, rng: random.Random,
             record: Record) -> None:
    if kind == "wrapper kill -9":
        wrapper.kill()
    elif kind == "agent kill -9":
        target.proc.kill()
    else:
        procs = [wrapper] if kind == "wrapper SIGSTOP" else [target.proc, wrapper]
        pause = rng.uniform(1.0, 4.0) if kind == "wrapper SIGSTOP" else rng.uniform(2.0, 6.0)
        for p in procs:
            p.suspend()
        time.sleep(pause)
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.resume()
        record.stops_s.setdefault(kind, []).append(pause)


def _replaced(run: str, old: Agent, pid: int) -> bool:
    """Whether `old`'s shard runs a wrapper again, under a new agent or wrapper than `pid`."""
    now = agents(run).get(old.shard)
    return now is not None and now.wrapper is not None and pid not in (now.proc.pid,
                                                                         now.wrapper.pid)
