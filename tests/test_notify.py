"""`vlmd serve` speaks sd_notify to a real AF_UNIX datagram socket, as systemd's Type=notify."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import start_daemon
from vlmd.daemon import notify


def messages(sock: socket.socket, until: float) -> Iterator[str]:
    while (left := until - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            yield sock.recv(4096).decode()
        except TimeoutError:
            return


@pytest.mark.parametrize("kind", ["path", "abstract"])
def test_serve_sends_ready_watchdog_pings_and_stopping(tmp_path: Path, kind: str) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if kind == "path":
        address = env_name = str(tmp_path / "notify.sock")
    else:
        env_name = f"@vlmd-test-{uuid.uuid4().hex}"
        address = "\0" + env_name[1:]
    sock.bind(address)
    try:
        d = start_daemon(tmp_path / "vlmd.db", env={"NOTIFY_SOCKET": env_name,
                                                    "WATCHDOG_USEC": "200000"})
        got = list(messages(sock, time.monotonic() + 2.0))
        assert d.post([]).status_code == 200  # still serving while it pings
        assert d.stop() == 0
        got += list(messages(sock, time.monotonic() + 2.0))
    finally:
        sock.close()
    ready = [m for m in got if "READY=1" in m.splitlines()]
    assert len(ready) == 1 and "STATUS=0 runs (0 active), 0 events/s" in ready[0]
    pings = [i for i, m in enumerate(got) if "WATCHDOG=1" in m.splitlines()]
    assert len(pings) >= 8  # every 0.1 s for ~2 s
    assert got.index(ready[0]) < pings[0]
    assert got[-1] == "STOPPING=1"


def test_the_watchdog_interval_is_half_of_watchdog_usec_for_this_process_only(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert notify.watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert notify.watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert notify.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "0")
    monkeypatch.delenv("WATCHDOG_PID")
    assert notify.watchdog_interval() is None


def test_without_notify_socket_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify.notify("READY=1") is False


def test_a_missing_socket_is_logged_not_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert notify.notify("READY=1") is False
    assert f"sd_notify to {tmp_path / 'nobody-listens'} failed" in caplog.text
