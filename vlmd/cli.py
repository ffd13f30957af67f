"""The ``vlmd`` command line. Every command takes ``--config PATH`` and finds the daemon from it."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import trio

from vlmd.config import Config, ConfigError
from vlmd.daemon import serve

Command = Callable[[argparse.Namespace, Config], int]
COMMANDS: dict[str, tuple[Command, Callable[[argparse.ArgumentParser], None]]] = {}


class CliError(Exception):
    """A mistake the user can fix; printed as one line, no traceback."""


def command(name: str, setup: Callable[[argparse.ArgumentParser], None] = lambda p: None,
            ) -> Callable[[Command], Command]:
    """Register a subcommand; its docstring (with an Example: block) is its help."""
    def register(fn: Command) -> Command:
        COMMANDS[name] = (fn, setup)
        return fn
    return register


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


def _client(config: Config) -> httpx.Client:
    return httpx.Client(base_url=config.url, timeout=30.0,
                        headers={"authorization": f"Bearer {config.resolve_token()}"})


def _get(config: Config, path: str) -> Any:
    try:
        with _client(config) as client:
            response = client.get(path)
    except httpx.TransportError as e:
        raise CliError(f"cannot reach vlmd at {config.url} ({e}); is `vlmd serve` running?"
                       ) from None
    if response.status_code >= 400:
        raise CliError(f"vlmd answered {response.status_code}: "
                       f"{response.json().get('error', response.text)}")
    return response.json()


def _fmt(value: Any, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


@command("runs")
def cmd_runs(args: argparse.Namespace, config: Config) -> int:
    """List every run the daemon knows, newest last.

    Example:
        vlmd runs
    """
    runs = _get(config, "/api/runs")["runs"]
    print(f"{'RUN':14} {'NAME':16} {'STATUS':10} {'DONE':>7} {'FAILED':>6} {'TOTAL':>7} "
          f"{'ACC':>6}  MODEL")
    for r in runs:
        print(f"{r['run']:14} {(r['name'] or '-')[:16]:16} {r['status']:10} {r['done']:7} "
              f"{r['failed']:6} {_fmt(r['total'], 'd'):>7} {_fmt(r['accuracy'], '.3f'):>6}  "
              f"{r['model'] or '-'}")
    return 0


def parser() -> argparse.ArgumentParser:
    """The argument parser: shared options on every subcommand."""
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("--config", metavar="PATH",
                        help="vlmd.toml (default: $VLMD_CONFIG, else ./vlmd.toml, else defaults)")
    top = argparse.ArgumentParser(prog="vlmd", description=__doc__)
    subs = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (fn, setup) in COMMANDS.items():
        doc = fn.__doc__ or ""
        sub = subs.add_parser(name, parents=[shared], help=doc.splitlines()[0],
                              description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
        setup(sub)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``vlmd``: exit status 0 on success, 2 on a user mistake."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parser().parse_args(argv)
    try:
        config = Config.load(args.config)
        fn, _ = COMMANDS[args.command]
        return fn(args, config)
    except (ConfigError, CliError) as e:
        print(f"vlmd {args.command}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
