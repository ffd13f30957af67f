"""The one HTTP client of the ``vlmd`` commands: the daemon's API with the token, and every
refusal turned into a one-line `CliError` that carries vlmd's own message."""

from __future__ import annotations

from typing import Any

import httpx
import trio

from vlmd.cli.base import CliError
from vlmd.config import Config

TIMEOUT_S = 60.0


def _answer(method: str, path: str, r: httpx.Response, token_hint: str) -> Any:
    """The JSON of a good answer (the response itself for a CSV); CliError otherwise: vlmd's
    own message for a request it refused (4xx: it names what is wrong), with where the token
    came from for a 401."""
    if r.status_code >= 400:
        try:
            message = r.json().get("error", r.text)
        except (ValueError, AttributeError):  # not vlmd's JSON error (a proxy, a 404 page)
            message = r.text[:200]
        if r.status_code == 401:
            raise CliError(f"vlmd at {r.url.scheme}://{r.url.netloc.decode()} refused the token "
                           f"({message})\n{token_hint}")
        if r.status_code < 500:
            raise CliError(message)
        raise CliError(f"vlmd failed {method} {path} ({r.status_code}): {message}")
    return r if path.endswith(".csv") else r.json()


class Client:
    """The daemon at `url`, reached with `token` (``async with Client(...) as client``);
    `token_hint` says where the token came from, for a refusal."""

    def __init__(self, url: str, token: str, token_hint: str = "") -> None:
        self.url, self.token = url, token
        self.token_hint = token_hint
        self.http = httpx.AsyncClient(base_url=url, timeout=TIMEOUT_S,
                                      headers={"authorization": f"Bearer {token}"} if token
                                      else {})

    @classmethod
    def of(cls, config: Config) -> Client:
        """A client of the daemon `config` names."""
        return cls(config.url, config.resolve_token(), config.token_hint())

    async def call(self, method: str, path: str, **kw: Any) -> Any:
        """One request; its JSON (or, for ``*.csv``, the response), else CliError."""
        try:
            r = await self.http.request(method, path, **kw)
        except httpx.TransportError as e:
            raise CliError(f"cannot reach vlmd at {self.url} ({e}); is `vlmd serve` running?"
                           ) from None
        return _answer(method, path, r, self.token_hint)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def call(config: Config, method: str, path: str, **kw: Any) -> Any:
    """`Client.call` from synchronous code (one request, its own event loop)."""
    async def once() -> Any:
        async with Client.of(config) as client:
            return await client.call(method, path, **kw)
    return trio.run(once)


async def answers(url: str) -> bool:
    """Whether a vlmd answers its health check at `url`."""
    try:
        async with httpx.AsyncClient(timeout=2) as c:
            return (await c.get(f"{url}/healthz")).status_code == 200
    except httpx.TransportError:
        return False
