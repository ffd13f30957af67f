"""The Datasette child of `vlmd serve` (real processes, real signals): it dies with vlmd however
vlmd dies, and one an earlier vlmd left holding the port is reclaimed when vlmd starts."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import start_daemon
from tests.ports import free_port
from tests.test_origins import wait_answering

pytestmark = pytest.mark.filterwarnings(  # start_daemon's stderr file object (see test_dashboard)
    r"ignore:Exception ignored in. <_io.FileIO name=.*\.stderr'"
    ":pytest.PytestUnraisableExceptionWarning")


def answers(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def child_of(pid: int) -> psutil.Process:
    deadline = time.monotonic() + 30
    while True:
        found = [p for p in psutil.Process(pid).children()
                 if "datasette" in " ".join(p.cmdline())]
        if found:
            return found[0]
        assert time.monotonic() < deadline, "no Datasette child"
        time.sleep(0.1)


def test_datasette_dies_with_a_vlmd_killed_by_sigkill(tmp_path: Path) -> None:
    port = free_port()
    d = start_daemon(tmp_path / "vlmd.db", toml=f"[datasette]\nenabled = true\nport = {port}\n")
    wait_answering(f"http://127.0.0.1:{port}", d)
    child = child_of(d.proc.pid)
    d.stop(sig=signal.SIGKILL)
    gone, _ = psutil.wait_procs([child], timeout=15)
    assert gone, "Datasette outlived the vlmd that started it"
    assert not answers(port)


def test_a_stale_datasette_holding_the_port_is_reclaimed_at_start(tmp_path: Path) -> None:
    port = free_port()
    toml = f"[datasette]\nenabled = true\nport = {port}\n"
    first = start_daemon(tmp_path / "vlmd.db", toml=toml)
    wait_answering(f"http://127.0.0.1:{port}", first)
    stale = child_of(first.proc.pid)
    stale.suspend()  # it cannot notice its vlmd die: as a hung child would
    first.stop(sig=signal.SIGKILL)
    time.sleep(1.0)
    assert stale.is_running() and answers(port)  # the orphan holds the port
    second = start_daemon(tmp_path / "vlmd.db", toml=toml)
    try:
        gone, _ = psutil.wait_procs([stale], timeout=15)
        assert gone, "the stale Datasette was not reclaimed"
        wait_answering(f"http://127.0.0.1:{port}", second)
        assert child_of(second.proc.pid).pid != stale.pid
        assert f"stopped the Datasette an earlier vlmd left on port {port} (pid {stale.pid})" \
            in second.stderr
        assert "restarting" not in second.stderr  # no exit-3 loop on a taken port
    finally:
        second.stop()
