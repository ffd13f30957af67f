"""The one `free_port` of the tests, their support modules and the scripts."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on: the kernel just handed it
    out (another process may take it before the caller binds it; tests that need it bound
    bind port 0 themselves)."""
    with socket.create_server(("127.0.0.1", 0)) as s:
        return int(s.getsockname()[1])
