"""The watchdog: its judgements under trio's autojump clock, then fault injection on real processes.

The fault-injection tests run ``python -m vlmd_agent`` (watchdog + wrapper on the model-free
``demo:instant`` backend) against a real daemon in this test's trio loop, kill or stop the
wrapper with real signals, and read the alerts back through ``GET /api/events``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import math
import os
import signal
import sqlite3
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import trio
import trio.testing

from tests.conftest import TOKEN, daemon_config
from tests.ports import free_port
from vlmd.daemon.serve import Daemon, serve
from vlmd_agent.evaluate import demo_data
from vlmd_agent.watch.detect import (
    HangClock,
    HighWater,
    classify_exit,
    ram_fraction,
    vram_fraction,
    watch_hangs,
)

HEADERS = {"authorization": f"Bearer {TOKEN}"}


# -- judgements, on trio's autojump clock --------------------------------------------------------

async def _hangs_at(clock: HangClock, script: Sequence[tuple[float, str]],
                    until: float) -> list[float]:
    """Run `watch_hangs` while `script` resets the clock at given times; when hangs fired."""
    fired: list[float] = []
    start = trio.current_time()

    async def on_hang(silence: float) -> None:
        fired.append(round(trio.current_time() - start, 6))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_hangs, clock, on_hang)
        for at, state in script:
            await trio.sleep_until(start + at)
            if state == "stop":
                clock.stop()
            else:
                clock.reset(trio.current_time(), state)
        await trio.sleep_until(start + until)
        nursery.cancel_scope.cancel()
    return fired


async def test_a_silent_wrapper_is_hung_once_per_episode_at_its_deadline(
        autojump_clock: trio.testing.MockClock) -> None:
    clock = HangClock(1.5)
    # Speaks at 0, 1 and 2 (no hang), silent until 3.5 (hang), quiet until 10 (still one
    # report), speaks at 10 (a new episode), hang again at 11.5.
    script = [(0, "running"), (1, "running"), (2, "running"), (10, "running")]
    assert await _hangs_at(clock, script, 13.0) == [3.5, 11.5]


async def test_loading_gets_its_own_allowance_and_no_wrapper_is_never_hung(
        autojump_clock: trio.testing.MockClock) -> None:
    clock = HangClock(1.0, loading_s=5.0)
    script = [(0, "loading"), (6, "running"), (7.5, "stop"), (20, "flushing")]
    assert await _hangs_at(clock, script, 26.0) == [5.0, 7.0, 25.0]


def test_hang_clock_reports_the_silence_and_is_hung_until_reset() -> None:
    clock = HangClock(2.0)
    assert clock.deadline() == math.inf and clock.check(100.0) is None
    clock.reset(10.0, "running")
    assert clock.check(11.9) is None
    assert clock.check(12.5) == 2.5
    assert clock.hung and clock.check(30.0) is None
    clock.reset(31.0, "running")
    assert not clock.hung and clock.deadline() == 33.0


def test_high_water_fires_once_per_crossing_and_rearms_below() -> None:
    mark = HighWater(0.9)
    seen = [mark.update(f) for f in (0.5, 0.91, 0.95, None, 0.99, 0.89, 0.9, 0.9)]
    assert seen == [False, True, False, False, False, False, True, False]


def _sample(t: float = 1.0, gpus: list[dict[str, Any]] | None = None, **ram: Any) -> dict[str, Any]:
    base = {"rss_mb": 10.0, "host_used_mb": 500.0, "host_total_mb": 1000.0,
            "cgroup_usage_mb": None, "cgroup_limit_mb": None, "oom_kills": 0}
    return {"t": t, "gpus": gpus or [], "ram": {**base, **ram}}


def test_memory_fractions_prefer_the_cgroup_limit_and_the_fullest_gpu() -> None:
    gpus: list[dict[str, Any]] = [
        {"index": 0, "mem_used_mb": 10.0, "mem_total_mb": 100.0}, {"index": 1, "lost": True},
        {"index": 2, "mem_used_mb": 97.0, "mem_total_mb": 100.0}]
    assert vram_fraction(_sample(gpus=gpus)) == (0.97, 2)
    assert vram_fraction(_sample()) is None
    assert ram_fraction(_sample()) == (0.5, "host")
    assert ram_fraction(_sample(cgroup_usage_mb=90.0, cgroup_limit_mb=100.0)) == (0.9, "cgroup")
    assert ram_fraction(_sample(cgroup_usage_mb=90.0, host_used_mb=None)) is None


def test_exits_are_classified_by_code_signal_and_oom_evidence() -> None:
    calm = [_sample(t, oom_kills=2) for t in (1.0, 2.0)]
    assert classify_exit(0, oom_kills_before=2, samples_after=calm, ran_s=1).outcome == "finished"
    assert classify_exit(3, oom_kills_before=2, samples_after=calm, ran_s=1).outcome == "refused"
    assert classify_exit(4, oom_kills_before=2, samples_after=calm, ran_s=1).alert is None
    crash = classify_exit(1, oom_kills_before=2, samples_after=calm, ran_s=1)
    assert (crash.alert, crash.exit_code, crash.abnormal) == ("alert.wrapper_died", 1, True)
    killed = classify_exit(-9, oom_kills_before=2, samples_after=calm, ran_s=1)
    assert (killed.alert, killed.signal) == ("alert.wrapper_died", 9)
    assert "SIGKILL" in killed.message
    rose = classify_exit(-9, oom_kills_before=1, samples_after=calm, ran_s=1)
    assert rose.alert == "alert.oom" and "from 1 to 2" in rose.message
    cache = [_sample(1.5, cgroup_usage_mb=999.0, cgroup_limit_mb=1000.0), _sample(2.0)]
    assert classify_exit(-9, oom_kills_before=0, samples_after=cache, ran_s=1).alert == (
        "alert.wrapper_died")  # usage at the limit may be page cache: no evidence
    full = [_sample(1.5, rss_mb=950.0, cgroup_limit_mb=1000.0), _sample(2.0, rss_mb=None)]
    assert classify_exit(-9, oom_kills_before=0, samples_after=full, ran_s=1).alert == "alert.oom"
    early = [_sample(0.5, rss_mb=950.0, cgroup_limit_mb=1000.0), _sample(2.0, rss_mb=None)]
    assert classify_exit(-9, oom_kills_before=0, samples_after=early, ran_s=1).alert == (
        "alert.wrapper_died")  # at the limit, but not in the last second
    segv = classify_exit(-11, oom_kills_before=0, samples_after=full, ran_s=1)
    assert (segv.alert, segv.signal) == ("alert.wrapper_died", 11)


# -- fault injection on real processes ------------------------------------------------------------

@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo dataset, 30 items."""
    return demo_data.build(tmp_path_factory.mktemp("demo"), n=30)


