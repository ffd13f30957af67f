"""Prompts as the reference harnesses write them, so scores compare with published ones.

Each benchmark family has lmms-eval's default prompt (its ``doc_to_text`` with the default
``lmms_eval_specific_kwargs``), one for items with options and one without:

- ``mmbench``: ``{hint} {question} There are several options:`` and the options, then
  "Answer with the option's letter from the given choices directly." (lmms-eval's MMBench; the
  hint and its space only when there is one).
- ``mmmu``: the question, the options, a blank line, the same instruction; open questions
  "Answer the question using a single word or phrase." The question keeps its ``<image 1>``
  tokens.
- ``scienceqa``: ``Context: {hint}`` (only with a hint), the question, the options, the
  instruction. ``ai2d``: the question, the options, the instruction.
- ``chartqa``: the question, then "Answer the question with a single word."
- ``docvqa``, ``infovqa``, ``textvqa``, ``short``: the question, then "Answer the question using
  a single word or phrase." (lmms-eval capitalises TextVQA's first letter; vlmd does not.)

An item without a family gets the one its scorer suggests (`DEFAULTS`: MMBench's for ``mcq``).
``--prompt-template`` overrides all of them: a family's name, or a template of your own with
``{question}`` and optionally ``{options}`` (``A. red`` lines) and ``{hint}``. A template line
whose fields are all empty is left out; one where some are loses its surrounding spaces.
"""

from __future__ import annotations

import string
from collections.abc import Mapping

MCQ_INSTRUCTION = "Answer with the option's letter from the given choices directly."
SHORT_INSTRUCTION = "Answer the question using a single word or phrase."
_SHORT = f"{{question}}\n{SHORT_INSTRUCTION}"

FAMILIES: Mapping[str, tuple[str | None, str | None]] = {
    "mmbench": (f"{{hint}} {{question}} There are several options:\n{{options}}\n\n"
                f"{MCQ_INSTRUCTION}", None),
    "mmmu": (f"{{question}}\n{{options}}\n\n{MCQ_INSTRUCTION}",
             f"{{question}}\n\n{SHORT_INSTRUCTION}"),
    "scienceqa": (f"Context: {{hint}}\n{{question}}\n{{options}}\n{MCQ_INSTRUCTION}", None),
    "ai2d": (f"{{question}}\n{{options}}\n{MCQ_INSTRUCTION}", None),
    "chartqa": (None, "{question}\nAnswer the question with a single word."),
    "docvqa": (None, _SHORT),
    "infovqa": (None, _SHORT),
    "textvqa": (None, _SHORT),
    "short": (None, _SHORT),
}
"""Family -> (template for items with options, template for items without); None: not used."""
DEFAULTS = {"mcq": "mmbench", "relaxed": "chartqa", "anls": "docvqa", "vqa": "short",
            "exact": "short"}
"""The family an item without one gets, by its scorer."""
FIELDS = frozenset({"question", "options", "hint"})


def check(template: str) -> str:
    """`template` if it is a family's name or a usable template; ValueError saying why not."""
    if template in FAMILIES:
        return template
    if "{" not in template:
        raise ValueError(f"{template!r} is neither a template family ({', '.join(FAMILIES)}) "
                         "nor a template with {question}")
    try:
        names = set(_fields(template))
    except ValueError as e:
        raise ValueError(f"bad template: {e}") from None
    unknown = sorted(names - FIELDS)
    if unknown:
        raise ValueError(f"bad template: unknown field {{{unknown[0]}}} (known: {{question}}, "
                         "{options}, {hint})")
    if "question" not in names:
        raise ValueError("bad template: it needs {question}")
    return template


def render(template: str | None, *, family: str | None, scorer: str, question: str,
           choices: Mapping[str, str], hint: str | None) -> str:
    """The prompt for one item: `template` (a family or a template; None: the item's `family`,
    else its scorer's default family), filled in."""
    chosen = template or family or DEFAULTS.get(scorer, "short")
    if chosen in FAMILIES:
        with_options, without = FAMILIES[chosen]
        fallback = FAMILIES[DEFAULTS.get(scorer, "short")]
        chosen = (with_options or fallback[0] if choices else without or fallback[1]) or _SHORT
    options = "\n".join(f"{letter}. {text}" for letter, text in choices.items())
    values = {"question": question, "options": options, "hint": hint or ""}
    lines = []
    for line in chosen.split("\n"):
        used = _fields(line)
        filled = line.format_map(values)
        if used and all(not values[name] for name in used):
            continue
        lines.append(filled.strip() if any(not values[name] for name in used) else filled)
    return "\n".join(lines)


def _fields(text: str) -> list[str]:
    """The names of the ``{fields}`` in `text` (``{{`` is a literal brace)."""
    return [name for _, name, _, _ in string.Formatter().parse(text) if name is not None]
