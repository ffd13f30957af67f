"""Light stand-ins for vlmd agents for `scripts/bench_scale --load wire`: the same traffic as
`tests.sim_agents` (the same events, sizes and POST pattern) at a fraction of its CPU.

The bodies are made once by the real code (a second of `Sampler` samples over the fake NVML, a
`Watchdog` heartbeat, `wrapper.item_event` items); each agent then re-sends them with fresh keys
and times: a ``watchdog.sample`` and a ``watchdog.heartbeat`` every second and items at
``--item-rate``, batched as an `Outbox` batches (a POST at most 0.1 s after the first pending
event, at most 100 events), through one keep-alive HTTP client per process, kept in memory
until vlmd acknowledges them (no SQLite spool). It exists so that the benchmark can load vlmd
with 100 agents' traffic on a machine too small to also run 100 agents' sampling and spooling;
`tests.sim_agents` is the faithful one.

Usage: as `tests.sim_agents` (same arguments, same JSON lines on stdout).
"""

from __future__ import annotations

import copy
import json
import os
import random
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import trio

from tests import fake_pynvml
from tests.sim_agents import GPUS, parse
from vlmd_agent import wire
from vlmd_agent.evaluate import datasets
from vlmd_agent.evaluate.backends import load_backend
from vlmd_agent.evaluate.wrapper import item_event
from vlmd_agent.pipe import WrapperConfig
from vlmd_agent.watch.gpu import open_gpus
from vlmd_agent.watch.sampler import Sampler

FLUSH_S, BATCH_MAX = 0.1, 100


@dataclass
class WireAgent:
    """One agent's identity and its unacknowledged events."""

    run: str
    shard: str
    host: str
    pending: list[dict[str, Any]] = field(default_factory=list)
    wake: trio.Event = field(default_factory=trio.Event)
    samples: int = 0
    items: int = 0
    sent: int = 0
    retries: int = 0

    def put(self, kind: str, body: dict[str, Any], key: str | None = None) -> None:
        self.pending.append(wire.envelope(self.run, kind, body, key=key))
        self.wake.set()


def sample_batch(interval_s: float) -> list[dict[str, Any]]:
    """One second of real samples of 8 fake GPUs and this process."""
    sampler = Sampler(open_gpus(nvml_module=fake_pynvml, interval_s=interval_s), interval_s)
    batch = [sampler.sample(os.getpid()) for _ in range(round(1 / interval_s))]
    sampler.close()
    return batch


async def watchdog(agent: WireAgent, batch: list[dict[str, Any]], interval_s: float) -> None:
    await trio.sleep(random.random())  # agents do not start in step
    while True:
        now = time.time()
        samples = copy.deepcopy(batch)
        for k, s in enumerate(samples):
            s["t"] = now - 1 + (k + 1) * interval_s
        agent.put("watchdog.sample", {"host": agent.host, "samples": samples,
                                      "shard": agent.shard})
        agent.samples += len(samples)
        agent.put("watchdog.heartbeat", {"host": agent.host, "pid": os.getpid(),
                                         "wrapper_pid": None, "wrapper_state": "running",
                                         "outbox_backlog": len(agent.pending),
                                         "shard": agent.shard})
        await trio.sleep(1.0)


async def items(agent: WireAgent, data: tuple[datasets.Item, ...], rate: float,
                cfg: WrapperConfig) -> None:
    backend = load_backend("demo:instant:0")
    agent.put("run.started", {"total": len(data), "host": agent.host, "pid": os.getpid(),
                              "shard": agent.shard})
    start = trio.current_time()
    for k, item in enumerate(data):
        await trio.sleep_until(start + (k + 1) / rate)
        event = item_event(cfg, item, backend)
        agent.put(event["kind"], event["body"], key=event["key"])
        agent.items += 1


async def sender(agent: WireAgent, client: httpx.AsyncClient) -> None:
    while True:
        await agent.wake.wait()
        await trio.sleep(FLUSH_S)
        while agent.pending:
            batch = agent.pending[:BATCH_MAX]
            try:
                r = await client.post("/api/events", content=json.dumps(batch))
                ok = r.status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok:
                del agent.pending[:len(batch)]
                agent.sent += len(batch)
            else:
                agent.retries += 1
                await trio.sleep(0.5)
        agent.wake = trio.Event()


async def report(agents: list[WireAgent]) -> None:
    while True:
        await trio.sleep(1.0)
        backlogs = [len(a.pending) for a in agents]
        print(json.dumps({"t": time.time(), "backlog": sum(backlogs), "max": max(backlogs),
                          "samples": sum(a.samples for a in agents),
                          "items": sum(a.items for a in agents),
                          "sent": sum(a.sent for a in agents),
                          "retries": sum(a.retries for a in agents),
                          "cpu_s": time.process_time()}), flush=True)


async def main() -> None:
    args = parse()
    fake_pynvml.reset(GPUS)
    data = datasets.load(args.dataset)
    batch = sample_batch(args.interval_s)
    headers = {"authorization": f"Bearer {args.token}", "content-type": "application/json"}
    limits = httpx.Limits(max_connections=args.count, max_keepalive_connections=args.count)
    async with httpx.AsyncClient(base_url=args.url, headers=headers, timeout=30,
                                 limits=limits) as client:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                agents = []
                for i in range(args.first, args.first + args.count):
                    run = f"bench-{args.tag}-r{i // args.shards_per_run}"
                    shard = f"{i % args.shards_per_run}/{args.shards_per_run}"
                    agent = WireAgent(run, shard, f"{socket.gethostname()}-wire{i}")
                    cfg = WrapperConfig(url=args.url, run=run, model="demo:instant:0",
                                        dataset=args.dataset, spool=".", shard=shard)
                    share = datasets.shard(data.items, i % args.shards_per_run,
                                           args.shards_per_run)
                    nursery.start_soon(watchdog, agent, batch, args.interval_s)
                    nursery.start_soon(items, agent, share, args.item_rate, cfg)
                    nursery.start_soon(sender, agent, client)
                    agents.append(agent)
                nursery.start_soon(report, agents)
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break


if __name__ == "__main__":
    trio.run(main)
