"""WebSocket streams: what every vlmd WebSocket endpoint (the feed, replays, ...) shares.

`WsHub.serve` runs one endpoint's handler for one client:

- at most `WsHub.max_clients` clients at once, over every endpoint: one more is accepted and
  closed with 1013 ("try again later");
- the handler is cancelled the moment its client leaves (a task waits for the disconnect), so
  its ``finally`` releases its subscription and anything else it holds at once;
- a client that stops reading is not written to without end: before each message the
  session waits while more than `MAX_UNSENT` bytes it sent are still unread in the kernel's
  queue, or while some are and it has been sent `MAX_AHEAD` characters of messages since it
  last had nothing unread (compressed messages are small on the wire, not to make); waiting
  counts as writing, and `vlmd.web.conns` closes a connection whose write (or wait to write)
  lasts ``server.send_timeout_s``: the session ends as if the client left. So a stalled client
  costs a few messages of memory and work, not the megabytes a socket's buffer grows to.

`WsSession.follow` sends a `vlmd.live.feed.Subscription`'s frames, counting each against the
subscriber's byte budget once sent, and closes with the reason its stream ended: 1013 when the
client fell behind its budget (reconnect with ``after=``), 1001 when vlmd stops.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio
from starlette.websockets import WebSocket, WebSocketDisconnect

from vlmd.live.feed import Subscription
from vlmd.web import conns

MAX_UNSENT = 16 << 10  # bytes a client may leave unread before vlmd waits for it
MAX_AHEAD = 64 << 10  # characters of messages sent while some stay unread
UNSENT_POLL_S = 0.001
UNSENT_POLL_MAX_S = 0.5
WS_GOING_AWAY = 1001
WS_POLICY = 1008
WS_TRY_AGAIN = 1013  # "Try Again Later": too many clients, or this one fell too far behind


def close_reason(text: str) -> str:
    """`text` cut to the 123 bytes of UTF-8 a WebSocket close reason may hold."""
    return text.encode()[:123].decode(errors="ignore")


class WsSession:
    """One accepted client of a `WsHub`."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self.conn = conns.current()
        self.ahead = 0  # characters sent since the client was last seen with nothing unread

    async def send(self, text: str) -> None:
        """Send one text message once the client has taken most of what it was sent (a client
        that takes nothing for ``server.send_timeout_s`` ends the session)."""
        await self._room()
        await self.ws.send_text(text)
        self.ahead += len(text)

    def _behind(self) -> bool:
        assert self.conn is not None
        unsent = self.conn.unsent()
        if unsent == 0:
            self.ahead = 0
        return unsent > MAX_UNSENT or (unsent > 0 and self.ahead > MAX_AHEAD)

    async def _room(self) -> None:
        conn = self.conn
        if conn is None or not self._behind():
            return
        # waiting to write counts as writing: `vlmd.web.conns` cuts the connection off after
        # server.send_timeout_s, and the disconnect ends this session
        conn.writing_since = trio.current_time()
        pause = UNSENT_POLL_S
        try:
            while self._behind():
                await trio.sleep(pause)
                pause = min(pause * 2, UNSENT_POLL_MAX_S)  # many stalled clients: few wake-ups
        finally:
            conn.writing_since = None

    async def close(self, code: int, reason: str) -> None:
        """Close with `code` and `reason` (cut to what a close frame holds)."""
        await self.ws.close(code, close_reason(reason))

    async def follow(self, sub: Subscription, after: int | None) -> int | None:
        """Send `sub`'s frames until its stream ends, then close saying why; with `after`,
        skip frames that end at or before it (the backlog sent them) and return the last seq
        sent, which the close reason names for the client's reconnection."""
        last = after
        async for frame in sub.receive:
            if last is None or frame.last_seq > last:
                await self.send(frame.text)
                if last is not None:
                    last = frame.last_seq
            sub.sent(frame)
        resume = "" if last is None else f"; reconnect with after={last}"
        if sub.dropped:
            await self.close(WS_TRY_AGAIN, f"too slow{resume}")
        else:
            await self.close(WS_GOING_AWAY, f"vlmd is stopping{resume}")
        return last


class WsHub:
    """The WebSocket clients of one app: how many there are, and the cap on them."""

    def __init__(self, max_clients: int) -> None:
        self.max_clients = max_clients
        self.clients = 0

    async def serve(self, ws: WebSocket, handler: Callable[[WsSession], Awaitable[None]]
                    ) -> None:
        """Accept `ws` and run `handler` on its session until it returns or the client leaves
        (then it is cancelled); refuse the client with 1013 when the hub is full."""
        await ws.accept()
        if self.clients >= self.max_clients:
            await ws.close(WS_TRY_AGAIN, close_reason(
                f"too many WebSocket clients ({self.max_clients}); try again later"))
            return
        self.clients += 1
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_wait_disconnect, ws, nursery.cancel_scope)
                await handler(WsSession(ws))
                nursery.cancel_scope.cancel()
        except* WebSocketDisconnect:
            pass
        finally:
            self.clients -= 1


async def _wait_disconnect(ws: WebSocket, scope: trio.CancelScope) -> None:
    while (await ws.receive())["type"] != "websocket.disconnect":
        pass
    scope.cancel()
