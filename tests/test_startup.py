"""`vlmd serve` as an unlucky operator meets it (real processes): one daemon per log, start-up
failures in one line naming the file or port, and a log that lost acknowledged events said
loudly."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import TOKEN, start_daemon
from tests.events import completed, submitted


def serve(db: Path, *args: str, preexec: Callable[[], object] | None = None
          ) -> subprocess.CompletedProcess[str]:
    """`vlmd serve` on `db` expected to fail at start: its exit status and output."""
    return subprocess.run(
        [sys.executable, "-m", "vlmd", "serve", "--db", str(db), "--port", "0", *args],
        cwd=db.parent, env={**os.environ, "VLMD_TOKEN": TOKEN}, capture_output=True, text=True,
        timeout=60, preexec_fn=preexec)


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    """The failure's message: exit status 2, no traceback, one line besides the INFO lines."""
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "Exception" not in done.stderr, done.stderr
    [line] = [x for x in done.stderr.splitlines() if x.startswith("vlmd serve: ")]
    assert len(done.stderr.splitlines()) <= 3, done.stderr  # the line, maybe a log line or two
    return line


def test_a_second_daemon_on_the_same_log_refuses_naming_the_first_ones_pid(
        tmp_path: Path) -> None:
    first = start_daemon(tmp_path / "vlmd.db")
    try:
        line = one_line(serve(tmp_path / "vlmd.db"))
        assert f"in use by another vlmd (pid {first.proc.pid})" in line
        assert str(tmp_path / "vlmd.db") in line
        assert first.post([submitted("r1")]).status_code == 200  # the first serves on
    finally:
        assert first.stop() == 0
    second = start_daemon(tmp_path / "vlmd.db")  # the lock went with the first
    assert second.stop() == 0


def test_a_log_that_is_no_sqlite_database_is_named_in_one_line(tmp_path: Path) -> None:
    db = tmp_path / "vlmd.db"
    db.write_bytes(b"this is a text file, not a log\n" * 200)
    line = one_line(serve(db))
    assert line.startswith(f"vlmd serve: {db}: not a readable SQLite event log")
    assert db.read_bytes().startswith(b"this is a text file")  # left as it was


def test_a_taken_port_is_named_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = serve(tmp_path / "vlmd.db", "--port", str(port), "--port", str(port))
    line = one_line(done)
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in line


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[tuple[Path, Callable[[], object] | None]]:
    """A folder on a full file system (a 64 KiB tmpfs, filled), or, where mounting is not
    permitted, a process limit that makes every write fail (RLIMIT_FSIZE 0)."""
    folder = tmp_path / "full"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)],
                             capture_output=True, check=False).returncode == 0
    if not mounted:
        print("tmpfs: mounting is not permitted here; RLIMIT_FSIZE instead")

        def no_writes() -> None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
        yield folder, no_writes
        return
    try:
        with (folder / "ballast").open("wb", buffering=0) as f, pytest.raises(OSError):
            while True:
                f.write(b"\0" * 512)
        yield folder, None
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_at_start_is_named_in_one_line(
        full_disk: tuple[Path, Callable[[], object] | None]) -> None:
    folder, preexec = full_disk
    line = one_line(serve(folder / "vlmd.db", preexec=preexec))
    assert str(folder / "vlmd.db") in line
    if preexec is None:
        assert "disk full" in line


def test_a_log_that_lost_acknowledged_events_is_reported_loudly(tmp_path: Path) -> None:
    db = tmp_path / "vlmd.db"
    d = start_daemon(db)
    assert d.post([submitted("r1")]).json()["last_seq"] == 1
    d.stop()  # a clean stop: the first event is in the log file itself
    d = start_daemon(db)
    acked = d.post([completed("r1", i) for i in range(30)]).json()["last_seq"]
    assert acked == 31
    d.proc.send_signal(signal.SIGKILL)  # the 30 events are in the WAL only
    d.proc.wait()
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink()  # as a careless copy or a damaged disk would
    again = start_daemon(db)
    try:
        assert "LOST EVENTS: the log" in again.stderr
        assert "ends at seq 1, but vlmd had acknowledged events up to seq 31" in again.stderr
        health = httpx.get(f"{again.url}/healthz", timeout=10).json()
        assert "30 acknowledged events are gone" in health["log_warning"]
    finally:
        again.stop()
    quiet = start_daemon(db)  # said once: the mark now follows the log as it is
    try:
        assert "LOST EVENTS" not in quiet.stderr
    finally:
        quiet.stop()
