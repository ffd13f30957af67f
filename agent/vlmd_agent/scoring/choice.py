"""Which option a multiple-choice answer picks: MMBench's official extraction, with fixes.

Source: VLMEvalKit's ``can_infer`` (``vlmeval/utils/matching_util.py`` at e8e78f05, 2026),
which MMBench, SEED, AI2D, ScienceQA and the other multiple-choice sets of VLMEvalKit use
before they ask a judge model. In order:

1. Refusals (`REFUSALS`) pick no option: the answer is wrong.
2. Option letters: after ``.()[],:;!*#{}`` become spaces, the answer is split into words; when
   exactly one option letter is a word, and its first occurrence is among the last four words,
   it is the pick. When no letter is and ``Z`` is a word, no option is picked.
3. ``answer is X`` (``correct answer is **X**``...) picks X.
4. Option texts: when the answer is at most twice as long as all option texts together and
   exactly one option's text occurs in it (ignoring case), that option.
5. Otherwise the answer is undecided: VLMEvalKit asks its judge, and without one scores 0.

vlmd departs from it where it misreads real answers (`DEVIATIONS`); tests/agreement/mcq.jsonl
measures the agreement, case by case. An undecided answer is never guessed: it scores 0 and is
reported as unparsed, unless a judge (`vlmd_agent.evaluate.judge`) decides it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass

REFUSALS = ("Sorry, I can't help with images of people yet.", "I can't process this file.",
            "I'm sorry, but without the image provided", "Cannot determine the answer")
"""VLMEvalKit's refusal phrases: an answer holding one picks no option (its "Z")."""
LAST_WORDS = 4
"""A lone option letter counts when it first occurs among the answer's last four words
(VLMEvalKit's ``splits.index(ch) > len(splits) - 5``)."""

DEVIATIONS = {
    "think": "reasoning inside <think>...</think> (or before a lone </think>) is removed first",
    "negation": "a letter after a negation ('not A', 'neither A nor B', '不是A', 'A is wrong') "
                "is not a pick",
    "glued": "letters glued to CJK text or to any punctuation ('答案是B', '<answer>B</answer>', "
             "'B-') count as words; full-width forms read as ASCII",
    "lowercase": "a lowercase letter alone ('b', 'b)') or right after 'answer:' picks that option",
    "leading": "a letter opening the answer before punctuation or a line break ('B. because "
               "...') picks it even when a long explanation follows",
    "article": "'A' or 'I' followed by a lowercase word ('A red circle') is a word, not a letter",
    "answer-is": "'answer is X' needs X to stand alone ('answer is Blue' names no letter; "
                 "'answer is a cat' names no option) and reads any option letter, not only A-D",
}
"""Where vlmd reads an answer differently from VLMEvalKit, and why (keys name the rule)."""

# letters, digits and apostrophes that are not CJK: the characters a word is made of
_WORD = r"[^\W_\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff]"
_WORDS = re.compile(rf"{_WORD}+(?:'{_WORD}+)*")
_THINK = re.compile(r"<(think|thinking)>.*?(?:</\1>|\Z)", re.IGNORECASE | re.DOTALL)
_THINK_END = re.compile(r"\A.*?</(?:think|thinking)>", re.IGNORECASE | re.DOTALL)
_NEGATION = (r"(?:\b(?:not|never|no|neither|nor|rather\s+than|instead\s+of|except|excluding|"
             r"other\s+than)|n't|不是|并非|而非|不选|排除|除了)")
_OPEN, _CLOSE = "(\\[\"'\u201c\u2018", ")\\]\"'\u201d\u2019"  # brackets and quotes around a letter
_REF = rf"\s*(?:(?:option|choice)\s*)?[{_OPEN}]?\s*((?-i:[A-Z]))\s*[{_CLOSE}]?(?!{_WORD})"
_NEGATED = re.compile(rf"{_NEGATION}{_REF}((?:\s*(?:\bor\b|\bnor\b|\band\b|或|和|、){_REF})*)",
                      re.IGNORECASE)
_REF_IN_CHAIN = re.compile(_REF, re.IGNORECASE)
_WRONG_AFTER = re.compile(rf"(?<!{_WORD})([A-Z])\s*[)\]]?\s+(?:is|was)\s*(?:not\b|n't|wrong\b|"
                          r"incorrect\b)")
_ANSWER_IS = re.compile(rf"(?:correct\s+)?answer\s+is\s+\**([A-Za-z])\**(?!{_WORD})",
                        re.IGNORECASE)
