"""answers.csv: one row per item of a run, folded from its item events in log order.

An item keeps the row of its latest completion; a failure replaces only an earlier failure (a
retry that fails does not undo an answer). Rows are in the order each item first appeared.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from typing import Any

import orjson

from vlmd.store.log import Event
from vlmd_agent import catalog

COLUMNS = catalog.ANSWER_COLUMNS  # declared, with meanings and units, in the event catalog
ITEM_KINDS = ("item.completed", "item.failed")
Row = dict[str, Any]


def row_of(event: Event) -> Row:
    """The answers.csv row that one item event stands for."""
    b = event.body
    row: Row = {name: b.get(name) for name in COLUMNS}
    row["run"], row["item"] = event.run, str(b["item"])
    if event.kind == "item.failed":
        row["answer"] = None
        row["error"] = f"{b['reason']}: {b['message']}"
    else:
        row["error"] = None
    return row


def apply(rows: dict[str, Row], event: Event) -> dict[str, Row]:
    """Fold one item event into `rows` (item -> row) and return it."""
    if event.kind not in ITEM_KINDS:
        return rows
    item = str(event.body["item"])
    old = rows.get(item)
    if old is not None and old["error"] is None and event.kind == "item.failed":
        return rows
    rows[item] = row_of(event)
    return rows


def fold(events: Iterable[Event]) -> dict[str, Row]:
    """Every item's row, in first-appearance order."""
    rows: dict[str, Row] = {}
    for event in events:
        apply(rows, event)
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | dict):
        return orjson.dumps(value).decode()
    return str(value)


def csv_chunks(rows: Iterable[Row], chunk_rows: int = 500) -> Iterator[str]:
    """The CSV text (header first) in chunks of `chunk_rows` rows, for a streamed response."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for n, row in enumerate(rows, start=1):
        writer.writerow([_cell(row.get(c)) for c in COLUMNS])
        if n % chunk_rows == 0:
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue()
