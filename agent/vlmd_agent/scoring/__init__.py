"""Scorers, each the definition a benchmark's published numbers use, on plain values.

- ``mcq``: which option a multiple-choice answer picks (`choice`, MMBench's VLMEvalKit rules);
  1.0 when it is the reference letter.
- ``vqa``: VQA accuracy exactly as the official script computes it (`vqa`).
- ``anls``: ANLS, the DocVQA/InfographicVQA paper definition (`text.anls`).
- ``relaxed``: ChartQA's relaxed accuracy, 5% on numbers (`text.relaxed`).
- ``exact``: exact match after vlmd's normalisation (`text.exact`).

`grade` picks one by name and says, besides the score, whether the answer could be read
(``parsed``): an ``mcq`` answer no rule can decide scores 0 and is unparsed, never guessed;
a judge's verdict (`grade`'s ``verdict``) can decide it. The watchdog grades what its wrapper
reports without knowing what a dataset item is, so everything here takes plain values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from .choice import DEVIATIONS, Reading, extract_choice, read_choice, strip_thinking
from .text import anls, exact, normalise, relaxed
from .vqa import vqa

__all__ = ["DEVIATIONS", "NO_OPTION", "SCORERS", "Answer", "Grade", "Reading", "anls", "exact",
           "extract_choice", "grade", "mcq", "normalise", "read_choice", "relaxed", "score",
           "strip_thinking", "vqa"]

SCORERS = ("mcq", "exact", "vqa", "anls", "relaxed")
NO_OPTION = "Z"
"""A judge's verdict that the answer picks none of the options (VLMEvalKit's convention)."""

Answer = str | Sequence[str]
"""An item's reference answer: one, or several (VQA's ten human answers, ANLS's variants)."""


@dataclass(frozen=True)
class Grade:
    """A scored answer: ``score`` in [0, 1]; ``parsed`` False when the answer could not be
    read (an ``mcq`` answer no rule decides); ``choice`` the option letter read from it
    (``mcq``), ``judged`` True when a judge's verdict decided it."""

    score: float
    parsed: bool = True
    choice: str | None = None
    judged: bool = False


def grade(scorer: str, prediction: str, answer: Answer,
          choices: Mapping[str, str] | None = None, *, verdict: str | None = None) -> Grade:
    """Grade `prediction` against `answer` with the scorer named `scorer` (one of `SCORERS`);
    `choices` (letter -> option text) is what ``mcq`` reads.

    `verdict` is a judge's reading of an ``mcq`` answer that the rules leave undecided: an
    option letter, `NO_OPTION`, or None (the judge could not tell either). The rules win when
    they decide.

    Raises ValueError for an unknown scorer.
    """
    if scorer == "mcq":
        return _mcq(prediction, answer, choices or {}, verdict)
    fn = _TEXT_SCORERS.get(scorer)
    if fn is None:
        raise ValueError(f"unknown scorer {scorer!r}; expected one of {', '.join(SCORERS)}")
    return Grade(fn(prediction, answer))


def score(scorer: str, prediction: str, answer: Answer,
          choices: Mapping[str, str] | None = None) -> float:
    """`grade`'s score alone."""
    return grade(scorer, prediction, answer, choices).score


def mcq(prediction: str, answer: str, choices: Mapping[str, str]) -> float:
    """1.0 when `prediction` picks the option lettered `answer` (see `read_choice`), else 0.0."""
    return _mcq(prediction, answer, choices, None).score


def _mcq(prediction: str, answer: Answer, choices: Mapping[str, str],
         verdict: str | None) -> Grade:
    reading = read_choice(prediction, choices)
    judged = False
    if not reading.decided and verdict is not None:
        judged = True
        reading = Reading(verdict if verdict in choices else None,
                          verdict in choices or verdict == NO_OPTION)
    answers = (answer,) if isinstance(answer, str) else answer
    right = reading.letter is not None and any(
        reading.letter == one.strip().upper() for one in answers)
    return Grade(1.0 if right else 0.0, reading.decided, reading.letter, judged)


_TEXT_SCORERS: dict[str, Callable[[str, Answer], float]] = {
    "exact": exact, "vqa": vqa, "anls": anls, "relaxed": relaxed,
}
