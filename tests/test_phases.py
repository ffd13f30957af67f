"""Before its first item an agent says what it is doing (``run.phase``): the log keeps it, the
fold shows the latest, and the progress bar prints it; nothing else writes to the terminal
under the bar (Datasette and the agents log to files)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.events import ev, stored, submitted
from tests.test_cli_runs import embedded_config, events
from tests.test_cli_user_errors import vlmd
from vlmd.cli.follow import phase_text, status_line
from vlmd.projections import tracker
from vlmd_agent.evaluate import demo_data


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_data.build(tmp_path_factory.mktemp("data"), n=40)


def test_building_a_demo_model_says_its_steps_then_loading_warmup_and_the_warm_rate(
        tmp_path: Path, dataset: Path) -> None:
    done = vlmd("run", "--config", str(embedded_config(tmp_path)), "--model", "demo:tiny",
                "--dataset", str(dataset), "--limit", "8", cwd=tmp_path, timeout=300,
                env={"VLMD_HOME": str(tmp_path / "home")})  # no model built yet
    assert done.returncode in (0, 3), done.stderr
    said = events(tmp_path / "v.db", "run.phase")
    names = [p["phase"] for p in said]
    assert names[:3] == ["resolving", "loading", "building"]
    assert names[-3:] == ["loading", "warmup", "evaluating"]
    built = [p for p in said if p["phase"] == "building"]
    steps = [p["step"] for p in built]
    assert steps == sorted(steps) and steps[0] == 1 and steps[-1] == built[0]["steps"] == 150
    assert built[-1]["message"] == "building demo model tiny: training step 150/150"
    assert said[0]["message"] == f"reading {dataset}"
    assert said[-1]["items_per_s"] > 0
    assert said[-1]["message"].endswith(" items/s once warm")


def at(ts: float, phase: str, **body: Any) -> dict[str, Any]:
    return ev("a", "run.phase", {"phase": phase, **body}, ts=ts)


def test_the_progress_bar_shows_the_phase_and_for_how_long_until_items_flow() -> None:
    folded = tracker.fold(stored([submitted("a", total=40), at(100.0, "building", message=(
        "building demo model tiny: training step 40/150"), step=40, steps=150)]))
    state = folded.runs["a"]
    assert phase_text(state.phase, now=112.4) == (
        "building demo model tiny: training step 40/150 (12 s)")
    # a clock far off (another host's) shows no duration rather than a wrong one
    assert "0/40  building demo model tiny: training step 40/150  ETA -" in status_line(
        state.to_dict())
    tracker.apply(folded, stored([at(time.time() - 3, "loading", message="loading demo:tiny")])[0])
    assert "0/40  loading demo:tiny (3 s)  ETA -" in status_line(state.to_dict())
    tracker.apply(folded, stored([at(130.0, "evaluating", message="9.1 items/s once warm")])[0])
    assert phase_text(state.phase) == ""  # the bar says the rest


def test_datasette_and_agents_write_to_files_not_under_the_progress_bar(
        tmp_path: Path, dataset: Path) -> None:
    config = tmp_path / "v.toml"
    config.write_text(f'[server]\nport = 0\n[datasette]\nport = 0\n'
                      f'[log]\npath = "{tmp_path / "v.db"}"\n')
    done = subprocess.run(
        [sys.executable, "-m", "vlmd", "run", "--config", str(config), "--model",
         "demo:instant:100", "--dataset", str(dataset), "--limit", "30"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    # the command's own lines only: the daemon note, the submission, the bar
    for line in done.stderr.splitlines():
        assert line.startswith(("vlmd: ", "r-")), line
    assert "Uvicorn" in (tmp_path / "datasette.log").read_text()
    assert "listening on http://127.0.0.1:" in (tmp_path / "vlmd.log").read_text()
    [agent_log] = (tmp_path / "agents").glob("r-*-0.log")
    assert "wrapper ready" in agent_log.read_text()


def test_version() -> None:
    done = vlmd("--version", cwd=Path.cwd())
    assert done.returncode == 0 and done.stdout.startswith("vlmd ")
