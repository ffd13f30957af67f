"""Reading dataset files into raw rows: JSON Lines and VLMEvalKit TSV, and the cell decoders
(images, options, text) that the hub formats (`hub`) share.

A reader yields ``(line, fields)``: the line (or row) number that errors name, and the row's
fields under vlmd's names (``id``, ``question``, ``answer``, ``images`` as decoded bytes,
``choices`` as letter -> text, optional ``hint``, ``category``, ``l2_category``, ``split``,
``scorer``, ``family``), which `datasets` checks and turns into an `Item`.
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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
JSONL_REQUIRED = ("id", "image", "question", "answer")
TSV_REQUIRED = ("index", "image", "question", "answer")
OPTIONAL = ("hint", "category", "l2_category", "split", "scorer")
_URL_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
Rows = Iterator[tuple[int, dict[str, Any]]]


class DatasetError(ValueError):
    """A dataset file is unusable; the message names the file, the line, the field and why."""

    def __init__(self, path: str | os.PathLike[str], line: int | None, field: str | None,
                 problem: str) -> None:
        self.path, self.line, self.field, self.problem = str(path), line, field, problem
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {field}: {problem}" if field else f"{where}: {problem}")

    def __reduce__(self) -> tuple[type[DatasetError], tuple[str, int | None, str | None, str]]:
        return DatasetError, (self.path, self.line, self.field, self.problem)


@dataclass(frozen=True)
class Where:
    """A row of a file (its line, or its row counted from 1), for error messages."""

    path: str | os.PathLike[str]
    line: int

    def fail(self, field: str | None, problem: str) -> NoReturn:
        raise DatasetError(self.path, self.line, field, problem)


def renamed(fields: Mapping[str, Any], columns: Mapping[str, str]) -> dict[str, Any]:
    """`fields` with each vlmd field of `columns` (field -> column) taken from its column."""
    return {**fields, **{field: fields[column] for field, column in columns.items()
                         if column in fields}}


def read_jsonl(path: str | os.PathLike[str], text: str, columns: Mapping[str, str]) -> Rows:
    """The rows of a JSON Lines file (one object per line); `columns` renames fields."""
    base = Path(path).parent
    # split on "\n" only: JSON strings may hold U+2028, which str.splitlines() would split on
    for number, raw in enumerate(text.split("\n"), 1):
        if not raw.strip():
            continue
        where = Where(path, number)
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            hint = "; expected one JSON object per line" if raw.strip() in "[{" else ""
            where.fail(None, f"bad JSON at column {e.colno}: {e.msg}{hint}")
        except (ValueError, RecursionError) as e:  # a 5,000-digit number, nesting too deep
            where.fail(None, f"bad JSON: {str(e)[:200]}")
        if isinstance(obj, list):
            where.fail(None, "expected a JSON object, got an array: write JSON Lines, one "
                             "object per line")
        if not isinstance(obj, dict):
            where.fail(None, f"expected a JSON object, got {type(obj).__name__}")
        obj = renamed(obj, columns)
        if "images" in obj and "image" not in obj:
            obj["image"] = obj["images"]
        for name in JSONL_REQUIRED:
            if name not in obj:
                where.fail(name, "missing field")
        letters = {k: v for k, v in obj.items() if len(k) == 1 and k in LETTERS}
        if "choices" in obj and letters:
            where.fail("choices", f"given both 'choices' and option fields {', '.join(letters)}")
        refs = obj["image"] if isinstance(obj["image"], list) else [obj["image"]]
        if not refs or not all(isinstance(ref, str) for ref in refs):
            where.fail("image", "expected a path or a data: URL (or a list of them)")
        fields = {**obj, "images": [image_ref(where, ref, base) for ref in refs]}
        raw_choices = obj.get("choices")
        fields["choices"] = choices(where, letters if raw_choices is None else raw_choices)
        yield number, fields


def image_ref(where: Where, ref: str, base: Path) -> bytes:
    """An image given as a data: URL or a path relative to `base`."""
    if ref.startswith("data:"):
        header, comma, payload = ref.partition(",")
        if not comma:
            where.fail("image", "data: URL without a comma")
        if header.endswith(";base64"):
            return b64(where, payload)
        return urllib.parse.unquote_to_bytes(payload)
    if _URL_RE.match(ref):
        where.fail("image", f"remote URLs are not supported: {ref!r}")
    try:
        return (base / ref).read_bytes()
    except (OSError, ValueError):  # ValueError: a NUL byte in the path
        where.fail("image", f"no such file {ref!r} (relative to {os.fspath(where.path)})")


def b64(where: Where, text: str) -> bytes:
    """Base64 text (whitespace allowed) as bytes."""
    try:
        return base64.b64decode(re.sub(r"\s+", "", text), validate=True)
    except (binascii.Error, ValueError):
        where.fail("image", "not valid base64")


def choices(where: Where, raw: Any) -> dict[str, str]:
    """Options given as a list (lettered A, B, ... in order), a Python list literal (MMMU's
    ``"['a', 'b']"``) or an object of letter -> text; empty options are dropped."""
    if isinstance(raw, str) and raw.strip().startswith("["):
        with contextlib.suppress(ValueError, SyntaxError):
            raw = ast.literal_eval(raw.strip())
    if isinstance(raw, list | tuple):
        if len(raw) > len(LETTERS):
            where.fail("choices", f"more than {len(LETTERS)} options")
        raw = dict(zip(LETTERS, raw, strict=False))
    if not isinstance(raw, dict):
        where.fail("choices", "expected a list or an object of letter -> text")
    found: dict[str, str] = {}
    for key, value in raw.items():
        letter = str(key).strip().upper()
        if len(letter) != 1 or letter not in LETTERS:
            where.fail("choices", f"option key {key!r} is not a letter A-Z")
        option = text(where, f"choices.{letter}", value)
        if option is not None and option.strip():
            found[letter] = option
    return dict(sorted(found.items()))


def read_tsv(path: str | os.PathLike[str], content: str, columns: Mapping[str, str]) -> Rows:
    """The rows of a VLMEvalKit TSV: base64 images (a repeated image holds the index of the row
    that has it; several images are a list literal), options in columns A, B, ..."""
    # base64 images are far bigger than csv's default 128 KiB cell limit
    csv.field_size_limit(max(csv.field_size_limit(), min(sys.maxsize, 2**31 - 1)))
    reader = csv.reader(io.StringIO(content, newline=""), delimiter="\t")
    header = [name.strip() for name in next(reader, [])]
    if not header:
        return
    # a TSV's id column is "index"
    renames = {"index" if f == "id" else f: c for f, c in columns.items()}
    header = [next((f for f, c in renames.items() if c == name), name) for name in header]
    for name in TSV_REQUIRED:
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
        where = Where(path, line)
        cell = row["image"].strip()
        # VLMEvalKit stores a repeated image once; other rows hold that row's index instead
        if cell in images and cell != row["index"].strip():
            cell = images[cell]
            if cell.strip() in images:
                where.fail("image", f"refers to row {row['image'].strip()!r}, which has no image")
        cells = listed(cell) or [cell]
        letters = {k: v for k, v in row.items() if len(k) == 1 and k in LETTERS and not nan(v)}
        fields: dict[str, Any] = {**row, "id": row["index"],
                                  "images": [b64(where, one) for one in cells],
                                  "choices": choices(where, letters), "answer": tsv_answer(row)}
        if "l2-category" in row and "l2_category" not in row:
            fields["l2_category"] = row["l2-category"]
        for name in OPTIONAL:
            if nan(str(fields.get(name, ""))):
                fields.pop(name, None)
        yield line, fields


def listed(cell: str) -> list[str] | None:
    """A cell holding a Python list literal of strings (``['a', 'b']``), as a list."""
    if cell.strip().startswith("[") and cell.strip().endswith("]"):
        with contextlib.suppress(ValueError, SyntaxError):
            value = ast.literal_eval(cell.strip())
            if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
                return value
    return None


def nan(cell: str) -> bool:
    """An empty or NaN cell (how pandas writes a missing value) means the field is absent."""
    return cell.strip() == "" or cell.strip().lower() == "nan"


def tsv_answer(row: Mapping[str, str]) -> Any:
    """VLMEvalKit writes several references as a Python list literal: ``['a', 'b']``."""
    return listed(row["answer"]) or row["answer"]


def text(where: Where, field: str, value: Any) -> str | None:
    """A text field: strings as they are, numbers as text, null as None."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return None if value != value else str(value)  # NaN is pandas' "missing"
    where.fail(field, f"expected text, got {type(value).__name__}")
