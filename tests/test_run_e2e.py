"""End to end: `vlmd run` and submitted runs through real agents, also across a vlmd restart."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import DaemonProcess, start_daemon
from vlmd_agent.evaluate import demo_data


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_data.build(tmp_path_factory.mktemp("data"), n=60)


def wait_for(d: DaemonProcess, run: str, status: str, timeout: float = 60) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = httpx.get(f"{d.url}/api/runs/{run}", timeout=5).json()
            if state.get("status") == status:
                return dict(state)
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"run {run} did not reach {status} in {timeout}s")


def answers(d: DaemonProcess, run: str) -> list[dict[str, str]]:
    text = httpx.get(f"{d.url}/api/runs/{run}/answers.csv", timeout=10).text
    return list(csv.DictReader(io.StringIO(text)))


def test_vlmd_run_with_an_embedded_daemon_ends_with_a_summary_and_answers(
        tmp_path: Path, dataset: Path) -> None:
    config = tmp_path / "v.toml"
    config.write_text('[server]\nport = 0\n[datasette]\nenabled = false\n'
                      f'[log]\npath = "{tmp_path / "v.db"}"\n')
    done = subprocess.run(
        [sys.executable, "-m", "vlmd", "run", "--config", str(config), "--model", "demo:instant",
         "--dataset", str(dataset), "--name", "smoke", "--limit", "25", "--shards", "2",
         "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "smoke" in done.stdout and "25/25" in done.stdout
    assert "ACCURACY" in done.stdout and "TTFT_P50_MS" in done.stdout
    [csv_path] = (tmp_path / "out").glob("smoke-r-*/answers.csv")  # NAME-RUNID
    text = csv_path.read_text()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert sorted(r["item"] for r in rows) == sorted(f"demo-{i:04d}" for i in range(25))
    assert "[########################] 25/25" in done.stderr
    # the embedded vlmd waited for its agents: none is left retrying against a stopped daemon
    mark = os.environ["VLMD_TEST_MARK"]
    left = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if ("vlmd_agent" in " ".join(proc.info["cmdline"] or ())
                    and proc.environ().get("VLMD_TEST_MARK") == mark):
                left.append(proc.info["cmdline"])
    assert left == []


def test_stopping_vlmd_mid_run_loses_nothing_and_duplicates_nothing(
        tmp_path: Path, dataset: Path) -> None:
    d = start_daemon(tmp_path / "v.db")
    port = int(d.url.rsplit(":", 1)[1])
    run = httpx.post(f"{d.url}/api/runs", headers={"authorization": f"Bearer {d.token}"},
                     json={"model": "demo:instant:40", "dataset": str(dataset)}).json()["run"]
    deadline = time.monotonic() + 60
    while httpx.get(f"{d.url}/api/runs/{run}").json()["done"] < 10:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert d.stop(signal.SIGTERM) == 0
    time.sleep(1.5)  # the agent keeps evaluating and spooling while vlmd is down
    d2 = start_daemon(tmp_path / "v.db", port=port)
    try:
        final = wait_for(d2, run, "finished")
        rows = answers(d2, run)
    finally:
        d2.stop()
    assert final["done"] == 60
    assert len(rows) == 60
    assert sorted(r["item"] for r in rows) == sorted(f"demo-{i:04d}" for i in range(60))
    assert all(r["answer"] and not r["error"] for r in rows)
