"""The sampler: wire samples, the ring buffer, heartbeat summaries, the drift-free loop in its
thread, and its batches in trio."""

from __future__ import annotations

import itertools
import math
import os
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from functools import partial
from typing import Any

import pytest
import trio

from tests import fake_pynvml as fake
from vlmd_agent.watch.gpu import DEVICE_KEYS, NullSource, open_gpus
from vlmd_agent.watch.memory import RamReader
from vlmd_agent.watch.sampler import Sample, Sampler, run_sampler, tick_every

ME = os.getpid()
MB = 1024 * 1024


@pytest.fixture
def null_sampler() -> Iterator[Sampler]:
    """A sampler with no GPUs (as on this machine) and a real RAM reader."""
    with closing(Sampler(NullSource("no GPU in tests"), interval_s=0.05, keep_s=2.0,
                         ram=RamReader())) as s:
        yield s


def test_wire_sample_with_nvml_has_gpus_ram_and_source() -> None:
    fake.reset(2)
    fake.GPUS[0].compute = [(ME, 640 * MB)]
    with closing(Sampler(open_gpus(fake, smi=None), ram=RamReader())) as sampler:
        before = time.time()
        s = sampler.sample(ME)
    assert set(s) == {"t", "gpus", "ram", "gpu_source"}
    assert before <= s["t"] <= time.time()
    assert s["gpu_source"] == "nvml"
    assert [list(d) for d in s["gpus"]] == [list(DEVICE_KEYS)] * 2
    assert (s["gpus"][0]["proc_mem_mb"], s["gpus"][0]["proc_mem_source"]) == (640.0, "pid")
    assert s["ram"]["rss_mb"] > 5


def test_wire_sample_without_gpus_says_why(null_sampler: Sampler) -> None:
    s = null_sampler.sample(ME)
    assert s["gpus"] == [] and s["gpu_source"] == "none"
    assert s["gpu_error"] == "no GPU in tests"


def test_recent_returns_only_the_last_seconds(null_sampler: Sampler) -> None:
    old = [null_sampler.sample(ME) for _ in range(3)]
    time.sleep(0.3)
    new = [null_sampler.sample(ME) for _ in range(2)]
    assert null_sampler.recent(0.2) == new
    assert null_sampler.recent(10) == old + new


def test_ring_keeps_about_keep_s_worth_of_samples() -> None:
    with closing(Sampler(NullSource("x"), interval_s=0.1, keep_s=0.5, ram=RamReader())) as s:
        taken = [s.sample(None) for _ in range(20)]
        assert s.recent(3600) == taken[-6:]


def test_summary_for_heartbeats() -> None:
    fake.reset(2)
    with closing(Sampler(open_gpus(fake, smi=None), ram=RamReader())) as sampler:
        assert sampler.summary() == {"t": None, "rss_mb": None, "gpus": []}
        fake.GPUS[1].lost = True
        s = sampler.sample(ME)
        summary = sampler.summary()
    assert summary == {"t": s["t"], "rss_mb": s["ram"]["rss_mb"], "gpus": [
        {"index": 0, "mem_used_mb": 1000.0, "mem_total_mb": 16000.0, "proc_mem_mb": 1000.0},
        {"index": 1, "lost": True}]}


def test_cpu_seconds_grows_with_work(null_sampler: Sampler) -> None:
    start = null_sampler.cpu_seconds()
    deadline = time.perf_counter() + 0.05
    while time.perf_counter() < deadline:
        null_sampler.sample(ME)
    assert null_sampler.cpu_seconds() > start


def test_bad_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        Sampler(NullSource("x"), interval_s=0)


class FakeClock:
    """A clock for `tick_every`: `wait` jumps to the deadline, or stops past `stop_at` seconds."""

    def __init__(self, stop_at: float) -> None:
        self.now, self.stop_at = 1000.0, 1000.0 + stop_at

    def __call__(self) -> float:
        return self.now

    def wait(self, seconds: float) -> bool:
        if self.now + seconds > self.stop_at:
            return True
        self.now += seconds
        return False


