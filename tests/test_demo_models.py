"""Demo models build offline, byte for byte the same every time, and only when needed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlmd_agent import demo_models
from vlmd_agent.backends import default_models_dir


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: demo_models._sha256(p) for p in sorted(folder.iterdir())}


def test_two_builds_give_identical_files(tmp_path: Path) -> None:
    first = demo_models.build("tiny", tmp_path / "one")
    second = demo_models.build("tiny", tmp_path / "two")
    assert first == tmp_path / "one" / "tiny"
    assert _digests(first) == _digests(second)
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json"} <= set(
        _digests(first)
    )


def test_manifest_records_the_recipe_and_every_file(tmp_path: Path) -> None:
    folder = demo_models.build("tiny", tmp_path)
    manifest = json.loads((folder / demo_models.MANIFEST).read_text())
    assert manifest["recipe"]["name"] == "tiny"
    assert manifest["recipe"]["spec"]["image_size"] == 32
    expected = {k: v for k, v in _digests(folder).items() if k != demo_models.MANIFEST}
    assert manifest["files"] == expected


def test_build_is_idempotent_and_repairs_a_damaged_folder(tmp_path: Path) -> None:
    folder = demo_models.build("tiny", tmp_path)
    weights = folder / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    good = _digests(folder)
    assert demo_models.build("tiny", tmp_path) == folder
    assert weights.stat().st_mtime_ns == stamp  # untouched: nothing was rebuilt

    weights.write_bytes(b"corrupt")
    (folder / "stray.txt").write_text("left over")
    demo_models.build("tiny", tmp_path)
    assert _digests(folder) == good
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_unknown_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown demo model 'huge'; known: small, tiny"):
        demo_models.build("huge", tmp_path)
    assert not any(tmp_path.iterdir())


def test_demo_models_live_under_vlmd_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLMD_HOME", str(tmp_path / "home"))
    assert default_models_dir() == tmp_path / "home" / "models"
    monkeypatch.delenv("VLMD_HOME")
    assert default_models_dir() == Path.home() / ".cache" / "vlmd" / "models"
