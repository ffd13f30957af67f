"""Demo models build offline, byte for byte the same every time, only when needed, and trained:
through the hf: backend they answer held-out demo questions, small better than tiny."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from vlmd_agent import scoring
from vlmd_agent.evaluate import datasets, demo_data, demo_models, demo_train
from vlmd_agent.evaluate.backends import Request, default_models_dir, load_backend
from vlmd_agent.evaluate.backends.hf import HFBackend

HELD_OUT = 60  # items of the demo set `vlmd demo` evaluates on (seed 0), never trained on
ANSWERS = {*demo_data.COLOURS, *demo_data.SHAPES, *demo_data.COUNTS}


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: demo_models._sha256(p) for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Both models, built once for the module: training takes seconds, not milliseconds."""
    models = tmp_path_factory.mktemp("models")
    threads = torch.get_num_threads()
    for name in demo_models.names():
        demo_models.build(name, models)
    assert torch.get_num_threads() == threads  # training's single thread was handed back
    yield models


def _accuracy(folder: Path, items: tuple[datasets.Item, ...]) -> tuple[float, list[str]]:
    backend = load_backend(f"hf:{folder}", device="cpu")
    try:
        texts = [backend.generate(Request(item.prompt(), item.image)).text for item in items]
    finally:
        backend.close()
    right = sum(scoring.score(item.scorer, text, item.answer, item.choices)
                for item, text in zip(items, texts, strict=True))
    return right / len(items), texts


def test_a_rebuild_repairs_a_damaged_folder_with_identical_files(
    built: Path, tmp_path: Path
) -> None:
    folder = shutil.copytree(built / "tiny", tmp_path / "tiny")
    good = _digests(folder)
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json"} <= set(
        good
    )
    (folder / "model.safetensors").write_bytes(b"corrupt")
    (folder / "stray.txt").write_text("left over")
    assert demo_models.build("tiny", tmp_path) == folder
    assert _digests(folder) == good  # trained again from scratch: the very same bytes
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_a_current_build_is_left_untouched(built: Path, tmp_path: Path) -> None:
    folder = shutil.copytree(built / "small", tmp_path / "small")
    weights = folder / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert demo_models.build("small", tmp_path) == folder
    assert weights.stat().st_mtime_ns == stamp  # nothing was rebuilt


def test_manifest_records_the_recipe_and_every_file(built: Path) -> None:
    folder = built / "tiny"
    manifest = json.loads((folder / demo_models.MANIFEST).read_text())
    recipe = manifest["recipe"]
    assert recipe["name"] == "tiny"
    assert recipe["recipe_version"] == demo_models.RECIPE_VERSION == 3
    assert recipe["spec"]["image_size"] == 32
    assert recipe["spec"]["train"] == {
        "images": 600, "steps": 150, "batch_size": 8, "learning_rate": 3e-3
    }
    expected = {k: v for k, v in _digests(folder).items() if k != demo_models.MANIFEST}
    assert manifest["files"] == expected


def test_an_untrained_build_from_recipe_1_is_not_current(built: Path, tmp_path: Path) -> None:
    folder = shutil.copytree(built / "tiny", tmp_path / "tiny")
    recipe = demo_models._recipe("tiny", demo_models.SPECS["tiny"])
    assert demo_models._is_current(folder, recipe)
    manifest_path = folder / demo_models.MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["recipe"]["recipe_version"] = 1
    manifest_path.write_text(json.dumps(manifest))
    assert not demo_models._is_current(folder, recipe)  # so `build` trains it afresh


def test_training_asks_every_kind_of_question_about_each_picture() -> None:
    assert demo_train.TRAIN_SEED != 0  # 0 is demo_data.build's default: the evaluation set
    for asked in demo_train.pictures(5):
        assert len({item.image for item in asked}) == 1
        assert sorted(item.category or "" for item in asked) == sorted(
            ["colour", "count", "shape"] * demo_train.ROUNDS
        )
        assert {demo_train.answer_text(item) for item in asked} <= ANSWERS


def test_trained_models_answer_held_out_questions_small_better(
    built: Path, tmp_path: Path
) -> None:
    items = datasets.load(demo_data.build(tmp_path / "data", n=HELD_OUT, seed=0)).items
    tiny, tiny_texts = _accuracy(built / "tiny", items)
    small, small_texts = _accuracy(built / "small", items)
    # both answer with an option's text, as taught, not with stray tokens
    assert set(tiny_texts) <= ANSWERS and set(small_texts) <= ANSWERS
    assert tiny > 0.3  # chance is 0.25
    assert small > tiny + 0.15
    assert small > 0.7


def test_small_has_over_ten_times_the_parameters(built: Path) -> None:
    counts = {}
    for name in demo_models.names():
        backend = load_backend(f"hf:{built / name}", device="cpu")
        assert isinstance(backend, HFBackend)
        counts[name] = backend.parameters
        backend.close()
    assert 100_000 < counts["tiny"] < 200_000
    assert counts["small"] > 10 * counts["tiny"]


def test_unknown_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown demo model 'huge'; known: small, tiny"):
        demo_models.build("huge", tmp_path)
    assert not any(tmp_path.iterdir())


def test_demo_models_live_under_vlmd_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLMD_HOME", str(tmp_path / "home"))
    assert default_models_dir() == tmp_path / "home" / "models"
    monkeypatch.delenv("VLMD_HOME")
    assert default_models_dir() == Path.home() / ".cache" / "vlmd" / "models"
