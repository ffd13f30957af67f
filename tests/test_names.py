"""A run name several runs share: every lookup by it is an error that lists the runs, in the
API, on the feed and in the commands that read the log file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio

from tests.conftest import TOKEN
from tests.events import completed, started, submitted
from vlmd.cli.wsclient import Closed, open_ws
from vlmd.daemon.serve import Daemon
from vlmd.store.log import EventLog

AUTH = {"authorization": f"Bearer {TOKEN}"}
TWINS = [submitted("r-one", name="nightly"), started("r-one"), completed("r-one", 1),
         submitted("r-two", name="nightly"), submitted("r-solo", name="solo")]


async def test_a_shared_name_is_a_409_listing_the_runs_and_an_id_still_works(
        daemon: Daemon) -> None:
    async with httpx.AsyncClient(base_url=daemon.url, headers=AUTH) as c:
        assert (await c.post("/api/events", json=TWINS)).status_code == 200
        shared = await c.get("/api/runs/nightly")
        events = await c.get("/api/events", params={"run": "nightly"})
        cancel = await c.post("/api/runs/nightly/cancel")
        by_id = await c.get("/api/runs/r-two")
        solo = await c.get("/api/runs/solo")
    for r in (shared, events, cancel):
        assert r.status_code == 409
        assert r.json()["error"] == ("the name 'nightly' matches 2 runs (r-one, r-two); "
                                     "name one by its id")
        assert r.json()["runs"] == ["r-one", "r-two"]
    assert by_id.json()["name"] == "nightly"
    assert solo.json()["run"] == "r-solo"
    assert daemon.live.log.count() == len(TWINS)  # the cancel appended nothing


async def test_the_feed_refuses_a_shared_name_with_the_reason(daemon: Daemon) -> None:
    async with httpx.AsyncClient(base_url=daemon.url, headers=AUTH) as c:
        await c.post("/api/events", json=TWINS)
    url = daemon.url.replace("http", "ws", 1) + "/api/feed?after=0&run=nightly"
    with trio.fail_after(10), pytest.raises(Closed) as closed:
        async with open_ws(url) as ws:
            await ws.get_message()
    assert closed.value.code == 1008
    assert "matches 2 runs" in closed.value.reason


def test_commands_that_read_the_log_refuse_a_shared_name_in_one_line(tmp_path: Path) -> None:
    db = tmp_path / "v.db"
    log = EventLog.open(db)
    try:
        log.append(TWINS, received=TWINS[-1]["ts"])
    finally:
        log.close()
    done = subprocess.run([sys.executable, "-m", "vlmd", "export", "nightly", "--db", str(db)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == ("vlmd export: the name 'nightly' matches 2 runs "
                                   "(r-one, r-two); name one by its id")
