"""The comparison rules on their own: a dataset's content hash (against coreutils' sha256sum),
the Pareto front (literal cases, and every point set against the definition), which runs are
kept off the front and why, how runs are grouped by dataset, and which items a diff lists."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.events import completed, ev, failed, finished, started, stored, submitted
from vlmd.projections import summary, tracker
from vlmd.projections.compare import COSTS, compare, dataset_key, excluded, pareto_front
from vlmd.projections.diff import DatasetsDiffer, change, check_datasets, diff, item_rows
from vlmd_agent.evaluate import datasets

SHA_X, SHA_Y = "a" * 64, "b" * 64


# -- the dataset's content hash ------------------------------------------------------------------
def test_a_files_hash_is_what_sha256sum_prints(tmp_path: Path) -> None:
    data = tmp_path / "bench.jsonl"
    data.write_bytes(b'{"id": 1}\n' * 1000)
    printed = subprocess.run(["sha256sum", str(data)], capture_output=True, text=True,
                             check=True).stdout.split()[0]
    assert datasets.content_hash(data) == printed


def test_shards_hash_to_their_digests_in_reading_order(tmp_path: Path) -> None:
    folder = tmp_path / "shards"
    folder.mkdir()
    for i, text in enumerate([b"first shard", b"second shard", b"third"]):
        (folder / f"test-{i:05d}-of-00003.parquet").write_bytes(text)
    pipeline = subprocess.run("sha256sum test-*.parquet | cut -d' ' -f1 | sha256sum",
                              shell=True, cwd=folder, capture_output=True, text=True, check=True)
    whole = datasets.content_hash(folder)
    assert whole == pipeline.stdout.split()[0]
    # a renamed shard (the same order) keeps it; an edited or reordered one changes it
    (folder / "test-00002-of-00003.parquet").rename(folder / "test-00002-renamed.parquet")
    assert datasets.content_hash(folder) == whole
    (folder / "test-00000-of-00003.parquet").rename(folder / "test-00009-last.parquet")
    assert datasets.content_hash(folder) != whole
    (folder / "test-00009-last.parquet").rename(folder / "test-00000-of-00003.parquet")
    (folder / "test-00001-of-00003.parquet").write_bytes(b"second shard, edited")
    assert datasets.content_hash(folder) != whole
    assert datasets.content_hash(folder / "test-00001-of-00003.parquet") == hashlib.sha256(
        b"second shard, edited").hexdigest()  # one file alone: its own digest


# -- the Pareto front ----------------------------------------------------------------------------
@pytest.mark.parametrize(("points", "higher", "front"), [
    ([], False, set()),
    ([(0.5, 10.0)], False, {0}),
    ([(0.9, 100.0), (0.8, 50.0), (0.7, 120.0)], False, {0, 1}),  # 2 dominated by 0
    ([(0.9, 100.0), (0.8, 50.0), (0.7, 120.0)], True, {0, 2}),  # higher cost is better
    ([(0.8, 10.0), (0.8, 10.0), (0.7, 10.0)], False, {0, 1}),  # equal points are all on it
    ([(0.8, 10.0), (0.8, 20.0)], False, {0}),  # as accurate and cheaper dominates
    ([(0.8, 10.0), (0.9, 10.0)], False, {1}),  # as cheap and more accurate dominates
    ([(0.5, 1.0), (0.6, 2.0), (0.7, 3.0), (0.65, 4.0)], False, {0, 1, 2}),
    ([(0.0, 5.0), (0.0, 1.0)], False, {1}),
])
def test_the_front_keeps_what_no_other_point_dominates(
        points: list[tuple[float, float]], higher: bool, front: set[int]) -> None:
    assert pareto_front(points, higher) == front


def _dominated(p: tuple[float, float], q: tuple[float, float], higher: bool) -> bool:
    """The definition, read literally: q is at least as good as p on both and better on one."""
    cheaper_or_equal = q[1] >= p[1] if higher else q[1] <= p[1]
    return q[0] >= p[0] and cheaper_or_equal and q != p


@given(st.lists(st.tuples(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]),
                          st.integers(0, 6).map(float)), max_size=25), st.booleans())
def test_the_sweep_agrees_with_the_definition_on_any_points(
        points: list[tuple[float, float]], higher: bool) -> None:
    want = {i for i, p in enumerate(points)
            if not any(_dominated(p, q, higher) for q in points)}
    assert pareto_front(points, higher) == want


# -- which runs are compared, and which may be on the front ---------------------------------------
def rows(*runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each run's row as GET /api/runs/{run} serves it, folded from its events."""
    folded = tracker.fold(stored([e for run in runs for e in run]))
    return [{**s.to_dict(), "summary": summary.summarize(s)} for s in folded.runs.values()]


