"""Column schemas of the hub's benchmark files, and the ``--columns`` override.

A parquet or arrow file is recognised by its column names (`detect`, in `SCHEMAS` order) and
each row mapped to vlmd's fields (`Schema.fields`: field -> the columns it may come from). The
built-in schemas follow the files that lmms-lab and the benchmarks' authors publish:

- mmbench (mcq): index, question, hint, A..E, answer, category, l2-category (or L2-category),
  split, image;
- mmmu (mcq; open questions: exact): id, question, options (a list, or its text), answer,
  question_type, image_1..image_7; the category is the subject in the id;
- scienceqa (mcq): question, choices, answer (the option's index), hint, subject, category, image;
- ai2d (mcq): question, options, answer (the option's index), image;
- textvqa (vqa): question_id, question, answers, image;
- docvqa (anls): questionId, question, answers, question_types or docId, image;
- infovqa (anls): questionId, question, answers, answer_type, image;
- chartqa (relaxed): question, answer, type, image (lmms-lab), or query, label,
  human_or_machine, image (HuggingFaceM4);
- generic (the item's scorer): id or index, question, answer, image or images, choices or A..Z.

Each sets its items' prompt family (`prompts`) to its own name. Rows without an id column are
numbered from 0 in file order.
``--columns field=column,...`` takes a field from a column of another name (``images=a+b``:
several columns), and ``schema=NAME`` forces a schema.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

FIELDS = ("id", "question", "answer", "image", "images", "choices", "hint", "category",
          "l2_category", "split", "scorer")
Adapt = Callable[[dict[str, Any], Mapping[str, Any]], None]


@dataclass(frozen=True)
class Schema:
    """One file layout: the columns that identify it, where each field comes from, and the
    scorer and prompt family of its items. ``answer_index``: the answer is the right option's
    position (0 = A). ``adapt`` fixes up a row's fields (given the raw row)."""

    name: str
    needs: frozenset[str]
    fields: Mapping[str, tuple[str, ...]]
    scorer: str | None = None
    family: str | None = None
    answer_index: bool = False
    any_of: frozenset[str] = frozenset()
    adapt: Adapt | None = field(default=None, compare=False)

    def matches(self, columns: Collection[str]) -> bool:
        """Whether a file with these columns has this layout."""
        return self.needs <= set(columns) and (not self.any_of or bool(self.any_of & set(columns)))


def _mmmu(fields: dict[str, Any], row: Mapping[str, Any]) -> None:
    # open questions have no options: they are matched as text
    if row.get("question_type") == "open" or not fields.get("choices"):
        fields["scorer"], fields["choices"] = "exact", {}
    subject = re.fullmatch(r"(?:dev|validation|test)_(.+)_\d+", str(row.get("id", "")))
    if subject:
        fields["category"] = subject.group(1)


def _chartqa_m4(fields: dict[str, Any], row: Mapping[str, Any]) -> None:
    kind = row.get("human_or_machine")
    if kind in (0, 1):
        fields["category"] = ("human", "augmented")[kind]


def _first_type(fields: dict[str, Any], row: Mapping[str, Any]) -> None:
    if isinstance(fields.get("category"), list):
        fields["category"] = fields["category"][0] if fields["category"] else None


_IMAGES = tuple(f"image_{n}" for n in range(1, 8))
SCHEMAS = (
    Schema("mmmu", frozenset({"id", "question", "options", "answer", "image_1"}),
           {"id": ("id",), "question": ("question",), "answer": ("answer",), "images": _IMAGES,
            "choices": ("options",)}, "mcq", "mmmu", adapt=_mmmu),
    Schema("mmbench", frozenset({"index", "question", "answer", "A", "B", "image"}),
           {"id": ("index",), "question": ("question",), "answer": ("answer",),
            "images": ("image",), "hint": ("hint",), "category": ("category",),
            "l2_category": ("l2-category", "L2-category", "l2_category"), "split": ("split",)},
           "mcq", "mmbench"),
    Schema("scienceqa", frozenset({"question", "choices", "answer", "hint", "subject", "image"}),
           {"question": ("question",), "answer": ("answer",), "images": ("image",),
            "choices": ("choices",), "hint": ("hint",), "category": ("category",),
            "l2_category": ("subject",)}, "mcq", "scienceqa", answer_index=True),
    Schema("ai2d", frozenset({"question", "options", "answer", "image"}),
           {"question": ("question",), "answer": ("answer",), "images": ("image",),
            "choices": ("options",)}, "mcq", "ai2d", answer_index=True),
    Schema("textvqa", frozenset({"question_id", "question", "answers", "image"}),
           {"id": ("question_id",), "question": ("question",), "answer": ("answers",),
            "images": ("image",)}, "vqa", "textvqa"),
    Schema("docvqa", frozenset({"questionId", "question", "answers", "image"}),
           {"id": ("questionId",), "question": ("question",), "answer": ("answers",),
            "images": ("image",), "category": ("question_types",)}, "anls", "docvqa",
           any_of=frozenset({"question_types", "docId"}), adapt=_first_type),
    Schema("infovqa", frozenset({"questionId", "question", "answers", "image"}),
           {"id": ("questionId",), "question": ("question",), "answer": ("answers",),
            "images": ("image",), "category": ("answer_type",)}, "anls", "infovqa",
           adapt=_first_type),
    Schema("chartqa", frozenset({"question", "answer", "type", "image"}),
           {"question": ("question",), "answer": ("answer",), "images": ("image",),
            "category": ("type",)}, "relaxed", "chartqa"),
    Schema("chartqa", frozenset({"query", "label", "image"}),
           {"question": ("query",), "answer": ("label",), "images": ("image",)},
           "relaxed", "chartqa", adapt=_chartqa_m4),
    Schema("generic", frozenset({"question", "answer"}),
           {"id": ("id", "index"), "question": ("question",), "answer": ("answer",),
            "images": ("images", "image"), "choices": ("choices",), "hint": ("hint",),
            "category": ("category",), "l2_category": ("l2_category", "l2-category"),
            "split": ("split",), "scorer": ("scorer",)},
           any_of=frozenset({"image", "images"})),
)
NAMES = tuple(dict.fromkeys(s.name for s in SCHEMAS))


def detect(columns: Collection[str], forced: str | None = None) -> Schema | None:
    """The schema of a file with these columns (or the one named `forced`); None if none fits."""
    for schema in SCHEMAS:
        if (forced is None or schema.name == forced) and schema.matches(columns):
            return schema
    return None


def parse_columns(spec: str | None) -> dict[str, str]:
    """``field=column,...`` as a dict; ValueError naming the bad part. ``schema=NAME`` is kept
    under ``schema``."""
    found: dict[str, str] = {}
    for part in (spec or "").split(","):
        if not part.strip():
            continue
        name, eq, column = (p.strip() for p in part.partition("="))
        if not eq or not column:
            raise ValueError(f"{part.strip()!r} is not field=column")
        if name == "schema":
            if column not in NAMES:
                raise ValueError(f"unknown schema {column!r} (known: "
                                 f"{', '.join(NAMES)})")
        elif name not in FIELDS:
            raise ValueError(f"unknown field {name!r} (known: {', '.join(FIELDS)}, "
                             "schema)")
        found[name] = column
    return found
