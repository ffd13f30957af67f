"""The circuit breaker: stop a run whose items fail for one reason, instead of burning them all.

A dead server or a wrong model name fails every item in milliseconds; without a breaker a
10,000-item run would end "finished" with 10,000 failures. A `Breaker` counts one agent's item
outcomes and trips when

- the first ``fail_after`` items all failed with the same error, or
- more than ``max_failed`` (a fraction) of the items failed, once ``fail_after`` are done;

its answer is then the run's failure reason: the commonest item error, with the count.
``fail_after = 0`` turns the breaker off, ``max_failed = 1`` only its second rule.

Both processes of an agent hold one over the same outcomes in the same order, so both trip at
the same item: the wrapper stops right there (not one more item is spent, where a signal from
the watchdog would arrive a poll later), and the watchdog fails the run with the reason.
"""

from __future__ import annotations

from collections import Counter


class Breaker:
    """Counts one agent's item outcomes; `record` says when (and why) to stop the run."""

    def __init__(self, fail_after: int, max_failed: float) -> None:
        self.fail_after, self.max_failed = fail_after, max_failed
        self.done = 0
        self.errors: Counter[str] = Counter()
        self.tripped: str | None = None

    @property
    def failed(self) -> int:
        return sum(self.errors.values())

    def record(self, error: str | None) -> str | None:
        """Count one item: its error (``reason: message``, as answers.csv writes it), or None
        when it completed. Returns the reason to stop the run the first time the breaker
        trips, else None."""
        if self.tripped is not None or self.fail_after <= 0:
            return None
        self.done += 1
        if error is not None:
            self.errors[error] += 1
        if self.done < self.fail_after:
            return None
        common, count = self.errors.most_common(1)[0] if self.errors else ("", 0)
        if self.done == self.fail_after and count == self.done:
            self.tripped = f"{common} (the first {self.done} items all failed with this error)"
        elif self.failed > self.max_failed * self.done:
            self.tripped = (f"{common} ({count} items), {self.failed} of {self.done} items "
                            f"failed: more than {self.max_failed:.0%}")
        return self.tripped
