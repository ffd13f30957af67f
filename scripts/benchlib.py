"""The harness the `scripts/bench_*` benchmarks share: the daemon under test, the helper
processes they run beside it, and the statistics they print.

The helper processes are programs of this module, started as
``python scripts/benchlib.py PROGRAM ARGS...`` (`PROGRAMS`): load generators that must not share
the bench's own process (and GIL) with what it measures. Linted and type-checked with the rest.
"""

from __future__ import annotations

import json
import math
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "agent"):  # the checkout's code, also when not installed
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))


def start_daemon(folder: Path, token: str, *, env: dict[str, str] | None = None,
                 timeout: float = 60.0, server: str = "") -> tuple[subprocess.Popen[bytes], str]:
    """Start `vlmd serve` on a free port over ``folder/vlmd.db`` (Datasette off, `token` for
    writes, `server`: more TOML lines for its ``[server]`` section) and return the process and
    its URL once it says where it listens."""
    config = folder / "vlmd.toml"
    config.write_text(f'[server]\nport = 0\n{server}\n[datasette]\nenabled = false\n'
                      f'[log]\npath = "{folder / "vlmd.db"}"\n')
    log = folder / "daemon.log"
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "vlmd", "serve", "--config", str(config)],
                                stderr=err, stdout=subprocess.DEVNULL, cwd=folder,
                                env={**os.environ, "VLMD_TOKEN": token, **(env or {})})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text()
        if "listening on " in text:
            return proc, text.split("listening on ")[1].split()[0]
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"vlmd serve did not start:\n{log.read_text()}")


def program(name: str, *args: object) -> list[str]:
    """The command line of this module's program `name` (see `PROGRAMS`)."""
    return [sys.executable, str(Path(__file__).resolve()), name, *map(str, args)]


def percentile(values: Sequence[float], q: float) -> float:
    """The `q` quantile (0..1) by linear interpolation between closest ranks (numpy's
    default); nan for no values."""
    if not values:
        return math.nan
    s = sorted(values)
    pos = (len(s) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


# -- programs ------------------------------------------------------------------------------------

def feed_clients(url: str, n: str, mode: str) -> None:
    """`n` WebSocket clients of `url` that read every message, offering permessage-deflate
    (`mode` "deflate") or not ("plain"); prints ``connected`` once all are started."""
    from vlmd.cli.wsclient import open_ws

    async def client() -> None:
        async with open_ws(url, deflate=mode == "deflate") as ws:
            while True:
                await ws.get_message()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(int(n)):
                nursery.start_soon(client)
            print("connected", flush=True)

    trio.run(main)


def probe_clients(url: str, n: str) -> None:
    """`n` WebSocket clients of `url` (a feed URL with a query) that reconnect after a drop
    with ``after=``; once a second they print a JSON line: the feed latency of every
    ``bench-probe`` event (received by vlmd -> here), bytes and frames read, drops."""
    from vlmd.cli.wsclient import Closed, open_ws

    lat: list[float] = []
    got = {"bytes": 0, "frames": 0, "drops": 0}

    async def client() -> None:
        last: int | None = None
        while True:
            try:
                async with open_ws(url + (f"&after={last}" if last is not None else "")) as ws:
                    while True:
                        text = await ws.get_message()
                        got["bytes"] += len(text)
                        got["frames"] += 1
                        at = text.rfind('{"seq":')
                        last = int(text[at + 7:text.index(",", at)])
                        if "bench-probe" in text:
                            now = time.time()
                            lat.extend(now - e["received"] for e in json.loads(text)
                                       if e["run"] == "bench-probe")
            except Closed:
                got["drops"] += 1

    async def report() -> None:
        while True:
            await trio.sleep(1.0)
            print(json.dumps({"lat": lat, **got}), flush=True)
            lat.clear()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(int(n)):
                nursery.start_soon(client)
            nursery.start_soon(report)
            print(json.dumps({"connected": int(n)}), flush=True)

    trio.run(main)


def spooler(read_fd: str, config_json: str) -> None:
    """The watchdog's side of a wrapper's status pipe (`read_fd`), as the watchdog runs it:
    each line scored and spooled in the wrapper's outbox, which sends it to vlmd. Prints
    ``ready``; on SIGUSR1 (the writer is gone) reads what is left, waits until vlmd has
    every event, and prints its own CPU seconds and the events sent."""
    from vlmd_agent.pipe import WrapperConfig, open_outbox
    from vlmd_agent.watch.detect import status_line
    from vlmd_agent.watch.watchdog import read_lines, spool_report

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    cfg = WrapperConfig.from_json(config_json)
    with open_outbox(cfg, "bench") as items:  # as the watchdog holds the wrapper's spool
        started = cpu()

        async def main() -> None:
            gone = trio.Event()

            async def on_signal(task_status: trio.TaskStatus[None]) -> None:
                with trio.open_signal_receiver(signal.SIGUSR1) as signals:
                    task_status.started()
                    async for _ in signals:
                        gone.set()

            async with trio.open_nursery() as nursery:
                await nursery.start(on_signal)
                print("ready", flush=True)
                def spool(line: bytes) -> None:
                    spool_report(items, cfg.run, status_line(line))

                await read_lines(int(read_fd), spool, writer_gone=gone)
                nursery.cancel_scope.cancel()

        trio.run(main)
        if not items.flush(60):
            sys.exit(f"vlmd did not take the events of {cfg.run}: {items.stats()}")
        print(cpu() - started, items.stats().sent, flush=True)


def cpu_hog() -> None:
    """Spin on one core until killed: other work on a busy host."""
    while True:
        pass


PROGRAMS: dict[str, Callable[..., None]] = {
    "feed-clients": feed_clients, "probe-clients": probe_clients, "spooler": spooler,
    "cpu-hog": cpu_hog}


if __name__ == "__main__":
    PROGRAMS[sys.argv[1]](*sys.argv[2:])
