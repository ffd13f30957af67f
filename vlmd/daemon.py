"""serve(): the vlmd daemon, one trio nursery running the log, its projections, the feed and the API.

Example::

    async with trio.open_nursery() as nursery:
        daemon = await nursery.start(serve, Config().replace(server={"port": 0}))
        print(daemon.url)
        daemon.shutdown.set()   # graceful stop
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import partial

import hypercorn.config
import hypercorn.trio
import trio

from vlmd import datasette, liveness, notify
from vlmd.api import build_app
from vlmd.config import Config
from vlmd.feed import Feed
from vlmd.launcher import LocalLauncher
from vlmd.live import Live
from vlmd.log import EventLog

log = logging.getLogger("vlmd")


@dataclass
class Daemon:
    """A running daemon: where it listens, its live state, and the event that stops it."""

    url: str
    live: Live
    token: str
    shutdown: trio.Event = field(default_factory=trio.Event)


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


async def serve(config: Config, *, shutdown: trio.Event | None = None,
                task_status: trio.TaskStatus[Daemon] = trio.TASK_STATUS_IGNORED) -> None:
    """Run vlmd until `shutdown` is set, then stop gracefully.

    Calls ``task_status.started(Daemon)`` once it accepts connections.

    Errors: OSError if the address is taken; sqlite3.Error if the log cannot be opened.
    Resources: the log file (WAL), one listening socket; on return the log is closed and every
    feed client has been told to reconnect.
    """
    event_log = await trio.to_thread.run_sync(
        partial(EventLog.open, config.log.path, synchronous=config.log.synchronous))
    try:
        live = Live(event_log, Feed(config.server.feed_buffer))
        live.liveness = liveness.Liveness(config.watchdog.heartbeat_s)
        await live.rebuild()
        token = config.resolve_token()
        launcher = LocalLauncher(config, config.url, token, live.append)
        app = build_app(live, token, max_body=int(config.server.max_body_mb * 1024 * 1024),
                        launcher=launcher)
        shutdown = trio.Event() if shutdown is None else shutdown
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(partial(hypercorn.trio.serve, app,
                                                _hypercorn_config(config),
                                                shutdown_trigger=shutdown.wait))
            url = binds[0].replace("0.0.0.0", "127.0.0.1")
            launcher.url = url
            async with trio.open_nursery() as services:
                await services.start(launcher.run)
                await services.start(liveness.watch, live.liveness, live.append)
                if config.datasette.enabled:
                    live.datasette_url = await services.start(
                        datasette.supervise, config.log.path, config.datasette.port) or None
                await services.start(notify.keep_alive, live)
                log.info("listening on %s (log %s: %d events, %d runs)", url, event_log.path,
                         live.head, len(live.tracker.runs))
                task_status.started(Daemon(url, live, token, shutdown))
                notify.notify(f"READY=1\nSTATUS={notify.status_line(live, 0.0)}")
                await shutdown.wait()
                notify.notify("STOPPING=1")
                log.info("stopping: finishing in-flight requests")
                live.feed.close()
                live.replays.close()
                services.cancel_scope.cancel()
    finally:
        event_log.close()
    log.info("stopped; the log is closed cleanly at seq %d", live.head)