def run(name: str, right: int, ttft: float, *, n: int = 4, end: str | None = "run.finished",
        sha: str | None = SHA_X, dataset: str = "/data/x.jsonl", fails: int = 0,
        answered: int | None = None) -> list[dict[str, Any]]:
    """A run of `n` items, `right` of them right, at `ttft` ms each; `fails` items failed,
    and only `answered` items reached (all by default)."""
    extra = {"dataset_sha256": sha} if sha else {}
    events = [ev(name, "run.submitted", {"model": "demo:instant", "dataset": dataset,
                                         "total": n, **extra}, key=f"{name}/submitted"),
              started(name, total=n)]
    reached = n if answered is None else answered
    for i in range(reached):
        if i < fails:
            events.append(failed(name, i))
        else:
            events.append(completed(name, i, score=float(i < right + fails), ttft=ttft))
    if end == "run.finished":
        events.append(finished(name))
    elif end is not None:
        events.append(ev(name, end, {"reason": "stopped"}, key=f"{name}/end"))
    return events


def test_unfinished_runs_say_why_they_are_never_on_the_front() -> None:
    found = {r["run"]: excluded(r) for r in rows(
        run("done", 2, 50.0), run("going", 2, 50.0, end=None, answered=2),
        run("cancelled", 2, 50.0, end="run.cancelled", answered=3),
        run("broken", 2, 50.0, end="run.failed"), run("flaky", 2, 50.0, fails=1),
        run("short", 2, 50.0, answered=3),
        [submitted("unscored", total=1), started("unscored", total=1),
         ev("unscored", "item.completed", {"item": "0", "answer": "x", "score": None}),
         finished("unscored")])}
    assert found == {"done": None, "going": "running", "cancelled": "cancelled",
                     "broken": "failed", "flaky": "1 of 4 items failed",
                     "short": "1 of 4 items not answered", "unscored": "no scored item"}


def test_runs_are_compared_within_one_dataset_and_only_finished_ones_make_the_front() -> None:
    found = compare(rows(
        run("a", 3, 100.0), run("b", 2, 50.0), run("c", 1, 120.0),
        # better than all and cheaper, but cancelled: shown, never on the front
        run("d", 4, 10.0, end="run.cancelled"),
        run("copy", 1, 300.0, dataset="/elsewhere/x.jsonl"),  # the same content elsewhere
        run("edited", 4, 10.0, sha=SHA_Y),  # the same path, other content
        run("limited", 1, 1.0, n=2),  # the same file, its first 2 items only
        run("old", 4, 1.0, sha=None)))  # submitted before hashes: its path alone
    groups = {g["key"]: g for g in found["groups"]}
    assert list(groups) == [f"sha256:{SHA_X}#4", f"sha256:{SHA_Y}#4", f"sha256:{SHA_X}#2",
                            "path:/data/x.jsonl#4"]
    main = groups[f"sha256:{SHA_X}#4"]
    assert main["paths"] == ["/data/x.jsonl", "/elsewhere/x.jsonl"]
    assert {r["run"]: (r["front"], r["excluded"]) for r in main["runs"]} == {
        "a": (True, None), "b": (True, None), "c": (False, None), "d": (False, "cancelled"),
        "copy": (False, None)}
    assert [r["run"] for g in found["groups"][1:] for r in g["runs"] if r["front"]] == [
        "edited", "limited", "old"]
    by_speed = compare(rows(run("a", 3, 100.0), run("b", 2, 50.0)), "items_per_s")
    assert by_speed["cost"] == COSTS["items_per_s"].describe()
    assert by_speed["cost"]["higher_is_better"] is True
    with pytest.raises(KeyError):
        compare([], "nope")


