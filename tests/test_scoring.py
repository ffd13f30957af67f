"""Scorers, as literal tables of (prediction, reference, expected score)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vlmd_agent import scoring
from vlmd_agent.scoring import anls, exact, extract_choice, mcq, normalise, score, vqa

CHOICES = {"A": "blue", "B": "red", "C": "green", "D": "dark red"}


@pytest.mark.parametrize(("prediction", "expected"), [
    ("B", "B"),
    ("(B)", "B"),
    ("B.", "B"),
    ("B. red", "B"),
    ("b)", "B"),
    ("b", "B"),
    (" C\n", "C"),
    ("[C]", "C"),
    ("C: green", "C"),
    ("The answer is B", "B"),
    ("The answer is (C).", "C"),
    ("Answer: B", "B"),
    ("answer: b", "B"),
    ("Final answer: D", "D"),
    ("The correct option is C, green.", "C"),
    ("**B**", "B"),
    ("`A`", "A"),
    ("<answer>C</answer>", "C"),
    ("Option A is wrong, so the answer is B.", "B"),
    ("C\n\nThe shape is green, not red (B).", "C"),
    ("red", "B"),
    ("Red.", "B"),
    ("dark red", "D"),
    ("The shape is dark red.", "D"),
    ("A red circle", "B"),
    ("A green square.", "C"),
    ("The answer is a green circle.", "C"),
    ("I think C", "C"),
    ("A is correct.", "A"),
    ("I'd say D", "D"),
    ("red or blue", None),
    ("A or B", None),
    ("E", None),
    ("The answer is E", None),
    ("I cannot tell from this image.", None),
    ("", None),
])
def test_extract_choice(prediction: str, expected: str | None) -> None:
    assert extract_choice(prediction, CHOICES) == expected


def test_extract_choice_without_choices_is_none() -> None:
    assert extract_choice("A", {}) is None


@pytest.mark.parametrize(("prediction", "answer", "expected"), [
    ("B", "B", 1.0),
    ("The answer is B.", "B", 1.0),
    ("red", "B", 1.0),
    ("B", "b", 1.0),
    ("C", "B", 0.0),
    ("red or blue", "B", 0.0),
    ("dark red", "B", 0.0),
])
def test_mcq(prediction: str, answer: str, expected: float) -> None:
    assert mcq(prediction, answer, CHOICES) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("  The Cat  ", "cat"),
    ("A dog.", "dog"),
    ("an apple", "apple"),
    ("Two", "2"),
    ("twenty", "20"),
    ("1,000", "1000"),
    ("2.5", "2.5"),
    ("It's red!", "its red"),
    ("t-shirt", "t shirt"),
    ("yes,\tno", "yes no"),
])
def test_normalise(text: str, expected: str) -> None:
    assert normalise(text) == expected


@pytest.mark.parametrize(("prediction", "answer", "expected"), [
    ("cat", "cat", 1.0),
    ("The cat.", "cat", 1.0),
    ("  CAT ", "a cat", 1.0),
    ("two", "2", 1.0),
    ("2", "Two", 1.0),
    ("dogs", "dog", 0.0),
    ("a black cat", "cat", 0.0),
    ("", "cat", 0.0),
    ("cat", ("dog", "cat"), 1.0),
    ("cow", ("dog", "cat"), 0.0),
])
def test_exact(prediction: str, answer: str | tuple[str, ...], expected: float) -> None:
    assert exact(prediction, answer) == expected


TEN = ("2", "2", "2", "two", "3", "3", "4", "2", "3", "many")


@pytest.mark.parametrize(("prediction", "answers", "expected"), [
    ("2", TEN, 1.0),
    ("Two.", TEN, 1.0),
    ("3", TEN, 1.0),
    ("4", TEN, 1 / 3),
    ("Many", TEN, 1 / 3),
    ("5", TEN, 0.0),
    ("yes", ("yes", "yes"), 2 / 3),
    ("yes", "yes", 1 / 3),
])
def test_vqa(prediction: str, answers: tuple[str, ...] | str, expected: float) -> None:
    assert vqa(prediction, answers) == pytest.approx(expected)


@pytest.mark.parametrize(("prediction", "answers", "expected"), [
    ("invoice", ("invoice",), 1.0),
    ("Invoice ", ("invoice",), 1.0),
    ("invoice", "invoice", 1.0),
    ("invoce", ("invoice",), 1 - 1 / 7),
    ("abcd", ("abxy",), 0.0),
    ("abcde", ("abcxy",), 0.6),
    ("total", ("sum", "totals"), 1 - 1 / 6),
    ("", ("invoice",), 0.0),
    ("", ("",), 1.0),
])
def test_anls(prediction: str, answers: tuple[str, ...] | str, expected: float) -> None:
    assert anls(prediction, answers) == pytest.approx(expected)


def test_anls_threshold_is_adjustable() -> None:
    assert anls("abcd", ("abxy",), threshold=0.6) == pytest.approx(0.5)


@pytest.mark.parametrize(("scorer", "answer", "choices", "prediction", "expected"), [
    ("mcq", "B", CHOICES, "The answer is B", 1.0),
    ("mcq", "B", CHOICES, "blue", 0.0),
    ("exact", "cat", None, "The cat", 1.0),
    ("vqa", ("2", "2", "two"), None, "2", 1.0),
    ("anls", ("invoice",), None, "invoce", 1 - 1 / 7),
])
def test_score_dispatches_on_the_scorer_named(scorer: str, answer: str | tuple[str, ...],
                                              choices: dict[str, str] | None, prediction: str,
                                              expected: float) -> None:
    assert score(scorer, prediction, answer, choices) == pytest.approx(expected)


def test_score_rejects_an_unknown_scorer() -> None:
    with pytest.raises(ValueError, match="unknown scorer 'bleu'"):
        score("bleu", "x", "x")


# Characters the scorers' regexes turn on, non-ASCII ones that IGNORECASE folds to ASCII
# (long s, Kelvin sign) and other letters and digits.
TRICKY = st.text(st.sampled_from([*"aAbBcCiIsSkK nN answer correct option is*_`<>/()[].:,-\n\t'",
                                  *"0123456789", "\u017f", "\u212a", "\u00e9", "\u00b2",
                                  "\u00bd", "\u2019", "\u00a0"]), max_size=24)


def _check_cheap_tests(text: str) -> None:
    """Each regex a cheap test skips could not have matched: the scores are the regexes'."""
    lowered = text.lower()
    if scoring._MARKUP.search(text):
        assert scoring._has_markup(text)
    if scoring._ANSWER_PHRASE.search(text):
        assert scoring._may_phrase(text, lowered)
    stripped = text.strip()
    if scoring._LEADING.match(stripped):
        assert scoring._may_lead(stripped)
    if scoring._MENTION.search(text):
        assert lowered != text  # extract_choice looks for a capital only then
    if scoring._THOUSANDS.search(lowered) or scoring._PUNCT.search(lowered):
        assert not scoring._plain(lowered)


@settings(max_examples=3000, deadline=None)
@given(st.one_of(TRICKY, st.text(max_size=24)))
def test_the_cheap_tests_never_skip_a_regex_that_would_match(text: str) -> None:
    _check_cheap_tests(text)


@pytest.mark.parametrize("text", ["an\u017fwer: B", "\u212a", "B", "b)", "(c", "[B]", "B -",
                                  "1,000", "3.5", "", "Ab", "I like", "x_y", "<b>B</b>", "`A`"])
def test_the_cheap_tests_never_skip_a_regex_that_would_match_these(text: str) -> None:
    _check_cheap_tests(text)


def test_the_cheap_tests_do_skip_plain_answers() -> None:
    # what they are for: a one-word answer runs none of the regexes
    assert not scoring._has_markup("triangle") and not scoring._may_phrase("triangle", "triangle")
    assert not scoring._may_lead("triangle") and not scoring._may_lead("3 sides")
    assert scoring._plain("dark red 2") and not scoring._plain("dark-red")
