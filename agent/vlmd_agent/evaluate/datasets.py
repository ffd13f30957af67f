"""Datasets: JSON Lines, VLMEvalKit TSV and hub formats (parquet, ``save_to_disk`` folders),
validated in full before a run starts.

`load` reads every item, decodes every image and checks every field up front, so a bad row is
reported before the model is loaded rather than on item 900. Each problem is a `DatasetError`
naming the file, the line (or row) and the field, e.g. ``data.jsonl:7: image: no such file
'img/7.png'``. Formats: `readers` (JSONL, TSV), `hub` and `schemas` (parquet and arrow, with
the built-in column mappings of MMBench, MMMU, ChartQA, DocVQA, InfoVQA, TextVQA, ScienceQA and
AI2D); prompts: `prompts`.

Circular files (VLMEvalKit's CircularEval convention): when an item's integer id is 1,000,000 or
more, the file holds rotated copies of questions (id + k x 1,000,000), and every item with an
integer id belongs to the group ``id % 1,000,000``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from vlmd_agent.evaluate import hub, prompts, readers
from vlmd_agent.evaluate.prompts import check as check_template
from vlmd_agent.evaluate.readers import DatasetError, Where
from vlmd_agent.evaluate.schemas import parse_columns
from vlmd_agent.wire import MAX_ID

__all__ = ["CIRCULAR_STEP", "SCORERS", "Dataset", "DatasetError", "Item", "check_template",
           "content_hash", "load", "parse_columns", "shard", "source_files"]

SCORERS = ("mcq", "exact", "vqa", "anls", "relaxed")
CIRCULAR_STEP = 1_000_000
_JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
_MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"),
          (b"GIF87a", "image/gif"), (b"GIF89a", "image/gif"), (b"BM", "image/bmp"))


@dataclass(frozen=True)
class Item:
    """One question about one or more images, with its reference answer and its scorer.

    ``answer`` is a tuple when there are several references (VQA accuracy, ANLS); for ``mcq`` it
    is the letter of the right option in ``choices`` (letter -> option text, in letter order).
    ``image`` is the first image; ``extra_images`` the others (MMMU), each (bytes, MIME type).
    ``family`` names the benchmark's prompt (`prompts.FAMILIES`), ``circular_group`` the
    question a rotated copy belongs to.
    """

    id: str
    question: str
    image: bytes
    image_mime: str
    answer: str | tuple[str, ...]
    choices: dict[str, str]
    hint: str | None
    category: str | None
    scorer: str
    l2_category: str | None = None
    split: str | None = None
    family: str | None = None
    circular_group: str | None = None
    extra_images: tuple[tuple[bytes, str], ...] = ()

    @property
    def images(self) -> tuple[tuple[bytes, str], ...]:
        """Every image as (bytes, MIME type), the first one first."""
        return ((self.image, self.image_mime), *self.extra_images)

    def prompt(self, template: str | None = None) -> str:
        """The text prompt: `template` (a family's name or a template, see `prompts`), else
        the item's family's, else its scorer's default."""
        return prompts.render(template, family=self.family, scorer=self.scorer,
                              question=self.question, choices=self.choices, hint=self.hint)

    def metadata(self) -> dict[str, Any]:
        """What the item's events carry besides the answer: its scorer, and its options,
        hint, category, l2_category, split and circular group where it has them."""
        found: dict[str, Any] = {"scorer": self.scorer}
        if self.choices:
            found["options"] = dict(self.choices)
        for name in ("hint", "category", "l2_category", "split", "circular_group"):
            if (value := getattr(self, name)) is not None:
                found[name] = value
        return found


@dataclass(frozen=True)
class Dataset:
    """A loaded, fully validated dataset: its name (the file's or folder's stem), path and
    items."""

    name: str
    path: Path
    items: tuple[Item, ...]

    def __len__(self) -> int:
        return len(self.items)


def load(path: str | os.PathLike[str], *, scorer: str | None = None,
         columns: Mapping[str, str] | None = None) -> Dataset:
    """Read and validate a whole dataset; ``scorer`` overrides every item's scorer; ``columns``
    (`schemas.parse_columns`) names the columns that hold vlmd's fields.

    The format follows the path: ``.jsonl``/``.json``/``.ndjson`` are JSON Lines (one object
    per line), ``.tsv`` is a VLMEvalKit TSV with base64 images; ``.parquet``, ``.arrow``, a
    folder (of parquet shards, or saved by ``datasets.save_to_disk``) or a glob pattern of
    parquet files are hub formats (`hub`).

    Raises:
        DatasetError: the file is missing, in an unknown format, or any item is invalid.
        ValueError: ``scorer`` is not one of `SCORERS`.
    """
    if scorer is not None and scorer not in SCORERS:
        raise ValueError(f"unknown scorer {scorer!r}; expected one of {', '.join(SCORERS)}")
    where = Path(path)
    renames = {k: v for k, v in (columns or {}).items() if k != "schema"}
    suffix = where.suffix.lower()
    rows: Iterable[tuple[Where, dict[str, Any]]]
    if suffix in (*_JSONL_SUFFIXES, ".tsv"):
        text = _text(where)
        rows = ((Where(path, n), f) for n, f in (
            readers.read_tsv(path, text, renames) if suffix == ".tsv"
            else readers.read_jsonl(path, text, renames)))
    elif hub.is_hub(where):
        rows = hub.read(where, columns or {})
    else:
        raise DatasetError(path, None, None, f"unknown format {suffix or '(no extension)'!r}: "
                           "expected .jsonl or .json (JSON Lines), .tsv (VLMEvalKit), .parquet, "
                           ".arrow, or a folder of them")
    items: list[Item] = []
    seen: dict[str, Where] = {}
    for at, fields in rows:
        item = _item(at, fields, scorer)
        if item.id in seen:
            first = seen[item.id]
            place = (f"line {first.line}" if first.path == at.path
                     else f"{os.fspath(first.path)}:{first.line}")
            at.fail("id", f"duplicate id {item.id!r} (first on {place})")
        seen[item.id] = at
        items.append(item)
    if not items:
        raise DatasetError(path, None, None, "no items")
    return Dataset(name=where.stem or where.name, path=where, items=_circular(items))


def source_files(path: str | os.PathLike[str]) -> list[Path]:
    """The files a dataset is read from (one, or a hub dataset's shards); DatasetError when a
    hub dataset has none. Use their modification times to tell a changed dataset."""
    where = Path(path)
    if where.suffix.lower() in (*_JSONL_SUFFIXES, ".tsv") or not hub.is_hub(where):
        return [where]
    return hub.files(where)


def content_hash(path: str | os.PathLike[str]) -> str:
    """The SHA-256 (hex) of a dataset's content: of its one file, as ``sha256sum FILE`` prints
    it; of several (a hub dataset's shards) the SHA-256 of their digests, one hex line each in
    the order they are read (`source_files`), as ``sha256sum FILES | cut -d' ' -f1 | sha256sum``
    prints it: renaming a shard keeps it, reordering or editing one changes it. The images a
    JSONL file names by path are not part of it. DatasetError as `source_files`; OSError when a
    file cannot be read."""
    digests = []
    for name in source_files(path):
        with open(name, "rb") as f:
            digests.append(hashlib.file_digest(f, "sha256").hexdigest())
    if len(digests) == 1:
        return digests[0]
    return hashlib.sha256("".join(f"{d}\n" for d in digests).encode()).hexdigest()


def shard(items: Sequence[Item], index: int, count: int) -> tuple[Item, ...]:
    """The items of shard ``index`` of ``count``, round-robin: ``items[index::count]``."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard {index}/{count}: need 0 <= index < count")
    return tuple(items[index::count])


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise DatasetError(path, None, None, "no such file") from None
    except UnicodeDecodeError as e:
        raise DatasetError(path, None, None, f"not UTF-8 text (byte {e.start})") from None


def _circular(items: list[Item]) -> tuple[Item, ...]:
    """The items, each with its circular group when the file holds rotated copies."""
    numbers = [int(item.id) if item.id.isdigit() else None for item in items]
    if not any(n is not None and n >= CIRCULAR_STEP for n in numbers):
        return tuple(items)
    return tuple(item if n is None else replace(item, circular_group=str(n % CIRCULAR_STEP))
                 for item, n in zip(items, numbers, strict=True))


def _item(where: Where, fields: dict[str, Any], scorer: str | None) -> Item:
    ident = fields["id"]
    if isinstance(ident, bool) or not isinstance(ident, str | int):
        where.fail("id", "expected a string or an integer")
    ident = str(ident).strip()
    if not ident or len(ident) > MAX_ID:
        where.fail("id", f"must be 1 to {MAX_ID} characters")
    question = readers.text(where, "question", fields.get("question"))
    if not question or not question.strip():
        where.fail("question", "empty")
    answer = _answer(where, fields.get("answer"))
    choices: dict[str, str] = fields["choices"]
    field_scorer = readers.text(where, "scorer", fields.get("scorer"))
    if field_scorer is not None and field_scorer not in SCORERS:
        where.fail("scorer", f"unknown scorer {field_scorer!r}; expected one of "
                   f"{', '.join(SCORERS)}")
    several = isinstance(answer, tuple) and len(answer) > 1
    default = "mcq" if choices else "vqa" if several else "exact"
    chosen = scorer or field_scorer or default
    if chosen == "vqa" and not several:
        where.fail("answer", "VQA accuracy counts the humans who agree with the model: give two "
                   "or more answers (a list), or use the exact scorer")
    if chosen == "mcq":
        if not choices:
            where.fail("choices", "an mcq item needs options")
        letter = answer.strip().upper() if isinstance(answer, str) else ""
        if letter not in choices:
            where.fail("answer", f"{answer!r} is not one of the options' letters "
                       f"{', '.join(choices)}")
        answer = letter
    images = [(image, _mime(where, image)) for image in fields["images"]]
    if not images:
        where.fail("image", "missing (vlmd asks questions about images; a text-only row, as in "
                   "ScienceQA's full set? use its image subset)")
    meta = {name: readers.text(where, name, fields.get(name)) or None
            for name in ("hint", "category", "l2_category", "split")}
    return Item(id=ident, question=question, image=images[0][0], image_mime=images[0][1],
                answer=answer, choices=choices, scorer=chosen, family=fields.get("family"),
                extra_images=tuple(images[1:]), **meta)


def _mime(where: Where, image: bytes) -> str:
    mime = _sniff(image)
    if mime is None:
        where.fail("image", "not a PNG, JPEG, GIF, WEBP or BMP image" if image else "empty")
    return mime


def _answer(where: Where, raw: Any) -> str | tuple[str, ...]:
    if isinstance(raw, list | tuple):
        answers = tuple(readers.text(where, "answer", value) for value in raw)
        if not answers or any(a is None or not a.strip() for a in answers):
            where.fail("answer", "expected a non-empty list of non-empty answers")
        return tuple(a for a in answers if a is not None)
    answer = readers.text(where, "answer", raw)
    if answer is None or not answer.strip():
        where.fail("answer", "empty")
    return answer


def _sniff(data: bytes) -> str | None:
    """The image's MIME type from its magic bytes, or None when it is no known image format."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return next((mime for magic, mime in _MAGIC if data.startswith(magic)), None)
