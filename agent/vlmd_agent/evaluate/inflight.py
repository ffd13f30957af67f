"""Keeping requests in flight: the wrapper's item loop, one request at a time or N at once.

`run_each` hands every item to `work` and each result to `deliver`. With ``concurrency`` N
above 1, N worker threads take items in order and keep N requests in flight (a request spends
its time waiting on the network or the model, where Python releases the GIL); each item is
still timed by its own request, and results are delivered in the order they complete, one at a
time. With ``rate`` R, request k starts no earlier than k / R seconds after the first (a fixed
arrival rate, as a load test sends): a request whose time has come waits for a free worker when
all N are busy, so N caps what is in flight. When `stopped` says so, no new request starts;
those in flight finish and are delivered.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")
STOP_CHECK_S = 0.1  # how often a worker waiting for its start time looks at `stopped`


def run_each(items: Iterable[T], work: Callable[[T], R], deliver: Callable[[R], None], *,
             stopped: Callable[[], bool], concurrency: int = 1, rate: float | None = None
             ) -> int:
    """`work` each item, `deliver` each result; returns how many were delivered.

    An exception from `work` or `deliver` stops new requests, lets those in flight finish and
    is raised here once every worker has ended.
    """
    if concurrency < 1 or (rate is not None and not rate > 0):
        raise ValueError("concurrency must be >= 1 and rate > 0")
    schedule = _Schedule(iter(items), rate, stopped)
    if concurrency == 1:
        count = 0
        for item in schedule:
            deliver(work(item))
            count += 1
        return count
    lock = threading.Lock()
    failed: list[BaseException] = []
    delivered = [0]

    def worker() -> None:
        try:
            for item in schedule:
                result = work(item)
                with lock:
                    deliver(result)
                    delivered[0] += 1
        except BaseException as e:  # raised in the calling thread
            failed.append(e)
            schedule.halt()

    threads = [threading.Thread(target=worker, name=f"vlmd-request-{i}", daemon=True)
               for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failed:
        raise failed[0]
    return delivered[0]


class _Schedule(Generic[T]):
    """The items in order, each no earlier than its start time; shared by the workers."""

    def __init__(self, items: Iterator[T], rate: float | None,
                 stopped: Callable[[], bool]) -> None:
        self._items, self._rate, self._stopped = items, rate, stopped
        self._lock = threading.Lock()
        self._next = 0
        self._halted = False
        self._start = time.monotonic()

    def halt(self) -> None:
        """Start no more requests."""
        self._halted = True

    def __iter__(self) -> Iterator[T]:
        while True:
            with self._lock:
                if self._halted or self._stopped():
                    return
                try:
                    item = next(self._items)
                except StopIteration:
                    return
                k = self._next
                self._next += 1
            if self._rate is not None:
                due = self._start + k / self._rate
                while (left := due - time.monotonic()) > 0:
                    if self._halted or self._stopped():
                        return
                    time.sleep(min(left, STOP_CHECK_S))
            yield item
