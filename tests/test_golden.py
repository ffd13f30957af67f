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
from playwright.sync_api import Browser, Page, sync_playwright

from tests.conftest import DaemonProcess, start_daemon
from tests.golden.corpus import SCENARIOS, corpus
from tests.ports import free_port
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
    "g-cancel-queued": ("running", None, 1, 0, 3, {"0/1": "scheduled"},
                        "cancelled by the user"),
    "g-lost-early": ("stalled", None, 0, 0, 2, {}, None),
    "g-lost-back": ("running", None, 2, 0, 10, {"0/1": "running"}, None),
    "g-lost": ("stalled", None, 2, 0, 6, {"0/1": "running"}, None),
    "g-restarted": ("running", None, 2, 0, 2, {"0/1": "running"}, None),
    "g-circular": ("finished", "finished", 7, 0, 7, {"0/1": "finished"}, None),
    "g-waiting": ("submitted", None, 0, 0, 8, {}, None),
}

# The benchmark's table as the fold must decide it: (accuracy, circular accuracy, circular
# questions, unparsed answers, by_category, by_l2_category).
BENCHMARK: dict[str, tuple[Any, ...]] = {
    "g-fail-then-ok": (0.75, None, 0, 0, {"OCR": {"items": 2, "accuracy": 0.75},
                                          "celebrity": {"items": 0, "accuracy": None}}, {}),
    "g-circular": (6 / 7, 2 / 3, 3, 1, {
        "attribute": {"items": 5, "accuracy": 0.8, "circular_groups": 2,
                      "circular_accuracy": 0.5},
        "counting": {"items": 2, "accuracy": 1.0, "circular_groups": 1,
                     "circular_accuracy": 1.0}}, {
        "perception": {"items": 5, "accuracy": 0.8, "circular_groups": 2,
                       "circular_accuracy": 0.5},
        "reasoning": {"items": 2, "accuracy": 1.0, "circular_groups": 1,
                      "circular_accuracy": 1.0}}),
}
BENCHMARK_FIELDS = ("accuracy", "circular_accuracy", "circular_groups", "unparsed",
                    "by_category", "by_l2_category")

Reading = dict[str, dict[str, Any]]
"""Per run: its row ("run"), its item rows by item ("items"), its summary ("summary")."""

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
# What the dashboard shows of a run's row, each read from the page (data attributes carry the
# exact values; the text is what a person reads).
SHOWN = ("status", "done", "failed", "total", "accuracy", "alerts", "reason", "shards")


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
    for run in out.values():
        run["categories"] = {}
    for c in rows("category_summary"):
        out[c["run"]]["categories"][(c["level"], c["category"])] = {
            k: c[k] for k in ("items", "accuracy", "circular_groups", "circular_accuracy")}
    return out


def approx(value: Any) -> Any:
    return value if value is None else pytest.approx(value, rel=1e-12)


