"""`python -m tests.chaos --folder DIR --json FILE [options]`: do one chaos, write its record.

Two runs of `--items` items (`demo:instant:MS`, `--shards` agents each) are submitted through
`POST /api/runs` to one `vlmd serve` on a fixed port, over a log in DIR (with VLMD_HOME there,
so the agents' spools are the chaos's own):

  phase 1  vlmd is `kill -9`ed `--daemon-kills` times, each at a random point of the run's
           progress, kept down for a random 0.1-2 s, and started again on the same log and port.
           Its agents live on (orphaned; this process adopts and reaps them) and spool meanwhile.
  phase 2  vlmd stays up; `--agent-faults` times each, at random points of the second run: the
           wrapper is `kill -9`ed (its watchdog restarts it), the whole agent is `kill -9`ed (the
           wrapper dies with it; vlmd's launcher starts a new agent on the same spool), the
           wrapper is stopped (SIGSTOP) for 1-4 s, and the whole agent (watchdog and wrapper) is
           stopped for 2-6 s, past the 3 s heartbeat deadline (vlmd says alert.agent_lost).

Then it stops vlmd and writes FILE (a `Record`: what it did, and what the API, the log and the
spools hold); it judges nothing (tests/test_chaos.py does). Exit status 0 once the record is
complete, 1 when the chaos stopped early (the record's `error` says why), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import random
import signal
import statistics
import sys
import time
import traceback
from collections import Counter
from pathlib import Path
from types import FrameType

import psutil

from tests.chaos.audit import audit_run, integrity
from tests.chaos.daemon import Daemon, chaos_env
from tests.chaos.faults import agents, log, phase_agents, phase_daemon, wait_finished
from tests.chaos.options import add_options, resolve
from tests.chaos.record import FAULT_KINDS, Integrity, Record
from tests.ports import free_port
from vlmd_agent.evaluate import demo_data

PR_SET_CHILD_SUBREAPER = 36


def chaos(record: Record, daemon: Daemon, dataset: Path, runs: list[str]) -> None:
    """Both phases, then the audit of both runs and vlmd's stop, into `record`; the runs
    submitted go into `runs` as soon as they exist (to be stopped if this fails)."""
    options, rng = record.options, random.Random(record.options.seed)
    daemon.start()
    first = daemon.submit(dataset, options.model, options.shards, "chaos-daemon")
    runs.append(first)
    log(f"phase 1: run {first}, {options.items} items, {options.daemon_kills} kills of vlmd")
    phase_daemon(daemon, first, rng, record)
    wait_finished(daemon, first, record)
    second = daemon.submit(dataset, options.model, options.shards, "chaos-agents")
    runs.append(second)
    log(f"phase 2: run {second}, {options.agent_faults} faults of each kind")
    phase_agents(daemon, second, rng, record)
    wait_finished(daemon, second, record)
    spool_root = Path(record.folder) / "home" / "spool"
    record.runs = [audit_run(daemon.url, daemon.db, spool_root, run, phase)
                   for phase, run in enumerate(runs, 1)]
    record.stop_status = daemon.stop()
    record.integrity.append(Integrity("the end", integrity(daemon.db)))


def report(record: Record) -> None:
    """Print what the chaos did (the tests say what it found)."""
    down, options = record.downtime_s, record.options
    print(f"\nchaos: seed {options.seed}; 2 runs x {options.items} items, {options.shards} "
          f"agents each, model {options.model}")
    print(f"  phase 1: vlmd kill -9 x{len(down)} at "
          f"{', '.join(f'{p:.0%}' for p in record.daemon_kills)} of the run; downtime total "
          f"{sum(down):.1f} s (median {statistics.median(down) if down else 0:.1f} s, max "
          f"{max(down, default=0):.1f} s)")
    print(f"           orphaned agents reaped: {len(record.orphans)}, exit statuses "
          f"{sorted(Counter(record.orphans.values()).items(), key=str)}")
    stops = {k: f" ({sum(v):.1f} s in all)" for k, v in record.stops_s.items()}
    print("  phase 2: " + ", ".join(f"{k} x{record.faults.get(k, 0)}{stops.get(k, '')}"
                                    for k in FAULT_KINDS))
    for run in record.runs:
        print(f"  {run.title}: {run.spools.spooled:,} event keys spooled, {run.spools.logged:,} "
              f"logged, items re-spooled after a crash: {run.spools.respooled_items}")
    print(f"elapsed {record.elapsed_s:.1f} s; files in {record.folder}", flush=True)


def _terminated(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(f"stopped by signal {signum}")  # so that `main` cleans up and records it


def main(argv: list[str] | None = None) -> int:
    """Do the chaos the command line asks for; see the module's docstring."""
    ap = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    add_options(ap)
    ap.add_argument("--folder", type=Path, required=True, help="where everything goes")
    ap.add_argument("--json", type=Path, required=True, help="where the record goes")
    args = ap.parse_args(argv)
    with contextlib.suppress(OSError, AttributeError):  # orphaned agents become our children
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1)
    signal.signal(signal.SIGTERM, _terminated)
    folder: Path = args.folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    options = resolve(args)
    dataset = demo_data.build(folder / "data", n=options.items)
    ids = [json.loads(line)["id"] for line in dataset.read_text().splitlines() if line.strip()]
    record = Record(options=options, folder=str(folder), items=ids)
    daemon = Daemon(folder, free_port(), chaos_env(folder))
    log(f"seed {options.seed}; folder {folder}; vlmd at {daemon.url}; model {options.model}")
    began = time.monotonic()
    runs: list[str] = []
    try:
        chaos(record, daemon, dataset, runs)
    except (Exception, SystemExit) as e:
        traceback.print_exc()
        record.error = f"{type(e).__name__}: {e}"
    finally:
        if daemon.running():
            daemon.kill()
        for run in runs:  # after a failure: stop what this chaos started
            for agent in agents(run).values():
                with contextlib.suppress(psutil.Error):
                    agent.proc.kill()
    record.elapsed_s = time.monotonic() - began
    record.save(args.json)
    report(record)
    return 1 if record.error else 0


if __name__ == "__main__":
    sys.exit(main())
