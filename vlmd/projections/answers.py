"""answers.csv: one row per item of a run, folded from its item events in log order.

Which event an item's row comes from is the tracker's item-outcome rule
(`vlmd.projections.tracker.supersedes`): the latest completion, else the latest failure. Rows
are in the order each item first appeared. The dashboard is served the same rows (`served`),
with the seq of their event and their outcome class.

In the CSV, a text cell that a spreadsheet would run as a formula (beginning with ``=``, ``+``,
``-``, ``@``, a tab or a carriage return; datasets and model output can hold any of these) is
prefixed with ``'``, as OWASP recommends against CSV injection; numbers are left alone. With
``escape=False`` every cell is written as it is.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from typing import Any

import orjson

from vlmd.projections.circular import CORRECT_AT as CORRECT_AT  # the outcome classes' rule
from vlmd.projections.tracker import item_error, supersedes
from vlmd.store.log import Event
from vlmd_agent import catalog
from vlmd_agent.catalog import ItemFailed

COLUMNS = catalog.ANSWER_COLUMNS  # declared, with meanings and units, in the event catalog
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
ITEM_KINDS = ("item.completed", "item.failed")
Row = dict[str, Any]


def row_of(event: Event) -> Row:
    """The answers.csv row that one item event stands for."""
    b = event.body
    row: Row = {name: getattr(b, name, None) for name in COLUMNS}
    row["run"], row["item"] = event.run, str(getattr(b, "item", ""))
    if isinstance(b, ItemFailed):
        row["answer"] = None
        row["error"] = item_error(b)
    else:
        row["error"] = None
    return row


def outcome(event: Event) -> str:
    """The outcome class of an item event: correct, wrong, unscored or failed."""
    if event.kind == "item.failed":
        return "failed"
    score = getattr(event.body, "score", None)
    if score is None:
        return "unscored"
    return "correct" if score >= CORRECT_AT else "wrong"


def served(event: Event) -> Row:
    """The row of an item as the dashboard is served it: its answers.csv row, the seq of the
    event it comes from, and its `outcome` class."""
    row = row_of(event)
    row["seq"], row["outcome"] = event.seq, outcome(event)
    return row


def apply(rows: dict[str, Row], event: Event) -> dict[str, Row]:
    """Fold one item event into `rows` (item -> row) and return it."""
    if event.kind not in ITEM_KINDS:
        return rows
    item = str(getattr(event.body, "item", ""))
    old = rows.get(item)
    if old is None or supersedes(old["error"] is None, event.kind == "item.completed"):
        rows[item] = row_of(event)
    return rows


def keep(kept: dict[str, Event], event: Event) -> str | None:
    """Fold one event into `kept` (item -> the event its row comes from); the item whose row
    changed, else None."""
    if event.kind not in ITEM_KINDS:
        return None
    item = str(getattr(event.body, "item", ""))
    old = kept.get(item)
    if old is None or supersedes(old.kind == "item.completed", event.kind == "item.completed"):
        kept[item] = event
        return item
    return None


def latest(events: Iterable[Event]) -> dict[str, Event]:
    """The event each item's row comes from, by item, in first-appearance order."""
    kept: dict[str, Event] = {}
    for event in events:
        keep(kept, event)
    return kept


def fold(events: Iterable[Event]) -> dict[str, Row]:
    """Every item's row, in first-appearance order."""
    return {item: row_of(event) for item, event in latest(events).items()}


def _cell(value: Any, escape: bool) -> str:
    if value is None:
        return ""
    if isinstance(value, list | dict):
        return orjson.dumps(value).decode()
    if escape and isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return str(value)


def csv_chunks(rows: Iterable[Row], chunk_rows: int = 500, *, escape: bool = True
               ) -> Iterator[str]:
    """The CSV text (header first) in chunks of `chunk_rows` rows, for a streamed response;
    text that would start a formula is escaped unless `escape` is False (module docstring)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    # csv quotes a cell holding a newline, not one holding a bare CR (not in the line
    # terminator), which readers then take for a line's end: such a row is quoted whole
    quoted = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_ALL)
    writer.writerow(COLUMNS)
    for n, row in enumerate(rows, start=1):
        cells = [_cell(row.get(c), escape) for c in COLUMNS]
        (quoted if any("\r" in cell for cell in cells) else writer).writerow(cells)
        if n % chunk_rows == 0:
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue()
