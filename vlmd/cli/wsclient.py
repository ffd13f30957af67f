"""A small WebSocket client on trio + wsproto (`vlmd run`, tests); it always closes its socket.

It offers permessage-deflate, as browsers do (the feed sends ~9x fewer bytes then).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.extensions import PerMessageDeflate


class Closed(Exception):
    """The server closed the WebSocket: its close code and reason."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"closed {code}: {reason}")
        self.code, self.reason = code, reason


class WsClient:
    """One connection; `get_message` returns the next text message or raises Closed."""

    def __init__(self, stream: trio.SocketStream, ws: WSConnection) -> None:
        self.stream, self.ws = stream, ws
        self.pending: list[Event] = []
        self.parts: list[str] = []

    async def _events(self) -> None:
        data = await self.stream.receive_some(1 << 20)
        if not data:
            raise Closed(1006, "connection lost")
        self.ws.receive_data(data)
        self.pending += list(self.ws.events())

    async def get_message(self) -> str:
        while True:
            while not self.pending:
                await self._events()
            event = self.pending.pop(0)
            if isinstance(event, TextMessage):
                self.parts.append(event.data)
                if event.message_finished:
                    text, self.parts = "".join(self.parts), []
                    return text
            elif isinstance(event, Ping):
                await self.stream.send_all(self.ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                await self.stream.send_all(self.ws.send(event.response()))
                raise Closed(event.code, event.reason or "")


@asynccontextmanager
async def open_ws(url: str, *, deflate: PerMessageDeflate | bool = True,
                  token: str | None = None, headers: list[tuple[str, str]] | None = None
                  ) -> AsyncIterator[WsClient]:
    """Connect to a ``ws://`` URL, offering `deflate` (True: wsproto's default offer; False:
    none), with `token` in an ``Authorization: Bearer`` header and more `headers`; the socket
    is closed on exit, whatever happened."""
    parts = urlsplit(url)
    stream = await trio.open_tcp_stream(parts.hostname or "127.0.0.1", parts.port or 80)
    try:
        ws = WSConnection(ConnectionType.CLIENT)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        offers = ([deflate] if isinstance(deflate, PerMessageDeflate) else
                  [PerMessageDeflate()] if deflate else [])
        extra = [(k.encode(), v.encode()) for k, v in
                 [*(headers or []), *([("authorization", f"Bearer {token}")] if token else [])]]
        await stream.send_all(ws.send(Request(host=parts.netloc, target=target,
                                              extensions=offers, extra_headers=extra)))
        client = WsClient(stream, ws)
        while not client.pending:
            await client._events()
        first = client.pending.pop(0)
        if isinstance(first, RejectConnection):
            raise Closed(first.status_code, "rejected")
        assert isinstance(first, AcceptConnection), first
        yield client
    finally:
        await trio.aclose_forcefully(stream)
