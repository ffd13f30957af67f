"""Scorers, as literal tables of (prediction, reference, expected score); tests/test_agreement.py
holds the hundreds of cases measured against the references."""

from __future__ import annotations

import pytest

from vlmd_agent.scoring import (
    NO_OPTION,
    Grade,
    anls,
    exact,
    extract_choice,
    grade,
    mcq,
    normalise,
    read_choice,
    relaxed,
    score,
    strip_thinking,
    vqa,
)
from vlmd_agent.scoring.vqa import process_digit_article, process_punctuation

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
    ("C\n\nThe shape is green, not red (B).", None),
    ("B. It is red because it reflects long wavelengths of light", "B"),
    ("<think>A or C? Red is B.</think>B", "B"),
    ("<think>maybe A", None),
    ("The answer is not A, it is B", "B"),
    ("neither A nor B, it's C", "C"),
    ("答案是B", "B"),
    ("不是A\uff0c是B", "B"),
    ("<answer>C</answer>", "C"),
    ("\uff23", "C"),
    ("red", "B"),
    ("Red.", "B"),
    ("dark red", None),  # "red" is in it too: VLMEvalKit leaves it to its judge
    ("The shape is dark red.", None),
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
    ("2", TEN, 1.0),  # five humans said 2 or two: any nine hold at least three
    ("Two.", TEN, 1.0),
    ("3", TEN, 0.9),  # three humans: leaving one of them out leaves two (2/3), 3 times in 10
    ("4", TEN, 0.3),  # one human: 1/3 in the nine subsets that keep them
    ("Many", TEN, 0.3),
    ("5", TEN, 0.0),
    ("2", ("2",) * 3 + ("3",) * 7, 0.9),
    ("2", ("2",) * 4 + ("3",) * 6, 1.0),
    ("two", ("two",) * 10, 1.0),
    ("Two", ("two",) * 10, 0.0),  # all humans agree: nothing is normalised
    ("2", ("two",) * 10, 0.0),
    ("50%", ("50",) * 5 + ("50%",) * 5, 1.0),
    ("50", ("50%",) * 3 + ("x",) * 7, 0.0),  # % is not punctuation to the script
    ("u.s.", ("us",) * 3 + ("usa",) * 7, 0.9),
    ("dont", ("don't",) * 3 + ("no",) * 7, 0.9),
    ("none", ("0",) * 3 + ("1",) * 7, 0.9),
    ("a dog", ("dog",) * 3 + ("cat",) * 7, 0.9),
    ("1,000", ("1000",) * 3 + ("x",) * 7, 0.9),
    ("red/blue", ("red blue",) * 3 + ("x",) * 7, 0.9),
    ("yes", ("yes", "yes"), 1 / 3),
    ("yes", ("yes", "no"), 1 / 6),
    ("yes", "yes", 0.0),  # one human answer: leaving it out leaves none
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
    ("vqa", ("2", "2", "two"), None, "2", 2 / 3),
    ("relaxed", "45", None, "45.3", 1.0),
    ("anls", ("invoice",), None, "invoce", 1 - 1 / 7),
])
def test_score_dispatches_on_the_scorer_named(scorer: str, answer: str | tuple[str, ...],
                                              choices: dict[str, str] | None, prediction: str,
                                              expected: float) -> None:
    assert score(scorer, prediction, answer, choices) == pytest.approx(expected)


def test_score_rejects_an_unknown_scorer() -> None:
    with pytest.raises(ValueError, match="unknown scorer 'bleu'"):
        score("bleu", "x", "x")


@pytest.mark.parametrize(("text", "expected"), [
    ("1,000", "1000"),
    ("red, blue", "red blue"),
    ("red,blue", "red blue"),
    ("red/blue", "red blue"),
    ("red / blue", "red  blue"),
    ("t-shirt", "t shirt"),
    ("(2)", " 2 "),
    ("u.s.", "us"),
    ("2.5", "2.5"),
    ("5.", "5"),
    ("50%", "50%"),
    ("5:40", "5:40"),
    ("it's", "it's"),
    ("1,000 (approx)", "1000 approx"),
    ("a." * 40, "a" * 32 + "a." * 8),  # the script's count=re.UNICODE (32) removals
])
def test_vqa_process_punctuation(text: str, expected: str) -> None:
    assert process_punctuation(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("Two Dogs", "2 dogs"),
    ("none", "0"),
    ("ten", "10"),
    ("eleven", "eleven"),
    ("The Cat", "cat"),
    ("an  apple", "apple"),
    ("dont", "don't"),
    ("Im", "im"),  # the script's capitalised keys never match a lowercased word
    ("youre  right", "you're right"),
])
def test_vqa_process_digit_article(text: str, expected: str) -> None:
    assert process_digit_article(text) == expected


@pytest.mark.parametrize(("prediction", "answers", "expected"), [
    ("45", "45", 1.0),
    ("45.3", "45", 1.0),
    ("47.25", "45", 1.0),  # exactly 5%
    ("47.26", "45", 0.0),
    ("42.75", "45", 1.0),
    ("45%", "0.45", 1.0),
    ("45%", "45", 0.0),
    ("0.45", "45%", 1.0),
    ("4.5e1", "45", 1.0),
    (" 45 ", "45", 1.0),
    ("0", "0", 1.0),  # a zero reference compares as text
    ("0.0", "0", 0.0),
    ("1,000", "1000", 0.0),  # not a number to Python's float
    ("Yes", "yes", 1.0),
    ("yes.", "yes", 0.0),
    ("dark blue", "blue", 0.0),
    ("46", ("45", "50"), 1.0),
    ("forty-five", "45", 0.0),
])
def test_relaxed(prediction: str, answers: str | tuple[str, ...], expected: float) -> None:
    assert relaxed(prediction, answers) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("<think>A? B?</think>C", "C"),
    ("<think>unfinished A", ""),
    ("A or B. </think>\nC", "\nC"),
    ("<Thinking>x</Thinking>D", "D"),
    ("No reasoning: B", "No reasoning: B"),
])
def test_strip_thinking(text: str, expected: str) -> None:
    assert strip_thinking(text) == expected


@pytest.mark.parametrize(("prediction", "verdict", "expected"), [
    ("B", None, Grade(1.0, True, "B")),
    ("C", None, Grade(0.0, True, "C")),
    ("hmm", None, Grade(0.0, False, None)),  # undecided: 0 and unparsed, never a guess
    ("hmm", "B", Grade(1.0, True, "B", judged=True)),
    ("hmm", "C", Grade(0.0, True, "C", judged=True)),
    ("hmm", NO_OPTION, Grade(0.0, True, None, judged=True)),
    ("C", "B", Grade(0.0, True, "C")),  # the rules decided: a verdict does not overrule them
    ("Sorry, I can't help with images of people yet.", None, Grade(0.0, True, None)),
    ("Z", None, Grade(0.0, True, None)),
])
def test_grade_mcq_says_whether_the_answer_was_read_and_by_whom(
        prediction: str, verdict: str | None, expected: Grade) -> None:
    assert grade("mcq", prediction, "B", CHOICES, verdict=verdict) == expected


def test_read_choice_tells_undecided_from_no_option() -> None:
    assert read_choice("A or B", CHOICES).decided is False
    assert read_choice("Cannot determine the answer", CHOICES).decided is True
    assert read_choice("B", {}).decided is False