def test_every_cost_reads_a_figure_a_run_carries() -> None:
    [row] = rows(run("a", 3, 100.0))
    row["joules_per_correct"] = 12.5
    figures = {name: cost.get(row) for name, cost in COSTS.items()}
    assert figures["ttft_p50"] == 100.0 and figures["e2e_p99"] == 200.0
    assert figures["tpot_p90"] == 10.0 and figures["vram_max"] == 12.5
    assert figures["joules_per_correct"] == 12.5 and figures["items_per_s"] is not None
    assert all(v is not None for v in figures.values())


# -- which items a diff lists --------------------------------------------------------------------
def item(score: float | None = None, error: str | None = None) -> dict[str, Any]:
    return {"answer": None if error else "x", "score": score, "error": error}


@pytest.mark.parametrize(("a", "b", "moved"), [
    (item(1.0), item(1.0), None),
    (item(0.0), item(1.0), "up"),
    (item(1.0), item(0.3), "down"),
    (item(0.6), item(0.9), "up"),  # VQA's partial scores count too
    (item(1.0), item(error="oom: CUDA out of memory"), "only_a"),
    (item(error="oom: x"), item(0.0), "only_b"),  # an answer, even a wrong one
    (None, item(1.0), "only_b"),  # A never reached it
    (item(1.0), None, "only_a"),
    (item(error="oom: x"), item(error="timeout: y"), None),  # neither answered
    (None, item(error="oom: x"), None),
    (item(None), item(None), None),
    (item(None), item(1.0), "unscored"),
])
def test_an_item_is_listed_when_its_score_or_answered_state_changed(
        a: dict[str, Any] | None, b: dict[str, Any] | None, moved: str | None) -> None:
    assert change(a, b) == moved


def test_a_diff_lists_changes_in_item_order_with_both_sides() -> None:
    a_events = stored([completed("a", 1, score=1.0), completed("a", 2, score=0.0),
                       completed("a", 3, score=1.0), failed("a", 4)])
    b_events = stored([completed("b", 3, score=0.0), completed("b", 2, score=0.0),
                       completed("b", 1, score=1.0), completed("b", 4, score=1.0),
                       completed("b", 5, score=0.0)])
    a_row = {"run": "a", "dataset": "/d.jsonl", "dataset_sha256": SHA_X}
    b_row = {**a_row, "run": "b"}
    found = diff(a_row, item_rows(a_events), b_row, item_rows(b_events))
    assert [(i["item"], i["change"]) for i in found["items"]] == [
        ("3", "down"), ("4", "only_b"), ("5", "only_b")]
    three = found["items"][0]
    assert three["a"] == {"answer": "B", "score": 1.0, "error": None}
    assert three["b"] == {"answer": "B", "score": 0.0, "error": None}
    assert (three["expected"], found["items"][1]["a"]["error"]) == ("B", "oom: CUDA out of memory")
    assert found["items"][2]["a"] is None
    assert found["counts"] == {"compared": 5, "changed": 3, "up": 0, "down": 1, "only_a": 0,
                               "only_b": 2, "unscored": 0}
    shown = diff(a_row, item_rows(a_events), b_row, item_rows(b_events), limit=1)
    assert len(shown["items"]) == 1 and shown["truncated"] and shown["counts"]["changed"] == 3


def test_runs_of_different_datasets_are_refused_unless_forced() -> None:
    a = {"run": "a", "dataset": "/d.jsonl", "dataset_sha256": SHA_X}
    edited = {"run": "b", "dataset": "/d.jsonl", "dataset_sha256": SHA_Y}
    with pytest.raises(DatasetsDiffer) as refused:
        check_datasets(a, edited)
    assert str(refused.value) == (
        "runs a and b evaluated different datasets: /d.jsonl (sha256 aaaaaaaaaaaa) and "
        "/d.jsonl (sha256 bbbbbbbbbbbb); vlmd diff --force (GET /api/diff?force=1) compares "
        "them anyway")
    check_datasets(a, {**a, "run": "c", "dataset": "/copy.jsonl"})  # the same content
    old = {"run": "o", "dataset": "/d.jsonl", "dataset_sha256": None}
    assert dataset_key(old) == ("path", "/d.jsonl")
    with pytest.raises(DatasetsDiffer, match="content not recorded"):
        check_datasets(a, old)
    forced = diff(a, {}, edited, {}, force=True)
    assert forced["same_dataset"] is False and forced["items"] == []
