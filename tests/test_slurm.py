"""The Slurm launcher, against a real single-node Slurm cluster that scripts/slurm-up starts.

The cluster tests fail (they never skip) when the cluster cannot start: CI must run them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
import pytest

from tests.conftest import DaemonProcess, start_daemon
from tests.events import typed_body
from vlmd.config import Config, ConfigError
from vlmd.launch.launcher import LaunchSpec
from vlmd.launch.slurm import SlurmLauncher
from vlmd.launch.slurm_job import (
    SlurmError,
    TaskInfo,
    array_indices,
    array_spec,
    parse_jobs,
    slurm,
    write_job,
)
from vlmd.projections import tracker
from vlmd.store.log import Event
from vlmd.tokens import Tokens, mint
from vlmd_agent import wire
from vlmd_agent.evaluate import demo_data

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")
ALL_ITEMS = Counter({f"demo-{i:04d}": 1 for i in range(24)})

SCONTROL = (
    "JobId=7 ArrayJobId=7 ArrayTaskId=2-3 JobName=vlmd-r-1 JobState=PENDING Reason=Resources "
    "Restarts=0 ExitCode=0:0 NodeList= NumCPUs=1 TRES=cpu=1,mem=21694M,node=1\n"
    "JobId=9 ArrayJobId=7 ArrayTaskId=1 JobState=CANCELLED Reason=None Restarts=0 "
    "ExitCode=0:15 NodeList=localhost BatchHost=localhost Command=/jobs/r-1/job.sh\n"
    "JobId=8 ArrayJobId=7 ArrayTaskId=0 JobState=RUNNING Reason=None Restarts=1 "
    "ExitCode=0:0 NodeList=gpu-[01-02] BatchHost=gpu-01\n")


def test_scontrol_records_become_one_fact_per_task_range() -> None:
    assert parse_jobs(SCONTROL) == [
        TaskInfo("7", (2, 3), "PENDING", "Resources", "", 0, 0, 0),
        TaskInfo("7", (1,), "CANCELLED", "", "localhost", 0, 15, 0),
        TaskInfo("7", (0,), "RUNNING", "", "gpu-[01-02]", 0, 0, 1)]


def test_array_ranges_are_read_and_written_as_slurm_does() -> None:
    assert array_indices("3") == (3,)
    assert array_indices("0-3") == (0, 1, 2, 3)
    assert array_indices("1,4-6") == (1, 4, 5, 6)
    assert array_indices("0-9:4%2") == (0, 4, 8)
    assert array_spec([3, 0, 1, 2]) == "0-3"
    assert array_spec([1, 3]) == "1,3"
    assert array_spec([2]) == "2"


def test_the_job_script_runs_shard_i_of_n_and_keeps_the_token_in_a_0600_file(
        tmp_path: Path) -> None:
    config = Config().replace(launcher={
        "kind": "slurm", "partition": "gpu", "account": "vision", "time_limit": "02:00:00",
        "gpus_per_shard": 1, "extra_sbatch": ("--qos=high", "#SBATCH --constraint=a100"),
        "setup": "module load cuda/12\n. /opt/venv/bin/activate", "agent": "vlmd-agent"})
    spec = LaunchSpec(run="r-abc", model="demo:instant", dataset="/data/d.jsonl", shards=4,
                      limit=10)
    script = write_job(spec, "http://head:8470", "s3cret 'token'", config, tmp_path / "r-abc")
    text = script.read_text()
    env = tmp_path / "r-abc" / "job.env"
    assert "s3cret" not in text
    assert env.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "r-abc").stat().st_mode & 0o777 == 0o700
    for line in ["#SBATCH --job-name=vlmd-r-abc", "#SBATCH --partition=gpu",
                 "#SBATCH --account=vision", "#SBATCH --time=02:00:00", "#SBATCH --gres=gpu:1",
                 "#SBATCH --qos=high", "#SBATCH --constraint=a100", "module load cuda/12"]:
        assert line in text.splitlines()
    last = text.splitlines()[-1]
    assert last.startswith("exec vlmd-agent --url http://head:8470 --run r-abc ")
    assert last.endswith('--limit 10 --shard "$SLURM_ARRAY_TASK_ID/4"')
    assert subprocess.run(["bash", "-n", str(script)], timeout=10).returncode == 0
    shown = subprocess.run(["bash", "-c", f"set -a; . {env}; echo \"$VLMD_TOKEN\""],
                           capture_output=True, text=True, timeout=10)
    assert shown.stdout == "s3cret 'token'\n"


def test_the_launcher_section_takes_an_array_of_strings_and_names_mistakes(
        tmp_path: Path) -> None:
    path = tmp_path / "v.toml"
    path.write_text('[launcher]\nkind = "slurm"\nextra_sbatch = ["--qos=high"]\npoll_s = 1\n')
    launcher = Config.load(path).launcher
    assert (launcher.kind, launcher.extra_sbatch, launcher.poll_s) == (
        "slurm", ("--qos=high",), 1.0)
    path.write_text('[launcher]\nextra_sbatch = "--qos=high"\n')
    with pytest.raises(ConfigError, match=r"\[launcher\]: extra_sbatch must be an array of "
                                          r"strings, not str"):
        Config.load(path)


def test_an_unknown_launcher_kind_stops_vlmd_serve_with_the_key_named(tmp_path: Path) -> None:
    (tmp_path / "vlmd-test.toml").write_text(
        '[datasette]\nenabled = false\n[launcher]\nkind = "pbs"\n')
    with pytest.raises(RuntimeError, match=r"\[launcher\] kind must be local or slurm, "
                                           r"not 'pbs'"):
        start_daemon(tmp_path / "vlmd.db")


def _event(seq: int, run: str, kind: str, body: dict[str, Any]) -> Event:
    return Event(seq, f"k{seq}", run, kind, 1.0 + seq, 1.0 + seq, typed_body(kind, body),
                 orjson.dumps(body).decode())


def test_a_resubmission_makes_a_failed_run_live_until_its_shards_end() -> None:
    run = "r-resume"
    events = [
        _event(1, run, "run.submitted", {"model": "demo:instant", "dataset": "d", "shards": 2}),
        _event(2, run, "run.scheduled", {"scheduler": "slurm", "job": "5", "shards": [0, 1],
                                         "of": 2}),
        _event(3, run, "run.started", {"total": 1, "host": "n1", "pid": 1, "shard": "0/2"}),
        _event(4, run, "run.finished", {"shard": "0/2"}),
        _event(5, run, "run.failed", {"reason": "slurm: task 5_1 NODE_FAIL", "shard": "1/2"}),
    ]
    state = tracker.fold(events).runs[run]
    assert (state.status, state.reason) == ("failed", "slurm: task 5_1 NODE_FAIL")
    resumed = _event(6, run, "run.scheduled", {"scheduler": "slurm", "job": "6", "shards": [1],
                                               "of": 2, "resume": True})
    state = tracker.fold([*events, resumed]).runs[run]
    # the reason stays as history of the last failure; the status says the run is live again
    assert (state.status, state.reason, state.shards) == (
        "running", "slurm: task 5_1 NODE_FAIL", {"0/2": "finished", "1/2": "scheduled"})
    done = _event(7, run, "run.finished", {"shard": "1/2"})
    assert tracker.fold([*events, resumed, done]).runs[run].status == "finished"


async def test_a_slurm_command_that_is_missing_is_named_in_the_error() -> None:
    with pytest.raises(SlurmError, match=r"^sbatch-nope failed: command not found"):
        await slurm("sbatch-nope", "--parsable")


# ---- a real cluster ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[str]:
    """A running single-node Slurm cluster (started by scripts/slurm-up); its SLURM_CONF."""
    try:
        up = subprocess.run([str(ROOT / "scripts" / "slurm-up")], capture_output=True,
                            text=True, timeout=600)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"scripts/slurm-up did not finish in {e.timeout}s")
    if up.returncode != 0:
        pytest.fail(f"scripts/slurm-up failed (exit status {up.returncode}):\n{up.stderr}")
    conf = up.stdout.strip().splitlines()[-1].removeprefix("export SLURM_CONF=")
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf
    yield conf
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 120.0) -> T:
    """Poll `probe` until it returns something true; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while not (value := probe()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.2)
    return value


