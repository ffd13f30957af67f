"""The ``vlmd`` command line. Every command takes ``--config PATH`` and finds the daemon from it."""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import io
import logging
import signal
import sqlite3
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import trio

from vlmd.cli import client
from vlmd.cli import cluster as _cluster_commands  # noqa: F401  (they register themselves)
from vlmd.cli import offline as _offline_commands  # noqa: F401  (they register themselves)
from vlmd.cli import report as _report_commands  # noqa: F401
from vlmd.cli import run as _run_commands  # noqa: F401
from vlmd.cli.base import COMMANDS, CliError, command, one_line, unwrapped
from vlmd.cli.follow import StatusLine, status_line
from vlmd.cli.wsclient import Closed, open_ws
from vlmd.config import Config, ConfigError
from vlmd.daemon import datasette
from vlmd.daemon.serve import serve
from vlmd.daemon.startup import StartupError
from vlmd.live import replay
from vlmd.projections import export
from vlmd.projections.summary import summarize
from vlmd.projections.tracker import AmbiguousName
from vlmd.store.log import EventLog

GC_YOUNG = 50_000  # allocations between young collections in `vlmd serve` (default 700)


def _serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", help="bind address (default: server.host, 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default: server.port, 8470; 0 picks one)")
    p.add_argument("--db", help="event log file (default: log.path, ./vlmd.db)")


@command("serve", _serve_args)
def cmd_serve(args: argparse.Namespace, config: Config) -> int:
    """Run the daemon until SIGTERM or SIGINT, then stop gracefully.

    Example:
        vlmd serve --config /etc/vlmd/vlmd.toml
    """
    server = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    config = config.replace(server=server, **({"log": {"path": args.db}} if args.db else {}))

    async def main() -> None:
        shutdown = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signals, shutdown, nursery.cancel_scope)
            await serve(config, shutdown=shutdown)
            nursery.cancel_scope.cancel()

    # Ingest allocates ~5,000 tracked objects per 1,000-event batch, all alive until the batch is
    # folded: with the default thresholds (700, 10, 10) the cyclic GC scans and promotes them
    # several times a batch (~2 ms of a ~20 ms batch, see docs/BENCHMARKS.md "Ingest"). A larger
    # first generation lets a batch die by refcount before a collection sees it; what was
    # imported before serving lives as long as the daemon and is kept out of full collections.
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG, 20, 10)
    trio.run(main)
    return 0


async def _stop_on_signals(shutdown: trio.Event, scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            if shutdown.is_set():
                logging.getLogger("vlmd").warning("second %s: stopping now",
                                                  signal.Signals(signum).name)
                scope.cancel()
                return
            logging.getLogger("vlmd").info("%s received", signal.Signals(signum).name)
            shutdown.set()


def _log_file(args: argparse.Namespace, config: Config) -> EventLog:
    try:
        return replay.open_readonly(args.db or config.log.path)
    except FileNotFoundError as e:
        raise CliError(str(e)) from None


def _run_id(event_log: EventLog, run: str) -> str:
    found = replay.resolve_run(event_log, run)
    if found is None:
        raise CliError(f"no run {run!r} in {event_log.path} (neither an id nor a name)")
    return found


def _db_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--db", metavar="FILE", help=f"{what} (default: log.path); any copy works")


def _replay_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="run id or name")
    p.add_argument("--speed", type=float, default=1.0,
                   help="time factor: 10 plays ten times faster than it happened (default 1)")
    p.add_argument("--db", metavar="FILE",
                   help="replay the run from this log file, here (default: the daemon does)")


@command("replay", _replay_args)
def cmd_replay(args: argparse.Namespace, config: Config) -> int:
    """Play a past run through the fold, paced as it happened, as a status line.

    The daemon folds the run's events again from the log (nothing is appended) and streams the
    states (WS /api/replay); the replay page shows the same replay in the browser. With --db,
    any log file is replayed here, without a daemon.

    Example:
        vlmd replay nightly --speed 20
        vlmd replay r-7f3a2b9c01 --speed 100 --db /backup/vlmd-2026-01.db
    """
    if not 0 < args.speed <= replay.MAX_SPEED:
        raise CliError(f"--speed must be a number above 0 and up to {replay.MAX_SPEED:g}")
    line = StatusLine(sys.stderr)

    async def local(event_log: EventLog, run: str) -> Message:
        began, message = trio.current_time(), None
        for due, message in replay.play(event_log.read(run=run), speed=args.speed):
            await trio.sleep_until(began + due)
            _show(line, message)
        assert message is not None  # play always yields at least the first state
        return message

    async def remote(run: str) -> Message:
        url = f"{config.url.replace('http', 'ws', 1)}/api/replay?run={quote(run)}" \
              f"&speed={args.speed!r}"
        message: Message = {}
        try:
            async with open_ws(url, token=config.resolve_token()) as ws:
                while True:
                    message = orjson.loads(await ws.get_message())
                    _show(line, message)
        except Closed as closed:
            if closed.code != 1000:
                raise CliError(f"the replay stopped: {closed.reason or closed.code}") from None
        except OSError as e:
            raise CliError(f"cannot reach vlmd at {config.url} ({e})") from None
        return message

    began = time.monotonic()
    if args.db:
        event_log = _log_file(args, config)
        run = _run_id(event_log, args.run)
        last = trio.run(local, event_log, run)
    else:
        run = client.call(config, "GET", f"/api/runs/{quote(args.run, safe='')}")["run"]
        print(f"vlmd: replaying run {run}; watch it at {config.url}/replay.html?run={quote(run)}",
              file=sys.stderr)
        last = trio.run(remote, run)
    print(f"replayed {last.get('folded', 0)} events of {run} in {time.monotonic() - began:.2f} s "
          f"(speed {args.speed:g})")
    return 0


