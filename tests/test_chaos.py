"""Chaos: `scripts/chaos --quick` end to end, and the bugs it found, each pinned down alone."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.events import typed_body
from vlmd.live.liveness import STARTUP_GRACE_S, Liveness
from vlmd.store.log import Event
from vlmd_agent.evaluate import demo_data
from vlmd_agent.pipe import EXIT_ORPHANED, WrapperConfig

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_chaos_quick_kills_vlmd_agents_and_wrappers_and_loses_nothing() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "chaos"), "--quick"],
                          capture_output=True, text=True, timeout=420, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    out = done.stdout
    assert "PASS: every item exactly once, 0 duplicates, 0 events lost" in out
    assert "vlmd kill -9 x5" in out
    for fault in ("wrapper kill -9 x2", "agent kill -9 x2", "wrapper SIGSTOP x2",
                  "agent SIGSTOP x2"):
        assert fault in out
    assert "FAIL" not in out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_wrapper_outlives_the_thread_that_forked_it_but_not_its_watchdog(
        tmp_path: Path) -> None:
    """trio forks the wrapper from a worker thread that exits after 10 s idle; with
    PR_SET_PDEATHSIG the wrapper was SIGKILLed then, in every run longer than that."""
    dataset = demo_data.build(tmp_path / "data", n=3)
    cfg = WrapperConfig(url=f"http://127.0.0.1:{_free_port()}", run="r-lifeline",
                        model="demo:instant", dataset=str(dataset), spool=str(tmp_path / "spool"))
    read_fd, write_fd = os.pipe()
    started: list[subprocess.Popen[bytes]] = []
    first_line: list[bytes] = []

    def fork_then_exit() -> None:  # as trio's worker thread: fork, then go away
        started.append(subprocess.Popen(
            [sys.executable, "-m", "vlmd_agent.evaluate.wrapper", cfg.to_json()],
            pass_fds=(write_fd,),
            stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, "VLMD_STATUS_FD": str(write_fd), "VLMD_TOKEN": "t"}))
        ready, _, _ = select.select([read_fd], [], [], 30)
        first_line.append(os.read(read_fd, 4096) if ready else b"")  # it is past its setup

    thread = threading.Thread(target=fork_then_exit)
    thread.start()
    thread.join()
    os.close(write_fd)
    wrapper = started[0]
    try:
        assert b'"state":"loading"' in first_line[0]
        with pytest.raises(subprocess.TimeoutExpired):  # vlmd is unreachable: it keeps trying
            wrapper.wait(1.5)
        os.close(read_fd)  # what the kernel does when the watchdog dies, however it dies
        assert wrapper.wait(10) == EXIT_ORPHANED
    finally:
        if wrapper.poll() is None:
            wrapper.kill()
            wrapper.wait()


def test_agents_known_only_from_the_log_get_a_grace_period_after_a_restart() -> None:
    """While vlmd was down the agents' outboxes backed off (up to 5 s between tries): a deadline
    of three heartbeats from the start said alert.agent_lost of healthy agents."""
    heartbeat = Event(1, "hb", "r1", "watchdog.heartbeat", 1.0, 1.0, typed_body(
        "watchdog.heartbeat",
        {"host": "gpu-1", "pid": 7, "wrapper_pid": 8, "wrapper_state": "running"}), "")
    book = Liveness(heartbeat_s=1.0)
    assert list(book.watch([heartbeat], now=100.0)) == [heartbeat]
    assert book.next_deadline() == 100.0 + 3.0 + STARTUP_GRACE_S
    assert book.expired(100.0 + 3.0 + STARTUP_GRACE_S - 0.01) == []
    book.observe([heartbeat._replace(seq=2, key="hb2")], now=200.0)  # live: no grace
    assert book.next_deadline() == 203.0
