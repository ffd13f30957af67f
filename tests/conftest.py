"""Shared fixtures: a real daemon, in-process (trio tests) or as a subprocess (everything else)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import trio

from vlmd.config import Config
from vlmd.daemon.serve import Daemon, serve

TOKEN = "test-token"
LISTENING = re.compile(r"listening on (http://\S+)")


def daemon_config(db: Path, **server: Any) -> Config:
    """A config for a test daemon on a free port with a fixed token."""
    return Config().replace(server={"port": 0, "token": TOKEN, **server},
                            log={"path": str(db)}, datasette={"enabled": False})


@pytest.fixture
async def daemon(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Daemon]:
    """A daemon in this trio test's nursery, on port 0, over tmp_path/vlmd.db."""
    d: Daemon = await nursery.start(serve, daemon_config(tmp_path / "vlmd.db"))
    yield d
    d.shutdown.set()


@dataclass
class DaemonProcess:
    """`vlmd serve` as a real subprocess: its URL, token, db path and process."""

    url: str
    token: str
    db: Path
    proc: subprocess.Popen[str]
    stderr_path: Path

    def post(self, events: list[dict[str, Any]]) -> httpx.Response:
        return httpx.post(f"{self.url}/api/events", json=events, timeout=30,
                          headers={"authorization": f"Bearer {self.token}"})

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()


def start_daemon(db: Path, *, port: int = 0, extra: list[str] | None = None,
                 env: dict[str, str] | None = None, timeout: float = 30,
                 toml: str = "") -> DaemonProcess:
    """Start `vlmd serve` on `db` and wait until it says where it listens; `toml` is added to
    its config file (which always turns Datasette off)."""
    stderr_path = db.with_suffix(f".{time.monotonic_ns()}.stderr")
    err = stderr_path.open("w")
    # -P: as the `vlmd` console script, nothing from the working folder goes on sys.path
    proc = subprocess.Popen(
        [sys.executable, "-P", "-m", "vlmd", "serve", "--db", str(db), "--port", str(port),
         "--config", str(_config_file(db.parent, toml)), *(extra or [])],
        stdout=subprocess.DEVNULL, stderr=err, text=True, cwd=db.parent,
        env={**os.environ, "VLMD_TOKEN": TOKEN, **(env or {})})
    err.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if m := LISTENING.search(stderr_path.read_text()):
            STARTED_URLS.append(m[1])
            return DaemonProcess(m[1], TOKEN, db, proc, stderr_path)
        if proc.poll() is not None:
            raise RuntimeError(f"vlmd serve exited {proc.returncode}:\n{stderr_path.read_text()}")
        time.sleep(0.02)
    proc.kill()
    raise RuntimeError(f"vlmd serve did not start in {timeout}s:\n{stderr_path.read_text()}")


def _config_file(folder: Path, toml: str = "") -> Path:
    # tests may write their own vlmd-test.toml; extra TOML gets a file of its own
    path = folder / (f"vlmd-test-{abs(hash(toml))}.toml" if toml else "vlmd-test.toml")
    if not path.exists():  # Datasette off, unless `toml` says otherwise
        off = "" if "[datasette]" in toml else "[datasette]\nenabled = false\n"
        path.write_text(off + toml)
    return path


STARTED_URLS: list[str] = []  # the daemons `start_daemon` started during the current test


# Every process a test starts inherits this variable from the environment: "<session>:<test>".
# An agent whose run ended waits for vlmd to take its last events, by design, until SIGTERM; a
# test that stops its daemon first would otherwise leave it retrying after the session.
TEST_MARK = "VLMD_TEST_MARK"
SESSION_MARK = f"pytest-{os.getpid()}"
os.environ[TEST_MARK] = SESSION_MARK  # module-wide fixtures run before any test's mark is set


def stop_agents(marked: Callable[[str, str], bool]) -> None:
    """SIGTERM (then SIGKILL after 10 s) the agents for which ``marked(mark, cmdline)``."""
    left = []
    for proc in psutil.process_iter(["cmdline"]):
        line = " ".join(proc.info["cmdline"] or ()) + " "
        if "vlmd_agent" not in line:
            continue
        with contextlib.suppress(psutil.Error):
            if marked(proc.environ().get(TEST_MARK, ""), line):
                left.append(proc)
    for proc in left:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(left, timeout=10)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()


@pytest.fixture(autouse=True)
def no_agent_outlives_its_test(tmp_path: Path, request: pytest.FixtureRequest
                               ) -> Iterator[None]:
    """Stop the agents this test started: those that inherited its mark, or whose command line
    names its `tmp_path` or the URL of a daemon it started with `start_daemon`."""
    STARTED_URLS.clear()
    mine = f"{SESSION_MARK}:{request.node.nodeid}"
    os.environ[TEST_MARK] = mine
    yield
    os.environ[TEST_MARK] = SESSION_MARK
    marks = [str(tmp_path), *(f"--url {url} " for url in STARTED_URLS)]
    stop_agents(lambda mark, line: mark == mine or any(m in line for m in marks))


@pytest.fixture(autouse=True, scope="session")
def no_agent_outlives_the_session() -> Iterator[None]:
    """Stop what module- and session-wide fixtures started (they carry the session's mark)."""
    yield
    stop_agents(lambda mark, line: mark.split(":")[0] == SESSION_MARK)


@pytest.fixture(autouse=True, scope="session")
def vlmd_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Agents' spools and demo models go to a folder of this test session, not ~/.cache."""
    home = tmp_path_factory.mktemp("vlmd-home")
    old = os.environ.get("VLMD_HOME")
    os.environ["VLMD_HOME"] = str(home)
    yield home
    if old is None:
        del os.environ["VLMD_HOME"]
    else:
        os.environ["VLMD_HOME"] = old


@pytest.fixture
def daemon_proc(tmp_path: Path) -> Iterator[DaemonProcess]:
    """`vlmd serve` as a subprocess over tmp_path/vlmd.db; stopped (SIGTERM) afterwards."""
    d = start_daemon(tmp_path / "vlmd.db")
    yield d
    if d.proc.poll() is None:
        d.stop()
