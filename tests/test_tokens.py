"""Least privilege: read and write tokens differ; an agent's token (minted at launch) writes only
its own run; a token that writes never travels in a URL nor comes from a web page; token files
that others could read or plant are refused; a recorded submission is checked again on resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import psutil
import pytest
import trio

from tests.conftest import TOKEN, daemon_config
from tests.events import completed, ev, started, submitted
from vlmd.config import Config, ConfigError
from vlmd.daemon.serve import Daemon, serve
from vlmd.launch import submit
from vlmd.launch.launcher import LocalLauncher
from vlmd.tokens import RUN_PREFIX, Tokens, mint
from vlmd_agent.evaluate import demo_data

READ = "reader-token"
WRITE = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def locked(tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
                 ) -> AsyncIterator[Daemon]:
    """Reads need a token; the log holds runs r1 and r2."""
    monkeypatch.setenv("VLMD_READ_TOKEN", READ)
    d: Daemon = await nursery.start(serve, daemon_config(tmp_path / "vlmd.db", read_token=True))
    async with httpx.AsyncClient(base_url=d.url, headers=WRITE) as c:
        r = await c.post("/api/events", json=[submitted("r1"), started("r1"), submitted("r2")])
        assert r.status_code == 200
    yield d
    d.shutdown.set()


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def test_the_read_token_reads_and_cannot_write(locked: Daemon) -> None:
    async with httpx.AsyncClient(base_url=locked.url, headers=bearer(READ)) as c:
        assert (await c.get("/api/runs")).status_code == 200
        assert (await c.get("/api/events")).status_code == 200
        for path, body in (("/api/events", [completed("r1", 1)]), ("/api/runs", {}),
                           ("/api/runs/r1/cancel", None), ("/api/runs/r1/resume", None)):
            r = await c.post(path, json=body)
            assert r.status_code == 403, path
            assert "read token cannot write" in r.json()["error"] or \
                "needs the write token" in r.json()["error"]
    assert locked.live.log.count() == 3


async def test_a_run_token_writes_and_reads_only_its_own_run(locked: Daemon) -> None:
    token = Tokens(TOKEN).mint("r1")
    assert token.startswith(RUN_PREFIX + "r1.")
    async with httpx.AsyncClient(base_url=locked.url, headers=bearer(token)) as c:
        ok = await c.post("/api/events", json=[completed("r1", 1), ev("r1", "alert.hang", {
            "message": "stuck"})])
        assert ok.status_code == 200 and ok.json()["appended"] == 2
        other = await c.post("/api/events", json=[completed("r1", 2), completed("r2", 1)])
        assert other.status_code == 403
        assert other.json()["error"].startswith("event 1: run: this token writes only run r1")
        for kind in ("run.submitted", "run.cancelled", "run.scheduled"):
            body = {"model": "demo:x", "dataset": "d"} if kind == "run.submitted" else {
                "scheduler": "s", "job": "1", "shards": [0], "of": 1} if kind == "run.scheduled" \
                else {}
            forged = await c.post("/api/events", json=[ev("r1", kind, body)])
            assert forged.status_code == 403, kind
            assert f"only vlmd records {kind}" in forged.json()["error"]
        for path in ("/api/runs", "/api/runs/r1/cancel"):
            assert (await c.post(path, json={})).status_code == 403
        assert (await c.get("/api/runs/r1/items")).status_code == 200  # an agent's resume
        assert (await c.get("/api/runs/r1")).status_code == 200
        for path in ("/api/runs/r2", "/api/runs/r2/items", "/api/runs", "/api/events"):
            r = await c.get(path)
            assert r.status_code == 403, path
            assert "reads only its own run (it is run r1's token)" in r.json()["error"]
    forged_mac = mint("not the write token", "r1")
    async with httpx.AsyncClient(base_url=locked.url, headers=bearer(forged_mac)) as c:
        assert (await c.post("/api/events", json=[completed("r1", 3)])).status_code == 401
    assert locked.live.log.count() == 5


async def test_a_token_that_writes_is_refused_in_a_url_and_from_a_web_page(
        locked: Daemon) -> None:
    page = {"sec-fetch-mode": "cors", "sec-fetch-site": "same-origin"}
    async with httpx.AsyncClient(base_url=locked.url) as c:
        for token in (TOKEN, Tokens(TOKEN).mint("r1")):
            in_url = await c.get("/api/runs/r1/answers.csv", params={"token": token})
            assert in_url.status_code == 403
            assert "may not travel in a URL" in in_url.json()["error"]
            from_page = await c.get("/api/runs", headers={**bearer(token), **page})
            assert from_page.status_code == 403
            assert "dashboard needs only the read token" in from_page.json()["error"]
        assert (await c.post("/api/events", json=[completed("r1", 9)],
                             headers={**WRITE, **page})).status_code == 403
        assert (await c.get("/api/runs/r1/answers.csv", params={"token": READ})
                ).status_code == 200
        assert (await c.get("/api/runs", headers={**bearer(READ), **page})).status_code == 200
    assert locked.live.log.count() == 3


async def test_the_read_token_may_not_be_the_write_token(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLMD_READ_TOKEN", TOKEN)
    config = daemon_config(tmp_path / "vlmd.db", read_token=True)
    with pytest.raises(ConfigError, match=r"read token .* is the write token"):
        config.resolve_read_token()
    monkeypatch.delenv("VLMD_READ_TOKEN")
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    assert config.resolve_read_token() == ""  # a client makes none
    made = config.resolve_read_token(create=True)
    assert made and made != TOKEN
    assert (tmp_path / "vlmd.read-token").stat().st_mode & 0o777 == 0o600
    assert config.replace(server={"read_token": False}).resolve_read_token() is None


async def test_agents_that_vlmd_launches_hold_a_token_for_their_run_only(
        daemon: Daemon, tmp_path: Path) -> None:
    dataset = demo_data.build(tmp_path / "data", n=40)
    async with httpx.AsyncClient(base_url=daemon.url, headers=WRITE, timeout=30) as c:
        r = await c.post("/api/runs", json={"model": "demo:instant:50", "dataset": str(dataset)})
        run = r.json()["run"]
        with trio.fail_after(60):
            while not isinstance(daemon.launcher, LocalLauncher) or not daemon.launcher.procs:
                await trio.sleep(0.05)
            assert isinstance(daemon.launcher, LocalLauncher)
            [proc] = daemon.launcher.procs.values()
            env = psutil.Process(proc.pid).environ()
            while (await c.get(f"/api/runs/{run}")).json()["status"] != "finished":
                await trio.sleep(0.1)
            while daemon.launcher.procs:  # it has said all
                await trio.sleep(0.1)
    assert env["VLMD_TOKEN"] == mint(TOKEN, run) != TOKEN
    assert TOKEN not in env.values()


def test_token_files_that_others_could_read_or_plant_are_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLMD_TOKEN", raising=False)
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    config = Config().replace(log={"path": str(tmp_path / "vlmd.db")})
    path = tmp_path / "vlmd.token"
    path.write_text("planted\n")
    path.chmod(0o666)
    with pytest.raises(ConfigError, match=r"vlmd.token: mode 0666 lets other users read or "
                                          r"change the token; delete it .* or chmod 600"):
        config.resolve_token()
    path.chmod(0o640)
    with pytest.raises(ConfigError, match="mode 0640"):
        config.resolve_token()
    path.chmod(0o600)
    assert config.resolve_token() == "planted"
    if os.geteuid() == 0:  # root can give the file away; others cannot make this case
        os.chown(path, 65534, 65534)
        with pytest.raises(ConfigError, match=r"owned by uid 65534, not by vlmd's user"):
            config.resolve_token()
    path.unlink()
    (tmp_path / "elsewhere").write_text("linked\n")
    (tmp_path / "elsewhere").chmod(0o600)
    path.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match="cannot use this token file"):
        config.resolve_token()


def test_vlmd_serve_refuses_a_planted_token_file_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "vlmd.token").write_text("planted\n")
    (tmp_path / "vlmd.token").chmod(0o666)
    env = {k: v for k, v in os.environ.items() if k not in ("VLMD_TOKEN", "STATE_DIRECTORY")}
    done = subprocess.run([sys.executable, "-m", "vlmd", "serve", "--port", "0", "--db",
                           str(tmp_path / "vlmd.db")], cwd=tmp_path, env=env, timeout=60,
                          capture_output=True, text=True)
    assert done.returncode == 2
    [line] = [x for x in done.stderr.splitlines() if "Running on" not in x and x.strip()][-1:]
    assert line.startswith("vlmd serve: ") and "vlmd.token: mode 0666" in line
    assert "Traceback" not in done.stderr


def test_vlmd_token_prints_a_run_token_and_the_read_token(tmp_path: Path) -> None:
    env = {**os.environ, "VLMD_TOKEN": TOKEN, "VLMD_READ_TOKEN": READ}
    config = tmp_path / "v.toml"
    config.write_text("[server]\nread_token = true\n")

    def token(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "vlmd", "token", "--config", str(config),
                               *args], env=env, capture_output=True, text=True, timeout=60)

    assert token("--run", "r-7f3a").stdout == mint(TOKEN, "r-7f3a") + "\n"
    assert token("--read").stdout == READ + "\n"
    bad = token("--run", "../x")
    assert bad.returncode == 2 and "--run" in bad.stderr


async def test_resume_checks_the_recorded_submission_as_submit_checks_a_new_one(
        daemon: Daemon, tmp_path: Path) -> None:
    dataset = demo_data.build(tmp_path / "data", n=4)
    forged = ev("rf", "run.submitted", {"model": "demo:x;touch /tmp/x", "dataset": str(dataset),
                                        "config": {}}, key="rf/submitted")
    async with httpx.AsyncClient(base_url=daemon.url, headers=WRITE) as c:
        assert (await c.post("/api/events", json=[forged])).status_code == 200
        r = await c.post("/api/runs/rf/resume")
    assert r.status_code == 422
    assert r.json()["error"].startswith("run rf: its submission cannot be started again: model:")
    assert daemon.launcher is not None and not daemon.launcher.procs  # type: ignore[union-attr]
    assert daemon.live.log.count() == 1  # no run.scheduled: nothing was started
    good = {"model": "demo:instant", "dataset": str(dataset), "shards": 2,
            "config": {"max_new_tokens": 8, "device": "cpu"}}
    assert submit.resubmission("r1", good).shards == 2
    for body, field in (({**good, "shards": 1_000_000}, "shards"),
                        ({**good, "config": {"device": "tpu;x"}}, "device"),
                        ({**good, "config": {"concurrency": 10**6}}, "concurrency"),
                        ({**good, "config": "x"}, "config"),
                        ({**good, "dataset": "/nonexistent"}, "dataset")):
        with pytest.raises(submit.SubmitError, match=f"^{field}:"):
            submit.resubmission("r1", body)


def test_a_kubernetes_launch_carries_a_secret_with_its_runs_token(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "vlmd", "launch", "--kubernetes", "--model", "demo:instant",
         "--dataset", "/data/d.jsonl", "--image", "img", "--url", "http://v:8470"],
        env={**os.environ, "VLMD_TOKEN": TOKEN}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    secret, job = doc["items"]
    run = job["metadata"]["annotations"]["vlmd/run"]
    assert (doc["kind"], secret["kind"], job["kind"]) == ("List", "Secret", "Job")
    assert secret["stringData"]["token"] == mint(TOKEN, run)
    assert TOKEN not in done.stdout.replace(mint(TOKEN, run), "")
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["VLMD_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": secret["metadata"]["name"], "key": "token"}

