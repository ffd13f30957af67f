"""What every ``vlmd`` command shares: the registry, the user-error type, and plain output."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from vlmd.config import Config

Command = Callable[[argparse.Namespace, Config], int]
Setup = Callable[[argparse.ArgumentParser], None]
COMMANDS: dict[str, tuple[Command, Setup]] = {}


class CliError(Exception):
    """A mistake the user can fix; printed as one line, no traceback."""


def command(name: str, setup: Setup = lambda p: None) -> Callable[[Command], Command]:
    """Register a subcommand; its docstring (with an Example: block) is its help."""
    def register(fn: Command) -> Command:
        COMMANDS[name] = (fn, setup)
        return fn
    return register


def one_line(text: str) -> str:
    """`text` with control characters escaped (a file name may hold a newline)."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)
