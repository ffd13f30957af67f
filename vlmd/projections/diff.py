"""Which items changed between two runs: the one rule behind `vlmd diff` and the diff page
(``GET /api/diff``).

An item is listed when its score differs between run A and run B, or when one run answered it
and the other did not (it failed there, or never reached it). An item is answered when its row
(`vlmd.projections.answers`, the item-outcome rule's latest) has no error. Each listed item has
its question, options and expected answer (A's, else B's), and each run's answer, score and
error.
``change`` says how it moved from A to B: ``up`` (B scored higher), ``down``, ``only_a`` (only
A answered it), ``only_b``, or ``unscored`` (both answered, one answer has no score).

Runs are compared only when they evaluated the same dataset (`vlmd.projections.compare.
dataset_key`: the same content hash, else the same path): otherwise the same item id may be
another question.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from vlmd.projections import answers
from vlmd.projections.compare import dataset_key
from vlmd.store.log import Event

Row = dict[str, Any]
CHANGES = ("up", "down", "only_a", "only_b", "unscored")
FORCE_HINT = "vlmd diff --force (GET /api/diff?force=1) compares them anyway"


class DatasetsDiffer(ValueError):
    """The two runs evaluated different datasets; the message names both."""


def _describe(row: Row) -> str:
    sha = row.get("dataset_sha256")
    return f"{row.get('dataset')} ({f'sha256 {sha[:12]}' if sha else 'content not recorded'})"


def check_datasets(a: Row, b: Row) -> None:
    """Raise DatasetsDiffer unless runs `a` and `b` (run rows) evaluated the same dataset."""
    if dataset_key(a) != dataset_key(b):
        raise DatasetsDiffer(f"runs {a['run']} and {b['run']} evaluated different datasets: "
                             f"{_describe(a)} and {_describe(b)}; {FORCE_HINT}")


def item_rows(events: Iterable[Event]) -> dict[str, Row]:
    """Each item's answers row (`answers.latest`: the item-outcome rule) with its options (a
    multiple-choice item's letter -> text), from a run's item events."""
    return {item: {**answers.row_of(e), "options": getattr(e.body, "options", None)}
            for item, e in answers.latest(events).items()}


def _side(row: Row | None) -> Row | None:
    if row is None:
        return None
    return {"answer": row.get("answer"), "score": row.get("score"), "error": row.get("error")}


def change(a: Row | None, b: Row | None) -> str | None:
    """How an item moved from its row in run A to its row in run B (None: not there); None when
    it did not change."""
    answered_a = a is not None and a.get("error") is None
    answered_b = b is not None and b.get("error") is None
    if answered_a != answered_b:
        return "only_a" if answered_a else "only_b"
    if not answered_a:
        return None  # neither run answered it
    assert a is not None and b is not None
    sa, sb = a.get("score"), b.get("score")
    if sa == sb:
        return None
    if sa is None or sb is None:
        return "unscored"
    return "up" if sb > sa else "down"


def _either(a: Row | None, b: Row | None, name: str) -> Any:
    """A's value of `name`, else B's."""
    value = None if a is None else a.get(name)
    return value if value is not None or b is None else b.get(name)


def _ref(row: Row) -> Row:
    return {k: row.get(k) for k in ("run", "name", "model", "dataset", "dataset_sha256",
                                    "status", "outcome", "done", "failed", "total", "accuracy")}


def diff(a: Row, a_items: Mapping[str, Row], b: Row, b_items: Mapping[str, Row], *,
         force: bool = False, limit: int | None = None) -> Row:
    """The items that changed from run `a` to run `b` (run rows, and their answers rows by item
    id), in A's item order then B's. Raises DatasetsDiffer when the runs evaluated different
    datasets, unless `force`. Returns ``{"a", "b", "same_dataset", "counts", "items",
    "truncated"}``: ``counts`` has the items ``compared`` (either run has a row), ``changed``
    and one count per change; ``items`` at most `limit` of them."""
    same = dataset_key(a) == dataset_key(b)
    if not same and not force:
        check_datasets(a, b)
    counts = dict.fromkeys(("compared", "changed", *CHANGES), 0)
    items: list[Row] = []
    for item in {**dict.fromkeys(a_items), **dict.fromkeys(b_items)}:
        ra, rb = a_items.get(item), b_items.get(item)
        counts["compared"] += 1
        moved = change(ra, rb)
        if moved is None:
            continue
        counts["changed"] += 1
        counts[moved] += 1
        if limit is not None and len(items) >= limit:
            continue
        items.append({"item": item, "change": moved, "question": _either(ra, rb, "question"),
                      "options": _either(ra, rb, "options"),
                      "expected": _either(ra, rb, "expected"), "a": _side(ra), "b": _side(rb)})
    return {"a": _ref(a), "b": _ref(b), "same_dataset": same, "counts": counts, "items": items,
            "truncated": counts["changed"] > len(items)}
