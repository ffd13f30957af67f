"""Following runs from a terminal: a progress bar fed by the daemon's state stream, and tables.

`follow` shows a run's row as the daemon's fold serves it (``WS /api/state``: the run's status,
counts, rate, ETA and accuracy are decided there, not here) and redraws one status line, at
most `REDRAW_S` apart; on a pipe it prints a line every `PLAIN_EVERY_S` instead. It reconnects
with ``after=`` when the stream drops it. `vlmd replay` draws its messages with the same
`StatusLine`.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

import trio

from vlmd.cli.wsclient import Closed, open_ws
from vlmd.projections.tracker import TERMINAL

REDRAW_S = 0.2
PLAIN_EVERY_S = 5.0
BAR = 24
Row = dict[str, Any]


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def phase_text(phase: dict[str, Any] | None, now: float | None = None) -> str:
    """What the run's agents are doing (a `RunState.phase`), for the status line: its message
    and for how long; "" once they evaluate (the bar says the rest)."""
    if not phase or phase.get("phase") == "evaluating":
        return ""
    text = str(phase.get("message") or phase.get("phase"))
    since = (time.time() if now is None else now) - float(phase.get("at") or 0)
    return f"{text} ({since:.0f} s)" if 0 <= since < 86_400 else text


def status_line(row: Row) -> str:
    """One line for a run's row: bar, done/total, failures, what the agents are doing before
    their first items, rate, ETA and accuracy so far."""
    total = row["total"] or 0
    done = row["done"] + row["failed"]
    filled = min(int(BAR * done / total), BAR) if total else 0
    rate, acc = row["rate"], row["accuracy"]
    parts = [f"{row['run']} [{'#' * filled}{'.' * (BAR - filled)}] {done}/{total or '?'}",
             f"{row['failed']} failed" if row["failed"] else "", phase_text(row.get("phase")),
             f"{rate:.1f} it/s" if rate else "", f"ETA {_duration(row['eta_s'])}",
             "" if acc is None else f"acc {acc:.3f}",
             (row.get("outcome") or row["status"]).replace("_", " ")]
    return "  ".join(p for p in parts if p)


class StatusLine:
    """One status line on `out`: redrawn in place on a terminal, a line now and then on a pipe
    (and always the last one)."""

    def __init__(self, out: TextIO) -> None:
        self.out, self.tty, self.drawn = out, out.isatty(), 0.0

    def show(self, text: str, *, last: bool = False) -> None:
        """Draw `text`; `last`: the final line (always written, and the line ended)."""
        now = time.monotonic()
        if not (self.tty or last or now - self.drawn >= PLAIN_EVERY_S):
            return
        self.out.write(("\r\x1b[2K" if self.tty else "") + text + ("" if self.tty else "\n"))
        if last and self.tty:
            self.out.write("\n")
        self.out.flush()
        self.drawn = now


async def follow(ws_url: str, run: str, after: int, out: TextIO = sys.stderr, *,
                 token: str | None = None) -> Row:
    """Show the progress of `run` (its id, or its name) until it ends; returns its final row as
    the daemon serves it (`RunState.to_dict`). `token`: sent when reads need one."""
    line = StatusLine(out)
    last = after
    row: Row | None = None
    while True:
        try:
            async with open_ws(f"{ws_url}/api/state?after={last}", token=token) as ws:
                while True:
                    with trio.move_on_after(REDRAW_S):
                        while True:
                            message = json.loads(await ws.get_message())
                            last = message["seq"]
                            for r in message["runs"]:
                                if run in (r["run"], r["name"]):
                                    row = r
                    if row is None:
                        continue
                    ended = row["status"] in TERMINAL
                    line.show(status_line(row), last=ended)
                    if ended:
                        return row
        except (Closed, OSError):
            await trio.sleep(0.5)  # vlmd restarting, or we were too slow: resume after `last`
