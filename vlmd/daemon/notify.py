"""sd_notify: tell systemd (``Type=notify``) that vlmd is ready, how it is doing, and that it lives.

The protocol is one datagram per message to the AF_UNIX socket named by ``$NOTIFY_SOCKET`` (a
path, or an abstract name written with a leading ``@``), holding newline-separated
``KEY=VALUE`` lines. Without ``$NOTIFY_SOCKET`` (not under systemd) every call does nothing.
``$WATCHDOG_USEC`` (with ``$WATCHDOG_PID``, if set, naming this process) asks for ``WATCHDOG=1``
at least that often; vlmd sends it at half that interval from the trio main loop, so a daemon
whose loop is stuck stops pinging and systemd restarts it.
"""

from __future__ import annotations

import logging
import os
import socket
import time

import trio

from vlmd.live.state import Live

STATUS_EVERY_S = 5.0
log = logging.getLogger("vlmd.daemon.notify")


def _address(env: str) -> str:
    return "\0" + env[1:] if env.startswith("@") else env


def notify(message: str) -> bool:
    """Send `message` (e.g. ``"READY=1"``) to systemd; True if it was sent.

    Errors: none raised; a socket error is logged once per call and reported as False.
    """
    env = os.environ.get("NOTIFY_SOCKET")
    if not env:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message.encode(), _address(env))
    except OSError as e:
        log.warning("sd_notify to %s failed: %s", env, e)
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``$WATCHDOG_USEC``), or None if not asked."""
    usec, pid = os.environ.get("WATCHDOG_USEC"), os.environ.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 2e6


def status_line(live: Live, events_per_s: float) -> str:
    """The ``STATUS=`` text: runs by state, the ingest rate and the log head."""
    states = [state.status for state in live.tracker.runs.values()]
    active = sum(s in ("running", "stalled", "submitted") for s in states)
    return (f"{len(states)} runs ({active} active), {events_per_s:.0f} events/s, "
            f"log at seq {live.head}")


async def keep_alive(live: Live, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                     ) -> None:
    """Send ``WATCHDOG=1`` (if systemd asked for it) and a fresh ``STATUS=`` until cancelled.

    Returns at once when vlmd is not under systemd.
    """
    task_status.started()
    if not os.environ.get("NOTIFY_SOCKET"):
        return
    interval = watchdog_interval()
    tick = min(interval, STATUS_EVERY_S) if interval else STATUS_EVERY_S
    last_head, last_at, last_status, status_at = live.head, time.monotonic(), "", 0.0
    while True:
        await trio.sleep(tick)
        now = time.monotonic()
        lines = ["WATCHDOG=1"] if interval else []
        if now - status_at >= STATUS_EVERY_S or not interval:
            rate = (live.head - last_head) / (now - last_at)
            last_head, last_at, status_at = live.head, now, now
            status = status_line(live, rate)
            if status != last_status:
                lines.append(f"STATUS={status}")
                last_status = status
        if lines:
            notify("\n".join(lines))
