"""Liveness: a heartbeat deadline per agent; a missed deadline becomes an ``alert.agent_lost``.

An agent is one watchdog process, known by (run, host, pid) from its heartbeats. Its deadline is
``lost_after`` heartbeat intervals after the last heartbeat vlmd received (3 by default, the
interval from the heartbeat's ``heartbeat_s`` or the config's). Deadlines run on trio's clock, so
tests drive them with ``autojump_clock``. The tracker marks the run stalled on the alert and
clears it on the next heartbeat.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import trio

from vlmd.store.log import Event
from vlmd_agent import wire
from vlmd_agent.catalog import Alert, Heartbeat

AgentKey = tuple[str, str, int]
STARTUP_GRACE_S = 5.0  # an agent's outbox waits up to 5 s between tries while vlmd is down
ENDED = ("run.finished", "run.failed", "run.cancelled")
OBSERVED = frozenset({"watchdog.heartbeat", "run.started", "alert.agent_lost", *ENDED})


@dataclass
class Agent:
    """What vlmd knows of one agent: where it runs, its shard, and when it must next be heard."""

    run: str
    host: str
    pid: int
    shard: str | None
    last_heartbeat: float
    last_seq: int
    deadline: float
    timeout: float
    lost: bool = False


class Liveness:
    """The deadline book: `observe` committed events, then ask `expired` at any time."""

    def __init__(self, heartbeat_s: float, lost_after: float = 3.0) -> None:
        self.heartbeat_s = heartbeat_s
        self.lost_after = lost_after
        self.agents: dict[AgentKey, Agent] = {}
        self.ended: set[tuple[str, str | None]] = set()

    def observe(self, events: Iterable[Event], now: float) -> None:
        """Fold committed events in: heartbeats move deadlines, run ends forget agents."""
        for e in events:
            if e.kind not in OBSERVED:
                continue  # most of a batch: items and samples
            b = e.body
            if isinstance(b, Heartbeat):
                if (e.run, None) in self.ended or (e.run, b.shard) in self.ended:
                    continue  # an agent flushing after its shard ended is leaving, not lost
                key = (e.run, b.host, b.pid)
                timeout = self.lost_after * float(b.heartbeat_s or self.heartbeat_s)
                self.agents[key] = Agent(e.run, key[1], key[2], b.shard, e.ts, e.seq,
                                         now + timeout, timeout)
            elif e.kind == "run.started":
                self.ended -= {(e.run, None), (e.run, getattr(b, "shard", None))}
            elif e.kind in ENDED:
                shard = getattr(b, "shard", None)
                self.ended.add((e.run, shard))
                for key in [k for k, a in self.agents.items()
                            if k[0] == e.run and (shard is None or a.shard == shard)]:
                    del self.agents[key]
            elif isinstance(b, Alert) and e.kind == "alert.agent_lost":
                key = (e.run, str(b.host), int(b.pid or 0))
                if key in self.agents:
                    self.agents[key].lost = True

    def watch(self, events: Iterable[Event], now: float) -> Iterator[Event]:
        """Pass `events` through, observing each (to fold the log at start-up in one pass).

        The agents found this way get `STARTUP_GRACE_S` beyond their deadline: while vlmd was
        down their outboxes backed off, so their first heartbeat may come that much later.
        """
        for event in events:
            self.observe((event,), now + STARTUP_GRACE_S)
            yield event

    def next_deadline(self) -> float:
        """The earliest deadline of an agent not yet reported lost (inf if none)."""
        return min((a.deadline for a in self.agents.values() if not a.lost), default=math.inf)

    def expired(self, now: float) -> list[Agent]:
        """Agents whose deadline has passed and that were not reported yet; marks them reported."""
        gone = [a for a in self.agents.values() if not a.lost and a.deadline <= now]
        for agent in gone:
            agent.lost = True
        return gone


def lost_event(agent: Agent) -> dict[str, Any]:
    """The ``alert.agent_lost`` envelope for `agent`; its key makes a re-send harmless."""
    body: dict[str, Any] = {
        "message": f"no heartbeat from the agent on {agent.host} (pid {agent.pid}) for "
                   f"{agent.timeout:g} s; the run is stalled until it is heard again",
        "host": agent.host, "pid": agent.pid, "last_heartbeat": agent.last_heartbeat}
    if agent.shard:
        body["shard"] = agent.shard
    key = f"{agent.run}/agent_lost/{agent.host}/{agent.pid}/{agent.last_seq}"
    return wire.envelope(agent.run, "alert.agent_lost", body, key=key)


async def watch(liveness: Liveness,
                append: Callable[[list[dict[str, Any]]], Awaitable[object]],
                *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Append ``alert.agent_lost`` for each agent whose deadline passes; runs until cancelled.

    It wakes at the earliest known deadline, or a quarter heartbeat ahead to pick up agents
    that appeared since (an agent may announce a shorter interval than the config's).
    """
    task_status.started()
    while True:
        horizon = trio.current_time() + liveness.heartbeat_s / 4
        await trio.sleep_until(min(liveness.next_deadline(), horizon))
        gone = liveness.expired(trio.current_time())
        if gone:
            await append([lost_event(agent) for agent in gone])
