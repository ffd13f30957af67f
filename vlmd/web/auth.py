"""Who may do what over HTTP: the token a request carries, checked against `vlmd.tokens`.

- Tokens travel in ``Authorization: Bearer <token>``. Only the read token may also come as
  ``?token=`` (browsers cannot set a WebSocket's headers, nor a link's): a token in a URL ends
  up in histories and logs, so a token that writes is refused there.
- A token that writes is also refused from a web page (a request with the ``Sec-Fetch-*``
  headers every current browser sends): the dashboard only reads, so a browser never needs to
  hold one.
- Writes (submit, cancel, resume) need the write token; ``POST /api/events`` takes a run token
  for that run's events too. Reads are open unless ``server.read_token`` is on; then they need
  the read token, the write token, or a run token for that run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from starlette.requests import HTTPConnection

from vlmd.store.incoming import Incoming
from vlmd.tokens import VLMD_KINDS, Grant, Tokens

BROWSER_HEADERS = ("sec-fetch-mode", "sec-fetch-site", "sec-fetch-dest")


class ApiError(Exception):
    """A request vlmd refuses: the status and a message for the person who sent it."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra


class Auth:
    """The checks of one daemon's `Tokens`."""

    def __init__(self, tokens: Tokens) -> None:
        self.tokens = tokens

    @property
    def reads_open(self) -> bool:
        """Whether reads need no token (``server.read_token`` is off)."""
        return self.tokens.read is None

    def grant(self, conn: HTTPConnection, *, query: bool = False) -> Grant:
        """What the token `conn` carries allows: in the header, or with `query` the read
        token as ``?token=``. 401 without a token of this vlmd, 403 for a token that writes in
        a URL or from a web page."""
        header = conn.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        given = given.strip() if scheme.lower() == "bearer" else ""
        in_url = False
        if not given and query:
            given = conn.query_params.get("token", "")
            in_url = bool(given)
        if not given:
            raise ApiError(401, "missing token: send 'Authorization: Bearer <token>'"
                           + (" or ?token=<read token>" if query else ""))
        grant = self.tokens.grant(given)
        if grant is None:
            raise ApiError(401, "wrong token")
        if grant.writes and in_url:
            raise ApiError(403, "a token that writes may not travel in a URL (histories and "
                                "logs keep URLs); use the read token there")
        if grant.writes and any(h in conn.headers for h in BROWSER_HEADERS):
            raise ApiError(403, "vlmd takes no token that writes from a web page: the "
                                "dashboard needs only the read token")
        return grant

    def authorize(self, conn: HTTPConnection) -> Grant:
        """The write token, else 401/403."""
        grant = self.grant(conn)
        if not grant.admin:
            raise ApiError(403, "this needs the write token" + _mine(grant))
        return grant

    def authorize_events(self, conn: HTTPConnection) -> Grant:
        """The write token or a run token (`check_batch` then checks the events), else
        401/403."""
        grant = self.grant(conn)
        if not grant.writes:
            raise ApiError(403, "the read token cannot write")
        return grant

    def check_batch(self, grant: Grant, batch: Sequence[Incoming]) -> None:
        """403 naming the first event that `grant` may not append: a run token appends only
        its run's events, and none of the kinds vlmd records itself."""
        if grant.admin:
            return
        for i, event in enumerate(batch):
            if event.run != grant.run:
                raise ApiError(403, f"event {i}: run: this token writes only run "
                                    f"{grant.run}'s events; nothing was appended")
            if event.kind in VLMD_KINDS:
                raise ApiError(403, f"event {i}: kind: only vlmd records {event.kind}; "
                                    "nothing was appended")

    def authorize_read(self, conn: HTTPConnection, *, query: bool = False,
                       run: str | None = None) -> None:
        """Nothing while reads are open; else a token that reads `run` (None: the log as a
        whole), else 401/403."""
        if self.reads_open:
            return
        grant = self.grant(conn, query=query)
        if not grant.reads(run):
            raise ApiError(403, "this token reads only its own run" + _mine(grant))


def _mine(grant: Grant) -> str:
    return f" (it is run {grant.run}'s token)" if grant.run else ""
