"""Scorers: multiple choice, exact match, VQA accuracy and ANLS. Pure functions of text.

Every scorer returns a float in [0, 1]. `score` picks one by name, from plain values (the
watchdog scores the items its wrapper reports without knowing what a dataset item is).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence

NUMBER_WORDS = {word: str(number) for number, word in enumerate((
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen", "twenty"))}
ARTICLES = frozenset({"a", "an", "the"})
_MARKUP = re.compile(r"\*\*|__|`|</?[a-z_]+>", re.IGNORECASE)
# "The answer is B", "Answer: (B)", "final answer: b.", "the correct option is C"
_ANSWER_PHRASE = re.compile(
    r"\b(?:answer|correct\s+(?:option|choice))\s*(?:is|would\s+be|should\s+be)?\s*[:=\-]?\s*"
    r"(?:option\s+|choice\s+)?[(\[]?([A-Za-z])(?![A-Za-z0-9'])", re.IGNORECASE)
# a lone letter at the start, followed by punctuation or the end: "B", "(B)", "B.", "b)", "B: red"
_LEADING = re.compile(r"\s*[(\[]?([A-Za-z])(?:[)\].:,]|\s*$|\s*\n|\s+-)")
# a capital letter standing alone in the text: "I'd pick C"
_MENTION = re.compile(r"(?<![A-Za-z0-9'])([A-Z])(?![A-Za-z0-9'])")
# "A red circle", "I think": a word, not a letter; "A is right": a letter
_NOT_A_NOUN = "is|was|or|and|would|should|seems|looks|fits|matches|because"
_WORD_AFTER = re.compile(rf"\s+(?!(?:{_NOT_A_NOUN})\b)[a-z]")
_PUNCT_AFTER = re.compile(r"\s*(?:[^\w\s]|$)")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3})")
_PUNCT = re.compile(r"(?!(?<=\d)\.(?=\d))[^\w\s]|_")


def normalise(text: str) -> str:
    """Normalise an answer for matching: lowercase; drop apostrophes and thousands separators;
    every other punctuation mark (but a decimal point) becomes a space; the articles a/an/the
    go; number words up to twenty become digits; whitespace collapses."""
    text = text.lower().replace("'", "").replace("\u2019", "")
    if not _plain(text):
        text = _PUNCT.sub(" ", _THOUSANDS.sub("", text))
    return " ".join([NUMBER_WORDS.get(word, word) for word in text.split()
                     if word not in ARTICLES])


# Options and reference answers recur item after item: normalise each text once.
_normalised = functools.lru_cache(maxsize=4096)(normalise)


def extract_choice(prediction: str, choices: Mapping[str, str]) -> str | None:
    """The option letter a free-form answer picks, or None when no letter is unambiguous.

    Rules, in order (the first that gives a letter among ``choices`` wins):

    1. an answer phrase: "The answer is B", "Answer: (B)"; the last one counts;
    2. a lone letter at the start followed by punctuation or the end: "B", "(B)", "B. red", "b)";
    3. the whole answer is one option's text: "red" -> the letter whose text is red;
    4. exactly one capital letter standing alone: "I'd pick C", "A is right" ("A" or "I"
       followed by a lowercase word other than "is", "seems"... is read as a word, so "A red
       circle" names no option);
    5. the answer contains exactly one option's text as whole words (longest texts first).

    Lowercase letters count in rules 1 and 2 only when followed by punctuation or the end.
    """
    if not choices:
        return None
    letters = {letter.upper(): letter for letter in choices}
    # each regex runs only where a cheap test says it could match (see `_has_markup`)
    text = (_MARKUP.sub("", prediction) if _has_markup(prediction) else prediction).strip()
    lowered = text.lower()

    def pick(match: re.Match[str]) -> str | None:
        letter = match.group(1)
        if letter.islower() and _PUNCT_AFTER.match(text, match.end(1)) is None:
            return None
        return letters.get(letter.upper())

    if _may_phrase(text, lowered):
        phrases = [p for m in _ANSWER_PHRASE.finditer(text) if (p := pick(m))]
        if phrases:
            return phrases[-1]
    if _may_lead(text) and (leading := _LEADING.match(text)) and (letter := pick(leading)):
        return letter
    said = normalise(text)
    texts = {letter: _normalised(option) for letter, option in choices.items()}
    equal = [letter for letter, option in texts.items() if option and option == said]
    if len(equal) == 1:
        return equal[0]
    mentioned = {
        letters[m.group(1)] for m in _MENTION.finditer(text)
        if m.group(1) in letters
        and not (m.group(1) in "AI" and _WORD_AFTER.match(text, m.end()))
    } if lowered != text else set()  # no capital letter at all: nothing to mention
    if len(mentioned) == 1:
        return mentioned.pop()
    padded = f" {said} "
    contained = {letter: option for letter, option in texts.items()
                 if option and f" {option} " in padded}
    # "dark red" contains "red": an option inside a longer matched option does not count
    outer = [letter for letter, option in contained.items()
             if not any(option != other and f" {option} " in f" {other} "
                        for other in contained.values())]
    return outer[0] if len(outer) == 1 else None


def mcq(prediction: str, answer: str, choices: Mapping[str, str]) -> float:
    """1.0 when `extract_choice` finds the answer's letter in the prediction, else 0.0."""
    return 1.0 if _is_answer(extract_choice(prediction, choices), answer) else 0.0


def _is_answer(choice: str | None, answer: str) -> bool:
    """Whether the letter `extract_choice` found is the reference `answer`'s."""
    return choice == answer.strip().upper()


def exact(prediction: str, answer: str | Sequence[str]) -> float:
    """1.0 when the `normalise`d prediction equals the normalised answer (or any of several)."""
    answers = [answer] if isinstance(answer, str) else answer
    said = normalise(prediction)
    return 1.0 if any(_normalised(a) == said for a in answers) else 0.0


def vqa(prediction: str, answers: str | Sequence[str]) -> float:
    """VQA accuracy: min(number of references equal to the prediction / 3, 1), after
    `normalise`. (The simple form; the official one averages it over the 10 subsets of 9.)"""
    references = [answers] if isinstance(answers, str) else answers
    said = normalise(prediction)
    return min(sum(_normalised(a) == said for a in references) / 3, 1.0)


def anls(prediction: str, answers: str | Sequence[str], threshold: float = 0.5) -> float:
    """ANLS (DocVQA, ST-VQA): the best over references of 1 - NL, where NL is the Levenshtein
    distance over the longer length, after lowercasing and collapsing whitespace; 0 when NL
    reaches ``threshold``."""
    references = [answers] if isinstance(answers, str) else answers
    said = " ".join(prediction.lower().split())
    best = 0.0
    for reference in references:
        ref = " ".join(reference.lower().split())
        longest = max(len(said), len(ref))
        distance = _levenshtein(said, ref) / longest if longest else 0.0
        if distance < threshold:
            best = max(best, 1.0 - distance)
    return best


Answer = str | Sequence[str]
"""An item's reference answer: one, or several (VQA's ten human answers, ANLS's variants)."""


def score(scorer: str, prediction: str, answer: Answer,
          choices: Mapping[str, str] | None = None) -> float:
    """Score `prediction` against `answer` with the scorer named `scorer` (``mcq``, ``exact``,
    ``vqa`` or ``anls``); `choices` (letter -> option text) is what ``mcq`` reads.

    Raises ValueError for an unknown scorer.
    """
    fn = _SCORERS.get(scorer)
    if fn is None:
        raise ValueError(f"unknown scorer {scorer!r}")
    return fn(prediction, answer, choices or {})


# Cheap tests that say when a regex cannot match, so it is not run: scoring runs right after
# generation has evicted the caches, where each regex costs microseconds (tests pin each test
# against its regex).

def _has_markup(text: str) -> bool:
    """False when `_MARKUP` cannot match: each of its matches holds one of these characters."""
    return "*" in text or "_" in text or "`" in text or "<" in text


def _may_phrase(text: str, lowered: str) -> bool:
    """False when `_ANSWER_PHRASE` cannot match (`lowered` is ``text.lower()``). IGNORECASE
    also folds some non-ASCII letters to ASCII ones (U+017F, long s, is "s")."""
    return not text.isascii() or "answer" in lowered or "correct" in lowered


def _may_lead(text: str) -> bool:
    """False when `_LEADING` cannot match: the text starts with a digit, or with two letters or
    digits (a lone letter is followed by punctuation, a space or the end)."""
    return not (text[:1].isdigit() or (len(text) > 1 and text[:2].isalnum()))


def _plain(text: str) -> bool:
    """ASCII letters, digits and spaces only (most answers): `_THOUSANDS` and `_PUNCT` cannot
    match."""
    return text.isascii() and text.replace(" ", "").isalnum()


def _levenshtein(a: str, b: str) -> int:
    """Edits (insertions, deletions, substitutions) that turn ``a`` into ``b``."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def _mcq_any(prediction: str, answer: Answer, choices: Mapping[str, str]) -> float:
    # `mcq` for each reference letter, with the choice extracted once
    choice = extract_choice(prediction, choices)
    answers = (answer,) if isinstance(answer, str) else answer
    return 1.0 if any(_is_answer(choice, one) for one in answers) else 0.0


_SCORERS: dict[str, Callable[[str, Answer, Mapping[str, str]], float]] = {
    "mcq": _mcq_any,
    "exact": lambda prediction, answer, choices: exact(prediction, answer),
    "vqa": lambda prediction, answer, choices: vqa(prediction, answer),
    "anls": lambda prediction, answer, choices: anls(prediction, answer),
}
