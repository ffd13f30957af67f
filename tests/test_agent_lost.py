"""A whole agent frozen (SIGSTOP): vlmd reports it lost within 3 heartbeats, and recovers."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import psutil

from tests.conftest import start_daemon
from vlmd_agent.evaluate import demo_data

HEARTBEAT_S = 0.3


def test_sigstop_of_the_agent_gives_agent_lost_within_three_heartbeats(tmp_path: Path) -> None:
    dataset = demo_data.build(tmp_path / "data", n=40)
    d = start_daemon(tmp_path / "v.db", toml=f"[watchdog]\nheartbeat_s = {HEARTBEAT_S}\n")
    auth = {"authorization": f"Bearer {d.token}"}
    try:
        run = httpx.post(f"{d.url}/api/runs", headers=auth, json={
            "model": "demo:instant:100", "dataset": str(dataset)}).json()["run"]
        deadline = time.monotonic() + 30
        while httpx.get(f"{d.url}/api/runs/{run}").json()["done"] < 3:
            assert time.monotonic() < deadline, "no heartbeat from the agent"
            time.sleep(0.05)
        agent = next(p for p in psutil.Process(d.proc.pid).children()
                     if "vlmd_agent" in " ".join(p.cmdline()))
        whole = [agent, *agent.children(recursive=True)]  # the watchdog and its wrapper
        stopped_at = time.time()
        for proc in whole:
            os.kill(proc.pid, signal.SIGSTOP)
        try:
            while not (alerts := httpx.get(f"{d.url}/api/events", params={
                    "run": run, "kind": "alert.agent_lost"}).json()):
                assert time.time() - stopped_at < 10, "no alert.agent_lost"
                time.sleep(0.02)
            lost_after = alerts[0]["received"] - stopped_at
            stalled = httpx.get(f"{d.url}/api/runs/{run}").json()["status"]
        finally:
            for proc in whole:
                os.kill(proc.pid, signal.SIGCONT)
        # the last heartbeat may have left just before the stop: at most 3 intervals + a wake-up
        assert lost_after <= 3 * HEARTBEAT_S + HEARTBEAT_S / 4 + 0.3, lost_after
        assert stalled == "stalled"
        assert alerts[0]["body"]["pid"] == agent.pid
        deadline = time.monotonic() + 60
        while (state := httpx.get(f"{d.url}/api/runs/{run}").json())["status"] != "finished":
            assert time.monotonic() < deadline, state
            time.sleep(0.1)
        assert state["done"] == 40
    finally:
        d.stop()
