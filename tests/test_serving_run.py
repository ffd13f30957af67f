"""Runs against a serving engine, end to end: `vlmd run --concurrency` through real agents to a
scripted server (`tests/serving_server.py`), a resume in the middle, and what is refused."""

from __future__ import annotations

import csv
import io
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import start_daemon
from tests.test_backend_serving import serving
from tests.test_run_e2e import answers, wait_for
from vlmd_agent.evaluate import demo_data


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_data.build(tmp_path_factory.mktemp("data"), n=48)


def test_vlmd_run_keeps_n_requests_in_flight_and_records_each_item_once(
        tmp_path: Path, dataset: Path) -> None:
    config = tmp_path / "v.toml"
    config.write_text('[server]\nport = 0\n[datasette]\nenabled = false\n'
                      f'[log]\npath = "{tmp_path / "v.db"}"\n')
    with serving() as url:
        started = time.time()
        done = subprocess.run(
            [sys.executable, "-m", "vlmd", "run", "--config", str(config), "--model",
             f"openai:stream?first_ms=150&gap_ms=5&tokens=4@{url}", "--dataset", str(dataset),
             "--name", "eight", "--concurrency", "8", "--out", str(tmp_path / "out")],
            capture_output=True, text=True, timeout=120, cwd=tmp_path)
        stats = httpx.get(f"{url}/stats").json()
    assert done.returncode == 0, done.stderr
    [written] = (tmp_path / "out").glob("eight-*/answers.csv")  # out/NAME-RUN/
    rows = list(csv.DictReader(io.StringIO(written.read_text())))
    assert sorted(r["item"] for r in rows) == sorted(f"demo-{i:04d}" for i in range(48))
    assert all(r["answer"] == "t0 t1 t2 t3" and not r["error"] for r in rows)
    starts = sorted(float(r["request_start"]) for r in rows)
    assert started < starts[0] and starts[-1] < time.time()
    assert stats["peak_running"] == 8 and stats["requests"] == 48
    assert stats["completion_connections"] == 8  # eight kept alive for the whole run


def _wrapper_of(daemon_pid: int, timeout: float = 20.0) -> psutil.Process:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in psutil.Process(daemon_pid).children(recursive=True):
            try:
                if "vlmd_agent.evaluate.wrapper" in child.cmdline():
                    return child
            except psutil.Error:
                pass
        time.sleep(0.05)
    raise AssertionError("no wrapper process")


def test_a_concurrent_run_whose_wrapper_is_killed_resumes_each_item_exactly_once(
        tmp_path: Path, dataset: Path) -> None:
    d = start_daemon(tmp_path / "v.db")
    try:
        with serving() as url:
            run = httpx.post(f"{d.url}/api/runs", headers={"authorization": f"Bearer {d.token}"},
                             json={"model": f"openai:stream?first_ms=400&gap_ms=5&tokens=3@{url}",
                                   "dataset": str(dataset), "concurrency": 6}).json()["run"]
            deadline = time.monotonic() + 60
            while httpx.get(f"{d.url}/api/runs/{run}").json()["done"] < 12:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            _wrapper_of(d.proc.pid).send_signal(signal.SIGKILL)  # six requests in flight
            final = wait_for(d, run, "finished", timeout=90)
            rows = answers(d, run)
            events = httpx.get(f"{d.url}/api/events", params={"run": run}).json()
    finally:
        d.stop()
    assert final["done"] == 48 and final["failed"] == 0
    assert sorted(r["item"] for r in rows) == sorted(f"demo-{i:04d}" for i in range(48))
    kinds = Counter(e["kind"] for e in events)
    assert kinds["item.completed"] == 48 and kinds["alert.wrapper_died"] == 1
    assert kinds["run.started"] == 2  # the wrapper started again, after the items vlmd held


def test_the_api_key_reaches_the_server_and_nothing_vlmd_writes(tmp_path: Path,
                                                                 dataset: Path) -> None:
    key = "sk-live-0123456789abcdef"
    home = tmp_path / "home"
    d = start_daemon(tmp_path / "v.db", env={"MY_ENGINE_KEY": key, "VLMD_HOME": str(home)})
    try:
        with serving() as url:
            run = httpx.post(f"{d.url}/api/runs", headers={"authorization": f"Bearer {d.token}"},
                             json={"model": f"openai:stream?first_ms=5&gap_ms=1&tokens=2@{url}",
                                   "dataset": str(dataset), "limit": 6, "concurrency": 3,
                                   "api_key_env": "MY_ENGINE_KEY"}).json()["run"]
            final = wait_for(d, run, "finished", timeout=60)
            truth = httpx.get(f"{url}/truth").json()
    finally:
        d.stop()
    assert final["done"] == 6
    assert {t["auth"] for t in truth} == {f"Bearer {key}"}
    # the log, its WAL, the agents' logs and spools, the daemon's output: none holds the key
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name.endswith(".log") for p in written) and any("spool" in str(p)
                                                                  for p in written)
    assert [p for p in written if key.encode() in p.read_bytes()] == []