class Agents:
    """Starts `python -m vlmd_agent` processes and kills what is left of them afterwards."""

    def __init__(self, tmp_path: Path, dataset: Path) -> None:
        self.tmp_path, self.dataset = tmp_path, dataset
        self.procs: list[trio.Process] = []

    async def start(self, daemon: Daemon, run: str, *args: str,
                    env: dict[str, str] | None = None) -> trio.Process:
        log = (self.tmp_path / f"{run}.log").open("w")
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "vlmd_agent", "--url", daemon.url, "--run", run,
             "--dataset", str(self.dataset), "--spool", str(self.tmp_path / run), *args],
            stdout=log, stderr=log, env={**os.environ, "VLMD_TOKEN": TOKEN, **(env or {})})
        log.close()
        self.procs.append(proc)
        return proc

    def log(self, run: str) -> str:
        return (self.tmp_path / f"{run}.log").read_text()

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.returncode is not None:  # waited for: its pid may be someone else's now
                continue
            try:
                family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(True)]
            except psutil.Error:
                continue
            for p in family:
                with contextlib.suppress(psutil.Error):
                    p.kill()


@pytest.fixture
def agents(tmp_path: Path, dataset: Path) -> Iterator[Agents]:
    a = Agents(tmp_path, dataset)
    yield a
    a.kill_all()


async def wrapper_of(agent: trio.Process, timeout: float = 10.0) -> psutil.Process:
    """The agent's live wrapper child (waits for it to appear)."""
    with trio.fail_after(timeout):
        while True:
            for child in psutil.Process(agent.pid).children():
                try:
                    if ("vlmd_agent.evaluate.wrapper" in child.cmdline()
                            and child.status() != "zombie"):
                        return child
                except psutil.Error:
                    pass
            await trio.sleep(0.02)


