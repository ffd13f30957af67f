"""Attached to a run from a terminal: the progress bar with Ctrl-C handled, the end of a run
said in full (how it ended, why, its commonest item errors, its accuracy by category and
CircularEval's), and the exit status it earns.

Ctrl-C while following (`watch`): the run does not stop with the command. On a terminal the
command asks whether to cancel it (a second Ctrl-C says yes); otherwise it says so, and a
second Ctrl-C within `SECOND_CTRL_C_S` cancels it. `vlmd follow RUN` attaches again.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import AsyncIterator
from typing import Any, TextIO

import trio

from vlmd.cli.base import CliError
from vlmd.cli.client import Client
from vlmd.cli.follow import follow

SECOND_CTRL_C_S = 5.0
# `vlmd run`'s exit status by how the run ended (README, "Exit status")
EXIT = {"finished": 0, "failed": 1, "cancelled": 1, "finished_with_failures": 3}
EXIT_DETACHED = 130  # as a shell reports a Ctrl-C


def exit_status(state: dict[str, Any]) -> int:
    """0 finished with no failed item, 3 finished with failed items, 1 failed or cancelled."""
    return EXIT.get(state.get("outcome") or "", 1)


async def watch(client: Client, run: str, *, embedded: bool, out: TextIO = sys.stderr) -> str:
    """Show the run's progress until it ends (``"ended"``), or until a Ctrl-C leaves it running
    (``"detached"``) or cancels it (``"cancelled"``); see the module docstring. `embedded`: the
    daemon lives in this process (it stops with it; the agents do not)."""
    ws_url = client.url.replace("http", "ws", 1)
    how = "ended"
    with trio.open_signal_receiver(signal.SIGINT) as interrupts:
        async with trio.open_nursery() as nursery:
            drawing = trio.CancelScope()

            async def draw() -> None:
                with drawing:
                    await follow(ws_url, run, 0, out, token=client.token)
                if not drawing.cancelled_caught:
                    nursery.cancel_scope.cancel()

            nursery.start_soon(draw)
            async for _ in interrupts:
                drawing.cancel()
                how = await _interrupted(client, run, interrupts, embedded, out)
                nursery.cancel_scope.cancel()
                break
    return how


async def _interrupted(client: Client, run: str, interrupts: AsyncIterator[int],
                       embedded: bool, out: TextIO) -> str:
    goes_on = (f"this vlmd stops with this command; run {run}'s agents finish their items and "
               "keep their events for the next `vlmd serve` on this log" if embedded
               else f"run {run} goes on in vlmd")
    later = f"follow it: vlmd follow {run}; cancel it: vlmd cancel {run}"
    out.write("\n")
    if sys.stdin.isatty() and out.isatty():
        out.write(f"vlmd: {goes_on} ({later}).\nCancel run {run} now? [y/N] (Ctrl-C: yes) ")
        out.flush()
        answer = await _answer_or_interrupt(interrupts)
        cancel = answer is None or answer.strip().lower() in ("y", "yes")
    else:
        out.write(f"vlmd: interrupted: {goes_on} ({later}); a second Ctrl-C within "
                  f"{SECOND_CTRL_C_S:g} s cancels it\n")
        out.flush()
        cancel = False
        with trio.move_on_after(SECOND_CTRL_C_S):
            await interrupts.__anext__()
            cancel = True
    if not cancel:
        return "detached"
    try:
        result = await client.call("POST", f"/api/runs/{run}/cancel")
    except CliError as e:  # it ended meanwhile
        out.write(f"\nvlmd: {e}\n")
        return "ended"
    out.write(f"\nvlmd: run {run} cancelled ({result['agents_stopped']} agents stopped)\n")
    return "cancelled"


async def _answer_or_interrupt(interrupts: AsyncIterator[int]) -> str | None:
    """A line typed on stdin, or None when a Ctrl-C comes first."""
    answer: list[str | None] = [None]
    async with trio.open_nursery() as nursery:
        async def read() -> None:
            answer[0] = await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
            nursery.cancel_scope.cancel()

        nursery.start_soon(read)
        await interrupts.__anext__()
        nursery.cancel_scope.cancel()
    return answer[0]


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def ending_lines(state: dict[str, Any]) -> list[str]:
    """How the run (a `GET /api/runs/{run}` answer) ended, in a few lines: its outcome and
    reason, its commonest item errors with counts, and how tokens and VRAM were measured."""
    label = f"{state['name']} ({state['run']})" if state.get("name") else state["run"]
    done, failed, total = state["done"], state["failed"], state.get("total")
    items = f"{done + failed}/{total if total is not None else '?'} items"
    outcome = state.get("outcome") or state["status"]
    lines = [f"run {label}: {outcome.replace('_', ' ')}, {items}, {failed} failed"]
    if state["status"] in ("failed", "cancelled") and state.get("reason"):
        lines.append(f"  why: {state['reason']}")
    summary = state.get("summary") or {}
    if failures := summary.get("failures"):
        lines.append(f"  item errors ({_count(failed, 'failed item')}):")
        lines += [f"  {f['count']:>6}  {f['reason']}" for f in failures]
    if sources := summary.get("tokens_source"):
        lines.append("  tokens counted by: " + ", ".join(
            f"{source} ({_count(n, 'item')})" for source, n in sources.items()))
    if note := summary.get("vram_note"):
        lines.append(f"  VRAM: {note}")
    return lines + benchmark_lines(summary)


def _acc(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def benchmark_lines(summary: dict[str, Any]) -> list[str]:
    """The benchmark's table from a run's summary: CircularEval's accuracy (a circular file),
    the unparsed answers, and the accuracy per category and per l2-category, by name (items:
    the completed items with a score; CIRCULAR: CircularEval's accuracy over the category's
    questions)."""
    lines = []
    circular = bool(summary.get("circular_groups"))
    if circular:
        lines.append(f"  circular accuracy: {_acc(summary.get('circular_accuracy'))} over "
                     f"{_count(summary['circular_groups'], 'question')} (every rotation right; "
                     f"accuracy over items: {_acc(summary.get('accuracy'))})")
    if unparsed := summary.get("unparsed"):
        lines.append(f"  unparsed: {_count(unparsed, 'answer')} named no option (scored 0)")
    for level, title in (("by_category", "CATEGORY"), ("by_l2_category", "L2_CATEGORY")):
        table = summary.get(level) or {}
        if not table:
            continue
        head = [title, "ITEMS", "ACCURACY"] + (["CIRCULAR", "QUESTIONS"] if circular else [])
        names = sorted(table, key=lambda name: (name.casefold(), name))
        rows = [[name, str(table[name]["items"]), _acc(table[name]["accuracy"])]
                + ([_acc(table[name].get("circular_accuracy")),
                    str(table[name].get("circular_groups", 0))] if circular else [])
                for name in names]
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        lines += ["  " + "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                                   for i, (cell, w) in enumerate(zip(r, widths, strict=True)))
                  for r in [head, *rows]]
    return lines