def category_table(summary_: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """The fold's by_category and by_l2_category as category_summary's rows hold them."""
    return {(level, name): {"items": e["items"], "accuracy": approx(e["accuracy"]),
                            "circular_groups": e.get("circular_groups"),
                            "circular_accuracy": approx(e.get("circular_accuracy"))}
            for level in ("category", "l2_category")
            for name, e in summary_[f"by_{level}"].items()}


def _cell(value: Any) -> Any:
    """A value as an SQL view holds it (arrays and objects are JSON text)."""
    return answers._cell(value, False) if isinstance(value, list | dict) else value


def test_the_fold_decides_the_hard_paths(golden_log: Path) -> None:
    fold = read_fold(golden_log)
    assert list(fold) == list(SCENARIOS)
    got = {run: tuple(r["run"][f] for f in ("status", "outcome", "done", "failed", "total",
                                             "shards", "reason")) for run, r in fold.items()}
    assert got == EXPECTED
    benchmark = {run: tuple(r["summary"][f] for f in BENCHMARK_FIELDS) for run, r in fold.items()
                 if r["summary"]["by_category"]}
    assert benchmark == BENCHMARK
    assert fold["g-circular"]["run"]["circular_accuracy"] == 2 / 3  # every row carries it
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
        assert (ms["circular_groups"], ms["unparsed"]) == (
            mine["summary"]["circular_groups"], mine["summary"]["unparsed"]), run
        assert ms["circular_accuracy"] == approx(mine["summary"]["circular_accuracy"]), run
        assert theirs["categories"] == category_table(mine["summary"]), run


@pytest.fixture(scope="module")
def golden_daemon(golden_log: Path) -> Iterator[DaemonProcess]:
    """`vlmd serve` over the golden log; heartbeats are due hourly, so it adds no alert of its
    own while the test looks."""
    d = start_daemon(golden_log, toml="[watchdog]\nheartbeat_s = 3600\n")
    yield d
    d.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


READ_ROW = """(el) => ({
  status: el.dataset.status, done: Number(el.dataset.done), failed: Number(el.dataset.failed),
  total: el.dataset.total === "" ? null : Number(el.dataset.total),
  accuracy: el.dataset.accuracy === "" ? null : Number(el.dataset.accuracy),
  alerts: Number(el.dataset.alerts), reason: el.dataset.reason || null,
  shards: JSON.parse(el.dataset.shards),
  text: {status: el.querySelector(".status").textContent,
         done: el.querySelector(".done").textContent,
         failed: el.querySelector(".failed").textContent,
         accuracy: el.querySelector(".accuracy").textContent,
         last_alert: el.querySelector(".alerts").title || null}})"""
READ_ITEMS = """() => [...document.querySelectorAll("#answers-table tbody tr[data-item]")].map(
  (tr) => ({item: tr.dataset.item, outcome: tr.dataset.outcome, seq: Number(tr.dataset.seq),
            cells: Object.fromEntries([...tr.querySelectorAll("td[data-key]")].map((td) => [
              td.dataset.key, td.textContent]))}))"""


READ_CATEGORIES = """() => {
  const section = document.getElementById("categories");
  return {hidden: section.hidden, level: section.querySelector(".category-bars").dataset.level,
          rows: [...section.querySelectorAll(".cat-row")].map((li) => ({
            name: li.dataset.category, items: Number(li.dataset.items),
            accuracy: li.dataset.accuracy === "" ? null : Number(li.dataset.accuracy),
            circular_accuracy: li.dataset.circularAccuracy === "" ? null
              : Number(li.dataset.circularAccuracy),
            circular_groups: li.dataset.circularGroups === "" ? null
              : Number(li.dataset.circularGroups),
            text: li.querySelector(".cat-accuracy").textContent}))};
}"""


def read_categories(page: Page) -> dict[str, Any]:
    """The run page's category chart at each level it offers (category, then l2_category)."""
    shown = {"category": page.evaluate(READ_CATEGORIES)}
    if page.is_visible("#categories .category-level"):
        page.select_option("#categories .category-level", "l2_category")
        shown["l2_category"] = page.evaluate(READ_CATEGORIES)
        page.select_option("#categories .category-level", "category")
    return shown


def pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"


def read_browser(page: Page, url: str, runs: list[str]) -> Reading:
    """What the runs page and each run's page show."""
    page.goto(f"{url}/")
    page.wait_for_function(f"document.querySelectorAll('#runs tr[data-run]').length === "
                           f"{len(runs)}")
    out: Reading = {}
    for run in runs:
        out[run] = {"run": page.eval_on_selector(f'#runs tr[data-run="{run}"]', READ_ROW)}
    for run in runs:
        page.goto(f"{url}/run.html?run={run}")
        # drawn: the run's state came, and the page painted all of it (the table and the
        # histograms are redrawn at most every 250 ms)
        page.wait_for_function(f"""(() => {{ const m = window.vlmd && window.vlmd.model;
            return m && m.row && m.row.run === "{run}" && m.summary
                && !m.dirty.head && !m.dirty.answers && !m.dirty.summary; }})()""")
        head = page.eval_on_selector("#run-head", READ_ROW)
        out[run]["head"] = head
        out[run]["circular"] = page.eval_on_selector("#run-head", """(el) => ({
            value: el.dataset.circularAccuracy, text: el.querySelector(".circular-accuracy")
              .textContent, hidden: el.querySelector(".circular-figure").hidden})""")
        out[run]["categories"] = read_categories(page)
        out[run]["items"] = {r["item"]: r for r in page.evaluate(READ_ITEMS)}
        out[run]["p50"] = page.eval_on_selector("#hist-ttft", "(el) => el.dataset.p50")
    return out


def test_the_dashboard_shows_what_the_fold_decides(golden_log: Path, golden_daemon: DaemonProcess,
                                                   browser: Browser) -> None:
    before = EventLog.open(golden_log).count()
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        shown = read_browser(page, golden_daemon.url, list(SCENARIOS))
    finally:
        context.close()
    assert not errors, errors
    fold = read_fold(golden_log)
    assert EventLog.open(golden_log).count() == before  # the daemon added nothing meanwhile
    for run, mine in fold.items():
        row = mine["run"]
        for where in ("run", "head"):  # the runs table's row, the run page's head
            got = shown[run][where]
            assert {f: got[f] for f in SHOWN} == {f: row[f] for f in SHOWN}, (run, where)
            # the badge says how an ended run ended (finished with failures is no "finished")
            assert got["text"] == {
                "status": (row["outcome"] or row["status"]).replace("_", " "),
                "done": str(row["done"]),
                "failed": str(row["failed"]), "accuracy": pct(row["accuracy"]),
                "last_alert": row["last_alert"]}, (run, where)
        items = shown[run]["items"]
        assert set(items) == set(mine["items"]), run
        for item, want in mine["items"].items():
            got = items[item]
            assert (got["outcome"], got["seq"]) == (want["outcome"], want["seq"]), (run, item)
            assert got["cells"]["answer"] == (want["answer"] or ""), (run, item)
            assert got["cells"]["error"] == (want["error"] or ""), (run, item)
            assert got["cells"]["score"] == (
                "—" if want["score"] is None else f"{want['score']:.2f}"), (run, item)
            assert got["cells"]["question"] == (want["question"] or ""), (run, item)
            assert got["cells"]["category"] == (want["category"] or ""), (run, item)
            assert got["cells"]["options"] == " · ".join(
                f"{letter}. {text}" for letter, text in (want["options"] or {}).items())
        check_benchmark(shown[run], mine)
        p50 = mine["summary"]["ttft_ms"]["p50"]
        assert shown[run]["p50"] == ("" if p50 is None else repr(float(p50)).removesuffix(
            ".0")), run


def check_benchmark(shown: dict[str, Any], mine: dict[str, Any]) -> None:
    """The run page's circular accuracy and category bars are the fold's."""
    s, circular = mine["summary"], mine["run"]["circular_accuracy"]
    assert shown["circular"] == {"value": "" if circular is None else repr(circular),
                                 "text": pct(circular), "hidden": circular is None}
    levels = {level: s[f"by_{level}"] for level in ("category", "l2_category")
              if s[f"by_{level}"]}
    assert shown["categories"]["category"]["hidden"] == (not levels)
    for level, table in levels.items():
        got = shown["categories"][level]
        assert got["level"] == level
        assert [r["name"] for r in got["rows"]] == sorted(table, key=str.casefold)  # by name
        for r in got["rows"]:
            e = table[r["name"]]
            assert (r["items"], r["accuracy"], r["text"]) == (
                e["items"], e["accuracy"], pct(e["accuracy"])), r
            assert (r["circular_accuracy"], r["circular_groups"]) == (
                e.get("circular_accuracy"), e.get("circular_groups")), r