async def events(daemon: Daemon, run: str, kind: str | None = None) -> list[dict[str, Any]]:
    params = {"run": run, **({"kind": kind} if kind else {})}
    async with httpx.AsyncClient(base_url=daemon.url, headers=HEADERS) as c:
        r = await c.get("/api/events", params=params)
    r.raise_for_status()
    found: list[dict[str, Any]] = r.json()
    return found


async def wait_events(daemon: Daemon, run: str, kind: str, n: int = 1,
                      timeout: float = 15.0) -> list[dict[str, Any]]:
    """The run's events of `kind`, once there are at least `n`."""
    with trio.fail_after(timeout):
        while len(found := await events(daemon, run, kind)) < n:
            await trio.sleep(0.05)
    return found


async def run_state(daemon: Daemon, run: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=daemon.url, headers=HEADERS) as c:
        r = await c.get(f"/api/runs/{run}")
    state: dict[str, Any] = r.json() if r.status_code == 200 else {"done": 0, "status": None}
    return state


async def wait_done(daemon: Daemon, run: str, n: int, timeout: float = 15.0) -> None:
    """Wait until vlmd holds at least `n` completed items of the run."""
    with trio.fail_after(timeout):
        while (await run_state(daemon, run))["done"] < n:
            await trio.sleep(0.05)


async def finished(agent: trio.Process, timeout: float = 20.0) -> int:
    with trio.fail_after(timeout):
        return await agent.wait()


async def test_kill_9_of_the_wrapper_is_reported_within_a_second_with_the_samples_before(
        daemon: Daemon, agents: Agents) -> None:
    agent = await agents.start(daemon, "r-kill", "--model", "demo:instant:50",
                               "--heartbeat-s", "0.3")
    wrapper = await wrapper_of(agent)
    first_beat = (await wait_events(daemon, "r-kill", "watchdog.heartbeat"))[0]["ts"]
    await wait_done(daemon, "r-kill", 3)
    await trio.sleep(max(0.0, first_beat + 1.3 - time.time()))  # over a second of samples
    wrapper.send_signal(signal.SIGKILL)
    killed_at = time.time()
    [alert] = await wait_events(daemon, "r-kill", "alert.wrapper_died")
    body = alert["body"]
    assert body["signal"] == 9 and "SIGKILL" in body["message"]
    assert body["wrapper_pid"] == wrapper.pid
    assert 0 <= alert["ts"] - killed_at < 1.0, alert["ts"] - killed_at
    times = [s["t"] for s in body["samples"]]
    assert min(times) <= killed_at - 1.0 and max(times) >= killed_at - 0.2
    assert await finished(agent) == 0  # restarted, resumed, finished
    state = await run_state(daemon, "r-kill")
    assert (state["status"], state["done"]) == ("finished", 30)
    print(f"kill -9 -> alert.wrapper_died in {alert['ts'] - killed_at:.3f} s")


async def test_sigstop_of_the_wrapper_is_one_hang_alert_within_hang_after_plus_heartbeat(
        daemon: Daemon, agents: Agents) -> None:
    agent = await agents.start(daemon, "r-stop", "--model", "demo:instant:50",
                               "--hang-after-s", "1.5", "--heartbeat-s", "0.3")
    wrapper = await wrapper_of(agent)
    await wait_done(daemon, "r-stop", 3)
    wrapper.suspend()
    stopped_at = time.time()
    [alert] = await wait_events(daemon, "r-stop", "alert.hang")
    assert alert["ts"] - stopped_at <= 1.5 + 0.3, alert["ts"] - stopped_at
    assert "stopped" in alert["body"]["message"] and "stacks" not in alert["body"]
    assert len(alert["body"]["samples"]) > 20
    await trio.sleep(2.0)  # stays stopped past another hang_after_s: still one alert
    assert len(await events(daemon, "r-stop", "alert.hang")) == 1
    beats = await events(daemon, "r-stop", "watchdog.heartbeat")
    assert beats[-1]["body"]["wrapper_state"] == "hung"
    wrapper.resume()
    assert await finished(agent) == 0
    assert (await run_state(daemon, "r-stop"))["status"] == "finished"
    print(f"SIGSTOP -> alert.hang in {alert['ts'] - stopped_at:.3f} s")


