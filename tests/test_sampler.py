"""The sampler: wire samples, the ring buffer, heartbeat summaries, and the drift-free loop."""

from __future__ import annotations

import itertools
import math
import os
import time
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import pytest
import trio
import trio.testing

from tests import fake_pynvml as fake
from vlmd_agent.gpu import DEVICE_KEYS, NullSource, open_gpus
from vlmd_agent.memory import RamReader
from vlmd_agent.sampler import Sample, Sampler, run_sampler

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


async def _run_for(sampler: Sampler, seconds: float, pid_fn: Any = lambda: ME,
                   ) -> tuple[list[list[Sample]], list[float]]:
    batches: list[list[Sample]] = []
    ticks: list[float] = []

    def pid() -> int | None:
        ticks.append(trio.current_time())
        result: int | None = pid_fn()
        return result

    with trio.move_on_after(seconds):
        await run_sampler(sampler, pid, batches.append)
    return batches, ticks


async def test_run_sampler_is_on_a_fixed_grid_and_batches_each_second(
        null_sampler: Sampler, autojump_clock: trio.testing.MockClock) -> None:
    start = trio.current_time()
    batches, ticks = await _run_for(null_sampler, 3.01)
    assert len(ticks) == 60
    assert [t - start for t in ticks] == pytest.approx([0.05 * k for k in range(1, 61)])
    assert [len(b) for b in batches] == [20, 20, 20]
    kept = null_sampler.recent(3600)
    assert len(kept) == 41  # the ring holds keep_s / interval_s + 1
    assert [s for b in batches for s in b][-41:] == kept


async def test_run_sampler_skips_ticks_missed_in_a_stall_without_drifting(
        null_sampler: Sampler, autojump_clock: trio.testing.MockClock) -> None:
    start = trio.current_time()

    def stall_once() -> int:
        if len(ticks_seen) == 10:
            autojump_clock.jump(0.22)  # the process was stopped for 220 ms
        ticks_seen.append(0)
        return ME

    ticks_seen: list[int] = []
    batches, ticks = await _run_for(null_sampler, 1.0, stall_once)
    steps = [(t - start) / 0.05 for t in ticks]
    assert all(math.isclose(k, round(k), abs_tol=1e-6) for k in steps)
    gaps = [round(b - a) for a, b in itertools.pairwise(steps)]
    # The 11th tick stalls: the 4 ticks due during the stall are skipped, then the grid resumes.
    assert gaps == [1] * 10 + [5] + [1] * (len(gaps) - 11)
    assert sum(len(b) for b in batches) == len(ticks)


async def test_run_sampler_delivers_the_last_partial_batch_when_cancelled(
        null_sampler: Sampler, autojump_clock: trio.testing.MockClock) -> None:
    batches, ticks = await _run_for(null_sampler, 1.5)
    assert [len(b) for b in batches] == [20, 9]
    assert len(ticks) == 29