Message = dict[str, Any]


def _show(line: StatusLine, message: Message) -> None:
    """Draw a replay message's run row (the last message ends the line)."""
    end = bool(message.get("end"))
    if message.get("runs"):
        line.show(status_line(message["runs"][0]), last=end)


def _state_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", nargs="?", metavar="RUN", help="one run (id or name); default: all")
    p.add_argument("--at", metavar="SEQ|TIME",
                   help="a seq (digits), or a time: ISO 8601 or @EPOCH seconds (default: now)")
    _db_arg(p, "log file to read")


@command("state", _state_args)
def cmd_state(args: argparse.Namespace, config: Config) -> int:
    """Print the TaskTracker state as JSON, now or as it was at a seq or a time.

    Reads the log file directly (no daemon needed) and folds the prefix up to that point.

    Example:
        vlmd state --at 12000 nightly
        vlmd state --at 2026-09-18T14:30:00
    """
    event_log = _log_file(args, config)
    seq = None
    if args.at:
        try:
            seq, when = replay.parse_at(args.at)
        except ValueError:
            raise CliError(f"--at {args.at!r}: expected a seq, @EPOCH or an ISO 8601 time"
                           ) from None
        if when is not None:
            seq = replay.seq_at_time(event_log, when)
    folded = replay.state_at(event_log, seq)
    if args.run:
        state = folded.find(args.run)
        if state is None:
            raise CliError(f"no run {args.run!r} in the log up to seq {folded.last_seq}")
        out: dict[str, Any] = {**state.to_dict(), "summary": summarize(state)}
    else:
        out = {"last_seq": folded.last_seq, "runs": [s.to_dict() for s in folded.runs.values()]}
    print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
    return 0


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="run id or name")
    p.add_argument("--format", choices=export.FORMATS, default="csv", help="(default: csv)")
    p.add_argument("-o", "--output", metavar="FILE", help="write here (default: stdout)")
    p.add_argument("--no-escape", action="store_true",
                   help="CSV: write cells that begin with = + - @ tab or CR as they are (by "
                        "default they get a leading ' so spreadsheets do not run them)")
    _db_arg(p, "log file to read")


@command("export", _export_args)
def cmd_export(args: argparse.Namespace, config: Config) -> int:
    """Write a run's answers (the answers.csv rows) as CSV, JSON Lines or Parquet.

    Example:
        vlmd export nightly --format jsonl -o nightly.jsonl
    """
    event_log = _log_file(args, config)
    buf = io.BytesIO()
    try:
        n = export.write(export.rows(event_log, _run_id(event_log, args.run)), args.format, buf,
                         escape=not args.no_escape)
    except export.ExportError as e:
        raise CliError(str(e)) from None
    if args.output:
        Path(args.output).write_bytes(buf.getvalue())
    else:
        sys.stdout.buffer.write(buf.getvalue())
        sys.stdout.buffer.flush()
    print(f"exported {n} rows as {args.format}", file=sys.stderr)
    return 0


def _datasette_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("db", nargs="?", metavar="DB", help="log file (default: log.path)")
    p.add_argument("--port", type=int, help="port (default: datasette.port, 8471; 0 picks one)")


@command("datasette", _datasette_args)
def cmd_datasette(args: argparse.Namespace, config: Config) -> int:
    """Browse an event log in Datasette, read-only, until Ctrl-C: the live log or an old copy.

    Example:
        vlmd datasette
        vlmd datasette /backup/vlmd-2026-01.db --port 8472
    """
    db = Path(args.db or config.log.path)
    if not db.is_file():
        raise CliError(f"{db}: no such event log")
    return datasette.run_foreground(db, config.datasette.port if args.port is None else args.port)


def parser() -> argparse.ArgumentParser:
    """The argument parser: shared options on every subcommand."""
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("--config", metavar="PATH",
                        help="vlmd.toml (default: $VLMD_CONFIG, else ./vlmd.toml, else defaults)")
    top = argparse.ArgumentParser(prog="vlmd", description=__doc__)
    top.add_argument("--version", action="version", version=f"vlmd {_version()}")
    subs = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (fn, setup) in COMMANDS.items():
        doc = fn.__doc__ or ""
        sub = subs.add_parser(name, parents=[shared], help=doc.splitlines()[0],
                              description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
        setup(sub)
    return top


def _version() -> str:
    try:
        return importlib.metadata.version("vlmd")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout, not installed
        return "(not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``vlmd``: exit status 0 on success, 2 on a user mistake (`vlmd run`
    has more: see its help)."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
    args = parser().parse_args(argv)
    try:
        config = Config.load(args.config)
        fn, _ = COMMANDS[args.command]
        return unwrapped(fn, args, config)
    except (ConfigError, CliError, AmbiguousName, StartupError) as e:
        text = "\n  ".join(one_line(line) for line in str(e).split("\n"))
        print(f"vlmd {args.command}: {text}", file=sys.stderr)
        return 2
    except (OSError, sqlite3.DatabaseError, UnicodeError, OverflowError, httpx.InvalidURL) as e:
        # a file or value the user named that cannot be used: say which, without a traceback
        print(f"vlmd {args.command}: {type(e).__name__}: {one_line(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