async def test_a_wrapper_stuck_in_an_item_has_its_stacks_in_the_hang_alert(
        daemon: Daemon, agents: Agents) -> None:
    agent = await agents.start(daemon, "r-slow", "--model", "demo:instant:5000", "--limit", "1",
                               "--hang-after-s", "1", "--stop-timeout-s", "0.5")
    wrapper = await wrapper_of(agent)
    [alert] = await wait_events(daemon, "r-slow", "alert.hang")
    stacks = alert["body"]["stacks"]
    assert "instant.py" in stacks and "in generate" in stacks, stacks
    assert "stacks are attached" in alert["body"]["message"]
    agent.send_signal(signal.SIGTERM)  # forwarded; the item takes too long, so SIGKILL follows
    assert await finished(agent, timeout=10) == 128 + signal.SIGTERM
    assert not wrapper.is_running() or wrapper.status() == "zombie"
    assert "SIGKILL" in agents.log("r-slow")
    assert await events(daemon, "r-slow", "alert.wrapper_died") == []


async def test_restart_on_hang_still_completes_every_item_exactly_once(
        daemon: Daemon, agents: Agents) -> None:
    agent = await agents.start(daemon, "r-again", "--model", "demo:instant:50",
                               "--hang-after-s", "1", "--heartbeat-s", "0.3",
                               "--on-hang", "restart")
    first = await wrapper_of(agent)
    await wait_done(daemon, "r-again", 5)
    first.suspend()
    assert await finished(agent) == 0
    assert len(await events(daemon, "r-again", "alert.hang")) == 1
    assert await events(daemon, "r-again", "alert.wrapper_died") == []
    async with httpx.AsyncClient(base_url=daemon.url, headers=HEADERS) as c:
        answers = (await c.get("/api/runs/r-again/answers.csv")).text
    items = [row["item"] for row in csv.DictReader(io.StringIO(answers))]
    assert sorted(items) == sorted(set(items)) and len(items) == 30
    state = await run_state(daemon, "r-again")
    assert (state["status"], state["done"], state["failed"]) == ("finished", 30, 0)
    beats = await events(daemon, "r-again", "watchdog.heartbeat")
    assert beats[-1]["body"]["restarts"] == 1


async def test_a_sigkill_with_a_rising_cgroup_oom_count_is_an_oom_alert(
        daemon: Daemon, agents: Agents, tmp_path: Path) -> None:
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    (cgroup / "memory.current").write_text(f"{300 << 20}\n")
    (cgroup / "memory.max").write_text(f"{4096 << 20}\n")
    events_file = cgroup / "memory.events"
    events_file.write_text("low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n")
    agent = await agents.start(daemon, "r-oom", "--model", "demo:instant:50",
                               "--max-restarts", "0", env={"VLMD_CGROUP_DIR": str(cgroup)})
    wrapper = await wrapper_of(agent)
    await wait_done(daemon, "r-oom", 2)
    events_file.write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")  # what the kernel does
    wrapper.send_signal(signal.SIGKILL)
    [alert] = await wait_events(daemon, "r-oom", "alert.oom")
    assert "from 0 to 1" in alert["body"]["message"] and alert["body"]["signal"] == 9
    assert alert["body"]["samples"][0]["ram"]["cgroup_limit_mb"] == 4096
    assert await finished(agent) == 1  # no restarts allowed: the run failed
    [failed] = await wait_events(daemon, "r-oom", "run.failed")
    assert "OOM" in failed["body"]["reason"] and "no restarts left" in failed["body"]["reason"]
    assert (await run_state(daemon, "r-oom"))["status"] == "failed"


async def test_heartbeats_flow_every_heartbeat_s_and_high_ram_is_one_alert(
        daemon: Daemon, agents: Agents) -> None:
    agent = await agents.start(daemon, "r-beat", "--model", "demo:instant:100", "--limit", "20",
                               "--heartbeat-s", "0.3", "--ram-high", "0.01")
    assert await finished(agent) == 0
    beats = [e["body"] | {"ts": e["ts"]} for e in
             await events(daemon, "r-beat", "watchdog.heartbeat")]
    gaps = [b["ts"] - a["ts"] for a, b in itertools.pairwise(beats)]
    assert len(beats) >= 5 and 0.25 < statistics.median(gaps) < 0.35, gaps
    assert all(0.1 < g < 0.8 for g in gaps), gaps
    running = [b for b in beats if b["wrapper_state"] == "running"]
    assert running and all(b["wrapper_pid"] for b in running)
    assert running[-1]["last_item"] and running[-1]["last_item_at"] > running[0]["ts"] - 5
    assert 0 < beats[-1]["cpu_s"] < 5 and running[-1]["summary"]["rss_mb"] > 0
    samples = await events(daemon, "r-beat", "watchdog.sample")
    assert sum(len(e["body"]["samples"]) for e in samples) >= 20  # 20 Hz over ~2 s
    [high] = await events(daemon, "r-beat", "alert.ram_high")  # once per crossing
    assert "at or above 1%" in high["body"]["message"]


