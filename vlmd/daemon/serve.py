"""serve(): the vlmd daemon, one trio nursery running the log, projections, feed and API.

Example::

    async with trio.open_nursery() as nursery:
        daemon = await nursery.start(serve, Config().replace(server={"port": 0}))
        print(daemon.url)
        daemon.shutdown.set()   # graceful stop
"""

from __future__ import annotations

import ipaddress
import logging
import os
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import hypercorn.config
import hypercorn.trio
import trio

from vlmd.config import Config, ConfigError
from vlmd.daemon import datasette, notify, startup
from vlmd.launch import slurm
from vlmd.launch.launcher import LocalLauncher
from vlmd.launch.slurm import SlurmLauncher
from vlmd.live import liveness, wsframes
from vlmd.live.feed import Feed
from vlmd.live.state import Live, WriteRefused
from vlmd.store.log import Appended
from vlmd.tokens import Tokens
from vlmd.web.api import build_app
from vlmd.web.conns import Connections
from vlmd.web.origins import Origins

log = logging.getLogger("vlmd")
RETRY_WRITE_S = 1.0


@dataclass
class Daemon:
    """A running daemon: where it listens, its live state, and the event that stops it."""

    url: str
    live: Live
    token: str
    shutdown: trio.Event = field(default_factory=trio.Event)
    launcher: LocalLauncher | SlurmLauncher | None = None
    conns: Connections | None = None


def _hypercorn_config(config: Config) -> hypercorn.config.Config:
    hc = hypercorn.config.Config()
    host = config.server.host
    hc.bind = [f"[{host}]:{config.server.port}" if ":" in host else f"{host}:{config.server.port}"]
    hc.graceful_timeout = config.server.graceful_s
    hc.accesslog = None
    hc.errorlog = logging.getLogger("vlmd.http")
    hc.websocket_max_message_size = 1 << 20
    hc.h11_max_incomplete_size = 64 * 1024
    return hc


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps vlmd reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name, or "" (every address)


def warn_if_exposed(config: Config) -> int:
    """When vlmd binds beyond loopback, log a WARNING for each thing that is then open to the
    network: reads, unless ``server.read_token`` is on (anyone who reaches the port reads the
    whole log, answers included); writes by whoever reads the state directory, when the only
    write token is the auto-created token file. Returns how many it logged."""
    host = config.server.host
    if is_loopback(host):
        return 0
    warned = 0
    if not config.server.read_token:
        log.warning("binding %s (not loopback) with reads open: anyone who can reach it reads "
                    "the whole log, answers included; set server.read_token = true", host)
        warned += 1
    if not (os.environ.get("VLMD_TOKEN") or config.server.token):
        log.warning("binding %s (not loopback) with only the token file %s: set server.token "
                    "or $VLMD_TOKEN", host, config.state_dir / "vlmd.token")
        warned += 1
    return warned


def _retrying(live: Live) -> Any:
    """`live.append` for vlmd's own events (agent lost, agent exited): while the log refuses
    writes (disk full), wait and try again, as agents' outboxes do, instead of losing them."""
    async def append(events: Sequence[dict[str, Any]]) -> Appended:
        while True:
            try:
                return await live.append(events)
            except WriteRefused:
                await trio.sleep(RETRY_WRITE_S)
    return append


async def _launcher(config: Config, tokens: Tokens, live: Live
                    ) -> LocalLauncher | SlurmLauncher:
    """The launcher ``[launcher] kind`` names; a Slurm one takes over the log's live jobs."""
    kind = config.launcher.kind
    if kind == "local":
        return LocalLauncher(config, config.url, tokens, _retrying(live))
    if kind != "slurm":
        raise ConfigError(f"{config.source}: [launcher] kind must be local or slurm, not {kind!r}")
    launcher = SlurmLauncher(config, config.url, tokens, _retrying(live))
    launcher.adopt(await trio.to_thread.run_sync(
        lambda: list(live.log.read(kinds=slurm.ADOPT_KINDS, until=live.head))))
    return launcher


