"""Datasette over the event log, as a supervised child process (it is asyncio; vlmd is trio).

`supervise` runs ``python -m datasette serve`` read-only against the live log (Datasette opens a
mutable file with ``?mode=ro`` and never writes unless a plugin asks; ``--immutable`` would be
wrong on a file that grows), restarts it when it dies and stops it with the daemon. The database
is always named ``vlmd`` (a symlink gives it that name when the file is called otherwise; SQLite
follows it, so the WAL is shared), so links are ``{url}/vlmd/events?run=RUN``.

The child loads `vlmd.daemon.datasette_guard`: it answers only vlmd's host names and origins,
and it dies with the vlmd that started it, however vlmd dies. A Datasette that an earlier vlmd
left behind on the port (stopped, hung, or started by a vlmd without that guard) is reclaimed
(stopped) at start: `reclaim`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import trio

from vlmd.daemon import datasette_guard
from vlmd.daemon.datasette_meta import DATABASE, metadata
from vlmd.store.log import connect
from vlmd.store.migrations import migrate, pending
from vlmd.web.origins import Origins

HOST = "127.0.0.1"
SQL_TIME_LIMIT_MS = 5_000
RESTART_MIN_S = 0.5
RESTART_MAX_S = 30.0
HEALTHY_AFTER_S = 60.0  # a child that ran this long restarts at once if it dies
_CHILD_ENV_DROP = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID")
PLUGINS = "plugins"  # the folder of the guard's shim, beside metadata.json
PARENT = "VLMD_DATASETTE_PARENT"  # "pid:start time" of the vlmd that started the child
RECLAIM_WAIT_S = 5.0
log = logging.getLogger("vlmd.daemon.datasette")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def is_current(db: Path) -> bool:
    """Whether the log at `db` has every migration of this vlmd (views included): an old copy
    may lack some, or hold older views."""
    conn = connect(db, readonly=True)
    try:
        return not pending(conn)
    finally:
        conn.close()


def command(db: Path, port: int, metadata_file: Path, *, immutable: bool = False) -> list[str]:
    """The Datasette command line for `db` (which must be named ``vlmd.db``), with the guard
    plugin from the folder `prepared` made beside `metadata_file`."""
    return [sys.executable, "-m", "datasette", "serve", *(["-i"] if immutable else []), str(db),
            "--host", HOST, "--port", str(port), "--metadata", str(metadata_file),
            "--plugins-dir", str(metadata_file.parent / PLUGINS),
            "--setting", "sql_time_limit_ms", str(SQL_TIME_LIMIT_MS)]


def child_env(origins: Origins, parent_fd: int | None = None) -> dict[str, str]:
    """The environment for the child: ours without systemd's notify and socket variables, and
    what the guard plugin reads (the names it answers to, the pipe it watches, and who its
    parent is, for `reclaim`)."""
    env = {k: v for k, v in os.environ.items() if k not in _CHILD_ENV_DROP}
    env[datasette_guard.ALLOWED_HOSTS] = json.dumps(sorted(origins.hosts))
    env[datasette_guard.ALLOWED_ORIGINS] = json.dumps(sorted(origins.origins))
    env[PARENT] = _identity(psutil.Process())
    if parent_fd is not None:
        env[datasette_guard.PARENT_FD] = str(parent_fd)
    return env


def _identity(proc: psutil.Process) -> str:
    return f"{proc.pid}:{proc.create_time():.3f}"


def _stale(proc: psutil.Process, port: int) -> bool:
    """Whether `proc` is a Datasette a vlmd started on `port` whose vlmd is gone."""
    line = proc.cmdline()
    if "datasette" not in line or str(port) not in line or not any(
            "vlmd-datasette-" in part for part in line):
        return False
    parent = proc.environ().get(PARENT)
    if parent is None:  # started by a vlmd without the guard: stale once orphaned
        return bool(proc.ppid() == 1)
    pid = int(parent.partition(":")[0])
    try:
        return bool(_identity(psutil.Process(pid)) != parent)
    except psutil.NoSuchProcess:
        return True


def reclaim(port: int) -> list[int]:
    """Stop every Datasette of this user that an earlier vlmd left on `port`; their pids."""
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proc.uids().real == os.getuid() and _stale(proc, port):
                found.append(proc)
    for proc in found:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
            proc.resume()  # a stopped one takes its SIGTERM now
    _, alive = psutil.wait_procs(found, timeout=RECLAIM_WAIT_S)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=RECLAIM_WAIT_S)
    return [p.pid for p in found]


@contextmanager
def prepared(db: str | Path, *, snapshot: bool = False) -> Iterator[tuple[Path, Path]]:
    """A folder holding ``vlmd.db`` (a link to `db`, or with `snapshot` a migrated copy of it)
    and ``metadata.json``; yields their paths and removes the folder afterwards."""
    source = Path(db).resolve()
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such event log")
    with tempfile.TemporaryDirectory(prefix="vlmd-datasette-") as folder:
        target = Path(folder) / f"{DATABASE}.db"
        if snapshot:
            src, dst = connect(source, readonly=True), sqlite3.connect(target)
            try:
                src.backup(dst)
                dst.isolation_level = None
                migrate(dst)
            finally:
                src.close()
                dst.close()
        else:
            target.symlink_to(source)
        meta = Path(folder) / "metadata.json"
        meta.write_text(json.dumps(metadata(), indent=1))
        (Path(folder) / PLUGINS).mkdir()
        (Path(folder) / PLUGINS / "vlmd_guard.py").write_text(
            "from vlmd.daemon.datasette_guard import asgi_wrapper, startup  # noqa: F401\n")
        yield target, meta


async def supervise(db: str | Path, port: int, logfile: Path, origins: Origins | None = None,
                    *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """Run Datasette over the live log `db` on `port` (0: a free one) until cancelled; its
    output goes to `logfile` (not vlmd's terminal, where it would break a progress bar). It
    answers the names and origins `origins` allows (default: IP addresses and localhost).

    Calls ``task_status.started(url)`` once the first child is spawned (it answers a second or
    two later), or with ``""`` when Datasette is not installed. A stale Datasette on the port
    is reclaimed first. A child that exits is restarted, with a growing pause if it keeps
    dying early.
    Errors: none raised for the child's failures (they are logged); FileNotFoundError if `db`
    does not exist. Resources: one child process and a temporary folder, both gone on return.
    """
    if importlib.util.find_spec("datasette") is None:
        log.error("Datasette is not installed (pip install datasette); not starting it")
        task_status.started("")
        return
    port = port or free_port()
    url = f"http://{HOST}:{port}"
    pause = RESTART_MIN_S
    if stale := await trio.to_thread.run_sync(reclaim, port):
        log.warning("stopped the Datasette an earlier vlmd left on port %d (pid %s)", port,
                    ", ".join(map(str, stale)))
    read_fd, write_fd = os.pipe()  # vlmd holds the only write end: see datasette_guard
    try:
        with prepared(db) as (target, meta):
            task_status.started(url)
            while True:
                began = trio.current_time()
                log.info("starting Datasette at %s/%s (its log: %s)", url, DATABASE, logfile)
                logfile.parent.mkdir(parents=True, exist_ok=True)
                with logfile.open("ab") as out:
                    done = await trio.run_process(
                        command(target, port, meta), check=False, stdout=out, stderr=out,
                        env=child_env(origins or Origins(), read_fd), pass_fds=(read_fd,))
                if trio.current_time() - began >= HEALTHY_AFTER_S:
                    pause = RESTART_MIN_S
                log.warning("Datasette exited with status %s; restarting in %.1f s",
                            done.returncode, pause)
                await trio.sleep(pause)
                pause = min(pause * 2, RESTART_MAX_S)
    finally:
        os.close(read_fd)
        os.close(write_fd)


def run_foreground(db: str | Path, port: int) -> int:
    """`vlmd datasette`: serve any log (the live one, or an old copy) until Ctrl-C.

    A log that predates the views is served from a migrated snapshot, so the file itself is
    never written.
    """
    snapshot = not is_current(Path(db))
    port = port or free_port()
    with prepared(db, snapshot=snapshot) as (target, meta):
        if snapshot:
            print(f"{db} predates this vlmd's SQL views: serving a migrated snapshot of it",
                  flush=True)
        print(f"Datasette: http://{HOST}:{port}/{DATABASE}", flush=True)
        child = subprocess.Popen(command(target, port, meta, immutable=snapshot),
                                 env=child_env(Origins()))
        stopped: list[int] = []

        def forward(signum: int, _: object) -> None:
            stopped.append(signum)
            child.send_signal(signum)

        previous = signal.signal(signal.SIGTERM, forward)
        try:
            code = child.wait()
            return 0 if stopped else 128 - code if code < 0 else code
        except KeyboardInterrupt:  # the child, in our process group, got the Ctrl-C too
            child.wait()
            return 130
        finally:
            signal.signal(signal.SIGTERM, previous)
            if child.poll() is None:
                child.terminate()
                child.wait(10)
