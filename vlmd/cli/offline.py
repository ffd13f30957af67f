"""Reading runs without a daemon: the commands that show runs (`vlmd runs` here, `vlmd report`,
`vlmd diff`) ask the daemon when one answers, else fold the log file themselves with the
daemon's own folds, so they work after `scripts/demo --exit` or on a copy of an old log."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import trio

from vlmd.cli.base import CliError, command
from vlmd.cli.client import Client, answers
from vlmd.config import Config
from vlmd.live import replay
from vlmd.projections import diff as diffs
from vlmd.projections.answers import ITEM_KINDS
from vlmd.projections.summary import summarize
from vlmd.projections.tracker import RunState


def _row(state: RunState) -> dict[str, Any]:
    """A run as ``GET /api/runs/{run}`` shows it."""
    return {**state.to_dict(), "summary": summarize(state)}


def from_log(path: str | Path, runs: list[str]) -> list[dict[str, Any]]:
    """The states of `runs` (ids or names; every run when empty), folded from the log file."""
    try:
        event_log = replay.open_readonly(path)
    except FileNotFoundError as e:
        raise CliError(str(e)) from None
    try:
        folded = replay.state_at(event_log)
    finally:
        event_log.close()
    if not runs:
        return [_row(s) for s in folded.runs.values()]
    rows = []
    for run in runs:
        state = folded.find(run)
        if state is None:
            raise CliError(f"no run {run!r} in {path} (neither an id nor a name)")
        rows.append(_row(state))
    return rows


async def _from_daemon(client: Client, runs: list[str]) -> list[dict[str, Any]]:
    if not runs:
        listed = await client.call("GET", "/api/runs")
        runs = [r["run"] for r in listed["runs"]]
    return [await client.call("GET", f"/api/runs/{run}") for run in runs]


def states(config: Config, runs: list[str], db: str | None = None) -> list[dict[str, Any]]:
    """The states of `runs` (every run when empty) as ``GET /api/runs/{run}`` gives them: from
    the daemon when one answers (and no `db` is named), else folded from the log file (`db`,
    else ``log.path``)."""
    if db is None and trio.run(answers, config.url):
        async def ask() -> list[dict[str, Any]]:
            async with Client.of(config) as client:
                return await _from_daemon(client, runs)
        return trio.run(ask)
    return from_log(_log_path(config, db), runs)


def diff(config: Config, a: str, b: str, *, force: bool = False, limit: int | None = None,
         db: str | None = None) -> dict[str, Any]:
    """The items that changed from run `a` to run `b` (`vlmd.projections.diff`): from the
    daemon (``GET /api/diff``) when one answers (and no `db` is named), else folded from the
    log file. CliError when the runs evaluated different datasets and not `force`."""
    if db is None and trio.run(answers, config.url):
        query = {"a": a, "b": b, "force": int(force),
                 **({} if limit is None else {"limit": limit})}

        async def ask() -> dict[str, Any]:
            async with Client.of(config) as client:
                return dict(await client.call("GET", f"/api/diff?{urlencode(query)}"))
        return trio.run(ask)
    return diff_from_log(_log_path(config, db), a, b, force=force, limit=limit)


def diff_from_log(path: str | Path, a: str, b: str, *, force: bool = False,
                  limit: int | None = None) -> dict[str, Any]:
    """`diff` of runs `a` and `b` (ids or names) folded from the log file at `path`."""
    try:
        event_log = replay.open_readonly(path)
    except FileNotFoundError as e:
        raise CliError(str(e)) from None
    try:
        folded = replay.state_at(event_log)
        found = []
        for run in (a, b):
            state = folded.find(run)
            if state is None:
                raise CliError(f"no run {run!r} in {path} (neither an id nor a name)")
            items = diffs.item_rows(event_log.read(run=state.run, kinds=ITEM_KINDS))
            found.append((state.to_dict(), items))
    finally:
        event_log.close()
    (row_a, items_a), (row_b, items_b) = found
    try:
        return diffs.diff(row_a, items_a, row_b, items_b, force=force, limit=limit)
    except diffs.DatasetsDiffer as e:
        raise CliError(str(e)) from None


def listing(config: Config, db: str | None = None) -> list[dict[str, Any]]:
    """Every run as ``GET /api/runs`` lists it (with its accuracy): from the daemon when one
    answers (and no `db` is named), else folded from the log file."""
    if db is None and trio.run(answers, config.url):
        async def ask() -> list[dict[str, Any]]:
            async with Client.of(config) as client:
                return list((await client.call("GET", "/api/runs"))["runs"])
        return trio.run(ask)
    return [{**r, "accuracy": r["summary"]["accuracy"]}
            for r in from_log(_log_path(config, db), [])]


def _log_path(config: Config, db: str | None) -> str:
    if db is not None:
        return db
    print(f"vlmd: no daemon at {config.url}; reading the log {config.log.path}", file=sys.stderr)
    return config.log.path


def _fmt(value: Any, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def _runs_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", metavar="FILE",
                   help="read this log file (default: ask the daemon, else read log.path)")


@command("runs", _runs_args)
def cmd_runs(args: argparse.Namespace, config: Config) -> int:
    """List every run, oldest first; without a running daemon, from the log file.

    Example:
        vlmd runs
    """
    print(f"{'RUN':14} {'NAME':16} {'STATUS':22} {'DONE':>7} {'FAILED':>6} {'TOTAL':>7} "
          f"{'ACC':>6}  MODEL")
    for r in listing(config, args.db):
        print(f"{r['run']:14} {(r['name'] or '-')[:16]:16} {r['outcome'] or r['status']:22} "
              f"{r['done']:7} {r['failed']:6} {_fmt(r['total'], 'd'):>7} "
              f"{_fmt(r['accuracy'], '.3f'):>6}  {r['model'] or '-'}")
    return 0
