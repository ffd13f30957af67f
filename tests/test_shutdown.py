"""Stopping `vlmd serve` (a real process, real signals) while a client blocks it: SIGTERM stops
within ``server.graceful_s``, a second SIGTERM at once."""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import DaemonProcess, start_daemon
from tests.events import completed, submitted
from tests.stalled import stalled_client


@pytest.fixture
def stuck(tmp_path: Path, request: pytest.FixtureRequest
          ) -> Iterator[tuple[DaemonProcess, socket.socket]]:
    """A daemon (``graceful_s`` from the test's parameter) over ~6 MB of events, and a feed
    client that asked for them all and reads nothing: vlmd is stuck writing to it."""
    d = start_daemon(tmp_path / "vlmd.db",
                     toml=f"[server]\ngraceful_s = {request.param}\nsend_timeout_s = 600.0\n")
    assert d.post([submitted("r1")]).status_code == 200
    for first in range(0, 3_000, 500):
        batch = [completed("r1", i, note="n" * 2_000) for i in range(first, first + 500)]
        assert d.post(batch).status_code == 200
    client = stalled_client(d.url)
    time.sleep(1.0)
    yield d, client
    client.close()
    if d.proc.poll() is None:
        d.proc.kill()
        d.proc.wait()


@pytest.mark.parametrize("stuck", [1.0], indirect=True)
def test_sigterm_stops_within_graceful_s_even_with_a_client_that_reads_nothing(
        stuck: tuple[DaemonProcess, socket.socket]) -> None:
    d, _ = stuck
    began = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    code = d.proc.wait(30)
    took = time.monotonic() - began
    assert code == 0
    assert took < 1.0 + 4.0, took  # graceful_s, and time to close the log
    assert "graceful_s (1 s) is over: closing 1 connections" in d.stderr
    assert "stopped; the log is closed cleanly at seq 3001" in d.stderr


@pytest.mark.parametrize("stuck", [300.0], indirect=True)
def test_a_second_sigterm_stops_at_once(stuck: tuple[DaemonProcess, socket.socket]) -> None:
    d, _ = stuck
    d.proc.send_signal(signal.SIGTERM)
    time.sleep(1.5)
    assert d.proc.poll() is None  # still in its 300 s of grace
    with pytest.raises(httpx.TransportError):  # it no longer accepts connections
        httpx.get(f"{d.url}/healthz", timeout=2)
    began = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    d.proc.wait(30)
    assert time.monotonic() - began < 4.0
    assert "second SIGTERM: stopping now" in d.stderr
    assert "stopped; the log is closed cleanly at seq 3001" in d.stderr
