"""The demo dataset: synthetic pictures of coloured shapes with multiple-choice questions.

Each 96x96 PNG shows 1-4 shapes of one kind and one colour on white. Each item asks one of
three questions (colour, count, kind) with four options A-D; the right letter is seeded and
each letter is right equally often. Drawing needs Pillow (the agent's ``hf`` extra).
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import ImageDraw

SIZE = 96
DATASET = "demo.jsonl"
MANIFEST = "demo.manifest.json"
IMAGES = "images"
VERSION = 1  # bump when the pictures or questions change, so old builds are rebuilt
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
           "yellow": (235, 200, 30), "purple": (140, 60, 180), "orange": (245, 130, 20)}
SHAPES = ("circle", "square", "triangle", "cross")
COUNTS = ("1", "2", "3", "4")
LETTERS = "ABCD"


@dataclass(frozen=True)
class _Scene:
    shape: str
    colour: str
    count: int


def build(directory: str | os.PathLike[str], n: int = 200, seed: int = 0) -> Path:
    """Write ``demo.jsonl`` and its PNG images into ``directory``; return the JSONL's path.

    The same ``n`` and ``seed`` give the same bytes. When ``directory`` already holds that
    build (its manifest says so), nothing is written. Files are replaced atomically, so a
    reader never sees half a file.

    Raises:
        ValueError: ``n`` is not positive.
        ModuleNotFoundError: Pillow is not installed (install ``vlmd-agent[hf]``).
    """
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    root = Path(directory)
    dataset = root / DATASET
    wanted = {"version": VERSION, "n": n, "seed": seed}
    if dataset.is_file() and _manifest(root) == wanted:
        return dataset
    if importlib.util.find_spec("PIL") is None:
        raise ModuleNotFoundError("building the demo dataset needs Pillow: "
                                  "pip install 'vlmd-agent[hf]'", name="PIL")
    (root / IMAGES).mkdir(parents=True, exist_ok=True)
    # a build that dies half-way must not look complete to the next call
    (root / MANIFEST).unlink(missing_ok=True)
    rng = random.Random(seed)
    # every letter is right equally often, in a seeded order
    positions = [i % len(LETTERS) for i in range(n)]
    rng.shuffle(positions)
    lines = []
    for index, position in enumerate(positions):
        scene = _Scene(rng.choice(SHAPES), rng.choice(sorted(COLOURS)), rng.randint(1, 4))
        image = f"{IMAGES}/demo-{index:04d}.png"
        _write(root / image, _draw(scene, rng))
        lines.append(json.dumps(_question(index, scene, image, position, rng)))
    _write(dataset, ("\n".join(lines) + "\n").encode())
    for stale in (root / IMAGES).glob("demo-*.png"):
        if int(stale.stem.removeprefix("demo-")) >= n:
            stale.unlink(missing_ok=True)
    _write(root / MANIFEST, json.dumps(wanted).encode())
    return dataset


def _manifest(root: Path) -> object:
    try:
        return json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def _question(index: int, scene: _Scene, image: str, position: int,
              rng: random.Random) -> dict[str, object]:
    category = rng.choice(("colour", "count", "shape"))
    if category == "colour":
        question, right, pool = "What colour is the shape?", scene.colour, sorted(COLOURS)
        if scene.count > 1:
            question = "What colour are the shapes?"
    elif category == "count":
        question, right, pool = "How many shapes are there?", str(scene.count), list(COUNTS)
    else:
        question, right, pool = "Which shape is shown?", scene.shape, list(SHAPES)
    wrong = rng.sample([option for option in pool if option != right], len(LETTERS) - 1)
    options = [*wrong[:position], right, *wrong[position:]]
    return {"id": f"demo-{index:04d}", "image": image, "question": question,
            "choices": dict(zip(LETTERS, options, strict=True)),
            "answer": LETTERS[position], "category": category}


def _draw(scene: _Scene, rng: random.Random) -> bytes:
    from PIL import Image, ImageDraw

    picture = Image.new("RGB", (SIZE, SIZE), "white")
    pen = ImageDraw.Draw(picture)
    cell = SIZE // 2
    # one shape per quadrant, nudged a little, so shapes never overlap
    for quadrant in rng.sample(range(4), scene.count):
        x = (quadrant % 2) * cell + rng.randint(4, 8)
        y = (quadrant // 2) * cell + rng.randint(4, 8)
        _shape(pen, scene.shape, (x, y, x + cell - 12, y + cell - 12), COLOURS[scene.colour])
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()


def _shape(pen: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int],
           colour: tuple[int, int, int]) -> None:
    left, top, right, bottom = box
    middle_x, middle_y, third = (left + right) // 2, (top + bottom) // 2, (right - left) // 3
    if shape == "circle":
        pen.ellipse(box, fill=colour)
    elif shape == "square":
        pen.rectangle(box, fill=colour)
    elif shape == "triangle":
        pen.polygon([(middle_x, top), (right, bottom), (left, bottom)], fill=colour)
    else:
        pen.rectangle((middle_x - third // 2, top, middle_x + third // 2, bottom), fill=colour)
        pen.rectangle((left, middle_y - third // 2, right, middle_y + third // 2), fill=colour)


def _write(path: Path, data: bytes) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_bytes(data)
    os.replace(partial, path)
