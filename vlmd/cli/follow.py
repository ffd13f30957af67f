"""Following runs from a terminal: a progress bar fed by the WebSocket feed, and tables.

`follow` folds the run's events (the same tracker fold as the daemon) as the feed pushes them
and redraws one status line, at most `REDRAW_S` apart; on a pipe it prints a line every
`PLAIN_EVERY_S` instead. It reconnects with ``after=`` when the feed drops it.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

import trio

from vlmd.cli.wsclient import Closed, open_ws
from vlmd.projections import tracker
from vlmd.projections.tracker import TERMINAL, RunState
from vlmd.store.log import Event

REDRAW_S = 0.2
PLAIN_EVERY_S = 5.0
BAR = 24


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def status_line(state: RunState) -> str:
    """One line: bar, done/total, failures, rate, ETA and accuracy so far."""
    total = state.total or 0
    done = state.done + state.failed
    filled = int(BAR * done / total) if total else 0
    acc = [r.score for r in state.items.values() if r.ok and r.score is not None]
    rate = state.rate
    parts = [f"{state.run} [{'#' * filled}{'.' * (BAR - filled)}] {done}/{total or '?'}",
             f"{state.failed} failed" if state.failed else "",
             f"{rate:.1f} it/s" if rate else "", f"ETA {_duration(state.eta_s)}",
             f"acc {sum(acc) / len(acc):.3f}" if acc else "", state.status]
    return "  ".join(p for p in parts if p)


async def follow(ws_url: str, run: str, after: int, out: TextIO = sys.stderr) -> RunState:
    """Show the run's progress until it ends; returns its final state (as the feed told it)."""
    fold = tracker.Tracker()
    last, drawn, tty = after, 0.0, out.isatty()
    while True:
        try:
            async with open_ws(f"{ws_url}/api/feed?after={last}&run={run}") as ws:
                while True:
                    with trio.move_on_after(REDRAW_S):
                        while True:
                            for event in json.loads(await ws.get_message()):
                                tracker.apply(fold, _event(event))
                                last = event["seq"]
                    state = fold.runs.get(run)
                    if state is None:
                        continue
                    now = time.monotonic()
                    if tty or now - drawn >= PLAIN_EVERY_S or state.status in TERMINAL:
                        out.write(("\r\x1b[2K" if tty else "") + status_line(state)
                                  + ("" if tty else "\n"))
                        out.flush()
                        drawn = now
                    if state.status in TERMINAL:
                        if tty:
                            out.write("\n")
                        return state
        except (Closed, OSError):
            await trio.sleep(0.5)  # vlmd restarting, or we were too slow: resume after `last`


def _event(raw: dict[str, Any]) -> Event:
    return Event(raw["seq"], raw["key"], raw["run"], raw["kind"], raw["ts"], raw["received"],
                 raw["body"], "")


def _ms(stats: dict[str, Any], key: str) -> str:
    value = stats.get(key)
    return "-" if value is None else f"{value:.1f}"


def report_table(runs: Sequence[dict[str, Any]]) -> str:
    """The accuracy/efficiency comparison of runs (as `GET /api/runs/{run}` returns them).

    A ``*`` marks runs on the Pareto front of accuracy against TTFT p50 (no other run is at
    least as accurate and faster).
    """
    rows = []
    points = [(r["summary"]["accuracy"], r["summary"]["ttft_ms"]["p50"]) for r in runs]
    for r, (acc, ttft) in zip(runs, points, strict=True):
        s = r["summary"]
        front = acc is not None and ttft is not None and not any(
            a is not None and t is not None and a >= acc and t <= ttft and (a, t) != (acc, ttft)
            for a, t in points)
        rows.append([("*" if front else " ") + (r["name"] or r["run"]), r["model"] or "-",
                     f"{r['done']}/{r['total'] or '?'}", str(r["failed"]),
                     "-" if acc is None else f"{acc:.3f}",
                     _ms(s["ttft_ms"], "p50"), _ms(s["ttft_ms"], "p99"), _ms(s["tpot_ms"], "p50"),
                     _ms(s["vram_peak_delta_mb"], "p50"), _ms(s["vram_peak_delta_mb"], "max"),
                     "-" if s["items_per_s"] is None else f"{s['items_per_s']:.2f}"])
    head = ["RUN", "MODEL", "DONE", "FAILED", "ACCURACY", "TTFT_P50_MS", "TTFT_P99_MS",
            "TPOT_P50_MS", "VRAM_D_P50_MB", "VRAM_D_MAX_MB", "ITEMS_S"]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)).rstrip()
             for row in [head, *rows]]
    return "\n".join(lines) + "\n(* on the accuracy / TTFT p50 Pareto front)"