class Vlmd:
    """A `vlmd serve` subprocess and the calls the tests make to it."""

    def __init__(self, daemon: DaemonProcess, dataset: Path, folder: Path) -> None:
        self.daemon, self.dataset, self.folder = daemon, dataset, folder
        self.http = httpx.Client(base_url=daemon.url, timeout=30,
                                 headers={"authorization": f"Bearer {daemon.token}"})

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``vlmd ARGS`` against this daemon, as a user would."""
        config = self.folder / "cli.toml"
        config.write_text(f"[server]\nport = {self.daemon.url.rsplit(':', 1)[1]}\n")
        return subprocess.run([sys.executable, "-m", "vlmd", *args, "--config", str(config)],
                              capture_output=True, text=True, timeout=180,
                              env={**os.environ, "VLMD_TOKEN": self.daemon.token})

    def submit(self, model: str, shards: int) -> str:
        r = self.http.post("/api/runs", json={"model": model, "dataset": str(self.dataset),
                                              "shards": shards})
        assert r.status_code == 201, r.text
        run: str = r.json()["run"]
        return run

    def state(self, run: str) -> dict[str, Any]:
        state: dict[str, Any] = self.http.get(f"/api/runs/{run}").json()
        return state

    def events(self, run: str, kind: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = self.http.get(
            "/api/events", params={"run": run, "kind": kind}).json()
        return events

    def job(self, run: str) -> str:
        job: str = wait_for(f"the Slurm job of {run}",
                            lambda: self.events(run, "run.scheduled"))[0]["body"]["job"]
        return job

    def ended(self, run: str, timeout: float = 150.0) -> dict[str, Any]:
        def final() -> dict[str, Any] | None:
            state = self.state(run)
            return state if state["status"] in tracker.TERMINAL else None
        return wait_for(f"{run} to end", final, timeout)

    def answered(self, run: str) -> Counter[str]:
        text = self.http.get(f"/api/runs/{run}/answers.csv").text
        return Counter(line.split(",")[1] for line in text.splitlines()[1:])


def scontrol_states(job: str) -> dict[int, str]:
    """What Slurm itself says about each task of `job`."""
    out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    return {i: info.state for info in parse_jobs(out) for i in info.indices}


@pytest.fixture
def slurm_vlmd(tmp_path: Path, slurm_cluster: str) -> Iterator[Vlmd]:
    """A daemon whose runs go to the test cluster, polling it every 0.3 s; 24 demo items."""
    (tmp_path / "vlmd-test.toml").write_text(
        f'[datasette]\nenabled = false\n[launcher]\nkind = "slurm"\npoll_s = 0.3\n'
        f'job_dir = "{tmp_path / "jobs"}"\n')
    dataset = demo_data.build(tmp_path / "data", n=24)
    daemon = start_daemon(tmp_path / "vlmd.db", env={"VLMD_HOME": str(tmp_path / "home")})
    vlmd = Vlmd(daemon, dataset, tmp_path)
    yield vlmd
    jobs = [e["body"]["job"] for e in vlmd.http.get(
        "/api/events", params={"kind": "run.scheduled"}).json()]
    if jobs:  # leave the cluster idle for the next test
        subprocess.run(["scancel", *jobs], timeout=30, check=False)
    vlmd.http.close()
    daemon.stop()


def test_a_four_shard_run_is_one_array_job_and_the_log_says_where_each_shard_ran(
        slurm_vlmd: Vlmd, tmp_path: Path) -> None:
    done = slurm_vlmd.cli("run", "--model", "demo:instant", "--dataset", str(slurm_vlmd.dataset),
                          "--shards", "4", "--name", "four", "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    run = slurm_vlmd.state("four")["run"]
    [csv_path] = (tmp_path / "out").glob("four-r-*/answers.csv")
    csv_rows = csv_path.read_text().splitlines()[1:]
    assert Counter(row.split(",")[1] for row in csv_rows) == ALL_ITEMS
    assert slurm_vlmd.answered(run) == ALL_ITEMS
    [scheduled] = slurm_vlmd.events(run, "run.scheduled")
    job = scheduled["body"]["job"]
    assert scheduled["body"]["shards"] == [0, 1, 2, 3] and job.isdigit()
    # the agents report the run finished a moment before their processes (and tasks) end
    tasks = wait_for("Slurm to report 4 tasks completed", lambda: (t := slurm_vlmd.events(
        run, "scheduler.task")) and sum(e["body"]["state"] == "COMPLETED" for e in t) == 4 and t)
    placed = {e["body"]["shard"]: e["body"]["node"] for e in tasks if e["body"].get("node")}
    assert placed == {f"{i}/4": "localhost" for i in range(4)}
    ends = {e["body"]["job"]: (e["body"]["state"], e["body"]["exit_code"]) for e in tasks
            if e["body"]["state"] == "COMPLETED"}
    assert ends == {f"{job}_{i}": ("COMPLETED", 0) for i in range(4)}
    assert scontrol_states(job) == dict.fromkeys(range(4), "COMPLETED")
    folder = slurm_vlmd.folder / "jobs" / run
    assert "test-token" not in (folder / "job.sh").read_text()
    assert (folder / "job.env").stat().st_mode & 0o777 == 0o600
    # the agents held a token minted for this run, never the write token
    env = (folder / "job.env").read_text()
    assert f"VLMD_TOKEN={mint('test-token', run)}\n" in env and "test-token\n" not in env


def test_scancel_of_one_task_fails_its_shard_and_vlmd_resume_completes_the_run(
        slurm_vlmd: Vlmd) -> None:
    run = slurm_vlmd.submit("demo:instant:400", shards=4)
    job = slurm_vlmd.job(run)
    wait_for("shard 1/4 to evaluate", lambda: any(
        e["body"].get("shard") == "1/4" for e in slurm_vlmd.events(run, "item.completed")))
    subprocess.run(["scancel", f"{job}_1"], timeout=30, check=True)
    state = slurm_vlmd.ended(run)
    assert state["status"] == "failed" and state["shards"]["1/4"] == "failed", state
    assert state["reason"].startswith(f"slurm: task {job}_1 CANCELLED on localhost"), state
    done_before = set(slurm_vlmd.answered(run))
    assert 0 < len(done_before) < 24

    resume = slurm_vlmd.cli("resume", run)
    assert resume.returncode == 0, resume.stderr
    assert f"run {run}: resubmitted shards 1/4" in resume.stderr
    assert slurm_vlmd.state(run)["status"] == "finished"
    assert slurm_vlmd.answered(run) == ALL_ITEMS
    _, again = slurm_vlmd.events(run, "run.scheduled")
    assert again["body"]["shards"] == [1] and again["body"]["resume"] is True
    # The agent reports its shard finished before it exits, and Slurm marks the task done then.
    wait_for("Slurm to record the resumed task as COMPLETED",
             lambda: scontrol_states(again["body"]["job"]) == {1: "COMPLETED"}, timeout=30)


def test_cancelling_the_run_cancels_its_slurm_job(slurm_vlmd: Vlmd) -> None:
    run = slurm_vlmd.submit("demo:instant:1000", shards=4)
    job = slurm_vlmd.job(run)
    wait_for("a shard to run", lambda: "RUNNING" in scontrol_states(job).values())
    r = slurm_vlmd.http.post(f"/api/runs/{run}/cancel")
    assert r.status_code == 200 and r.json()["agents_stopped"] == 4, r.text
    assert wait_for("Slurm to cancel every task", lambda: set(
        scontrol_states(job).values()) == {"CANCELLED"}, timeout=60)
    wait_for("vlmd to see it", lambda: sum(
        e["body"]["state"] == "CANCELLED" for e in slurm_vlmd.events(run, "scheduler.task")) == 4)
    assert slurm_vlmd.state(run)["status"] == "cancelled"
    failures = [e["body"]["reason"] for e in slurm_vlmd.events(run, "run.failed")]
    assert not [f for f in failures if f.startswith("slurm:")]


async def test_a_refused_submission_fails_the_run_with_sbatchs_answer(
        slurm_cluster: str, tmp_path: Path) -> None:
    appended: list[dict[str, Any]] = []

    async def append(events: list[dict[str, Any]]) -> None:
        appended.extend(events)

    config = Config().replace(launcher={"kind": "slurm", "partition": "no-such-partition",
                                        "job_dir": str(tmp_path / "jobs")})
    launcher = SlurmLauncher(config, "http://127.0.0.1:9", Tokens("t"), append)
    await launcher.launch(LaunchSpec(run="r-refused", model="demo:instant", dataset="d.jsonl"))
    [failed] = appended
    assert failed["kind"] == "run.failed" and wire.validate(appended) == []
    assert failed["body"]["reason"].startswith("cannot submit to Slurm: sbatch failed (exit "
                                               "status 1): sbatch: error: invalid partition")


async def test_a_job_that_slurm_forgot_fails_its_unfinished_shards(slurm_cluster: str,
                                                                    tmp_path: Path) -> None:
    appended: list[dict[str, Any]] = []

    async def append(events: list[dict[str, Any]]) -> None:
        appended.extend(events)

    launcher = SlurmLauncher(Config(), "http://127.0.0.1:9", Tokens("t"), append)
    launcher.adopt([
        _event(1, "r-old", "run.scheduled", {"scheduler": "slurm", "job": "999999",
                                              "shards": [0, 1], "of": 2}),
        _event(2, "r-old", "scheduler.task", {"scheduler": "slurm", "job": "999999_0",
                                               "shard": "0/2", "state": "COMPLETED"}),
        _event(3, "r-old", "scheduler.task", {"scheduler": "slurm", "job": "999999_1",
                                               "shard": "1/2", "state": "RUNNING",
                                               "node": "gpu-7"})])
    await launcher.poll()
    assert wire.validate(appended) == []
    assert [(e["kind"], e["body"]["shard"], e["body"].get("state")) for e in appended] == [
        ("scheduler.task", "1/2", "VANISHED"), ("run.failed", "1/2", None)]
    assert appended[1]["body"]["reason"] == (
        "slurm: task 999999_1 VANISHED on gpu-7 (reason slurm no longer knows the job)")
    await launcher.poll()
    assert len(appended) == 2


def test_resume_also_restarts_a_cancelled_local_run_where_it_stopped(
        daemon_proc: DaemonProcess, tmp_path: Path) -> None:
    dataset = demo_data.build(tmp_path / "data", n=24)
    vlmd = Vlmd(daemon_proc, dataset, tmp_path)
    try:
        run = vlmd.submit("demo:instant:300", shards=2)
        wait_for("a first answer", lambda: vlmd.events(run, "item.completed"))
        assert vlmd.http.post(f"/api/runs/{run}/cancel").status_code == 200
        assert vlmd.ended(run)["status"] == "cancelled"

        # the cancelled agents finish their current item first; until they exit, resume says so
        def resumed() -> httpx.Response | None:
            r = vlmd.http.post(f"/api/runs/{run}/resume")
            return None if r.status_code == 409 else r

        r = wait_for("the cancelled agents to exit", resumed, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["shards"] == ["0/2", "1/2"]
        assert vlmd.state(run)["status"] in ("submitted", "running")
        assert vlmd.ended(run)["status"] == "finished"
        assert vlmd.answered(run) == ALL_ITEMS
        again = vlmd.http.post(f"/api/runs/{run}/resume")
        assert again.status_code == 409 and "every shard has finished" in again.json()["error"]
        assert vlmd.http.post("/api/runs/r-nope/resume").status_code == 404
    finally:
        vlmd.http.close()
