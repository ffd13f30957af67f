"""Agents start isolated from the folders they are started in: a ``httpx.py`` beside the dataset
(in vlmd's working folder, or the folder a hand-started agent runs in) never runs inside the
agent or its wrapper (real `vlmd serve`, real agents)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import TOKEN, DaemonProcess, start_daemon
from vlmd.launch.launcher import agent_env
from vlmd_agent.evaluate import demo_data

PLANTED = """import os, pathlib
pathlib.Path(__file__).with_name("IMPORTED").write_text(str(os.getpid()))
raise ImportError("a planted httpx.py ran")
"""
pytestmark = pytest.mark.filterwarnings(  # start_daemon's stderr file object (see test_dashboard)
    r"ignore:Exception ignored in. <_io.FileIO name=.*\.stderr'"
    ":pytest.PytestUnraisableExceptionWarning")


def plant(folder: Path) -> Path:
    """A dataset and, beside it, a module named like one the agent imports."""
    dataset = demo_data.build(folder, n=6)
    (folder / "httpx.py").write_text(PLANTED)
    return dataset


def wait_finished(d: DaemonProcess, run: str, timeout: float = 90) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while (state := httpx.get(f"{d.url}/api/runs/{run}", timeout=10).json())["status"] not in (
            "finished", "failed"):
        assert time.monotonic() < deadline, d.stderr
        time.sleep(0.2)
    return dict(state)


def test_an_agent_vlmd_launches_runs_nothing_from_vlmds_working_folder(tmp_path: Path) -> None:
    dataset = plant(tmp_path)
    d = start_daemon(tmp_path / "vlmd.db")  # its working folder: tmp_path, beside the dataset
    try:
        r = httpx.post(f"{d.url}/api/runs", headers={"authorization": f"Bearer {TOKEN}"},
                       json={"model": "demo:instant", "dataset": str(dataset)}, timeout=30)
        state = wait_finished(d, r.json()["run"])
    finally:
        d.stop()
    assert not (tmp_path / "IMPORTED").exists()
    assert (state["status"], state["done"]) == ("finished", 6)


def test_a_hand_started_agents_wrapper_runs_nothing_from_its_folder(
        tmp_path: Path, daemon_proc: DaemonProcess) -> None:
    dataset = plant(tmp_path / "work")
    agent = Path(sys.executable).with_name("vlmd-agent")  # the console script, as users run it
    done = subprocess.run(
        [str(agent), "--url", daemon_proc.url, "--run", "r-by-hand", "--model", "demo:instant",
         "--dataset", str(dataset), "--spool", str(tmp_path / "spool")],
        cwd=tmp_path / "work", env={**os.environ, "VLMD_TOKEN": TOKEN}, capture_output=True,
        text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "work" / "IMPORTED").exists()
    assert wait_finished(daemon_proc, "r-by-hand")["done"] == 6


def test_agents_get_a_safe_path_and_only_absolute_pythonpath_entries() -> None:
    env = agent_env({"PYTHONPATH": os.pathsep.join(["", ".", "lib", "/opt/hooks", "./x"]),
                     "HOME": "/root"}, "tok")
    assert env == {"PYTHONPATH": "/opt/hooks", "HOME": "/root", "VLMD_TOKEN": "tok",
                   "PYTHONSAFEPATH": "1"}
    assert "PYTHONPATH" not in agent_env({"PYTHONPATH": ":."}, "tok")
