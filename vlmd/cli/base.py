"""What every ``vlmd`` command shares: the registry, the user-error type, and plain output."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from vlmd.config import Config

T = TypeVar("T")
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


def unwrapped(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)`; an error that trio wrapped alone in an exception group (raised inside a
    nursery, e.g. under an embedded daemon) is raised bare, so a user error reads the same
    whichever way `vlmd run` reached vlmd."""
    try:
        return fn(*args)
    except BaseExceptionGroup as group:
        leaves = list(_leaves(group))
        if len(leaves) == 1:
            raise leaves[0] from None
        raise


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for e in group.exceptions:
        if isinstance(e, BaseExceptionGroup):
            yield from _leaves(e)
        else:
            yield e