_ANSWER_LOWER = re.compile(r"answer\s*(?:is|:)\s*[(\[]?([a-z])[)\]]?\s*[.!]?\s*\Z", re.IGNORECASE)
_LEADING = re.compile(r"[\s*#`_]*[(\[]?\s*([A-Za-z])(?:[)\].:,]|\s*\n|\s*\Z|\s+-)")
_ALONE_LOWER = re.compile(r"\W*([a-z])\W*\Z")
_NOT_A_NOUN = "is|was|or|and|would|should|seems|looks|fits|matches|because"
_WORD_AFTER = re.compile(rf"\s+(?!(?:{_NOT_A_NOUN})\b)[a-z]")


@dataclass(frozen=True)
class Reading:
    """What an answer picks: ``letter`` (an option letter, or None for no option) when
    ``decided``; ``decided`` is False when no rule could tell (unparsed)."""

    letter: str | None
    decided: bool


UNDECIDED = Reading(None, False)


def read_choice(prediction: str, choices: Mapping[str, str]) -> Reading:
    """Read which of `choices` (letter -> option text) `prediction` picks (module docstring)."""
    if not choices:
        return UNDECIDED
    said = strip_thinking(prediction)
    if any(phrase in said for phrase in REFUSALS):
        return Reading(None, True)
    kept = _without_negated(unicodedata.normalize("NFKC", said))
    words = list(_WORDS.finditer(kept))
    picked = [m for m in words if m.group() in choices and not _article(kept, m)]
    letters = {m.group() for m in picked}
    if len(letters) == 1:
        first = next(i for i, m in enumerate(words) if m in picked)
        if first >= len(words) - LAST_WORDS:
            return Reading(picked[0].group(), True)
    elif not letters and "Z" not in choices and any(m.group() == "Z" for m in words):
        return Reading(None, True)
    for match in _ANSWER_IS.finditer(kept):
        letter = match.group(1)
        if letter.upper() in choices and (letter.isupper() or _ends(kept, match.end(1))):
            return Reading(letter.upper(), True)
    # a letter vlmd reads where VLMEvalKit does not, unless the answer names another one
    for found in (_LEADING.match(kept), _ANSWER_LOWER.search(kept), _ALONE_LOWER.match(kept)):
        if found and (letter := found.group(1).upper()) in choices and letters <= {letter} and (
                found.group(1).isupper() or _ends(kept, found.end(1))):
            return Reading(letter, True)
    return _by_text(said, choices)


def extract_choice(prediction: str, choices: Mapping[str, str]) -> str | None:
    """The option letter `prediction` picks, or None (no option, or undecided)."""
    return read_choice(prediction, choices).letter


def strip_thinking(text: str) -> str:
    """`text` without its reasoning: ``<think>...</think>`` blocks (an unclosed one runs to the
    end), and everything before a ``</think>`` whose opening tag the server dropped."""
    if "think" not in text.lower():
        return text
    return _THINK_END.sub("", _THINK.sub("", text))


def _without_negated(text: str) -> str:
    """`text` with every negated option letter blanked out (positions kept)."""
    spans = []
    for match in _NEGATED.finditer(text):
        spans.append(match.span(1))
        chain_start = match.start(2)
        spans += [(chain_start + m.start(1), chain_start + m.end(1))
                  for m in _REF_IN_CHAIN.finditer(match.group(2))]
    spans += [m.span(1) for m in _WRONG_AFTER.finditer(text)]
    if not spans:
        return text
    chars = list(text)
    for start, end in spans:
        chars[start:end] = " " * (end - start)
    return "".join(chars)


def _article(text: str, word: re.Match[str]) -> bool:
    """'A' or 'I' used as a word: followed by a lowercase word other than is, or, seems..."""
    return word.group() in ("A", "I") and _WORD_AFTER.match(text, word.end()) is not None


def _ends(text: str, position: int) -> bool:
    """Nothing but punctuation and spaces from `position` to the end of the line or text."""
    rest = text[position:].split("\n", 1)[0]
    return not any(ch.isalnum() for ch in rest)


def _by_text(text: str, choices: Mapping[str, str]) -> Reading:
    """VLMEvalKit's ``can_infer_text``: the one option whose text the answer contains."""
    answer = text.lower()
    if len(answer) > 2 * sum(len(option) for option in choices.values()):
        return UNDECIDED
    found = [letter for letter, option in choices.items() if option.lower() in answer]
    return Reading(found[0], True) if len(found) == 1 else UNDECIDED
