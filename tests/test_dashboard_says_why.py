"""The dashboard says what the daemon's fold says about a run, in a real headless Chromium: what
its agents are doing before the first item, how it ended (a run with failed items is no green
"finished"), its commonest item errors, how tokens and VRAM were measured, and that a host
without a GPU has no GPU charts to draw."""

from __future__ import annotations

import time

from playwright.sync_api import Page, expect

from tests.conftest import DaemonProcess
from tests.test_dashboard import (  # noqa: F401  (fixtures)
    begin,
    browser,
    done,
    ev,
    page,
    post,
    row,
    shared,
)

NOW = time.time() - 60.0
RAM = {"rss_mb": 900.0, "host_used_mb": 3000.0, "host_available_mb": 5000.0,
       "host_total_mb": 8000.0, "cgroup_usage_mb": None, "cgroup_limit_mb": None, "oom_kills": 0}


def served(run: str, item: int, ts: float) -> dict[str, object]:
    e = done(run, item, ts)
    e["body"].update(tokens_source="usage", vram_note="remote server: not measured by the client",
                     vram_peak_delta_mb=None)
    return e


def refused(run: str, item: int, ts: float) -> dict[str, object]:
    return ev(run, "item.failed", {"item": str(item), "reason": "backend_error",
                                   "message": "HTTP 500: boom"}, ts)


def test_the_phase_then_a_finish_with_failures_its_errors_and_notes(
        shared: DaemonProcess, page: Page) -> None:  # noqa: F811
    run = "why-a"
    post(shared, [ev(run, "run.submitted", {"model": "openai:m@http://h:1", "dataset": "d.jsonl",
                                            "total": 6, "name": "why"}, NOW),
                  ev(run, "run.phase", {"phase": "building", "step": 40, "steps": 150,
                                        "message": "building demo model tiny: training step "
                                                   "40/150"}, NOW + 1)])
    page.goto(f"{shared.url}/")
    expect(row(page, run).locator(".phase")).to_have_text(
        "building demo model tiny: training step 40/150")
    page.goto(f"{shared.url}/run.html?run={run}")
    head = page.locator("#run-head")
    expect(head.locator(".phase")).to_have_text("building demo model tiny: training step 40/150")
    expect(page.locator("#failures")).to_be_hidden()

    post(shared, [ev(run, "run.started", {"total": 6, "host": "h1", "pid": 7}, NOW + 2),
                  ev(run, "run.phase", {"phase": "evaluating", "message": "9 items/s once warm",
                                        "items_per_s": 9.0}, NOW + 2.5),
                  *(served(run, i, NOW + 3 + i) for i in range(4)),
                  *(refused(run, i, NOW + 8 + i) for i in (4, 5)),
                  ev(run, "watchdog.sample", {"host": "h1", "samples": [
                      {"t": NOW + 3 + k * 0.5, "gpus": [], "ram": RAM} for k in range(10)]},
                     NOW + 9),
                  ev(run, "run.finished", {}, NOW + 10)])
    expect(head).to_have_attribute("data-outcome", "finished_with_failures")
    expect(head.locator(".status")).to_have_text("finished with failures")
    expect(head.locator(".status")).to_have_class("status st-finished_with_failures")
    expect(head.locator(".phase")).to_have_text("")  # the run is over
    errors = page.locator("#failures .failures-list li")
    expect(errors).to_have_count(1)
    expect(errors.first).to_have_text("2 backend_error: HTTP 500: boom")
    expect(page.locator("#notes li")).to_have_text([
        "tokens counted by: usage (4 items)", "VRAM: remote server: not measured by the client"])
    # no GPU in any sample: a sentence instead of two empty GPU charts; RAM is still drawn
    expect(page.locator("#no-gpu")).to_be_visible()
    expect(page.locator(".charts .gpu-chart").first).to_be_hidden()
    expect(page.locator("#chart-ram")).to_be_visible()
    # token counts are whole numbers
    first = page.locator('#answers-table tbody tr[data-item="0"]')
    expect(first.locator("td.num").nth(4)).to_have_text("50")
    expect(first.locator("td.num").nth(5)).to_have_text("11")
    page.goto(f"{shared.url}/")
    expect(row(page, run).locator(".status")).to_have_text("finished with failures")


def test_a_failed_run_shows_its_reason_and_errors_and_a_gpu_host_its_charts(
        shared: DaemonProcess, page: Page) -> None:  # noqa: F811
    run = "why-b"
    why = "backend_error: HTTP 500: boom (the first 10 items all failed with this error)"
    post(shared, [*begin(run, 40, ts=NOW),
                  *(refused(run, i, NOW + 1 + i * 0.1) for i in range(10)),
                  ev(run, "run.failed", {"reason": why}, NOW + 3)])
    page.goto(f"{shared.url}/run.html?run={run}")
    head = page.locator("#run-head")
    expect(head.locator(".status")).to_have_text("failed")
    expect(head.locator(".reason")).to_have_text(why)
    expect(page.locator("#failures .failures-list li")).to_have_text(
        ["10 backend_error: HTTP 500: boom"])
    expect(page.locator("#no-gpu")).to_be_hidden()

