"""Host and Origin checks: only vlmd's own names, and pages of vlmd's own origin, get answers.

A web page on another origin cannot read vlmd's HTTP answers (browsers enforce CORS), but it can
open a WebSocket to it, and a page whose DNS name an attacker rebinds to vlmd's address (DNS
rebinding) is not even another origin to the browser. So every request and WebSocket is checked:

- ``Host`` must be an IP address (no rebinding can produce one: the page's own name travels in
  Host), ``localhost`` or a ``*.localhost`` name, or one of ``server.allowed_hosts`` (an entry
  ``.example.org`` also matches its subdomains);
- ``Origin``, when a browser sends one, must be vlmd's own (the scheme and the Host asked for)
  or one of ``server.allowed_origins``. Programs send no Origin and are not affected.

A refused request gets 403 with a JSON ``{"error": ...}``; a refused WebSocket is accepted and
closed with 1008 and the reason. `guard` wraps vlmd's app; Datasette's child process runs the
same `Origins.problem` (`vlmd.daemon.datasette_guard`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from vlmd.config import Config

WS_POLICY = 1008


def _hostname(authority: str) -> str:
    """The name in a Host header (``name``, ``name:port``, ``[v6]:port``), lower case."""
    if authority.startswith("["):
        return authority[1:].partition("]")[0].lower()
    if authority.count(":") == 1:
        authority = authority.partition(":")[0]
    return authority.lower().rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class Origins:
    """The host names and origins one vlmd answers to."""

    def __init__(self, allowed_hosts: Iterable[str] = (), allowed_origins: Iterable[str] = ()
                 ) -> None:
        self.hosts = frozenset(h.lower().rstrip(".") for h in allowed_hosts if h)
        self.origins = frozenset(o.lower().rstrip("/") for o in allowed_origins if o)

    @classmethod
    def of(cls, config: Config) -> Origins:
        """``server.allowed_hosts`` and ``allowed_origins``, and the host agents are told to
        reach vlmd by (``launcher.agent_url``)."""
        agents = urlsplit(config.launcher.agent_url).hostname if config.launcher.agent_url else None
        return cls([*config.server.allowed_hosts, *([agents] if agents else [])],
                   config.server.allowed_origins)

    def host_allowed(self, authority: str) -> bool:
        """Whether a request whose Host header is `authority` is for this vlmd."""
        name = _hostname(authority)
        if not name:
            return False
        if _is_ip(name) or name == "localhost" or name.endswith(".localhost"):
            return True
        return name in self.hosts or any(h.startswith(".") and (name.endswith(h) or
                                                               name == h[1:])
                                         for h in self.hosts)

    def origin_allowed(self, origin: str, authority: str) -> bool:
        """Whether a page of `origin` may use this vlmd reached as `authority`."""
        origin = origin.lower().rstrip("/")
        if origin in self.origins:
            return True
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and parts.netloc == authority.lower()

    def problem(self, headers: Iterable[tuple[bytes, bytes]]) -> str | None:
        """Why a request with these (raw ASGI) headers is refused, or None."""
        host = origin = None
        for name, value in headers:
            if name == b"host":
                host = value.decode("latin-1")
            elif name == b"origin":
                origin = value.decode("latin-1")
        if host is None:
            return "no Host header"
        if not self.host_allowed(host):
            return (f"vlmd does not answer to the name {_hostname(host)[:80]!r}: add it to "
                    "[server] allowed_hosts if it is vlmd's")
        if origin is not None and not self.origin_allowed(origin, host):
            return (f"pages of {origin[:80]!r} may not use vlmd: add that origin to [server] "
                    "allowed_origins if they should")
        return None


def guard(app: ASGIApp, origins: Origins) -> ASGIApp:
    """`app` behind `origins`: refused requests never reach it."""
    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        why = origins.problem(scope["headers"]) if kind in ("http", "websocket") else None
        if why is None:
            return await app(scope, receive, send)
        if kind == "http":
            body = orjson.dumps({"error": why})
            await send({"type": "http.response.start", "status": 403,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return None
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": WS_POLICY,
                    "reason": why.encode()[:123].decode(errors="ignore")})
        return None
    return guarded
