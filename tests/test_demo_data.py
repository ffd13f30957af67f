"""The demo dataset: builds, loads cleanly, is balanced, deterministic and built only once."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from vlmd_agent.evaluate import datasets, demo_data


def files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_demo_dataset_builds_and_loads(tmp_path: Path) -> None:
    path = demo_data.build(tmp_path)
    assert path == tmp_path / "demo.jsonl"
    dataset = datasets.load(path)
    assert len(dataset) == 200
    assert {item.scorer for item in dataset.items} == {"mcq"}
    assert Counter(item.answer for item in dataset.items) == {"A": 50, "B": 50, "C": 50, "D": 50}
    categories = Counter(item.category for item in dataset.items)
    assert set(categories) == {"colour", "count", "shape"}
    assert min(categories.values()) > 40
    for item in dataset.items:
        assert list(item.choices) == ["A", "B", "C", "D"]
        assert len(set(item.choices.values())) == 4
        assert item.image_mime == "image/png"
        with Image.open(io.BytesIO(item.image)) as picture:
            assert picture.size == (96, 96)


def test_colour_and_count_answers_match_the_picture(tmp_path: Path) -> None:
    dataset = datasets.load(demo_data.build(tmp_path, n=60, seed=3))
    for item in dataset.items:
        assert isinstance(item.answer, str)
        truth = item.choices[item.answer]
        with Image.open(io.BytesIO(item.image)) as opened:
            picture = opened.convert("RGB")
        colours = {colour for _, colour in picture.getcolors(96 * 96) or []} - {(255, 255, 255)}
        # one shape per quadrant at most: count the quadrants that are not blank
        quadrants = [picture.crop((x, y, x + 48, y + 48)) for x in (0, 48) for y in (0, 48)]
        shapes = sum(q.getextrema() != ((255, 255),) * 3 for q in quadrants)
        assert len(colours) == 1
        if item.category == "colour":
            assert colours == {demo_data.COLOURS[truth]}
        elif item.category == "count":
            assert shapes == int(truth)
        else:
            assert truth in demo_data.SHAPES


def test_same_seed_gives_the_same_bytes(tmp_path: Path) -> None:
    demo_data.build(tmp_path / "one", n=40, seed=7)
    demo_data.build(tmp_path / "two", n=40, seed=7)
    demo_data.build(tmp_path / "other", n=40, seed=8)
    assert files(tmp_path / "one") == files(tmp_path / "two")
    assert files(tmp_path / "one") != files(tmp_path / "other")


def test_a_finished_build_is_not_redone(tmp_path: Path) -> None:
    path = demo_data.build(tmp_path, n=20)
    marker = 1_000_000_000
    os.utime(path, (marker, marker))
    assert demo_data.build(tmp_path, n=20) == path
    assert path.stat().st_mtime == marker


def test_a_different_build_replaces_the_old_one(tmp_path: Path) -> None:
    demo_data.build(tmp_path / "reused", n=30, seed=1)
    demo_data.build(tmp_path / "reused", n=10, seed=2)
    demo_data.build(tmp_path / "fresh", n=10, seed=2)
    assert files(tmp_path / "reused") == files(tmp_path / "fresh")


def test_n_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n must be positive, got 0"):
        demo_data.build(tmp_path, n=0)


def test_without_pillow_the_build_says_what_to_install(tmp_path: Path) -> None:
    agent = Path(demo_data.__file__).parents[2]
    # -S leaves site-packages (and so Pillow) out; the agent package itself needs none of it
    script = (f"import sys; sys.path.insert(0, {str(agent)!r});"
              " from vlmd_agent.evaluate import demo_data;"
              f" demo_data.build({str(tmp_path / 'demo')!r})")
    done = subprocess.run([sys.executable, "-I", "-S", "-c", script], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1
    assert "ModuleNotFoundError: building the demo dataset needs Pillow: pip install " \
           "'vlmd-agent[hf]'" in done.stderr
    assert not (tmp_path / "demo").exists()
