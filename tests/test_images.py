"""GET /api/runs/{run}/items/{item}/image: the item's image from the run's dataset file."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

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


def jsonl_dataset(folder: Path, ids: list[str]) -> Path:
    """A JSONL dataset whose items' images are data URLs of distinct bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, item in enumerate(ids):
        png = demo_png(i)
        lines.append(json.dumps({"id": item, "question": "what?", "answer": "a",
                                 "image": "data:image/png;base64," + base64.b64encode(png)
                                 .decode()}))
    path = folder / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def demo_png(i: int) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + i.to_bytes(4, "big") * 64


async def test_any_items_image_is_served_whatever_its_id_holds(daemon: Daemon,
                                                               tmp_path: Path) -> None:
    ids = ["coco/val/1", "a b?c#d", "../x", "plain", "%2F"]
    path = jsonl_dataset(tmp_path / "d", ids)
    async with httpx.AsyncClient(base_url=daemon.url, headers=AUTH) as c:
        await c.post("/api/events", json=[ev("r1", "run.submitted", {
            "model": "demo:tiny", "dataset": str(path)})])
        for i, item in enumerate(ids):
            r = await c.get(f"/api/runs/r1/items/{quote(item, safe='')}/image")
            assert (r.status_code, r.content) == (200, demo_png(i)), item
        slash = await c.get("/api/runs/r1/items/coco/val/1/image")  # unquoted, as typed
        assert (slash.status_code, slash.content) == (200, demo_png(0))


async def test_each_dataset_is_read_once_however_the_runs_images_are_asked_for(
        daemon: Daemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[str] = []
    real = datasets.load

    def counted(path: Any, **kw: Any) -> datasets.Dataset:
        reads.append(str(path))
        return real(path, **kw)

    monkeypatch.setattr(datasets, "load", counted)
    paths = [jsonl_dataset(tmp_path / f"d{k}", [f"item-{i}" for i in range(20)])
             for k in range(6)]
    async with httpx.AsyncClient(base_url=daemon.url, headers=AUTH) as c:
        await c.post("/api/events", json=[ev(f"r{k}", "run.submitted", {
            "model": "demo:tiny", "dataset": str(p)}) for k, p in enumerate(paths)])
        for _ in range(3):  # cycle over more runs than the old cache held
            for k in range(6):
                for i in (0, 7, 19):
                    r = await c.get(f"/api/runs/r{k}/items/item-{i}/image")
                    assert (r.status_code, r.content) == (200, demo_png(i))
        assert sorted(reads) == sorted(str(p) for p in paths)  # each read exactly once
        paths[0].write_text(paths[0].read_text().replace('"item-0"', '"item-zero"'))
        renamed = await c.get("/api/runs/r0/items/item-zero/image")
        assert (renamed.status_code, renamed.content) == (200, demo_png(0))
    assert len(reads) == 7  # a changed dataset is read again
