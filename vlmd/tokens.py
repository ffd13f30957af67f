"""Tokens: which token may do what.

- The **write token** (``$VLMD_TOKEN``, ``server.token`` or the state directory's ``vlmd.token``)
  is the operator's: it writes anything, reads anything, submits and cancels runs.
- The **read token** (``$VLMD_READ_TOKEN`` or the state directory's ``vlmd.read-token``), when
  ``server.read_token`` puts reads behind a token, reads: the dashboard and other viewers.
- A **run token** is minted by vlmd for the agents of one run when it launches them: it writes
  only that run's events (not the kinds vlmd records itself, `VLMD_KINDS`) and reads only that
  run. It is an HMAC of the run id under the write token, so vlmd keeps no table of them and a
  new write token revokes them all.

Every comparison is constant-time (`hmac.compare_digest`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass

RUN_PREFIX = "vlmd-run."
VLMD_KINDS = frozenset({"run.submitted", "run.scheduled", "run.cancelled", "scheduler.task"})
"""Kinds only vlmd itself appends: a run token may not post them."""


@dataclass(frozen=True)
class Grant:
    """What a valid token allows: `admin` (the write token), or `read` (the read token), or
    writing and reading the one `run` (a run token)."""

    admin: bool = False
    read: bool = False
    run: str | None = None

    @property
    def writes(self) -> bool:
        """Whether it writes anything (the write token and run tokens do)."""
        return self.admin or self.run is not None

    def reads(self, run: str | None) -> bool:
        """Whether it reads `run` (None: the log as a whole)."""
        return self.admin or self.read or (run is not None and run == self.run)


def _mac(secret: str, run: str) -> str:
    digest = hmac.new(secret.encode(), b"vlmd run token\0" + run.encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()


def mint(secret: str, run: str) -> str:
    """The token of `run`'s agents under the write token `secret`."""
    return f"{RUN_PREFIX}{run}.{_mac(secret, run)}"


class Tokens:
    """The write token, the read token (None: reads need no token), and the run tokens."""

    def __init__(self, write: str, read: str | None = None) -> None:
        self.write = write
        self.read = read

    def mint(self, run: str) -> str:
        """A token that writes and reads only `run`."""
        return mint(self.write, run)

    def grant(self, given: str) -> Grant | None:
        """What `given` allows, or None when it is no token of this vlmd."""
        data = given.encode()
        if hmac.compare_digest(data, self.write.encode()):
            return Grant(admin=True)
        if self.read is not None and hmac.compare_digest(data, self.read.encode()):
            return Grant(read=True)
        if given.startswith(RUN_PREFIX):
            run, _, mac = given[len(RUN_PREFIX):].rpartition(".")
            if run and hmac.compare_digest(mac.encode(), _mac(self.write, run).encode()):
                return Grant(run=run)
        return None