def test_ticks_are_on_a_fixed_grid() -> None:
    clock = FakeClock(3.01)
    ticks: list[float] = []
    tick_every(0.05, lambda: ticks.append(clock() - 1000.0), clock.wait, clock)
    assert ticks == pytest.approx([0.05 * k for k in range(1, 61)])


def test_ticks_missed_in_a_stall_are_skipped_without_drifting() -> None:
    clock = FakeClock(1.0)
    ticks: list[float] = []

    def tick() -> None:
        ticks.append(clock() - 1000.0)
        if len(ticks) == 11:
            clock.now += 0.22  # the process was stopped for 220 ms during this tick

    tick_every(0.05, tick, clock.wait, clock)
    steps = [t / 0.05 for t in ticks]
    assert all(math.isclose(k, round(k), abs_tol=1e-6) for k in steps)
    gaps = [round(b - a) for a, b in itertools.pairwise(steps)]
    # The 4 ticks due during the stall are skipped, then the grid resumes.
    assert gaps == [1] * 10 + [5] + [1] * (len(gaps) - 11)


def test_a_stop_ends_the_ticks_at_once_not_at_the_next_tick() -> None:
    stop = threading.Event()
    ticks: list[float] = []
    thread = threading.Thread(target=tick_every, args=(60.0, lambda: ticks.append(1), stop.wait),
                              daemon=True)
    thread.start()
    time.sleep(0.05)
    asked = time.perf_counter()
    stop.set()
    thread.join(5)
    assert not thread.is_alive() and time.perf_counter() - asked < 0.2
    assert ticks == []


async def _run_for(sampler: Sampler, seconds: float, pid_fn: Any = lambda: ME, *,
                   batch_s: float = 1.0) -> tuple[list[list[Sample]], float]:
    """Run the real sampler for `seconds`: its batches, and how long it took to stop."""
    batches: list[list[Sample]] = []
    with trio.CancelScope() as scope:
        scope.deadline = trio.current_time() + seconds
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(run_sampler, sampler, pid_fn, batches.append,
                                       batch_s=batch_s))
            await trio.sleep_forever()
    return batches, trio.current_time() - scope.deadline


def _sampler_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "vlmd sampler"]


async def test_run_sampler_samples_at_its_rate_in_a_thread_and_stops_promptly(
        null_sampler: Sampler) -> None:
    pids: list[str] = []

    def pid() -> int:
        pids.append(threading.current_thread().name)
        return ME

    batches, stopping = await _run_for(null_sampler, 1.0, pid, batch_s=2.0)
    taken = [s for b in batches for s in b]
    # 20 Hz for 1 s is 20 samples; a loaded machine may lose a few (10 Hz would be 10), but
    # never adds any.
    assert 14 <= len(taken) <= 21, len(taken)
    assert set(pids) == {"vlmd sampler"}
    assert stopping < 0.2, stopping
    assert _sampler_threads() == []
    assert batches == [taken]  # shorter than a batch: one partial batch, delivered on cancel
    assert null_sampler.recent(3600) == taken


async def test_run_sampler_batches_every_batch_s_and_loses_no_sample(
        null_sampler: Sampler) -> None:
    batches, _ = await _run_for(null_sampler, 1.05, batch_s=0.25)
    taken = [s for b in batches for s in b]
    # At 0.25, 0.5, 0.75 and 1.0 s, then what is left at 1.05 s (if a sample was taken).
    assert 4 <= len(batches) <= 5 and all(batches), [len(b) for b in batches]
    assert all(len(b) <= 8 for b in batches[:4])  # a quarter second is 5 samples
    assert 14 <= len(taken) <= 22, len(taken)
    # Every sample the thread took (the ring holds them all) was delivered once, in order.
    assert null_sampler.recent(3600) == taken


async def test_an_error_in_the_sampling_thread_is_raised_in_trio(null_sampler: Sampler) -> None:
    def broken() -> int:
        raise RuntimeError("no pid today")

    with trio.fail_after(5), pytest.raises(RuntimeError, match="no pid today"):
        await run_sampler(null_sampler, broken, lambda batch: None, batch_s=0.1)
    assert _sampler_threads() == []