async def test_a_dataset_that_cannot_be_read_fails_once_without_restarts(
        daemon: Daemon, agents: Agents, tmp_path: Path) -> None:
    agents.dataset = tmp_path / "missing.jsonl"
    agent = await agents.start(daemon, "r-bad", "--model", "demo:instant")
    assert await finished(agent) == 1
    [failed] = await wait_events(daemon, "r-bad", "run.failed")
    assert "bad dataset" in failed["body"]["reason"]
    assert await events(daemon, "r-bad", "alert.wrapper_died") == []
    assert agents.log("r-bad").count("wrapper pid") == 1  # started once


async def test_events_spooled_while_vlmd_is_down_are_flushed_or_kept_for_the_next_start(
        tmp_path: Path, agents: Agents) -> None:
    port = free_port()
    config = daemon_config(tmp_path / "vlmd.db", port=port)
    async with trio.open_nursery() as nursery:
        first: Daemon = await nursery.start(serve, config)
        agent = await agents.start(first, "r-down", "--model", "demo:instant:100")  # 3 s
        await wait_done(first, "r-down", 3)
        first.shutdown.set()  # vlmd goes away; the agent spools the rest and gives up on it
    with trio.fail_after(20):
        while "events left in the spools" not in agents.log("r-down"):
            await trio.sleep(0.1)
    assert agent.returncode is None  # the shard is done, but its events are not delivered
    agent.send_signal(signal.SIGTERM)
    assert await finished(agent) == 128 + signal.SIGTERM
    assert _pending(tmp_path / "r-down" / "wrapper.db") > 0  # kept for the next start
    async with trio.open_nursery() as nursery:
        second: Daemon = await nursery.start(serve, config)
        again = await agents.start(second, "r-down", "--model", "demo:instant:30")
        assert await finished(again) == 0
        state = await run_state(second, "r-down")
        assert (state["status"], state["done"]) == ("finished", 30)
        second.shutdown.set()


def _pending(spool: Path) -> int:
    db = sqlite3.connect(spool)
    try:
        return int(db.execute("SELECT count(*) FROM pending").fetchone()[0])
    finally:
        db.close()




FULL_SPOOL = """
import errno, os
from vlmd_agent.outbox import putlog
_append, _puts = putlog.PutLog.append, {"n": 0}
def append(self, events, queued):
    if self.path.name == "wrapper.db.puts":
        _puts["n"] += 1
        if _puts["n"] > int(os.environ["VLMD_TEST_SPOOL_PUTS"]):
            raise OSError(errno.ENOSPC, "No space left on device")
    return _append(self, events, queued)
putlog.PutLog.append = append
"""


async def test_when_the_wrapper_spool_cannot_write_the_wrapper_is_stopped_and_the_run_fails(
        daemon: Daemon, agents: Agents, tmp_path: Path) -> None:
    """No item is evaluated into the void: the watchdog stops the wrapper at the first event it
    cannot spool (its disk full, here a put log that says ENOSPC after 9 puts)."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(FULL_SPOOL)
    agent = await agents.start(daemon, "r-full", "--model", "demo:instant:50", env={
        "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), *sys.path]),
        # run.phase resolving and loading, run.started, run.phase warmup, and 5 items
        "VLMD_TEST_SPOOL_PUTS": "9"})
    assert await finished(agent) == 1
    [failed] = await wait_events(daemon, "r-full", "run.failed")
    assert "cannot spool the wrapper's events" in failed["body"]["reason"]
    assert "No space left on device" in failed["body"]["reason"]
    log = agents.log("r-full")
    assert log.count("stopping the wrapper") == 1
    assert "wrapper pid" in log and log.count("started (attempt") == 1  # not restarted
    state = await run_state(daemon, "r-full")
    assert (state["status"], state["done"]) == ("failed", 5)
