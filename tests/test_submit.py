"""POST /api/runs and cancel: what is refused, and why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import TOKEN
from tests.events import finished, started, submitted
from vlmd.daemon.serve import Daemon

AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text("{}\n")
    return path


@pytest.mark.parametrize(("body", "message"), [
    ({"model": "gpt:x"}, "model: expected openai:NAME@BASE_URL, hf:PATH or demo:NAME"),
    ({"model": "openai:m@ftp://x"}, "model: expected"),
    ({"dataset": "/nonexistent/x.jsonl"}, "dataset: no such file '/nonexistent/x.jsonl'"),
    ({"dataset": "../../../../etc"}, "dataset: no such file"),
    ({"name": "../etc/passwd"}, "name: letters, digits"),
    ({"shards": 0}, "shards: expected an integer from 1 to 256"),
    ({"shards": "2"}, "shards: expected an integer"),
    ({"limit": True}, "limit: expected an integer"),
    ({"device": "tpu"}, "device: expected auto, cpu, cuda or cuda:N"),
    ({"colour": "red"}, "colour: unknown field"),
])
async def test_bad_submissions_are_422_naming_the_field_and_append_nothing(
        daemon: Daemon, dataset: Path, body: dict[str, Any], message: str) -> None:
    full = {"model": "demo:instant", "dataset": str(dataset), **body}
    async with httpx.AsyncClient(base_url=daemon.url, headers=AUTH) as c:
        r = await c.post("/api/runs", json=full)
    assert r.status_code == 422
    assert message in r.json()["error"]
    assert daemon.live.log.count() == 0


async def test_submitting_needs_the_token(daemon: Daemon, dataset: Path) -> None:
    async with httpx.AsyncClient(base_url=daemon.url) as c:
        r = await c.post("/api/runs", json={"model": "demo:instant", "dataset": str(dataset)})
    assert r.status_code == 401


async def test_cancel_refuses_unknown_and_ended_runs(daemon: Daemon) -> None:
    async with httpx.AsyncClient(base_url=daemon.url, headers=AUTH) as c:
        await c.post("/api/events", json=[submitted("r1"), started("r1"), finished("r1")])
        unknown = await c.post("/api/runs/nope/cancel")
        ended = await c.post("/api/runs/r1/cancel")
    assert unknown.status_code == 404
    assert ended.status_code == 409
    assert ended.json()["error"] == "run r1 is already finished"
