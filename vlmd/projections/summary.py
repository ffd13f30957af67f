"""The per-run summary: accuracy (per category too, and CircularEval's) and latency/VRAM
percentiles, derived from the tracker's items.

Percentiles use linear interpolation between closest ranks (numpy's default, ``method="linear"``),
so p50 of an even count is the mean of the two middle values.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from operator import attrgetter
from typing import Any

from vlmd.projections.circular import is_right
from vlmd.projections.tracker import ItemResult, RunState

METRICS = ("ttft_ms", "tpot_ms", "e2e_ms", "vram_peak_delta_mb")
QUANTILES = (("p50", 0.50), ("p90", 0.90), ("p99", 0.99))
TOP_FAILURES = 5
# A run whose every measured per-request VRAM delta is within this many MB of zero, over at
# least `PREALLOCATED_MIN_ITEMS` items, is on a server that reserved its memory up front.
PREALLOCATED_MB = 1.0
PREALLOCATED_MIN_ITEMS = 5
PREALLOCATED_NOTE = ("~0 per request: the server preallocates GPU memory (as vLLM does), so a "
                     "request's VRAM is not visible; see GPU memory used")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The `q` quantile (0..1) of already sorted values, by linear interpolation."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    pos = (len(sorted_values) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def describe(values: list[float]) -> dict[str, float | int | None]:
    """count, mean, p50, p90, p99 and max of `values` (None where there are none)."""
    values = sorted(values)
    if not values:
        return {"count": 0, "mean": None, "p50": None, "p90": None, "p99": None, "max": None}
    out: dict[str, float | int | None] = {"count": len(values),
                                          "mean": math.fsum(values) / len(values)}
    out.update((name, percentile(values, q)) for name, q in QUANTILES)
    out["max"] = values[-1]
    return out


def summarize(state: RunState) -> dict[str, Any]:
    """Accuracy (mean score of completed, scored items, as the tracker keeps it), CircularEval's
    accuracy and its questions, the unparsed answers, the accuracy per category (`by_category`)
    and the distribution of each metric over the completed items: O(items), so callers cache it
    by the run's ``item_seq`` (`vlmd.live.states.Summaries`)."""
    completed = [r for r in state.items.values() if r.ok]
    circular = bool(state.circular.groups)
    summary: dict[str, Any] = {
        "completed": state.done,
        "failed": state.failed,
        "scored": state.scored,
        "accuracy": state.accuracy,
        "circular_accuracy": state.circular_accuracy,
        "circular_groups": len(state.circular.groups),
        "unparsed": sum(1 for r in completed if r.unparsed),
        "by_category": by_category(state.items.values(), "category", circular=circular),
        "by_l2_category": by_category(state.items.values(), "l2_category", circular=circular),
    }
    for i, name in enumerate(METRICS, start=2):
        summary[name] = describe([v for r in completed if isinstance(v := r[i], int | float)])
    if state.started_at is not None and state.recent and state.recent[-1] > state.started_at:
        summary["items_per_s"] = (state.done + state.failed) / (state.recent[-1] - state.started_at)
    else:
        summary["items_per_s"] = None
    summary["failures"] = failures(state)
    summary["tokens_source"] = dict(Counter(r.tokens_source for r in completed
                                            if r.tokens_source is not None).most_common())
    summary["vram_note"] = vram_note(completed)
    return summary


def by_category(items: Iterable[ItemResult], level: str = "category", *,
                circular: bool = False) -> dict[str, dict[str, Any]]:
    """Per category (`level`: ``category`` or ``l2_category``), by name: ``items`` (its completed
    items with a score) and ``accuracy`` (their mean score, None without any); with `circular`,
    also ``circular_groups`` (its questions) and ``circular_accuracy`` (the share of them with
    every rotation right, `vlmd.projections.circular`). Items without the category are left
    out."""
    name_of = attrgetter(level)
    scores: dict[str, list[float]] = {}  # name -> [sum of scores, scored items]
    groups: dict[str, dict[str, bool]] = {}  # name -> question -> every rotation right so far
    for r in items:
        name: str | None = name_of(r)
        if name is None:
            continue
        tally = scores.get(name)
        if tally is None:
            tally = scores[name] = [0.0, 0]
        if r.ok and r.score is not None:
            tally[0] += r.score
            tally[1] += 1
        if circular and r.circular_group is not None:
            questions = groups.setdefault(name, {})
            questions[r.circular_group] = (questions.get(r.circular_group, True)
                                           and is_right(r.ok, r.score))
    table: dict[str, dict[str, Any]] = {}
    for name in sorted(scores):
        total, n = scores[name]
        entry: dict[str, Any] = {"items": int(n), "accuracy": total / n if n else None}
        if circular:
            questions = groups.get(name, {})
            entry["circular_groups"] = len(questions)
            entry["circular_accuracy"] = (sum(questions.values()) / len(questions)
                                          if questions else None)
        table[name] = entry
    return table


def failures(state: RunState, top: int = TOP_FAILURES) -> list[dict[str, Any]]:
    """The commonest item errors of the run (``reason: message``), with counts, most first;
    the rest summed up as one last entry ``{"reason": "other", ...}``."""
    counts = Counter(r.error for r in state.items.values() if not r.ok)
    ranked = counts.most_common()
    shown = [{"reason": reason, "count": n} for reason, n in ranked[:top]]
    if rest := sum(n for _, n in ranked[top:]):
        shown.append({"reason": "other", "count": rest})
    return shown


def vram_note(completed: Sequence[ItemResult]) -> str | None:
    """Why the per-request VRAM figures are missing or ~0, if they are: the backend's own note
    (a remote server, a CPU model), or a server that preallocated its memory."""
    notes = Counter(r.vram_note for r in completed if r.vram_note)
    if notes:
        return str(notes.most_common(1)[0][0])
    deltas = [r.vram_peak_delta_mb for r in completed if r.vram_peak_delta_mb is not None]
    if len(deltas) >= PREALLOCATED_MIN_ITEMS and all(abs(d) < PREALLOCATED_MB for d in deltas):
        return PREALLOCATED_NOTE
    return None
