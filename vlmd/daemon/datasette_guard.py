"""A Datasette plugin vlmd loads into the Datasette it runs (``--plugins-dir``, a one-line shim
that imports this module): it lives in Datasette's process, not vlmd's.

- `asgi_wrapper`: Datasette answers only vlmd's own host names and origins, the same check as
  vlmd's (`vlmd.web.origins`), with the names vlmd hands over in ``$VLMD_ALLOWED_HOSTS`` and
  ``$VLMD_ALLOWED_ORIGINS`` (JSON lists).
- `startup`: Datasette dies with the vlmd that started it. vlmd holds the only write end of a
  pipe whose read end this process has (``$VLMD_PARENT_FD``); when vlmd exits, however it
  exits (``kill -9`` included), the read returns and this process stops itself (SIGTERM, then
  ``os._exit`` if that did not end it). A watched pipe, not ``PR_SET_PDEATHSIG``: that signal
  fires when the parent *thread* that forked exits, and trio forks from worker threads.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

import datasette

from vlmd.web.origins import Origins, guard

F = TypeVar("F", bound=Callable[..., Any])
hookimpl = cast(Callable[[F], F], datasette.hookimpl)  # pluggy's marker, untyped there

PARENT_FD = "VLMD_PARENT_FD"
ALLOWED_HOSTS = "VLMD_ALLOWED_HOSTS"
ALLOWED_ORIGINS = "VLMD_ALLOWED_ORIGINS"
EXIT_AFTER_S = 5.0


def _listed(name: str) -> list[str]:
    value: Any = json.loads(os.environ.get(name) or "[]")
    return [str(v) for v in value] if isinstance(value, list) else []


@hookimpl
def asgi_wrapper(datasette: Any) -> Any:
    """Wrap Datasette's ASGI app in vlmd's Host and Origin checks."""
    origins = Origins(_listed(ALLOWED_HOSTS), _listed(ALLOWED_ORIGINS))
    return lambda app: guard(app, origins)


def _watch_parent(fd: int) -> None:
    try:
        while os.read(fd, 1):
            pass
    except OSError:
        pass
    os.kill(os.getpid(), signal.SIGTERM)  # Datasette's server stops on it as on Ctrl-C
    time.sleep(EXIT_AFTER_S)
    os._exit(1)


@hookimpl
def startup(datasette: Any) -> None:
    """Start watching the parent's pipe, when vlmd gave one."""
    fd = os.environ.get(PARENT_FD)
    if fd is not None and fd.isdigit():
        threading.Thread(target=_watch_parent, args=(int(fd),), daemon=True,
                         name="vlmd parent").start()
