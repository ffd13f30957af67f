"""``GET /api/compare`` and ``GET /api/diff``: the compare page's runs grouped by dataset with
their Pareto fronts, and the items that changed between two runs.

Both serve what the projections decide (`vlmd.projections.compare`, `vlmd.projections.diff`),
the very functions `vlmd report` and `vlmd diff` apply to the same rows without a daemon.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from vlmd.live.state import Live
from vlmd.projections import answers, compare, diff
from vlmd.projections.tracker import RunState
from vlmd.web.auth import ApiError
from vlmd.web.bulk import Reader

FORCE = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status, media_type="application/json")


class Comparisons:
    """The two read endpoints over one `Live`; `find` resolves a run's id or name (404 or 409
    as an `ApiError`)."""

    def __init__(self, live: Live, reader: Reader, find: Callable[[str], RunState]) -> None:
        self.live, self.reader, self.find = live, reader, find

    def row(self, state: RunState) -> dict[str, Any]:
        """A run as ``GET /api/runs/{run}`` serves it: its row and its summary."""
        return {**state.to_dict(), "summary": self.live.summaries.get(state)}

    async def compare(self, request: Request) -> Response:
        """``?cost=NAME`` (`compare.COSTS`, default TTFT p50) and ``?dataset=PATH|SHA256``
        (only that dataset's groups)."""
        cost = request.query_params.get("cost", compare.DEFAULT_COST)
        if cost not in compare.COSTS:
            raise ApiError(400, f"cost must be one of {', '.join(compare.COSTS)}, not "
                                f"{cost[:40]!r}")
        found = compare.compare([self.row(s) for s in self.live.tracker.runs.values()], cost)
        wanted = request.query_params.get("dataset")
        if wanted:
            found["groups"] = [g for g in found["groups"] if compare.matches(g, wanted)]
        return _json({**found, "head": self.live.head})

    async def diff(self, request: Request) -> Response:
        """``?a=RUN&b=RUN`` (ids or names), ``force=1`` to compare runs of different datasets,
        ``limit=N`` items at most (the counts are of all)."""
        q = request.query_params
        if not q.get("a") or not q.get("b"):
            raise ApiError(400, "name both runs: ?a=RUN&b=RUN")
        force = FORCE.get(q.get("force", "0"))
        if force is None:
            raise ApiError(400, f"force must be 1 or 0, not {q['force'][:40]!r}")
        limit_text = q.get("limit")
        if limit_text is not None and not (limit_text.isascii() and limit_text.isdigit()):
            raise ApiError(400, f"limit must be a non-negative integer, not {limit_text[:40]!r}")
        a, b = self.find(q["a"]), self.find(q["b"])
        log = self.live.log

        def rows(run: str) -> dict[str, answers.Row]:
            return diff.item_rows(log.read(run=run, kinds=answers.ITEM_KINDS))

        a_items = await self.reader.run_sync(lambda: rows(a.run))
        b_items = await self.reader.run_sync(lambda: rows(b.run))
        try:
            found = diff.diff(a.to_dict(), a_items, b.to_dict(), b_items, force=force,
                              limit=None if limit_text is None else int(limit_text))
        except diff.DatasetsDiffer as e:
            raise ApiError(409, str(e)) from None
        return _json(found)