async def _http(app: Any, hc: hypercorn.config.Config, shutdown: trio.Event, done: trio.Event,
                *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
    """hypercorn serving `app` until `shutdown`; `done` is set when it has returned."""
    try:
        await hypercorn.trio.serve(app, hc, shutdown_trigger=shutdown.wait,
                                   task_status=task_status)
    finally:
        done.set()


async def _abort_when_cancelled(conns: Connections) -> None:
    """Close every connection when vlmd is cancelled (a second SIGTERM): hypercorn's writes
    to clients are shielded from cancellation, and would hold the stop up otherwise."""
    try:
        await trio.sleep_forever()
    finally:
        conns.abort_all()


async def serve(config: Config, *, shutdown: trio.Event | None = None,
                task_status: trio.TaskStatus[Daemon] = trio.TASK_STATUS_IGNORED) -> None:
    """Run vlmd until `shutdown` is set, then stop gracefully.

    Calls ``task_status.started(Daemon)`` once it accepts connections.

    Stopping: the feeds tell their clients to reconnect, in-flight requests get
    ``server.graceful_s`` to finish, then every connection is closed; cancelling `serve`
    closes them at once.
    Errors: StartupError (one line naming the file or port) when the log is locked by another
    daemon, cannot be opened or read, or the address is taken; ConfigError for a token file
    that others could read or plant.
    Resources: the log file (WAL) and its lock file, one listening socket; on return the log
    is closed and the lock released.
    """
    lock, event_log = await startup.open_log(config)
    try:
        server = config.server
        live = Live(event_log, Feed(server.feed_buffer, int(server.feed_buffer_mb * 2**20)))
        live.liveness = liveness.Liveness(config.watchdog.heartbeat_s)
        try:
            await live.rebuild()
        except sqlite3.Error as e:
            raise startup.StartupError(f"{event_log.path}: cannot read the event log ({e}); "
                                       "restore it from a backup") from None
        live.log_warning = startup.lost_acknowledged(lock, event_log)
        live.acked = lock.acked
        tokens = Tokens(config.resolve_token(create=True),
                        config.resolve_read_token(create=True))
        token = tokens.write
        warn_if_exposed(config)
        launcher = await _launcher(config, tokens, live)
        if not wsframes.install():  # one serialisation of each feed frame for every client
            log.warning("wsproto or hypercorn lacks %s: feed frames are built per connection "
                        "(slower with many clients)", ", ".join(wsframes.missing_internals()))
        origins = Origins.of(config)
        app = build_app(live, tokens, server, launcher=launcher, origins=origins)
        shutdown = trio.Event() if shutdown is None else shutdown
        conns = Connections(server.send_timeout_s)
        hc = _hypercorn_config(config)
        conns.configure(hc)
        http_done = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_abort_when_cancelled, conns)
            try:
                binds = await nursery.start(_http, app, hc, shutdown, http_done)
            except (OSError, BaseExceptionGroup) as e:  # hypercorn's bind, out of its nursery
                raise startup.listen_problem(config, e) from None
            url = binds[0].replace("0.0.0.0", "127.0.0.1")
            launcher.url = url
            async with trio.open_nursery() as services:
                await services.start(startup.sync_acked, lock)
                await services.start(conns.watch)
                await services.start(launcher.run)
                await services.start(liveness.watch, live.liveness, _retrying(live))
                if config.datasette.enabled:
                    live.datasette_url = await services.start(
                        datasette.supervise, config.log.path, config.datasette.port,
                        config.state_dir / "datasette.log", origins) or None
                await services.start(notify.keep_alive, live)
                log.info("listening on %s (log %s: %d events, %d runs)", url, event_log.path,
                         live.head, len(live.tracker.runs))
                task_status.started(Daemon(url, live, token, shutdown, launcher, conns))
                notify.notify(f"READY=1\nSTATUS={notify.status_line(live, 0.0)}")
                await shutdown.wait()
                notify.notify("STOPPING=1")
                log.info("stopping: finishing in-flight requests")
                live.release_feed()
                live.feed.close()
                live.states.feed.close()
                services.cancel_scope.cancel()
            with trio.move_on_after(server.graceful_s):
                await http_done.wait()
            if not http_done.is_set():  # hypercorn cannot end a write a client does not take
                log.warning("graceful_s (%g s) is over: closing %d connections",
                            server.graceful_s, conns.abort_all())
                await http_done.wait()
            nursery.cancel_scope.cancel()
    finally:
        event_log.close()
        lock.release()
        log.info("stopped; the log is closed cleanly at seq %d", event_log.last_seq)
