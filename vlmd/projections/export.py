"""`vlmd export`: a run's answers (the answers.csv rows) as CSV, JSON Lines or Parquet.

Parquet is written with pyarrow (a dependency of vlmd); where it is missing anyway (an install
without it) the export fails with `ExportError` saying what to install. Column types follow the
event catalog.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any, BinaryIO

import orjson

from vlmd.projections import answers
from vlmd.store.log import EventLog
from vlmd_agent import catalog

FORMATS = ("csv", "jsonl", "parquet")
# column types from the event catalog: its integers and numbers stay numbers, the rest is text
_TYPES = {c.name: c.type_name for c in catalog.answer_columns()}
_INTS = tuple(c for c, kind in _TYPES.items() if kind == "integer")
_FLOATS = tuple(c for c, kind in _TYPES.items() if kind == "number")


class ExportError(Exception):
    """An export that cannot be made; the message says why and what to do."""


def rows(log: EventLog, run: str) -> list[answers.Row]:
    """The answers.csv rows of `run`, in first-appearance order."""
    return list(answers.fold(log.read(run=run, kinds=answers.ITEM_KINDS)).values())


def write(rows_: Iterable[answers.Row], fmt: str, out: BinaryIO, *, escape: bool = True
          ) -> int:
    """Write the rows to `out` in `fmt`; returns how many rows were written. CSV cells that
    would start a spreadsheet formula are escaped unless `escape` is False
    (`vlmd.projections.answers`)."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    listed = list(rows_)
    if fmt == "csv":
        for chunk in answers.csv_chunks(listed, escape=escape):
            out.write(chunk.encode())
    elif fmt == "jsonl":
        for row in listed:
            out.write(orjson.dumps({c: row.get(c) for c in answers.COLUMNS}) + b"\n")
    else:
        _parquet(listed, out)
    return len(listed)


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return orjson.dumps(value).decode()  # a list of accepted answers, as answers.csv writes it


def _parquet(listed: list[answers.Row], out: BinaryIO) -> None:
    try:
        pa = importlib.import_module("pyarrow")
        pq = importlib.import_module("pyarrow.parquet")
    except ImportError:
        raise ExportError("parquet export needs pyarrow, which is not installed: "
                          "pip install pyarrow (or use --format csv or jsonl)") from None
    types = {c: pa.int64() if c in _INTS else pa.float64() if c in _FLOATS else pa.string()
             for c in answers.COLUMNS}
    columns = {c: [row.get(c) if c in _INTS or c in _FLOATS else _text(row.get(c))
                   for row in listed] for c in answers.COLUMNS}
    schema = pa.schema([(c, types[c]) for c in answers.COLUMNS])
    pq.write_table(pa.table(columns, schema=schema), out)
