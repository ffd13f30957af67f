"""The compare page and the diff page in a real headless Chromium against a real `vlmd serve`:
runs are compared within one dataset (content hash and item count), runs that did not answer
every item are drawn but never on the front, the front is the daemon's (`GET /api/compare`),
two runs picked on the compare page open the diff page, which lists the items the daemon's diff
lists, with their images, and refuses runs of different datasets until forced."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Page, expect

from tests.conftest import TOKEN, DaemonProcess, start_daemon
from tests.test_dashboard import (  # noqa: F401  (fixtures)
    T0,
    browser,
    done,
    ev,
    page,
    post,
    sample,
    serving_samples,
    shot,
)
from vlmd_agent.evaluate import demo_data

SHA_X, SHA_Y = "1" * 64, "2" * 64


def begin(run: str, total: int, ts: float, sha: str = SHA_X) -> list[dict[str, Any]]:
    return [ev(run, "run.submitted", {"model": f"demo:{run.lower()}", "dataset": "/d/bench.jsonl",
                                      "total": total, "dataset_sha256": sha}, ts),
            ev(run, "run.started", {"total": total, "host": "h1", "pid": 42}, ts + 0.5)]


def a_run(d: DaemonProcess, run: str, acc: float, ttft: float, gap: float, t: float, *,
          end: str = "run.finished", sha: str = SHA_X,
          extra: list[dict[str, Any]] | None = None) -> None:
    """Run `run` of 10 items (7 if it does not finish), `acc` of them right, `gap` s apart."""
    right = round(acc * 10)
    post(d, [*begin(run, 10, t, sha),
             *(done(run, i, t + 1 + gap * (i + 1), score=float(i < right), ttft=ttft)
               for i in range(10 if end == "run.finished" else 7)),
             *(extra or []), ev(run, end, {} if end == "run.finished" else {"reason": "stop"},
                                t + 20)])


def front(shown: Page) -> set[str]:
    return set(shown.eval_on_selector_all('#compare-table tr[data-pareto="true"]',
                                         "rows => rows.map(r => r.dataset.run)"))


def daemons_front(d: DaemonProcess, cost: str, group: str) -> set[str]:
    found = httpx.get(f"{d.url}/api/compare", params={"cost": cost}).json()
    [runs] = [g["runs"] for g in found["groups"] if g["key"] == group]
    return {r["run"] for r in runs if r["front"]}


def test_compare_page_keeps_to_one_dataset_and_unfinished_runs_off_the_front(
        tmp_path: Path, page: Page) -> None:  # noqa: F811
    d = start_daemon(tmp_path / "vlmd.db")
    group = f"sha256:{SHA_X}#10"
    try:
        # the same path, edited: another dataset (submitted first, so not the page's default)
        a_run(d, "D", 0.5, 10.0, 0.1, T0 - 2000, sha=SHA_Y)
        # (run, accuracy, TTFT ms, seconds between items): A and B are on the front, C is not
        energy = {"A": serving_samples("A", T0 + 15, 5, joules=50.0, kv=[0.5]),
                  "B": serving_samples("B", T0 + 1015, 5, joules=30.0, kv=[0.5]),
                  "C": ev("C", "watchdog.sample", {"host": "h1", "model_gpus": [0], "samples": [
                      {**sample(T0 + 2015, 0), "gpus": [{"index": 0, "energy_j": None}]}]},
                      T0 + 2016)}
        for k, (run, acc, ttft, gap) in enumerate([("A", 0.9, 100.0, 0.1), ("B", 0.8, 50.0, 1.0),
                                                   ("C", 0.7, 120.0, 0.2)]):
            a_run(d, run, acc, ttft, gap, T0 + 1000 * k, extra=[energy[run]])
        # better and cheaper than all of them, but cancelled after 7 items
        a_run(d, "E", 1.0, 10.0, 0.01, T0 + 3000, end="run.cancelled")

        page.goto(f"{d.url}/compare.html")
        table = page.locator("#compare-table")
        expect(page.locator("#dataset")).to_have_value(group)
        for run, on_front in (("A", "true"), ("B", "true"), ("C", "false"), ("E", "false")):
            expect(table.locator(f'tr[data-run="{run}"]')).to_have_attribute(
                "data-pareto", on_front)
            expect(page.locator(f'#scatter circle[data-run="{run}"]')).to_have_attribute(
                "data-pareto", on_front)
        expect(table.locator('tr[data-run="D"]')).to_have_count(0)  # not the same dataset
        expect(table.locator('tr[data-run="E"] .front')).to_have_text("never: cancelled")
        expect(page.locator('#scatter circle[data-run="E"]')).to_have_class("pt excluded")
        expect(table.locator('tr[data-run="A"] .accuracy')).to_have_text("90.0%")
        expect(page.locator("#dataset-info")).to_have_text(f"/d/bench.jsonl · sha256 {SHA_X}")
        assert front(page) == daemons_front(d, "ttft_p50", group) == {"A", "B"}

        page.select_option("#metric", "items_per_s")  # higher is better: A beats B and C
        expect(table.locator('tr[data-pareto="true"]')).to_have_count(1)
        assert front(page) == daemons_front(d, "items_per_s", group) == {"A"}

        page.select_option("#metric", "joules_per_correct")
        expect(table.locator('tr[data-run="A"] .joules')).to_have_text("11.1")
        expect(table.locator('tr[data-run="B"] .joules')).to_have_text("7.5")
        expect(table.locator('tr[data-run="C"] .joules')).to_have_text("na")
        expect(page.locator("#scatter")).to_have_attribute("data-points", "2")
        expect(table.locator('tr[data-pareto="true"]')).to_have_count(2)
        assert front(page) == daemons_front(d, "joules_per_correct", group) == {"A", "B"}

        page.select_option("#metric", "ttft_p50")
        expect(table.locator('tr[data-pareto="true"]')).to_have_count(2)
        shot(page, "compare")

        page.select_option("#dataset", f"sha256:{SHA_Y}#10")  # the edited file's runs alone
        expect(table.locator("tbody tr")).to_have_count(1)
        expect(table.locator('tr[data-run="D"]')).to_have_attribute("data-pareto", "true")

        page.select_option("#dataset", group)
        a_run(d, "F", 1.0, 20.0, 0.1, T0 + 4000)  # a finished run that beats A and B, live
        expect(table.locator('tr[data-run="F"]')).to_have_attribute("data-pareto", "true")
        expect(table.locator('tr[data-pareto="true"]')).to_have_count(1)
        expect(page.locator("#conn-status")).to_have_text("live")

        page.check('tr[data-run="A"] input.pick-a')
        expect(page.locator("#diff-link")).to_be_hidden()
        page.check('tr[data-run="F"] input.pick-b')
        expect(page.locator("#diff-link")).to_have_attribute("href", "diff.html?a=A&b=F")
    finally:
        d.stop()


def submit(http: httpx.Client, dataset: Path, name: str, **options: Any) -> str:
    r = http.post("/api/runs", json={"model": "demo:instant", "dataset": str(dataset),
                                     "name": name, **options})
    assert r.status_code == 201, r.text
    return str(r.json()["run"])


def wait_finished(http: httpx.Client, run: str) -> None:
    deadline = time.monotonic() + 90
    while http.get(f"/api/runs/{run}").json()["status"] != "finished":
        assert time.monotonic() < deadline, f"run {run} did not finish"
        time.sleep(0.2)


def test_diff_page_lists_the_items_that_changed_with_their_images(
        tmp_path: Path, page: Page) -> None:  # noqa: F811
    d = start_daemon(tmp_path / "vlmd.db")
    data = demo_data.build(tmp_path / "data", n=12)
    other = demo_data.build(tmp_path / "other", n=8)
    http = httpx.Client(base_url=d.url, headers={"authorization": f"Bearer {TOKEN}"}, timeout=30)
    try:
        # demo:instant answers by a hash of the prompt: another prompt, other answers
        runs = [submit(http, data, "plain"),
                submit(http, data, "templated", prompt_template="Q: {question} {options}"),
                submit(http, other, "elsewhere")]
        for run in runs:
            wait_finished(http, run)
        found = http.get("/api/diff", params={"a": runs[0], "b": runs[1]}).json()
        assert found["counts"]["changed"] > 0

        page.goto(f"{d.url}/compare.html")  # at the newest run's dataset: "elsewhere"
        expect(page.locator("#compare-table tbody tr")).to_have_count(1)
        sha = http.get(f"/api/runs/{runs[0]}").json()["dataset_sha256"]
        page.select_option("#dataset", f"sha256:{sha}#12")
        page.check(f'tr[data-run="{runs[0]}"] input.pick-a')
        page.check(f'tr[data-run="{runs[1]}"] input.pick-b')
        page.click("#diff-link")
        expect(page).to_have_url(f"{d.url}/diff.html?a={runs[0]}&b={runs[1]}")
        table = page.locator("#diff-table tbody")
        expect(table.locator("tr")).to_have_count(found["counts"]["changed"])
        for it in found["items"]:
            shown = table.locator(f'tr[data-item="{it["item"]}"]')
            expect(shown).to_have_attribute("data-change", it["change"])
            expect(shown.locator(".question")).to_contain_text(it["question"])
            expect(shown.locator(".answer").first).to_have_text(it["a"]["answer"])
            expect(shown.locator(".answer").last).to_have_text(it["b"]["answer"])
        first = table.locator("img.thumb").first
        expect(first).to_have_attribute("src", f"/api/runs/{runs[0]}/items/"
                                               f"{found['items'][0]['item']}/image")
        page.wait_for_function("[...document.querySelectorAll('img.thumb')]"
                               ".every(i => i.complete && i.naturalWidth === 96)")
        expect(page.locator("#diff-counts")).to_contain_text(
            f"12 items compared, {found['counts']['changed']} changed")
        shot(page, "diff")
        page.select_option("#change", "up")
        expect(table.locator("tr")).to_have_count(found["counts"]["up"])
        expect(table.locator('tr[data-change="down"]')).to_have_count(0)

        page.goto(f"{d.url}/diff.html?a=plain&b=elsewhere")  # names work as ids do
        expect(page.locator("#diff-error")).to_contain_text("evaluated different datasets")
        expect(table.locator("tr")).to_have_count(0)
        page.click("#force-link")
        expect(page.locator("#diff-dataset")).to_contain_text("(another dataset: compared by "
                                                              "force)")
        expect(page.locator("#diff-counts")).to_contain_text("12 items compared")
    finally:
        http.close()
        d.stop()
