"""VQA accuracy exactly as the official evaluation script computes it.

Source: ``PythonEvaluationTools/vqaEvaluation/vqaEval.py`` of github.com/GT-Vision-Lab/VQA at
its last change (a013f00, 2021-03-11, "Fixed processing answers bug"), the script the VQA v2,
VizWiz and TextVQA leaderboards descend from. Per question, given the model's answer and the
human answers (ten in VQA v2):

1. Every answer has newlines and tabs turned into spaces and its ends stripped.
2. Only when the human answers are not all the same string are they and the model's answer
   normalised (`normalise`: `process_punctuation`, then `process_digit_article`). When all
   humans agree, nothing is normalised: ``"Two"`` does not match ten ``"two"``.
3. Accuracy is the mean, over each human answer left out in turn, of
   ``min(1, (number of the other answers equal to the model's) / 3)``: with ten answers, 1, 2
   or 3 matching humans give 0.3, 0.6 and 0.9, not 1/3, 2/3 and 1. (The script removes answers
   by value, but each carries a distinct ``answer_id``, so it leaves out one position.) One
   human answer therefore always scores 0; two identical ones 1/3.

Differences elsewhere, for the record: lmms-eval's TextVQA and VLMEvalKit normalise the model's
answer and every human answer always (there is no special case), and VLMEvalKit's punctuation
list is the same as this one. The script ran under Python 2, where ``\\d`` in its patterns
matches ASCII digits only; `[0-9]` keeps that here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

PUNCTUATION = ";/[]\"{}()=+\\_-><@`,?!"
"""The script's ``punct`` list, in its order (apostrophes, colons, % and periods are not in it:
``50%`` stays ``50%``, ``5:40`` stays ``5:40``)."""
NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
           "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
"""The script's ``manualMap``: number words up to ten, and "none", become digits."""
ARTICLES = frozenset({"a", "an", "the"})
PERIODS_REMOVED = 32
"""The script calls ``periodStrip.sub("", text, re.UNICODE)``, whose third argument is
``count``: re.UNICODE is 32, so only the first 32 periods that are not followed by a digit go."""
_COMMA_BETWEEN_DIGITS = re.compile(r"[0-9],[0-9]")
# The script's periodStrip is "(?!<=\d)(\.)(?!\d)"; its first group is a lookahead for "<=",
# which never follows a period, so it means: a period not followed by a digit.
_PERIOD = re.compile(r"\.(?![0-9])")


def _contractions(table: str) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in table.split())


# The script's ``contractions`` map (word without apostrophes -> with), applied word by word
# after lowercasing. Its four capitalised keys (Id've, I'dve, Im, Ive) can never match a
# lowercased word and its two identity entries (let's, she's) change nothing: both are left out.
CONTRACTIONS = _contractions("""
    aint=ain't arent=aren't cant=can't couldve=could've couldnt=couldn't couldn'tve=couldn't've
    couldnt've=couldn't've didnt=didn't doesnt=doesn't dont=don't hadnt=hadn't
    hadnt've=hadn't've hadn'tve=hadn't've hasnt=hasn't havent=haven't hed=he'd hed've=he'd've
    he'dve=he'd've hes=he's howd=how'd howll=how'll hows=how's isnt=isn't itd=it'd
    itd've=it'd've it'dve=it'd've itll=it'll maam=ma'am mightnt=mightn't mightnt've=mightn't've
    mightn'tve=mightn't've mightve=might've mustnt=mustn't mustve=must've neednt=needn't
    notve=not've oclock=o'clock oughtnt=oughtn't ow's'at='ow's'at 'ows'at='ow's'at
    'ow'sat='ow's'at shant=shan't shed've=she'd've she'dve=she'd've shouldve=should've
    shouldnt=shouldn't shouldnt've=shouldn't've shouldn'tve=shouldn't've somebody'd=somebodyd
    somebodyd've=somebody'd've somebody'dve=somebody'd've somebodyll=somebody'll
    somebodys=somebody's someoned=someone'd someoned've=someone'd've someone'dve=someone'd've
    someonell=someone'll someones=someone's somethingd=something'd somethingd've=something'd've
    something'dve=something'd've somethingll=something'll thats=that's thered=there'd
    thered've=there'd've there'dve=there'd've therere=there're theres=there's theyd=they'd
    theyd've=they'd've they'dve=they'd've theyll=they'll theyre=they're theyve=they've
    twas='twas wasnt=wasn't wed've=we'd've we'dve=we'd've weve=we've werent=weren't
    whatll=what'll whatre=what're whats=what's whatve=what've whens=when's whered=where'd
    wheres=where's whereve=where've whod=who'd whod've=who'd've who'dve=who'd've wholl=who'll
    whos=who's whove=who've whyll=why'll whyre=why're whys=why's wont=won't wouldve=would've
    wouldnt=wouldn't wouldnt've=wouldn't've wouldn'tve=wouldn't've yall=y'all yall'll=y'all'll
    y'allll=y'all'll yall'd've=y'all'd've y'alld've=y'all'd've y'all'dve=y'all'd've youd=you'd
    youd've=you'd've you'dve=you'd've youll=you'll youre=you're youve=you've
""")


def process_punctuation(text: str) -> str:
    """The script's ``processPunctuation``.

    Each mark of `PUNCTUATION` is deleted where the text has that mark next to a space, or has
    any comma between two digits (``1,000`` -> ``1000``; then every mark is deleted), and is
    otherwise replaced by a space (``red/blue`` -> ``red blue``). Then the first
    `PERIODS_REMOVED` periods not followed by a digit are deleted (``u.s.`` -> ``us``, ``2.5``
    stays).
    """
    deleting = _COMMA_BETWEEN_DIGITS.search(text) is not None
    table = {ord(mark): "" if deleting or f"{mark} " in text or f" {mark}" in text else " "
             for mark in PUNCTUATION if mark in text}
    return _PERIOD.sub("", text.translate(table) if table else text, count=PERIODS_REMOVED)


def process_digit_article(text: str) -> str:
    """The script's ``processDigitArticle``: lowercase, split on whitespace, number words to
    digits (`NUMBERS`), articles dropped, contractions restored (`CONTRACTIONS`), words joined
    by single spaces."""
    words = [NUMBERS.get(word, word) for word in text.lower().split()]
    return " ".join([CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES])


def normalise(text: str) -> str:
    """An answer as the script compares it when the humans disagree."""
    return process_digit_article(process_punctuation(text))


def _clean(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def vqa(prediction: str, answers: str | Sequence[str]) -> float:
    """VQA accuracy of `prediction` against the human `answers` (see the module docstring)."""
    humans = [_clean(a) for a in ([answers] if isinstance(answers, str) else answers)]
    said = _clean(prediction)
    if len(set(humans)) > 1:
        humans = [normalise(a) for a in humans]
        said = normalise(said)
    if not humans:
        return 0.0
    matching = sum(a == said for a in humans)
    # leaving out a matching answer leaves matching - 1 among the others, any other leaves all
    total = sum(min(1.0, (matching - (a == said)) / 3) for a in humans)
    return total / len(humans)
