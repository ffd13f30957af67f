"""The golden corpus read three ways must agree field by field: the Python fold, the SQL views
(Datasette's JSON API over the log file, in a real Datasette child), and the dashboard (Chromium
against a real daemon over the same log).

`EXPECTED` pins what the fold decides for the hard paths, so a change of a rule shows here first.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.golden.corpus import SCENARIOS, corpus
from vlmd.daemon.datasette import free_port
from vlmd.projections import answers, summary, tracker
from vlmd.store.log import EventLog
from vlmd_agent import wire

# Every field of a run's row that the views hold too (rate and ETA are windowed in time).
RUN_FIELDS = ("run", "name", "model", "dataset", "status", "done", "failed", "total",
              "accuracy", "shards", "reason", "alerts", "last_alert", "submitted_at",
              "started_at", "finished_at", "last_event_at", "last_heartbeat", "last_seq",
              "outcome")
ITEM_FIELDS = (*answers.COLUMNS, "outcome", "seq")

# (status, outcome, done, failed, total, shards, reason) as the fold must decide them.
EXPECTED: dict[str, tuple[str, str | None, int, int, int | None, dict[str, str], str | None]] = {
    "g-retry-undone": ("finished", "finished_with_failures", 3, 1, 4, {"0/1": "finished"}, None),
    "g-fail-then-ok": ("finished", "finished_with_failures", 2, 1, 3, {"0/1": "finished"}, None),
    "g-shard-fails": ("failed", "failed", 3, 1, 4, {"0/2": "finished", "1/2": "failed"},
                      "wrapper died (signal 9)"),
    "g-resumed": ("running", None, 3, 0, 4, {"0/2": "finished", "1/2": "scheduled"},
                  "slurm: task 812_1 NODE_FAIL on gpu18"),
    "g-run-wide": ("failed", "failed", 3, 0, 4, {"0/2": "failed", "1/2": "finished"},
                   "out of memory on gpu-node-1"),
    "g-cancelled": ("cancelled", "cancelled", 2, 0, 5, {"0/1": "running"},
                    "cancelled by the user"),
    "g-cancel-resume": ("finished", "finished", 3, 0, 3, {"0/1": "finished"},
                        "cancelled by the user"),
    "g-lost-back": ("running", None, 2, 0, 10, {"0/1": "running"}, None),
    "g-lost": ("stalled", None, 2, 0, 6, {"0/1": "running"}, None),
    "g-restarted": ("running", None, 2, 0, 2, {"0/1": "running"}, None),
    "g-waiting": ("submitted", None, 0, 0, 8, {}, None),
}

Reading = dict[str, dict[str, Any]]
"""Per run: its row ("run"), its item rows by item ("items"), its summary ("summary")."""


@pytest.fixture(scope="module")
def golden_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The corpus in a real log file, appended in batches as agents would post it."""
    events = corpus()
    assert wire.validate(events) == []
    db = tmp_path_factory.mktemp("golden") / "vlmd.db"
    log = EventLog.open(db)
    for i in range(0, len(events), 9):
        log.append(events[i:i + 9], received=1.8e9 + i)
    log.close()
    return db


def read_fold(db: Path) -> Reading:
    log = EventLog.open(db)
    try:
        folded = tracker.fold(log.read())
        out = {}
        for run, state in folded.runs.items():
            kept = answers.latest(log.read(run=run, kinds=answers.ITEM_KINDS))
            out[run] = {"run": state.to_dict(), "summary": summary.summarize(state),
                        "items": {item: answers.served(e) for item, e in kept.items()}}
        return out
    finally:
        log.close()


@pytest.fixture(scope="module")
def datasette_url(golden_log: Path) -> Iterator[str]:
    """`vlmd datasette` over the golden log, as a real child process."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "vlmd", "datasette", str(golden_log),
                             "--port", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "VLMD_CONFIG": ""})
    url = f"http://127.0.0.1:{port}/vlmd"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}.json").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "Datasette did not start"
            time.sleep(0.1)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)


def read_datasette(url: str) -> Reading:
    def rows(view: str) -> list[dict[str, Any]]:
        r = httpx.get(f"{url}/{view}.json", params={"_shape": "array", "_size": "max"})
        r.raise_for_status()
        got: list[dict[str, Any]] = r.json()
        return got
    out: Reading = {}
    for row in rows("runs"):
        row["shards"] = json.loads(row["shards"])
        out[row["run"]] = {"run": row, "items": {}}
    for item in rows("items"):
        out[item["run"]]["items"][item["item"]] = item
    for ms in rows("model_summary"):
        out[ms["run"]]["summary"] = ms
    return out


def _cell(value: Any) -> Any:
    """A value as an SQL view holds it (arrays are JSON text)."""
    return answers._cell(value) if isinstance(value, list) else value


def test_the_fold_decides_the_hard_paths(golden_log: Path) -> None:
    fold = read_fold(golden_log)
    assert list(fold) == list(SCENARIOS)
    got = {run: tuple(r["run"][f] for f in ("status", "outcome", "done", "failed", "total",
                                             "shards", "reason")) for run, r in fold.items()}
    assert got == EXPECTED
    kinds = {e["kind"] for e in corpus()}
    assert kinds >= wire.KINDS and any(k.startswith("alert.") for k in kinds)


def test_the_sql_views_agree_with_the_fold(golden_log: Path, datasette_url: str) -> None:
    fold, views = read_fold(golden_log), read_datasette(datasette_url)
    assert list(views) == list(fold)
    for run, mine in fold.items():
        theirs = views[run]
        for field in RUN_FIELDS:
            want, have = mine["run"][field], theirs["run"][field]
            if field == "accuracy" and want is not None:
                assert have == pytest.approx(want, rel=1e-12), (run, field)
            else:
                assert have == want, (run, field, have, want)
        assert list(theirs["items"]) == list(mine["items"]), run
        for item, row in mine["items"].items():
            assert {f: theirs["items"][item][f] for f in ITEM_FIELDS} == {
                f: _cell(row[f]) for f in ITEM_FIELDS}, (run, item)
        ms = theirs["summary"]
        for metric in summary.METRICS:
            for q, _ in summary.QUANTILES:
                assert ms[f"{metric}_{q}"] == mine["summary"][metric][q], (run, metric, q)
