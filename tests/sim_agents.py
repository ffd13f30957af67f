"""Simulated vlmd agents for `scripts/bench_scale`: several agents in one process, each through the
real agent code paths, with `tests.fake_pynvml` in place of a GPU.

Each simulated agent is what one ``vlmd-agent`` sends, minus the model: a `Watchdog` whose
`Sampler` reads 8 fake GPUs and this process's RAM every ``--interval-s`` (`run_sampler`, one
``watchdog.sample`` event of a second's samples through `Watchdog.on_batch`), a
``watchdog.heartbeat`` every second (`Watchdog.heartbeat`), both spooled by the watchdog's
`Outbox`; and, as its wrapper process does, a ``run.started`` then ``item.completed`` events
(`wrapper.item_event` through the ``demo:instant:0`` backend) at ``--item-rate`` per second
through a second `Outbox`, made as the wrapper makes its own (`wrapper.open_outbox`). Agents
have their own host names (``HOST-simI``), so vlmd tells them apart as it would agents on
different machines.

Usage: python -m tests.sim_agents --url URL --token T --dataset D.jsonl --first 0 --count 10
       [--shards-per-run 10] [--tag TAG] [--spool DIR]

Prints one JSON line a second: the outboxes' total and largest backlog, samples taken, items
put, events acknowledged, retries, and this process's CPU seconds. Stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import trio

from tests import fake_pynvml
from vlmd_agent import wire
from vlmd_agent.evaluate import datasets
from vlmd_agent.evaluate.backends import load_backend
from vlmd_agent.evaluate.wrapper import item_event
from vlmd_agent.outbox.spool import Outbox
from vlmd_agent.pipe import WrapperConfig, open_outbox
from vlmd_agent.watch.gpu import open_gpus
from vlmd_agent.watch.sampler import Sample, Sampler, run_sampler
from vlmd_agent.watch.watchdog import SAMPLE_BATCH_S, Watchdog, WatchdogConfig

GPUS = 8


@dataclass
class SimAgent:
    """One simulated agent: its watchdog (with its outbox and sampler) and its wrapper's outbox."""

    dog: Watchdog
    items_box: Outbox
    cfg: WrapperConfig
    samples: int = 0
    items: int = 0

    def on_batch(self, batch: list[Sample]) -> None:
        self.samples += len(batch)
        self.dog.on_batch(batch)


def make_agent(i: int, args: argparse.Namespace) -> SimAgent:
    run = f"bench-{args.tag}-r{i // args.shards_per_run}"
    shard = f"{i % args.shards_per_run}/{args.shards_per_run}"
    spool = Path(args.spool) / f"agent-{i}"
    spool.mkdir(parents=True, exist_ok=True)
    cfg = WrapperConfig(url=args.url, run=run, model="demo:instant:0", dataset=args.dataset,
                        spool=str(spool), shard=shard)
    box = Outbox(spool / "watchdog.db", args.url, args.token).start()
    sampler = Sampler(open_gpus(nvml_module=fake_pynvml, interval_s=args.interval_s),
                      args.interval_s)
    dog = Watchdog(WatchdogConfig(cfg, args.token, interval_s=args.interval_s), box, sampler)
    dog.host = f"{socket.gethostname()}-sim{i}"
    items_box = open_outbox(cfg, args.token).start()  # the wrapper's own settings
    return SimAgent(dog, items_box, cfg)


async def run_items(agent: SimAgent, items: tuple[datasets.Item, ...], rate: float) -> None:
    """``run.started``, then one item every 1/`rate` s, as a wrapper evaluating a model."""
    backend = load_backend("demo:instant:0")
    agent.items_box.put(wire.envelope(agent.cfg.run, "run.started", {
        "total": len(items), "host": agent.dog.host, "pid": os.getpid(),
        "shard": agent.cfg.shard}))
    start = trio.current_time()
    for k, item in enumerate(items):
        await trio.sleep_until(start + (k + 1) / rate)
        agent.items_box.put(item_event(agent.cfg, item, backend))
        agent.items += 1


async def heartbeats(agent: SimAgent) -> None:
    due = trio.current_time()
    while True:
        agent.dog.heartbeat()
        due += agent.dog.cfg.heartbeat_s
        await trio.sleep_until(max(due, trio.current_time()))


async def report(agents: list[SimAgent]) -> None:
    """One JSON line a second on stdout, for the benchmark."""
    while True:
        await trio.sleep(1.0)
        backlogs = [a.dog.box.backlog() + a.items_box.backlog() for a in agents]
        stats = [s for a in agents for s in (a.dog.box.stats(), a.items_box.stats())]
        print(json.dumps({"t": time.time(), "backlog": sum(backlogs), "max": max(backlogs),
                          "samples": sum(a.samples for a in agents),
                          "items": sum(a.items for a in agents),
                          "sent": sum(s.sent for s in stats),
                          "retries": sum(s.retries for s in stats),
                          "cpu_s": time.process_time()}), flush=True)


async def main(args: argparse.Namespace) -> None:
    fake_pynvml.reset(GPUS)
    data = datasets.load(args.dataset)
    agents = [make_agent(i, args) for i in range(args.first, args.first + args.count)]
    try:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                for agent in agents:
                    index, count = wire.shard_of(agent.cfg.shard or "0/1")
                    nursery.start_soon(partial(run_sampler, agent.dog.sampler, os.getpid,
                                               agent.on_batch, batch_s=SAMPLE_BATCH_S))
                    nursery.start_soon(heartbeats, agent)
                    nursery.start_soon(run_items, agent, datasets.shard(data.items, index, count),
                                       args.item_rate)
                nursery.start_soon(report, agents)
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break
    finally:
        for agent in agents:
            agent.dog.box.close(flush_timeout=0)
            agent.items_box.close(flush_timeout=0)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--first", type=int, default=0, help="index of the first agent")
    p.add_argument("--count", type=int, default=1, help="agents in this process")
    p.add_argument("--shards-per-run", type=int, default=10)
    p.add_argument("--interval-s", type=float, default=0.05, help="sampling period")
    p.add_argument("--item-rate", type=float, default=2.0, help="items per second per agent")
    p.add_argument("--tag", default="sim")
    p.add_argument("--spool", default=".")
    return p.parse_args(argv)


if __name__ == "__main__":
    trio.run(main, parse())
    sys.exit(0)
