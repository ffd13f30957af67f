"""Comparing runs like with like: which runs evaluated the same items, and which of those are on
the Pareto front of accuracy against a cost.

The one place these rules live; `vlmd report` and the compare page (``GET /api/compare``) show
what `compare` decides over the runs' rows (as ``GET /api/runs/{run}`` serves them: the run's
row with its ``summary``).

- A run's dataset (`dataset_key`): its content hash when its submission recorded one
  (``dataset_sha256``), else its path, whose content is then unknown.
- A group: the runs of one dataset that evaluated as many items (``total``: ``--limit N`` takes
  the first N, so equal totals are the same items). Groups come in the order of their first run.
- On the front, only runs that answered every item of their group (`excluded` says why a run
  is not: running, cancelled, failed, items that failed or were never answered, no scored
  item). They are shown, never on the front.
- The front (`pareto_front`): the eligible runs with both figures that no other such run of the
  group dominates, that is, is at least as accurate and at least as cheap and better in one;
  equal runs are all on it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

Row = dict[str, Any]
DatasetKey = tuple[str, str]  # ("sha256", hex) or ("path", path)


@dataclass(frozen=True)
class Cost:
    """A cost axis: its name, what it shows, its unit, whether higher is better, and how it is
    read from a run's row."""

    name: str
    label: str
    unit: str
    higher_is_better: bool
    get: Callable[[Row], float | None]

    def describe(self) -> dict[str, Any]:
        """The axis as the compare page is served it."""
        return {"name": self.name, "label": self.label, "unit": self.unit,
                "higher_is_better": self.higher_is_better}


def _stat(metric: str, stat: str) -> Callable[[Row], float | None]:
    def get(row: Row) -> float | None:
        value = (row.get("summary") or {}).get(metric, {}).get(stat)
        return None if value is None else float(value)
    return get


def _field(name: str, *, summary: bool = False) -> Callable[[Row], float | None]:
    def get(row: Row) -> float | None:
        value = (row.get("summary") or {}).get(name) if summary else row.get(name)
        return None if value is None else float(value)
    return get


_LATENCY = [Cost(f"{short}_{q}", f"{label} {q}", "ms", False, _stat(f"{short}_ms", q))
            for short, label in (("ttft", "TTFT"), ("tpot", "TPOT"), ("e2e", "latency (e2e)"))
            for q in ("p50", "p90", "p99")]
COSTS: dict[str, Cost] = {c.name: c for c in [
    *_LATENCY,
    Cost("vram_p50", "peak VRAM delta p50", "MiB", False, _stat("vram_peak_delta_mb", "p50")),
    Cost("vram_max", "peak VRAM delta max", "MiB", False, _stat("vram_peak_delta_mb", "max")),
    Cost("items_per_s", "items/s", "items/s", True, _field("items_per_s", summary=True)),
    Cost("joules_per_correct", "energy per correct answer", "J", False,
         _field("joules_per_correct")),
]}
"""Every cost axis by name: latency percentiles, VRAM, throughput and energy."""
DEFAULT_COST = "ttft_p50"


def dataset_key(row: Row) -> DatasetKey:
    """The run's dataset: its content hash when recorded, else its path (content unknown)."""
    sha = row.get("dataset_sha256")
    return ("sha256", sha) if sha else ("path", row.get("dataset") or "")


def excluded(row: Row) -> str | None:
    """Why the run cannot be on a Pareto front, or None when it can: it must have finished with
    every item of its run answered and some answer scored."""
    status, total = str(row["status"]), row["total"]
    if status != "finished":
        return status  # running, submitted, stalled, cancelled or failed
    if row["failed"]:
        return f"{row['failed']} of {total} items failed"
    if total is not None and row["done"] < total:
        return f"{total - row['done']} of {total} items not answered"
    if row.get("accuracy") is None:
        return "no scored item"
    return None


def pareto_front(points: Sequence[tuple[float, float]], higher_is_better: bool = False
                 ) -> set[int]:
    """The indexes of the (accuracy, cost) `points` that no other point dominates: at least as
    accurate and at least as cheap (or, with `higher_is_better`, as high), and better in one.
    Equal points are all on the front. O(n log n): a sweep from the cheapest."""
    sign = -1.0 if higher_is_better else 1.0
    order = sorted(range(len(points)), key=lambda i: sign * points[i][1])
    front: set[int] = set()
    best: float | None = None  # the best accuracy among strictly cheaper points
    start = 0
    while start < len(order):
        end = start
        cost = points[order[start]][1]
        while end < len(order) and points[order[end]][1] == cost:
            end += 1
        tie = order[start:end]
        top = max(points[i][0] for i in tie)
        if best is None or top > best:
            front.update(i for i in tie if points[i][0] == top)
            best = top
        start = end
    return front


def _entry(row: Row) -> Row:
    return {"run": row["run"], "name": row.get("name"), "model": row.get("model"),
            "dataset": row.get("dataset"), "status": row["status"],
            "outcome": row.get("outcome"), "done": row["done"], "failed": row["failed"],
            "total": row["total"], "accuracy": row.get("accuracy"),
            "energy_source": row.get("energy_source"), "kv_cache_peak": row.get("kv_cache_peak"),
            "submitted_at": row.get("submitted_at"),
            "costs": {name: cost.get(row) for name, cost in COSTS.items()},
            "excluded": excluded(row), "front": False}


def matches(group: Row, wanted: str) -> bool:
    """Whether `wanted` names the group's dataset: one of its paths, or a prefix (4 hex digits
    or more) of its content hash."""
    sha = group["dataset_sha256"]
    lowered = wanted.lower()
    return wanted in group["paths"] or (
        sha is not None and len(lowered) >= 4 and sha.startswith(lowered))


def compare(rows: Sequence[Row], cost: str = DEFAULT_COST) -> Row:
    """The runs of `rows` grouped by dataset, each group with its Pareto front of accuracy
    against `cost` (a name of `COSTS`; KeyError otherwise). Returns ``{"cost": ..., "costs":
    [...], "groups": [{"key", "dataset_sha256", "paths", "total", "runs": [...]}]}``: each run
    has its figures (``costs`` by name), why it is ``excluded`` from the front (or None) and
    whether it is on the ``front``."""
    axis = COSTS[cost]
    groups: dict[tuple[DatasetKey, int | None], Row] = {}
    for row in rows:
        kind, value = dataset_key(row)
        key = ((kind, value), row["total"])
        group = groups.get(key)
        if group is None:
            group = groups[key] = {
                "key": f"{kind}:{value}#{row['total'] if row['total'] is not None else '?'}",
                "dataset_sha256": value if kind == "sha256" else None, "paths": [],
                "total": row["total"], "runs": []}
        if row.get("dataset") and row["dataset"] not in group["paths"]:
            group["paths"].append(row["dataset"])
        group["runs"].append(_entry(row))
    for group in groups.values():
        plotted = [e for e in group["runs"] if e["excluded"] is None
                   and e["accuracy"] is not None and e["costs"][cost] is not None]
        points = [(e["accuracy"], e["costs"][cost]) for e in plotted]
        for i in pareto_front(points, axis.higher_is_better):
            plotted[i]["front"] = True
    return {"cost": axis.describe(), "costs": [c.describe() for c in COSTS.values()],
            "groups": list(groups.values())}
