"""GET /api/runs/{run}/items/{item}/image: the item's image from the run's dataset file."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.conftest import TOKEN
from tests.events import ev
from vlmd.daemon.serve import Daemon
from vlmd_agent.evaluate import datasets, demo_data

AUTH = {"authorization": f"Bearer {TOKEN}"}


async def test_an_items_image_is_served_from_the_runs_dataset(daemon: Daemon,
                                                               tmp_path: Path) -> None:
    path = demo_data.build(tmp_path / "data", n=4)
    item = datasets.load(path).items[2]
    async with httpx.AsyncClient(base_url=daemon.url, headers=AUTH) as c:
        await c.post("/api/events", json=[ev("r1", "run.submitted", {
            "model": "demo:tiny", "dataset": str(path)}), ev("r2", "run.submitted", {
                "model": "demo:tiny", "dataset": str(tmp_path / "gone.jsonl")})])
        image = await c.get(f"/api/runs/r1/items/{item.id}/image")
        unknown = await c.get("/api/runs/r1/items/nope/image")
        gone = await c.get(f"/api/runs/r2/items/{item.id}/image")
    assert image.status_code == 200
    assert image.headers["content-type"] == "image/png"
    assert image.content == item.image
    assert unknown.status_code == 404
    assert "no item 'nope'" in unknown.json()["error"]
    assert gone.status_code == 404
    assert "cannot be read" in gone.json()["error"]


async def test_a_hub_items_images_are_served_by_number_with_the_runs_columns(
        daemon: Daemon, tmp_path: Path) -> None:
    from tests.test_datasets import GIF, PNG
    from tests.test_hub_datasets import image, write_parquet

    path = write_parquet(tmp_path / "custom.parquet", [
        {"qid": "q1", "question": "Same?", "answer": "no", "pic": image(),
         "pic2": image(GIF)}])
    async with httpx.AsyncClient(base_url=daemon.url, headers=AUTH) as c:
        await c.post("/api/events", json=[ev("r1", "run.submitted", {
            "model": "demo:tiny", "dataset": str(path),
            "config": {"columns": "id=qid,images=pic+pic2"}})])
        first = await c.get("/api/runs/r1/items/q1/image")
        second = await c.get("/api/runs/r1/items/q1/image?n=1")
        third = await c.get("/api/runs/r1/items/q1/image?n=2")
        bad = await c.get("/api/runs/r1/items/q1/image?n=-1")
    assert (first.status_code, first.content, first.headers["content-type"]) == (
        200, PNG, "image/png")
    assert (second.status_code, second.content, second.headers["content-type"]) == (
        200, GIF, "image/gif")
    assert third.status_code == 404
    assert third.json()["error"] == "item 'q1' has 2 image(s), not 3"
    assert bad.status_code == 400
