"""What `vlmd serve` checks before it serves: the log's lock, the log itself, what it had
acknowledged; and every start-up failure as one line that names the file or the port.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
from pathlib import Path

import trio

from vlmd.config import Config
from vlmd.store.lockfile import LogInUse, LogLock
from vlmd.store.log import EventLog

log = logging.getLogger("vlmd")
SYNC_ACKED_S = 1.0


class StartupError(Exception):
    """vlmd cannot start; the message is one line naming the file or port and what to do."""


def _log_problem(path: Path, e: sqlite3.Error) -> str:
    text = str(e)
    code = getattr(e, "sqlite_errorcode", 0) & 0xFF
    if code == sqlite3.SQLITE_FULL:
        return f"{path}: disk full: cannot open the event log ({text}); free space and start again"
    if code in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT) or "not a database" in text:
        return (f"{path}: not a readable SQLite event log ({text}); move it aside (vlmd starts "
                "a new log) or point [log] path at the right file")
    if code in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM):
        return f"{path}: cannot open the event log for writing ({text})"
    return f"{path}: cannot open the event log ({text})"


def _open(config: Config) -> tuple[LogLock, EventLog]:
    path = Path(config.log.path)
    try:
        lock = LogLock.acquire(path)
    except LogInUse as e:
        raise StartupError(str(e)) from None
    except OSError as e:
        full = "disk full: " if e.errno == errno.ENOSPC else ""
        raise StartupError(f"{path}: {full}cannot lock the event log ({e.strerror})") from None
    try:
        return lock, EventLog.open(path, synchronous=config.log.synchronous)
    except sqlite3.Error as e:
        lock.release()
        raise StartupError(_log_problem(path, e)) from None
    except OSError as e:
        lock.release()
        raise StartupError(f"{path}: cannot open the event log ({e.strerror})") from None
    except BaseException:
        lock.release()
        raise


async def open_log(config: Config) -> tuple[LogLock, EventLog]:
    """Lock the log (one daemon per log) and open it; StartupError, one line, if either
    cannot be done."""
    return await trio.to_thread.run_sync(_open, config)


def lost_acknowledged(lock: LogLock, event_log: EventLog) -> str | None:
    """Log an ERROR and return the warning when the log ends below the seq vlmd had
    acknowledged before (events writers were told were stored are gone); else None. The mark
    then starts again from the log's end: the loss is reported once."""
    if event_log.last_seq >= lock.previous_acked:
        return None
    lost = lock.previous_acked - event_log.last_seq
    warning = (f"the log {event_log.path} ends at seq {event_log.last_seq}, but vlmd had "
               f"acknowledged events up to seq {lock.previous_acked} ({lock.path}): {lost} "
               "acknowledged events are gone (a deleted or damaged WAL?) and new events will "
               "reuse their seqs; restore the log (and its -wal file) from a backup if you can")
    log.error("LOST EVENTS: %s", warning)
    lock.restart_at(event_log.last_seq)
    return warning


async def sync_acked(lock: LogLock, *, task_status: trio.TaskStatus[None]
                     = trio.TASK_STATUS_IGNORED) -> None:
    """Flush the acknowledged mark to disk every `SYNC_ACKED_S` (and once more when
    cancelled)."""
    task_status.started()
    try:
        while True:
            await trio.sleep(SYNC_ACKED_S)
            await trio.to_thread.run_sync(lock.sync)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(lock.sync)


def listen_problem(config: Config, e: BaseException) -> BaseException:
    """A failure to bind (an OSError, alone in nested groups) as one line naming the address;
    anything else as it is."""
    while isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
        e = e.exceptions[0]
    if not isinstance(e, OSError):
        return e
    server = config.server
    host = f"[{server.host}]" if ":" in server.host else server.host
    return StartupError(f"cannot listen on {host}:{server.port}: {e.strerror or e} "
                        "(another program holds that port? set [server] port)")
