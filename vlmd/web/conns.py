"""Connections: every TCP connection hypercorn serves for vlmd, so that vlmd can cut one off.

hypercorn's trio worker writes to a socket inside a shielded cancel scope
(``TCPServer.protocol_send``): a client that stops reading blocks the task that writes to it, and
no timeout, cancellation or graceful deadline ends that write; only the client can, or the TCP
stack hours later. Closing the socket does: the blocked write fails at once, and hypercorn takes
that for the client leaving (the handler's receive gets ``websocket.disconnect``, a streamed
response ends), so the task finishes and lets go of whatever it held.

`Connections.configure` makes hypercorn's worker register each connection of one server in a
`Connections`; `Connections.watch` cuts off a connection whose write has been blocked longer
than the send timeout (at most `ABORT_AT_ONCE` every `WATCH_EVERY_S`, 50 a second: each one
cut wakes its tasks, and hundreds at once would stall everything else for a moment),
`abort_all` every connection (the graceful deadline, a second signal). `current` is the
connection of the request being handled.
"""

from __future__ import annotations

import fcntl
import logging
import struct
import termios
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import hypercorn.config
import hypercorn.trio.run
import trio
from hypercorn.events import RawData
from hypercorn.trio.tcp_server import TCPServer

log = logging.getLogger("vlmd.web.conns")
_ATTR = "vlmd_connections"  # where a hypercorn Config keeps its server's `Connections`
WATCH_EVERY_S = 0.1
ABORT_AT_ONCE = 5  # each closed connection wakes its tasks: spread many over sweeps


class Connection:
    """One client connection: `writing_since` is when its pending write began (None when
    none is pending); `abort` closes its socket."""

    def __init__(self, server: Any) -> None:
        self._server = server
        self.writing_since: float | None = None
        self.aborted = False

    def _socket(self) -> Any:
        stream = self._server.stream
        return getattr(stream, "socket", None) or stream.transport_stream.socket

    def abort(self) -> None:
        """Close the socket now: a write blocked on it fails, the client is gone."""
        self.aborted = True
        self._socket().close()

    def unsent(self) -> int:
        """Bytes written to the socket that the client has not acknowledged yet (the kernel's
        send queue; 0 where the system cannot tell). A client that stops reading lets them
        grow up to the kernel's buffer, which grows to megabytes."""
        try:
            return int(struct.unpack("i", fcntl.ioctl(self._socket().fileno(), termios.TIOCOUTQ,
                                                      b"\0\0\0\0"))[0])
        except (OSError, ValueError):  # closed, or not a socket this system can ask
            return 0


_current: ContextVar[Connection | None] = ContextVar("vlmd_connection", default=None)


def current() -> Connection | None:
    """The connection of the request or WebSocket this task handles (None outside vlmd's
    hypercorn server, e.g. an in-memory test client)."""
    return _current.get()


@dataclass(eq=False)
class Connections:
    """The open connections of one server, and the longest a write to one may block."""

    send_timeout_s: float
    open: set[Connection] = field(default_factory=set)

    def configure(self, hc: hypercorn.config.Config) -> None:
        """Register every connection that a server with config `hc` accepts in this set."""
        setattr(hc, _ATTR, self)
        # hypercorn's worker makes each connection's server by this name
        setattr(hypercorn.trio.run, "TCPServer", _tracked)  # noqa: B010

    async def serve(self, server: Any) -> None:
        """Run one hypercorn `TCPServer`, known here while it lives."""
        conn = Connection(server)
        send = server.protocol_send

        async def protocol_send(event: Any) -> None:
            if not isinstance(event, RawData):
                return await send(event)  # type: ignore[no-any-return]
            conn.writing_since = trio.current_time()
            try:
                await send(event)
            finally:
                conn.writing_since = None

        server.protocol_send = protocol_send  # before run() hands it to the protocol
        _current.set(conn)  # the handlers' tasks are spawned from this one, with its context
        self.open.add(conn)
        try:
            await server.run()
        finally:
            self.open.discard(conn)

    async def watch(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Forever: cut off every connection whose write has been blocked for longer than
        `send_timeout_s` (checked every `WATCH_EVERY_S`)."""
        task_status.started()
        while True:
            await trio.sleep(WATCH_EVERY_S)
            limit = trio.current_time() - self.send_timeout_s
            late = [c for c in self.open if c.writing_since is not None
                    and c.writing_since < limit and not c.aborted][:ABORT_AT_ONCE]
            for conn in late:
                conn.abort()
            if late:
                log.info("closed %d connections whose clients took no data for %g s",
                         len(late), self.send_timeout_s)

    def abort_all(self) -> int:
        """Close every open connection at once; returns how many there were."""
        conns = [c for c in self.open if not c.aborted]
        for conn in conns:
            conn.abort()
        return len(conns)


def _tracked(app: Any, config: Any, *args: Any) -> Any:
    """What hypercorn's trio worker calls to make a connection's server: registered in its
    config's `Connections`, when it has one."""
    server = TCPServer(app, config, *args)
    conns: Connections | None = getattr(config, _ATTR, None)
    return server if conns is None else conns.serve(server)
