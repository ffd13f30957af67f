"""`vlmd run` end to end on hub-format datasets: a parquet file in each built-in schema, a
circular MMBench file, a judge and a prompt template, through the real CLI, a real daemon, real
agents and a real scripted OpenAI-compatible server; what the log keeps is read from its file."""

from __future__ import annotations

import csv
import io
import json
import re
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import TOKEN, DaemonProcess, start_daemon
from tests.test_backend_openai import scripted_url  # noqa: F401 (a fixture)
from tests.test_datasets import write_jsonl
from tests.test_hub_datasets import MMBENCH, SAMPLES, write_parquet

SCORERS = {"mmbench": "mcq", "mmmu": "mcq", "scienceqa": "mcq", "ai2d": "mcq",
           "chartqa": "relaxed", "docvqa": "anls", "infovqa": "anls", "textvqa": "vqa"}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    d = start_daemon(tmp_path_factory.mktemp("vlmd") / "v.db")
    yield d
    d.stop()


def vlmd_run(d: DaemonProcess, folder: Path, *args: str
             ) -> tuple[str, subprocess.CompletedProcess[str]]:
    """``vlmd run`` against `d`; the run's id and what the command did."""
    config = folder / "client.toml"
    port = d.url.rsplit(":", 1)[1]
    config.write_text(f'[server]\nport = {port}\ntoken = "{TOKEN}"\n'
                      '[datasette]\nenabled = false\n')
    done = subprocess.run([sys.executable, "-m", "vlmd", "run", "--config", str(config),
                           "--out", str(folder / "out"), *args],
                          capture_output=True, text=True, timeout=120, cwd=folder)
    found = re.search(r"run (r-[0-9a-f]+) submitted", done.stderr)
    assert found, done.stderr
    return found[1], done


def events(d: DaemonProcess, run: str, kind: str) -> list[dict[str, Any]]:
    with sqlite3.connect(f"file:{d.db}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT body FROM events WHERE run = ? AND kind = ? ORDER BY seq",
                          (run, kind)).fetchall()
    return [json.loads(body) for (body,) in rows]


def answers(folder: Path, run: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO((folder / "out" / run / "answers.csv").read_text())))


@pytest.mark.parametrize("schema", sorted(SCORERS))
def test_a_parquet_dataset_in_each_schema_runs_end_to_end(
        daemon: DaemonProcess, tmp_path: Path, schema: str) -> None:
    path = write_parquet(tmp_path / "data" / f"{schema}.parquet", SAMPLES[schema])
    run, done = vlmd_run(daemon, tmp_path, "--model", "demo:instant", "--dataset",
                         str(path.parent))
    assert done.returncode == 0, done.stderr
    total = len(SAMPLES[schema])
    assert f"{total}/{total}" in done.stdout
    assert len(answers(tmp_path, run)) == total
    bodies = events(daemon, run, "item.completed")
    assert len(bodies) == total
    assert {b["scorer"] for b in bodies} <= {SCORERS[schema], "exact"}  # MMMU's open question
    assert all(0.0 <= b["score"] <= 1.0 for b in bodies)
    if schema == "mmbench":
        first = next(b for b in bodies if b["item"] == "0")
        assert {k: first[k] for k in ("category", "l2_category", "split", "hint", "options")} == {
            "category": "attribute", "l2_category": "perception", "split": "dev",
            "hint": "A toy.", "options": {"A": "red", "B": "blue", "C": "green"}}
    if schema == "mmmu":
        assert {b["category"] for b in bodies} == {"Biology"}


def test_a_circular_mmbench_file_gives_every_item_event_its_group(
        daemon: DaemonProcess, tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "circular.parquet", [
        {**MMBENCH[0], "index": index} for index in (0, 1, 1_000_000, 1_000_001, 2_000_000)])
    run, done = vlmd_run(daemon, tmp_path, "--model", "demo:instant", "--dataset", str(path))
    assert done.returncode == 0, done.stderr
    groups = {b["item"]: b["circular_group"] for b in events(daemon, run, "item.completed")}
    assert groups == {"0": "0", "1": "1", "1000000": "0", "1000001": "1", "2000000": "0"}


def test_a_judge_decides_undecided_answers_and_the_log_keeps_its_verdicts(
        daemon: DaemonProcess, tmp_path: Path, scripted_url: str) -> None:  # noqa: F811
    rows = [{"id": n, "image": "img/cat.png", "question": "What colour?",
             "choices": ["red", "blue", "green"], "answer": answer}
            for n, answer in enumerate("BBA")]
    path = write_jsonl(tmp_path, *rows)
    model = f"openai:stream?first_ms=1&gap_ms=1&text=like%20the%20sky@{scripted_url}"
    run, done = vlmd_run(daemon, tmp_path, "--model", model, "--dataset", str(path),
                         "--judge", f"openai:json?content=B@{scripted_url}")
    assert done.returncode == 0, done.stderr
    verdicts = events(daemon, run, "item.judged")
    assert sorted(v["item"] for v in verdicts) == ["0", "1", "2"]
    assert {(v["reply"], v["letter"]) for v in verdicts} == {("B", "B")}
    assert all("Answer: like the sky\n" in v["prompt"] for v in verdicts)
    scores = {b["item"]: (b["score"], b["judged"], b["choice"])
              for b in events(daemon, run, "item.completed")}
    assert scores == {"0": (1.0, True, "B"), "1": (1.0, True, "B"), "2": (0.0, True, "B")}


def test_without_a_judge_an_undecided_answer_is_unparsed_and_scores_zero(
        daemon: DaemonProcess, tmp_path: Path, scripted_url: str) -> None:  # noqa: F811
    path = write_jsonl(tmp_path, {"id": 1, "image": "img/cat.png", "question": "What colour?",
                                  "choices": ["red", "blue"], "answer": "B"})
    model = f"openai:stream?first_ms=1&gap_ms=1&text=like%20the%20sky@{scripted_url}"
    run, done = vlmd_run(daemon, tmp_path, "--model", model, "--dataset", str(path),
                         "--prompt-template", "Q: {question} [{options}]")
    assert done.returncode == 0, done.stderr
    (body,) = events(daemon, run, "item.completed")
    assert (body["score"], body["unparsed"], "choice" in body) == (0.0, True, False)
    assert events(daemon, run, "item.judged") == []
    sent = httpx.get(f"{scripted_url}/last").json()["body"]["messages"][0]["content"]
    assert sent[-1] == {"type": "text", "text": "Q: What colour? [A. red\nB. blue]"}


def test_bad_evaluation_options_are_usage_errors_before_anything_runs(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "vlmd", "run", "--model", "demo:instant",
                           "--dataset", "x.jsonl", "--judge", "demo:tiny"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2
    assert "--judge: bad judge 'demo:tiny'" in done.stderr and "Traceback" not in done.stderr
