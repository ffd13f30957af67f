"""The circuit breaker's rules, written as what each sequence of item outcomes must give."""

from __future__ import annotations

import pytest

from vlmd_agent.breaker import Breaker

REFUSED = "backend_error: connection refused (http://127.0.0.1:9/v1/chat/completions)"
OK = None


def feed(breaker: Breaker, outcomes: list[str | None]) -> list[tuple[int, str]]:
    """Where (the 1-based item) and why the breaker tripped, for each time it said so."""
    return [(i, why) for i, error in enumerate(outcomes, 1)
            if (why := breaker.record(error)) is not None]


@pytest.mark.parametrize(("fail_after", "max_failed", "outcomes", "trips"), [
    # the first 10 items fail alike: tripped at the 10th, with that error
    (10, 0.5, [REFUSED] * 30,
     [(10, f"{REFUSED} (the first 10 items all failed with this error)")]),
    # 9 failures are not yet 10
    (10, 0.5, [REFUSED] * 9, []),
    # one success among the first ten: no trip by rule one; 9 of 10 failed is over half
    (10, 0.5, [OK] + [REFUSED] * 9,
     [(10, f"{REFUSED} (9 items), 9 of 10 items failed: more than 50%")]),
    # ... but with max_failed = 1 nothing trips
    (10, 1.0, [OK] + [REFUSED] * 40, []),
    # different errors, all failing: the fraction rule names the commonest
    (4, 0.5, ["oom: a", "timeout: b", "oom: a", "bad_input: c"],
     [(4, "oom: a (2 items), 4 of 4 items failed: more than 50%")]),
    # a sound start, then the server dies: the fraction passes the limit later
    (5, 0.5, [OK] * 10 + [REFUSED] * 11,
     [(21, f"{REFUSED} (11 items), 11 of 21 items failed: more than 50%")]),
    # exactly the limit is not more than it
    (4, 0.5, [OK, REFUSED, OK, REFUSED], []),
    # fail_after = 0: no breaker at all
    (0, 0.5, [REFUSED] * 50, []),
    # a healthy run never trips
    (10, 0.5, [OK] * 100, []),
])
def test_the_breaker_trips_once_at_the_item_that_crosses_a_rule(
        fail_after: int, max_failed: float, outcomes: list[str | None],
        trips: list[tuple[int, str]]) -> None:
    breaker = Breaker(fail_after, max_failed)
    assert feed(breaker, outcomes) == trips
    assert breaker.tripped == (trips[0][1] if trips else None)
