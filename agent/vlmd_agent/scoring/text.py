"""Scorers of free text: exact match, ANLS (DocVQA, InfographicVQA) and ChartQA's relaxed
accuracy, with the normalisation vlmd's own matching uses.

Each is a pure function of the prediction and the reference answer(s), returning a score in
[0, 1]; the sources of their definitions are in their docstrings.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

NUMBER_WORDS = {word: str(number) for number, word in enumerate((
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen", "twenty"))}
ARTICLES = frozenset({"a", "an", "the"})
RELAXED_TOLERANCE = 0.05
ANLS_THRESHOLD = 0.5
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3})")
_PUNCT = re.compile(r"(?!(?<=\d)\.(?=\d))[^\w\s]|_")


def normalise(text: str) -> str:
    """vlmd's normalisation for `exact` and for matching option texts: lowercase; drop
    apostrophes and thousands separators; every other punctuation mark (but a decimal point)
    becomes a space; the articles a/an/the go; number words up to twenty become digits;
    whitespace collapses. (VQA accuracy has its own, the official one: `vqa.normalise`.)"""
    text = text.lower().replace("'", "").replace("\u2019", "")
    if not _plain(text):
        text = _PUNCT.sub(" ", _THOUSANDS.sub("", text))
    return " ".join([NUMBER_WORDS.get(word, word) for word in text.split()
                     if word not in ARTICLES])


# Reference answers recur item after item: normalise each text once.
normalised = functools.lru_cache(maxsize=4096)(normalise)


def _plain(text: str) -> bool:
    """ASCII letters, digits and spaces only (most answers): `_THOUSANDS` and `_PUNCT` cannot
    match."""
    return text.isascii() and text.replace(" ", "").isalnum()


def _references(answers: str | Sequence[str]) -> Sequence[str]:
    return [answers] if isinstance(answers, str) else answers


def exact(prediction: str, answer: str | Sequence[str]) -> float:
    """1.0 when the `normalise`d prediction equals the normalised answer (or any of several)."""
    said = normalise(prediction)
    return 1.0 if any(normalised(a) == said for a in _references(answer)) else 0.0


def anls(prediction: str, answers: str | Sequence[str], threshold: float = ANLS_THRESHOLD
         ) -> float:
    """ANLS as the ST-VQA and DocVQA papers define it (Biten et al. 2019, eq. 1): the best over
    references of ``1 - NL`` when ``NL < threshold``, else 0, where NL is the Levenshtein
    distance over the longer length, both texts lowercased with whitespace collapsed.

    The official RRC evaluation script (and lmms-eval's and VLMEvalKit's copies of it) differs
    in two ways: it zeroes only ``1 - NL < threshold``, so ``NL == 0.5`` scores 0.5 there and 0
    here ("abcd" vs "abxy"); and it divides by the longer length of the texts *before*
    whitespace is collapsed and stripped, so surrounding or doubled spaces make its NL smaller.
    """
    said = " ".join(prediction.lower().split())
    best = 0.0
    for reference in _references(answers):
        ref = " ".join(reference.lower().split())
        longest = max(len(said), len(ref))
        distance = levenshtein(said, ref) / longest if longest else 0.0
        if distance < threshold:
            best = max(best, 1.0 - distance)
    return best


def relaxed(prediction: str, answers: str | Sequence[str],
            tolerance: float = RELAXED_TOLERANCE) -> float:
    """ChartQA's relaxed accuracy (Masry et al. 2022, section 5.1, after Methani et al. 2020),
    as pix2struct's ``relaxed_correctness`` implements it and lmms-eval and VLMEvalKit copy it:
    1.0 when any reference accepts the prediction (stripped of surrounding spaces, as
    VLMEvalKit does). A reference accepts it when

    - both read as numbers (Python's ``float``, after turning a trailing ``%`` into a division
      by 100: ``45%`` is 0.45, so ``45%`` and ``45`` differ) and the reference is not zero:
      ``|prediction - reference| / |reference| <= tolerance`` (5%: ``45.3`` matches ``45``);
    - otherwise (words, or a reference of 0): the two are equal ignoring case.
    """
    said = prediction.strip()
    said_number = _number(said)
    for reference in _references(answers):
        target = _number(reference)
        if said_number is not None and target:  # a zero reference compares as text
            if abs(said_number - target) / abs(target) <= tolerance:
                return 1.0
        elif said.lower() == reference.lower():
            return 1.0
    return 0.0


def _number(text: str) -> float | None:
    try:
        return float(text.rstrip("%")) / 100.0 if text.endswith("%") else float(text)
    except ValueError:
        return None


def levenshtein(a: str, b: str) -> int:
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
