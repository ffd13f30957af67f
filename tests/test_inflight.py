"""The wrapper's item loop with requests in flight: how many at once, when they start, how they
stop (`vlmd_agent.evaluate.inflight`)."""

from __future__ import annotations

import threading
import time

import pytest

from vlmd_agent.evaluate.inflight import run_each


class Probe:
    """A request that takes `seconds` and counts how many run at once."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.lock = threading.Lock()
        self.now = self.peak = 0
        self.started: dict[int, float] = {}

    def __call__(self, item: int) -> int:
        with self.lock:
            self.started[item] = time.monotonic()
            self.now += 1
            self.peak = max(self.peak, self.now)
        time.sleep(self.seconds)
        with self.lock:
            self.now -= 1
        return item


def test_n_requests_are_in_flight_at_once_and_each_is_delivered_once() -> None:
    probe, got = Probe(0.05), list[int]()
    started = time.monotonic()
    count = run_each(range(40), probe, got.append, stopped=lambda: False, concurrency=8)
    took = time.monotonic() - started
    assert count == 40 and sorted(got) == list(range(40))
    assert probe.peak == 8
    assert took < 40 * 0.05 / 2  # eight at a time, not one


def test_one_at_a_time_is_in_order() -> None:
    probe, got = Probe(0.0), list[int]()
    run_each(range(10), probe, got.append, stopped=lambda: False)
    assert got == list(range(10)) and probe.peak == 1


def test_a_fixed_rate_starts_request_k_at_k_over_r() -> None:
    probe, got = Probe(0.01), list[int]()
    run_each(range(12), probe, got.append, stopped=lambda: False, concurrency=4, rate=40.0)
    # each start against its slot k / 40 on the schedule, the schedule's start being the
    # earliest that fits every start: late only by a sleep's overshoot (more on a busy machine)
    offset = min(probe.started[k] - k / 40.0 for k in range(12))
    late = sorted(probe.started[k] - offset - k / 40.0 for k in range(12))
    assert late[6] < 0.005 and late[-1] < 0.05, late
    assert probe.started[11] - probe.started[0] > 11 / 40.0 - 0.05


def test_a_stop_starts_no_more_and_lets_those_in_flight_finish() -> None:
    probe, got = Probe(0.1), list[int]()
    stop = threading.Event()
    threading.Timer(0.15, stop.set).start()
    count = run_each(range(100), probe, got.append, stopped=stop.is_set, concurrency=4)
    assert count == len(got) == len(probe.started)
    assert 4 <= count <= 12 and probe.now == 0


def test_an_error_stops_new_requests_and_is_raised_once_the_others_end() -> None:
    done: list[int] = []

    def work(item: int) -> int:
        if item == 5:
            raise RuntimeError("a bug")
        time.sleep(0.02)
        return item

    with pytest.raises(RuntimeError, match="a bug"):
        run_each(range(1000), work, done.append, stopped=lambda: False, concurrency=3)
    assert len(done) < 20


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        run_each([], int, print, stopped=lambda: False, concurrency=0)
    with pytest.raises(ValueError):
        run_each([], int, print, stopped=lambda: False, rate=0.0)
