"""CircularEval (MMBench, as VLMEvalKit scores it): a question asked several times with its
options rotated is credited only when every rotation of it is answered right.

The items of a circular file carry their question in ``circular_group`` (docs/DATASETS.md).
Here a question's rotations are those that have an outcome so far: a rotation is right when it
completed with a score of at least `CORRECT_AT`; a failed rotation is not right (VLMEvalKit
scores a request that got no answer as wrong). `Tally` keeps the count of credited questions
as rotations come and change (O(1) each), so every run row can carry the circular accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

CORRECT_AT = 0.5  # a score from here up is a correct answer (the answers' outcome class too)


def is_right(ok: bool, score: float | None) -> bool:
    """Whether an item's outcome is a correct answer: completed, scored at least `CORRECT_AT`."""
    return ok and score is not None and score >= CORRECT_AT


@dataclass
class Tally:
    """Per question (circular group): [rotations with an outcome, rotations right]; and how
    many questions have every rotation right."""

    groups: dict[str, list[int]] = field(default_factory=dict)
    credited: int = 0

    def add(self, group: str, right: bool) -> None:
        """Count a rotation's outcome in `group`."""
        counts = self.groups.get(group)
        if counts is None:
            counts = self.groups[group] = [0, 0]
        else:
            self.credited -= counts[0] == counts[1]
        counts[0] += 1
        counts[1] += right
        self.credited += counts[0] == counts[1]

    def remove(self, group: str, right: bool) -> None:
        """Take back a rotation's outcome counted by `add` (a later outcome replaces it)."""
        counts = self.groups[group]
        self.credited -= counts[0] == counts[1]
        counts[0] -= 1
        counts[1] -= right
        if counts[0]:
            self.credited += counts[0] == counts[1]
        else:
            del self.groups[group]

    @property
    def accuracy(self) -> float | None:
        """Credited questions over questions; None when the run has no circular items."""
        return self.credited / len(self.groups) if self.groups else None

