"""Dataset readers: JSON Lines and VLMEvalKit TSV files, validated in full before a run starts.

`load` reads every item, decodes every image and checks every field up front, so a bad row is
reported before the model is loaded rather than on item 900. Each problem is a `DatasetError`
naming the file, the line and the field, e.g. ``data.jsonl:7: image: no such file 'img/7.png'``.
"""

from __future__ import annotations

import ast
import base64
import binascii
import contextlib
import csv
import io
import json
import os
import re
import sys
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from vlmd_agent.wire import MAX_ID

SCORERS = ("mcq", "exact", "vqa", "anls", "relaxed")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
MCQ_INSTRUCTION = "Answer with the option's letter."
SHORT_INSTRUCTION = "Answer the question using a single word or phrase."
_JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
_REQUIRED = ("id", "image", "question", "answer")
_TSV_REQUIRED = ("index", "image", "question", "answer")
_MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"),
          (b"GIF87a", "image/gif"), (b"GIF89a", "image/gif"), (b"BM", "image/bmp"))
_URL_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass(frozen=True)
class Item:
    """One question about one image, with its reference answer and the scorer that grades it.

    ``answer`` is a tuple when there are several references (VQA accuracy, ANLS); for ``mcq`` it
    is the letter of the right option in ``choices`` (letter -> option text, in letter order).
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

    def prompt(self) -> str:
        """The text prompt: the hint, the question, the options as ``A. red`` lines, and how
        to answer (the option's letter for ``mcq``, a word or phrase otherwise)."""
        lines = [f"Hint: {self.hint}"] if self.hint else []
        lines.append(f"Question: {self.question}" if self.choices else self.question)
        if self.choices:
            lines.append("Options:")
            lines.extend(f"{letter}. {text}" for letter, text in self.choices.items())
        lines.append(MCQ_INSTRUCTION if self.scorer == "mcq" else SHORT_INSTRUCTION)
        return "\n".join(lines)


@dataclass(frozen=True)
class Dataset:
    """A loaded, fully validated dataset: its name (the file's stem), path and items."""

    name: str
    path: Path
    items: tuple[Item, ...]

    def __len__(self) -> int:
        return len(self.items)


class DatasetError(ValueError):
    """A dataset file is unusable; the message names the file, the line, the field and why."""

    def __init__(self, path: str | os.PathLike[str], line: int | None, field: str | None,
                 problem: str) -> None:
        self.path, self.line, self.field, self.problem = str(path), line, field, problem
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {field}: {problem}" if field else f"{where}: {problem}")

    def __reduce__(self) -> tuple[type[DatasetError], tuple[str, int | None, str | None, str]]:
        return DatasetError, (self.path, self.line, self.field, self.problem)


def load(path: str | os.PathLike[str], *, scorer: str | None = None) -> Dataset:
    """Read and validate a whole dataset; ``scorer`` overrides every item's scorer.

    The format follows the extension: ``.jsonl``/``.json``/``.ndjson`` are JSON Lines (one
    object per line), ``.tsv`` is a VLMEvalKit TSV with base64 images.

    Raises:
        DatasetError: the file is missing, in an unknown format, or any item is invalid.
        ValueError: ``scorer`` is not one of `SCORERS`.
    """
    if scorer is not None and scorer not in SCORERS:
        raise ValueError(f"unknown scorer {scorer!r}; expected one of {', '.join(SCORERS)}")
    where = Path(path)
    suffix = where.suffix.lower()
    if suffix not in (*_JSONL_SUFFIXES, ".tsv"):
        raise DatasetError(path, None, None, f"unknown format {suffix or '(no extension)'!r}: "
                           "expected .jsonl or .json (JSON Lines) or .tsv (VLMEvalKit)")
    try:
        text = where.read_text(encoding="utf-8-sig")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise DatasetError(path, None, None, "no such file") from None
    except UnicodeDecodeError as e:
        raise DatasetError(path, None, None, f"not UTF-8 text (byte {e.start})") from None
    rows = _read_tsv(path, text) if suffix == ".tsv" else _read_jsonl(path, text)
    items: list[Item] = []
    seen: dict[str, int] = {}
    for line, fields in rows:
        item = _item(_Where(path, line), fields, scorer)
        if item.id in seen:
            raise DatasetError(path, line, "id", f"duplicate id {item.id!r} (first on line "
                               f"{seen[item.id]})")
        seen[item.id] = line
        items.append(item)
    if not items:
        raise DatasetError(path, None, None, "no items")
    return Dataset(name=where.stem, path=where, items=tuple(items))


def shard(items: Sequence[Item], index: int, count: int) -> tuple[Item, ...]:
    """The items of shard ``index`` of ``count``, round-robin: ``items[index::count]``."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard {index}/{count}: need 0 <= index < count")
    return tuple(items[index::count])


@dataclass(frozen=True)
class _Where:
    path: str | os.PathLike[str]
    line: int

    def fail(self, field: str | None, problem: str) -> NoReturn:
        raise DatasetError(self.path, self.line, field, problem)


def _read_jsonl(path: str | os.PathLike[str], text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    base = Path(path).parent
    # split on "\n" only: JSON strings may hold U+2028, which str.splitlines() would split on
    for number, raw in enumerate(text.split("\n"), 1):
        if not raw.strip():
            continue
        where = _Where(path, number)
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            hint = "; expected one JSON object per line" if raw.strip() in "[{" else ""
            where.fail(None, f"bad JSON at column {e.colno}: {e.msg}{hint}")
        except (ValueError, RecursionError) as e:  # a 5,000-digit number, nesting too deep
            where.fail(None, f"bad JSON: {str(e)[:200]}")
        if not isinstance(obj, dict):
            where.fail(None, f"expected a JSON object, got {type(obj).__name__}")
        for name in _REQUIRED:
            if name not in obj:
                where.fail(name, "missing field")
        if not isinstance(obj["image"], str):
            where.fail("image", "expected a path or a data: URL")
        letters = {k: v for k, v in obj.items() if len(k) == 1 and k in LETTERS}
        if "choices" in obj and letters:
            where.fail("choices", f"given both 'choices' and option fields {', '.join(letters)}")
        fields = {**obj, "image": _image_ref(where, obj["image"], base, path)}
        raw_choices = obj.get("choices")
        fields["choices"] = _choices(where, letters if raw_choices is None else raw_choices)
        yield number, fields


def _image_ref(where: _Where, ref: str, base: Path, path: str | os.PathLike[str]) -> bytes:
    if ref.startswith("data:"):
        header, comma, payload = ref.partition(",")
        if not comma:
            where.fail("image", "data: URL without a comma")
        if header.endswith(";base64"):
            return _b64(where, payload)
        return urllib.parse.unquote_to_bytes(payload)
    if _URL_RE.match(ref):
        where.fail("image", f"remote URLs are not supported: {ref!r}")
    try:
        return (base / ref).read_bytes()
    except (OSError, ValueError):  # ValueError: a NUL byte in the path
        where.fail("image", f"no such file {ref!r} (relative to {os.fspath(path)})")


def _b64(where: _Where, text: str) -> bytes:
    try:
        return base64.b64decode(re.sub(r"\s+", "", text), validate=True)
    except (binascii.Error, ValueError):
        where.fail("image", "not valid base64")


def _choices(where: _Where, raw: Any) -> dict[str, str]:
    if isinstance(raw, list):
        if len(raw) > len(LETTERS):
            where.fail("choices", f"more than {len(LETTERS)} options")
        raw = dict(zip(LETTERS, raw, strict=False))
    if not isinstance(raw, dict):
        where.fail("choices", "expected a list or an object of letter -> text")
    choices: dict[str, str] = {}
    for key, value in raw.items():
        letter = str(key).strip().upper()
        if len(letter) != 1 or letter not in LETTERS:
            where.fail("choices", f"option key {key!r} is not a letter A-Z")
        text = _text(where, f"choices.{letter}", value)
        if text is not None and text.strip():
            choices[letter] = text
    return dict(sorted(choices.items()))


def _read_tsv(path: str | os.PathLike[str], text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    # base64 images are far bigger than csv's default 128 KiB cell limit
    csv.field_size_limit(max(csv.field_size_limit(), min(sys.maxsize, 2**31 - 1)))
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t")
    header = [name.strip() for name in next(reader, [])]
    if not header:
        return
    for name in _TSV_REQUIRED:
        if name not in header:
            raise DatasetError(path, 1, name, "missing column")
    rows: list[tuple[int, dict[str, str]]] = []
    start = reader.line_num + 1
    for cells in reader:
        line, start = start, reader.line_num + 1
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) != len(header):
            raise DatasetError(path, line, None, f"expected {len(header)} cells (tab-separated), "
                               f"found {len(cells)}")
        rows.append((line, dict(zip(header, cells, strict=True))))
    images = {row["index"].strip(): row["image"] for _, row in rows}
    for line, row in rows:
        where = _Where(path, line)
        cell = row["image"].strip()
        # VLMEvalKit stores a repeated image once; other rows hold that row's index instead
        if cell in images and cell != row["index"].strip():
            cell = images[cell]
            if cell.strip() in images:
                where.fail("image", f"refers to row {row['image'].strip()!r}, which has no image")
        letters = {k: v for k, v in row.items() if len(k) == 1 and k in LETTERS and not _nan(v)}
        fields: dict[str, Any] = {**row, "id": row["index"], "image": _b64(where, cell),
                                  "choices": _choices(where, letters),
                                  "answer": _tsv_answer(row["answer"])}
        for name in ("hint", "category", "scorer"):
            if _nan(row.get(name, "")):
                fields.pop(name, None)
        yield line, fields


def _nan(cell: str) -> bool:
    """An empty or NaN cell (how pandas writes a missing value) means the field is absent."""
    return cell.strip() == "" or cell.strip().lower() == "nan"


def _tsv_answer(cell: str) -> Any:
    """VLMEvalKit writes several references as a Python list literal: ``['a', 'b']``."""
    if cell.strip().startswith("[") and cell.strip().endswith("]"):
        with contextlib.suppress(ValueError, SyntaxError):
            value = ast.literal_eval(cell.strip())
            return value if isinstance(value, list) and value else cell
    return cell


def _text(where: _Where, field: str, value: Any) -> str | None:
    """A text field: strings as they are, numbers as text, null as None."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return None if value != value else str(value)  # NaN is pandas' "missing"
    where.fail(field, f"expected text, got {type(value).__name__}")


def _item(where: _Where, fields: dict[str, Any], scorer: str | None) -> Item:
    ident = fields["id"]
    if isinstance(ident, bool) or not isinstance(ident, str | int):
        where.fail("id", "expected a string or an integer")
    ident = str(ident).strip()
    if not ident or len(ident) > MAX_ID:
        where.fail("id", f"must be 1 to {MAX_ID} characters")
    question = _text(where, "question", fields["question"])
    if not question or not question.strip():
        where.fail("question", "empty")
    answer = _answer(where, fields["answer"])
    choices: dict[str, str] = fields["choices"]
    field_scorer = _text(where, "scorer", fields.get("scorer"))
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
    image = fields["image"]
    mime = _sniff(image)
    if mime is None:
        where.fail("image", "not a PNG, JPEG, GIF, WEBP or BMP image" if image else "empty")
    return Item(id=ident, question=question, image=image, image_mime=mime, answer=answer,
                choices=choices, hint=_text(where, "hint", fields.get("hint")) or None,
                category=_text(where, "category", fields.get("category")) or None,
                scorer=chosen)


def _answer(where: _Where, raw: Any) -> str | tuple[str, ...]:
    if isinstance(raw, list):
        answers = tuple(_text(where, "answer", value) for value in raw)
        if not answers or any(a is None or not a.strip() for a in answers):
            where.fail("answer", "expected a non-empty list of non-empty answers")
        return tuple(a for a in answers if a is not None)
    answer = _text(where, "answer", raw)
    if answer is None or not answer.strip():
        where.fail("answer", "empty")
    return answer


def _sniff(data: bytes) -> str | None:
    """The image's MIME type from its magic bytes, or None when it is no known image format."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return next((mime for magic, mime in _MAGIC if data.startswith(magic)), None)
